//! The sticky cookie a response pins a new or moved client with: its
//! `Set-Cookie` values made once per server (for requests over plain HTTP
//! and over TLS, for `secure: auto`), and `Cache-Control` kept from shared
//! caches ([`sticky::pinned_cache_control`]).

use super::headers;
use crate::config::Config;
use crate::policy::sticky;
use http::header::{HeaderValue, CACHE_CONTROL, SET_COOKIE};
use pingora_http::ResponseHeader;

/// `Set-Cookie` values per backend and server: `[plain, tls]`; empty for
/// a backend without stickiness.
pub struct Pins(Vec<Vec<[HeaderValue; 2]>>);

impl Pins {
    pub fn new(config: &Config) -> Pins {
        Pins(
            config
                .backends
                .iter()
                .map(|b| {
                    let Some(st) = &b.sticky else {
                        return Vec::new();
                    };
                    b.servers
                        .iter()
                        .map(|s| {
                            [false, true].map(|tls| {
                                // Cookie names and ids are checked tokens:
                                // always a valid header value.
                                let v = sticky::set_cookie(st, &s.id, tls);
                                // Kept for the life of the process, as the
                                // config is: a static value is handed to
                                // each response without touching a shared
                                // reference count.
                                let v: &'static str = Box::leak(v.into_boxed_str());
                                HeaderValue::from_str(v)
                                    .map(|_| HeaderValue::from_static(v))
                                    .unwrap_or_else(|_| HeaderValue::from_static(""))
                            })
                        })
                        .collect()
                })
                .collect(),
        )
    }

    /// Pin the client to `server` of `backend` (nothing for a backend
    /// without stickiness).
    pub fn pin(&self, resp: &mut ResponseHeader, backend: usize, server: usize, tls: bool) {
        let Some(values) = self.0.get(backend).and_then(|b| b.get(server)) else {
            return;
        };
        let set_cookie = values[usize::from(tls)].clone();
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
}
