//! What a finished request leaves behind: its metrics and its access-log
//! line.

use super::{Answer, Ctx};
use crate::logging::AccessEntry;
use crate::state::Runtime;
use pingora_error::Error;
use pingora_proxy::Session;

/// Metrics and the access-log line of a finished request.
pub fn account(rt: &Runtime, access_log: bool, session: &Session, e: Option<&Error>, ctx: &Ctx) {
    let status = session
        .response_written()
        .map(|r| r.status.as_u16())
        .unwrap_or(0);
    if ctx.snap.is_none() && !matches!(ctx.answer, Answer::NoSite | Answer::Redirect) {
        // The request never reached routing (a malformed request).
        return;
    }
    let elapsed = ctx.start.elapsed();
    let class = crate::metrics::code_class(status);
    if !matches!(ctx.answer, Answer::NoSite | Answer::Redirect) {
        let m = &rt.metrics.sites[ctx.site];
        m.duration.observe(elapsed);
        match (ctx.answer, ctx.server) {
            (Answer::Maintenance, _) => m.maintenance_requests[class].inc(),
            (Answer::ErrorPage, _) | (_, None) => m.error_requests[class].inc(),
            (Answer::Upstream, Some(_)) => {
                if let Some(server) = ctx.target() {
                    server.metrics.request(ctx.site, class);
                }
            }
            (Answer::NoSite | Answer::Redirect, _) => {}
        }
    }
    if !access_log {
        return;
    }
    let req = session.req_header();
    let backend = &rt.config.backends[ctx.backend];
    let (b, s) = match (ctx.answer, ctx.server) {
        (Answer::Maintenance, _) => ("", "maintenance"),
        (Answer::NoSite, _) => ("", "-"),
        (Answer::Redirect, _) => ("", "redirect"),
        (Answer::Upstream, Some(_)) => (
            backend.name.as_str(),
            ctx.target().map_or("-", |u| u.name()),
        ),
        _ => ("", "error"),
    };
    crate::logging::access(&AccessEntry {
        client: ctx.client,
        site: match ctx.answer {
            Answer::NoSite => "-",
            _ => rt.config.sites[ctx.site].name.as_str(),
        },
        method: req.method.as_str(),
        path: req.uri.path(),
        status,
        backend: b,
        server: s,
        micros: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        protocol: match req.version {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_09 => "HTTP/0.9",
            http::Version::HTTP_3 => "HTTP/3",
            _ => "HTTP/1.1",
        },
        error: e.map(|e| e.etype().as_str()),
    });
}
