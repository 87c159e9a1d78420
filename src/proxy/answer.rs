//! Writing a locally generated answer (maintenance page, error page, 404)
//! to the client: header and body in one send, keep-alive kept. What the
//! answer holds is rendered by [`crate::policy::pages`].

use super::{Answer, Ctx};
use crate::policy::pages::{self, head};
use crate::state::Runtime;
use bytes::Bytes;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// Write a local answer: `head` from [`head`], then `body`. A HEAD request
/// gets the headers (with the body's Content-Length) and no body.
pub async fn send(session: &mut Session, head: ResponseHeader, body: Bytes) -> Result<()> {
    let head_only = session.req_header().method == http::Method::HEAD;
    // Header then body: Pingora keeps the header in its write buffer until
    // the body comes, so both leave in one send (write_response_tasks would
    // flush each part on its own).
    session
        .write_response_header(Box::new(head), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Write a complete local answer built for this one response.
pub async fn respond(
    session: &mut Session,
    status: u16,
    content_type: &'static str,
    body: Bytes,
) -> Result<()> {
    let resp = head(status, content_type, body.len(), None)?;
    send(session, resp, body).await
}

/// Largest request body read and dropped so that a refused request keeps
/// its connection alive; a larger one closes the connection instead.
const MAX_DISCARD: usize = 64 * 1024;

/// Read and drop the body of a request answered locally, so the client
/// connection stays usable (keep-alive is kept for forms posted during
/// maintenance). Bounded in size and time.
pub async fn discard_small_body(session: &mut Session) {
    if session.as_downstream_mut().is_body_empty() {
        return;
    }
    let drained = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        let mut seen = 0usize;
        loop {
            match session.as_downstream_mut().read_request_body().await {
                Ok(Some(chunk)) => {
                    seen += chunk.len();
                    if seen > MAX_DISCARD {
                        return false;
                    }
                }
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    if !drained {
        session.as_downstream_mut().set_keepalive(None);
    }
}

/// The site's error page: 503 when no server could take the request
/// (with `retry_after` when it waited in a queue in vain), 502 or 504
/// when the one that took it failed.
pub async fn error_page(
    rt: &Runtime,
    session: &mut Session,
    ctx: &mut Ctx,
    status: u16,
    retry_after: Option<u64>,
) -> Result<()> {
    ctx.answer = Answer::ErrorPage;
    rt.metrics.sites[ctx.site].error_page.inc();
    let pages = &rt.error_pages[ctx.site];
    let body = pages::ERROR_STATUSES
        .iter()
        .position(|s| *s == status)
        .map_or_else(|| pages[1].clone(), |i| pages[i].clone());
    let mut resp = head(status, pages::HTML, body.len(), retry_after)?;
    add_hsts(rt, ctx, &mut resp)?;
    send(session, resp, body).await
}

/// `Strict-Transport-Security` on an answer over TLS, when the site sets
/// `hsts`.
fn add_hsts(rt: &Runtime, ctx: &Ctx, resp: &mut ResponseHeader) -> Result<()> {
    match &rt.config.sites[ctx.site].hsts {
        Some(hsts) if ctx.tls => {
            resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone())
        }
        _ => Ok(()),
    }
}

/// `force_https`'s answer: 308 to `location`, which keeps the method and
/// the body of the request.
pub async fn redirect(session: &mut Session, location: String) -> Result<()> {
    let mut resp = head(308, "text/plain; charset=utf-8", 0, None)?;
    resp.insert_header(http::header::LOCATION, location)?;
    discard_small_body(session).await;
    send(session, resp, bytes::Bytes::new()).await
}

/// The maintenance page, HTML or JSON as the client prefers.
pub async fn maintenance_page(rt: &Runtime, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
    rt.metrics.sites[ctx.site].maintenance_responses.inc();
    maintenance_fallback(rt, session, ctx).await
}

/// The maintenance page for a request already counted as a maintenance
/// answer: its site's maintenance backend could not answer.
pub async fn maintenance_fallback(
    rt: &Runtime,
    session: &mut Session,
    ctx: &mut Ctx,
) -> Result<()> {
    ctx.answer = Answer::Maintenance;
    let snap = ctx.snap.clone().expect("loaded before the gate");
    let page = &snap.sites[ctx.site].page;
    let accept = session
        .req_header()
        .headers
        .get(http::header::ACCEPT)
        .map(|a| a.as_bytes());
    let json = pages::prefers_json(accept);
    let (mut resp, mut body) = if json {
        (page.json_head.clone(), page.json.clone())
    } else {
        (page.html_head.clone(), page.html.clone())
    };
    if let Some(until) = page.until {
        // A window with an end: Retry-After counts down to it, and the
        // page reloads itself when it is over (no script needed).
        let left = pages::retry_after_at(0, Some(until), crate::state::now_ms());
        if json {
            body = page.json_at(left);
            resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        }
        resp.insert_header(http::header::RETRY_AFTER, left)?;
        resp.insert_header(http::header::REFRESH, left + 1)?;
    }
    add_hsts(rt, ctx, &mut resp)?;
    discard_small_body(session).await;
    send(session, resp, body).await
}
