//! The admin HTTP API (CONTRACT section 4): authentication, routing, JSON
//! bodies and errors. Every change goes through `Runtime::update`, so it is
//! on disk before the answer is sent and in force for the next request.

mod api;
pub mod console;
pub mod ctl;
mod servers;
pub mod session;

use crate::state::Runtime;
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use std::net::IpAddr;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// An API error: a status and a message for `{"error": ...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(400, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(404, message)
    }
}

impl From<crate::state::StateError> for ApiError {
    fn from(e: crate::state::StateError) -> ApiError {
        use crate::state::StateError::*;
        match e {
            Invalid(m) => ApiError::bad(m),
            Storage(m) | Internal(m) => ApiError::new(500, m),
        }
    }
}

pub type ApiResult = Result<(u16, serde_json::Value), ApiError>;

pub struct AdminApp {
    rt: Arc<Runtime>,
    sessions: session::Sessions,
}

impl AdminApp {
    pub fn new(rt: Arc<Runtime>) -> AdminApp {
        AdminApp {
            rt,
            sessions: session::Sessions::default(),
        }
    }

    /// Whether a request may use the API: a change with another site's
    /// `Origin` never; with a token configured, its bearer token, or else a
    /// console session (and, for a change, the session's CSRF token);
    /// without one, a loopback client as [`authorize`] says.
    fn admit(&self, f: &Facts) -> Result<(), ApiError> {
        console::refuse_cross_site(f)?;
        let token = self.rt.config.admin.token.as_deref();
        if token.is_some() && f.authorization.is_none() {
            if let Some(id) = &f.session {
                let csrf = self
                    .sessions
                    .csrf(id, std::time::Instant::now())
                    .ok_or_else(|| {
                        ApiError::new(401, "the console session has ended: log in again")
                    })?;
                if f.changes() && !session::csrf_matches(&csrf, f.csrf.as_deref()) {
                    return Err(console::csrf_refused());
                }
                return Ok(());
            }
        }
        authorize(
            token,
            f.authorization.as_deref(),
            f.peer,
            f.host.as_deref(),
            &self.rt.config.admin.listen,
        )
    }
}

/// What the admin service looks at in a request, copied out of it (the
/// body is read afterwards).
#[derive(Debug, Clone)]
pub struct Facts {
    pub method: Method,
    pub host: Option<Vec<u8>>,
    pub origin: Option<Vec<u8>>,
    pub authorization: Option<Vec<u8>>,
    /// The console session cookie's value.
    pub session: Option<Vec<u8>>,
    /// The `X-Drawbridge-CSRF` header.
    pub csrf: Option<Vec<u8>>,
    pub peer: Option<IpAddr>,
}

impl Facts {
    fn of(session: &ServerSession) -> Facts {
        let req = session.req_header();
        let header = |name: &str| req.headers.get(name).map(|v| v.as_bytes().to_vec());
        let cookies: Vec<Vec<u8>> = req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect();
        Facts {
            method: req.method.clone(),
            host: header("host"),
            origin: header("origin"),
            authorization: header("authorization"),
            session: console::session_id(&cookies),
            csrf: header(console::CSRF_HEADER),
            peer: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
        }
    }

    /// Whether the request may change something: any method but GET and
    /// HEAD.
    pub fn changes(&self) -> bool {
        self.method != Method::GET && self.method != Method::HEAD
    }
}

/// Whether a request may use the API: with a token configured, it must carry
/// it as a bearer token; without one, only loopback clients addressing a
/// loopback name are served (a browser tricked by DNS rebinding sends a
/// foreign Host).
pub fn authorize(
    token: Option<&str>,
    authorization: Option<&[u8]>,
    peer: Option<IpAddr>,
    host: Option<&[u8]>,
    listen: &str,
) -> Result<(), ApiError> {
    match token {
        Some(token) => {
            let given = authorization
                .and_then(|a| {
                    a.strip_prefix(b"Bearer ")
                        .or_else(|| a.strip_prefix(b"bearer "))
                })
                .map(|t| t.trim_ascii());
            match given {
                Some(t) if bool::from(t.ct_eq(token.as_bytes())) => Ok(()),
                Some(_) => Err(ApiError::new(401, "invalid token")),
                None => Err(ApiError::new(
                    401,
                    "missing bearer token: send Authorization: Bearer <token>",
                )),
            }
        }
        None => {
            if !peer.is_some_and(|p| {
                p.is_loopback() || crate::policy::gate::contains(&[loopback_v4()], p)
            }) {
                return Err(ApiError::new(
                    401,
                    "no admin token is configured: only loopback clients are served",
                ));
            }
            let host = host.and_then(|h| std::str::from_utf8(h).ok()).unwrap_or("");
            let name = match host.rsplit_once(':') {
                Some((n, p)) if p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => host,
            };
            let name = name.trim_start_matches('[').trim_end_matches(']');
            let listen_ip = listen
                .rsplit_once(':')
                .map(|(ip, _)| ip.trim_start_matches('[').trim_end_matches(']'));
            let ok = name.eq_ignore_ascii_case("localhost")
                || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
                || Some(name) == listen_ip;
            if ok {
                Ok(())
            } else {
                Err(ApiError::new(
                    401,
                    format!("Host {host:?} is not a loopback name"),
                ))
            }
        }
    }
}

fn loopback_v4() -> ipnet::IpNet {
    ipnet::IpNet::V4(
        ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(127, 0, 0, 0), 8).expect("valid prefix"),
    )
}

fn json_response(status: u16, body: &serde_json::Value) -> Response<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(body).unwrap_or_default();
    bytes.push(b'\n');
    build(status, "application/json", bytes)
}

fn build(status: u16, ctype: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("Content-Type", ctype)
        .header("Content-Length", body.len())
        .header("Cache-Control", "no-store")
        // Which process answered: two do during a handover.
        .header("X-Drawbridge-Pid", std::process::id())
        .body(body)
        .unwrap_or_default()
}

async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(ApiError::new(
                        413,
                        format!("request body larger than {MAX_BODY} bytes"),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(ApiError::bad(format!("cannot read the request body: {e}"))),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let query = req.uri.query().unwrap_or("").to_string();
        if path == "/healthz" {
            // X-Drawbridge-Pid tells `reload` which process answered.
            return build(200, "text/plain", b"ok\n".to_vec());
        }
        if crate::reload::handing_over()
            && (path.starts_with("/api/") || path.starts_with("/console/"))
        {
            let mut r = json_response(
                503,
                &serde_json::json!({"error": crate::reload::HANDING_OVER_ERROR}),
            );
            r.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(1u32));
            return r;
        }
        let f = Facts::of(session);
        let method = f.method.clone();
        if let Some((ctype, text)) = console::asset(&path) {
            if method != Method::GET && method != Method::HEAD {
                return json_response(
                    405,
                    &serde_json::json!({"error": format!("method {method} not allowed here, use GET")}),
                );
            }
            return page(ctype, text);
        }
        if path.starts_with("/console/") {
            let body = if f.changes() {
                read_body(session).await
            } else {
                Ok(Vec::new())
            };
            let answer = match body {
                Ok(body) => console::endpoint(
                    self.rt.config.admin.token.as_deref(),
                    &self.rt.config.admin.listen,
                    &self.sessions,
                    &f,
                    &path,
                    &body,
                ),
                Err(e) => console::Answer::from(e),
            };
            let mut response = json_response(answer.status, &answer.body);
            if let Some(cookie) = answer.set_cookie {
                if let Ok(v) = http::HeaderValue::from_str(&cookie) {
                    response.headers_mut().insert(http::header::SET_COOKIE, v);
                }
            }
            return response;
        }
        if !path.starts_with("/api/") {
            return json_response(
                404,
                &serde_json::json!({"error": format!("no such path {path}")}),
            );
        }
        let result = match self.admit(&f) {
            Err(e) => Err(e),
            Ok(()) => {
                let body = if f.changes() {
                    read_body(session).await
                } else {
                    Ok(Vec::new())
                };
                match body {
                    Ok(body) => api::route(&self.rt, &method, &path, &query, &body).await,
                    Err(e) => Err(e),
                }
            }
        };
        match result {
            Ok((status, v)) => json_response(status, &v),
            Err(e) => {
                if e.status >= 500 {
                    log::error!("admin: {method} {path}: {}", e.message);
                }
                json_response(e.status, &serde_json::json!({"error": e.message}))
            }
        }
    }
}

/// A console page or asset, with headers that keep other sites from
/// framing it or loading anything into it.
fn page(ctype: &str, text: &str) -> Response<Vec<u8>> {
    let mut r = build(200, ctype, text.as_bytes().to_vec());
    let h = r.headers_mut();
    h.insert(
        "Content-Security-Policy",
        http::HeaderValue::from_static(console::CSP),
    );
    h.insert("X-Frame-Options", http::HeaderValue::from_static("DENY"));
    h.insert(
        "X-Content-Type-Options",
        http::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "Referrer-Policy",
        http::HeaderValue::from_static("no-referrer"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    #[test]
    fn bearer_token_is_required_when_configured() {
        let l = "0.0.0.0:9090";
        assert!(authorize(
            Some("s3cret"),
            Some(b"Bearer s3cret"),
            ip("203.0.113.1"),
            None,
            l
        )
        .is_ok());
        assert_eq!(
            authorize(
                Some("s3cret"),
                Some(b"Bearer nope"),
                ip("127.0.0.1"),
                None,
                l
            )
            .unwrap_err()
            .status,
            401
        );
        assert_eq!(
            authorize(
                Some("s3cret"),
                Some(b"Basic s3cret"),
                ip("127.0.0.1"),
                None,
                l
            )
            .unwrap_err()
            .status,
            401
        );
        assert_eq!(
            authorize(Some("s3cret"), None, ip("127.0.0.1"), None, l)
                .unwrap_err()
                .status,
            401
        );
    }

    #[test]
    fn without_token_only_loopback_clients_and_names() {
        let l = "127.0.0.1:9090";
        assert!(authorize(None, None, ip("127.0.0.1"), Some(b"127.0.0.1:9090"), l).is_ok());
        assert!(authorize(None, None, ip("::1"), Some(b"[::1]:9090"), l).is_ok());
        assert!(authorize(None, None, ip("127.0.0.1"), Some(b"localhost:9090"), l).is_ok());
        assert!(authorize(None, None, ip("10.0.0.1"), Some(b"127.0.0.1:9090"), l).is_err());
        assert!(authorize(None, None, ip("127.0.0.1"), Some(b"evil.example:9090"), l).is_err());
    }
}
