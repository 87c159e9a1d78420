//! The sticky cookie a response pins a new or moved client with: the
//! server's `Set-Cookie` value (made when it joined its backend, for
//! requests over plain HTTP and over TLS), and `Cache-Control` kept from
//! shared caches ([`sticky::pinned_cache_control`]).

use super::headers;
use crate::policy::sticky;
use http::header::{HeaderValue, CACHE_CONTROL, SET_COOKIE};
use pingora_http::ResponseHeader;

/// Pin the client with `set_cookie`, the chosen server's value
/// ([`crate::state::Server::pin`]).
pub fn pin(resp: &mut ResponseHeader, set_cookie: HeaderValue) {
    headers::edit_response(resp, 2, |h| {
        h.append(SET_COOKIE, set_cookie);
        let current = h.get(CACHE_CONTROL).map(|v| v.as_bytes());
        if let Some(value) = sticky::pinned_cache_control(current) {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(CACHE_CONTROL, v);
            }
        }
    });
}
