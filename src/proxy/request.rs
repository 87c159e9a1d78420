//! What drawbridge reads from the client's request and changes in it
//! before a server sees it: our cookies (read, then removed) and the
//! X-Forwarded-* headers.

use super::{headers, Ctx};
use crate::policy::sticky;
use crate::state::{Runtime, Snapshot};
use bytes::Bytes;
use headers::{X_FORWARDED_HOST, X_FORWARDED_PROTO};
use http::header::{HeaderValue, COOKIE, HOST};
use pingora_http::RequestHeader;
use smallvec::SmallVec;
use std::net::IpAddr;

/// What the request's `Cookie` headers hold of ours (the sticky and the
/// bypass cookie), which the server must not see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OurCookies {
    None,
    /// Ours and nothing else: the headers go.
    Only,
    /// Ours among others: ours are cut out.
    Among,
}

/// Which of our cookies the request carries, the bypass cookie's value
/// kept and the sticky cookie's server looked up.
pub fn read_cookies(
    rt: &Runtime,
    snap: &Snapshot,
    req: &RequestHeader,
    ctx: &mut Ctx,
) -> OurCookies {
    let site = &rt.config.sites[ctx.site];
    let backend = &rt.config.backends[ctx.backend];
    let sticky_cookie = backend.sticky.as_ref().map(|st| st.cookie.as_str());
    let cookies = sticky::find_each(
        header_bytes(req, COOKIE),
        [Some(site.bypass_cookie.as_str()), sticky_cookie],
    );
    let [bypass_cookie, sticky_value] = cookies.values;
    ctx.bypass_cookie = bypass_cookie.map(Bytes::copy_from_slice);
    if let Some(v) = sticky_value {
        let servers = snap.servers[ctx.backend].iter();
        ctx.cookie_server = servers
            .map(|m| m.server.conf.id.as_bytes())
            .position(|id| id == v);
        if ctx.cookie_server.is_none() {
            rt.metrics.backends[ctx.backend].redispatch_unknown.inc();
        }
    }
    match (
        bypass_cookie.is_some() || sticky_value.is_some(),
        cookies.others,
    ) {
        (false, _) => OurCookies::None,
        (true, false) => OurCookies::Only,
        (true, true) => OurCookies::Among,
    }
}

/// Edit the client's request into the one the server gets: our
/// cookies removed, X-Forwarded-For/Proto/Host set. Done once on the
/// downstream header, before Pingora copies it for each upstream
/// attempt: the copy is then made without Pingora's header-case map,
/// and a retry on another server does not append to X-Forwarded-For
/// twice.
pub fn forwarded_headers(
    rt: &Runtime,
    req: &mut RequestHeader,
    ctx: &Ctx,
    peer: Option<IpAddr>,
    ours: OurCookies,
) {
    let site = &rt.config.sites[ctx.site];
    // HTTP/2 names the host in :authority, which Pingora turns into Host
    // only upstream.
    let authority = req
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    let sticky_name = rt.config.backends[ctx.backend]
        .sticky
        .as_ref()
        .map(|s| s.cookie.as_str());
    headers::edit_request(req, 3, |h| {
        match ours {
            OurCookies::None => {}
            OurCookies::Only => {
                h.remove(COOKIE);
            }
            OurCookies::Among => {
                let names: SmallVec<[&str; 2]> = sticky_name
                    .into_iter()
                    .chain([site.bypass_cookie.as_str()])
                    .collect();
                headers::strip_cookies(h, &names);
            }
        }
        headers::single_content_length(h);
        headers::append_forwarded_for(h, peer);
        let proto = if ctx.tls { "https" } else { "http" };
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        if let Some(host) = h.get(HOST).cloned().or(authority) {
            h.insert(X_FORWARDED_HOST, host);
        }
    });
}

pub fn header_bytes(
    req: &RequestHeader,
    name: http::header::HeaderName,
) -> impl DoubleEndedIterator<Item = &[u8]> {
    req.headers.get_all(name).into_iter().map(|v| v.as_bytes())
}
