//! The browser console (CONTRACT section 14): the embedded page and its
//! assets, login with the admin token (a session cookie and a CSRF token),
//! logout, and what the page needs to know about its session. The page
//! itself only calls the JSON API; this file never changes the state.

use super::session::{csrf_matches, Sessions, SESSION_TTL};
use super::{authorize, ApiError, Facts};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Instant;
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const COOKIE: &str = "drawbridge_console";

/// The header that carries the session's CSRF token on every change.
pub const CSRF_HEADER: &str = "x-drawbridge-csrf";

const INDEX: &str = include_str!("../../static/console/index.html");
const SCRIPT: &str = include_str!("../../static/console/app.js");
const STYLE: &str = include_str!("../../static/console/style.css");

/// The page may load its own script and style and talk to its own origin,
/// nothing else, and no other site may frame it.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The embedded asset served at `path`: its content type and text.
pub fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/" | "/console" | "/console/" => Some(("text/html; charset=utf-8", INDEX)),
        "/console/app.js" => Some(("text/javascript; charset=utf-8", SCRIPT)),
        "/console/style.css" => Some(("text/css; charset=utf-8", STYLE)),
        _ => None,
    }
}

/// Whether `path` is one of the console's own pages or assets (answered
/// with HTML, script or style rather than JSON).
pub fn is_page(path: &str) -> bool {
    asset(path).is_some()
}

/// The `Set-Cookie` value that starts the session `id`.
pub fn session_cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict",
        SESSION_TTL.as_secs()
    )
}

/// The `Set-Cookie` value that deletes the session cookie.
pub fn cleared_cookie() -> String {
    format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict")
}

/// The value of the session cookie among `Cookie` headers.
pub fn session_id(cookie_headers: &[Vec<u8>]) -> Option<Vec<u8>> {
    cookie_headers.iter().find_map(|h| {
        h.split(|&b| b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == COOKIE.as_bytes())
                .then(|| pair[eq + 1..].trim_ascii().to_vec())
                .filter(|v| !v.is_empty())
        })
    })
}

/// An answer of a console endpoint: status, JSON body, and a `Set-Cookie`.
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub set_cookie: Option<String>,
}

impl Answer {
    fn json(status: u16, body: Value) -> Answer {
        Answer {
            status,
            body,
            set_cookie: None,
        }
    }
}

impl From<ApiError> for Answer {
    fn from(e: ApiError) -> Answer {
        Answer::json(e.status, json!({ "error": e.message }))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    token: String,
}

/// Refuse a change whose `Origin` is another site's.
pub fn refuse_cross_site(f: &Facts) -> Result<(), ApiError> {
    if crate::policy::origin::cross_site(f.changes(), f.origin.as_deref(), f.host.as_deref()) {
        let origin = f
            .origin
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        return Err(ApiError::new(
            403,
            format!("cross-site request refused: Origin {origin:?} is not this admin listener"),
        ));
    }
    Ok(())
}

/// `POST /console/login`, `POST /console/logout`, `GET /console/session`.
pub fn endpoint(
    token: Option<&str>,
    listen: &str,
    sessions: &Sessions,
    f: &Facts,
    path: &str,
    body: &[u8],
) -> Answer {
    let now = Instant::now();
    let result = match path {
        "/console/login" => only(f, "POST").and_then(|_| login(token, sessions, f, body, now)),
        "/console/logout" => only(f, "POST").and_then(|_| logout(token, sessions, f, now)),
        "/console/session" => only(f, "GET").and_then(|_| info(token, listen, sessions, f, now)),
        _ => Err(ApiError::not_found(format!("no such path {path}"))),
    };
    result.unwrap_or_else(Answer::from)
}

fn only(f: &Facts, method: &str) -> Result<(), ApiError> {
    if f.method.as_str() == method {
        Ok(())
    } else {
        Err(ApiError::new(
            405,
            format!("method {} not allowed here, use {method}", f.method),
        ))
    }
}

fn login(
    token: Option<&str>,
    sessions: &Sessions,
    f: &Facts,
    body: &[u8],
    now: Instant,
) -> Result<Answer, ApiError> {
    refuse_cross_site(f)?;
    let Some(token) = token else {
        return Err(ApiError::bad(
            "no admin token is configured: the console needs no login (loopback clients only)",
        ));
    };
    let body: LoginBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad(format!(
            "invalid JSON body, expected {{\"token\": ...}}: {e}"
        ))
    })?;
    if !bool::from(body.token.trim().as_bytes().ct_eq(token.as_bytes())) {
        log::warn!("admin: console login refused: wrong token");
        return Err(ApiError::new(401, "wrong token"));
    }
    let created = sessions.create(now);
    log::warn!("admin: console login");
    Ok(Answer {
        status: 200,
        body: json!({
            "auth": "token",
            "session": true,
            "csrf": created.csrf,
            "max_age": SESSION_TTL.as_secs(),
        }),
        set_cookie: Some(session_cookie(&created.id)),
    })
}

fn logout(
    token: Option<&str>,
    sessions: &Sessions,
    f: &Facts,
    now: Instant,
) -> Result<Answer, ApiError> {
    refuse_cross_site(f)?;
    if token.is_some() {
        if let Some(id) = &f.session {
            if let Some(csrf) = sessions.csrf(id, now) {
                if !csrf_matches(&csrf, f.csrf.as_deref()) {
                    return Err(csrf_refused());
                }
                sessions.remove(id, now);
                log::warn!("admin: console logout");
            }
        }
    }
    Ok(Answer {
        status: 200,
        body: json!({ "session": false }),
        set_cookie: Some(cleared_cookie()),
    })
}

fn info(
    token: Option<&str>,
    listen: &str,
    sessions: &Sessions,
    f: &Facts,
    now: Instant,
) -> Result<Answer, ApiError> {
    match token {
        Some(_) => {
            let live = f
                .session
                .as_deref()
                .and_then(|id| Some((sessions.csrf(id, now)?, sessions.expires(id, now)?)));
            Ok(Answer::json(
                200,
                match live {
                    Some((csrf, expires)) => json!({
                        "auth": "token",
                        "session": true,
                        "csrf": csrf,
                        "expires_in": expires.saturating_duration_since(now).as_secs(),
                    }),
                    None => json!({ "auth": "token", "session": false, "csrf": null }),
                },
            ))
        }
        None => {
            authorize(None, None, f.peer, f.host.as_deref(), listen)?;
            Ok(Answer::json(
                200,
                json!({ "auth": "loopback", "session": false, "csrf": null }),
            ))
        }
    }
}

/// The refusal of a session change without its CSRF token.
pub fn csrf_refused() -> ApiError {
    ApiError::new(
        403,
        "missing or wrong X-Drawbridge-CSRF header for this console session",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = |s: &str| vec![s.as_bytes().to_vec()];
        assert_eq!(
            session_id(&h("a=1; drawbridge_console=xyz; b=2")).as_deref(),
            Some(&b"xyz"[..])
        );
        assert_eq!(session_id(&h("drawbridge_console_x=1")), None);
        assert_eq!(session_id(&h("drawbridge_console=")), None);
        assert_eq!(
            session_id(&[b"a=1".to_vec(), b"drawbridge_console=q".to_vec()]).as_deref(),
            Some(&b"q"[..])
        );
    }

    #[test]
    fn cookies_are_http_only_strict_and_expire() {
        let c = session_cookie("abc");
        for part in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
            assert!(c.contains(part), "{c} lacks {part}");
        }
        assert!(cleared_cookie().contains("Max-Age=0"));
    }

    #[test]
    fn assets_are_embedded() {
        assert!(asset("/").is_some_and(|(t, b)| t.starts_with("text/html") && b.contains("app.js")));
        assert!(is_page("/console/app.js") && is_page("/console/style.css"));
        assert!(!is_page("/api/v1/status"));
    }
}
