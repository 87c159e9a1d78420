//! Locally generated answers: the maintenance page (HTML or JSON, 503 with
//! Retry-After), the error page when no server can answer, and the 404 when
//! no site matches. Bodies and headers are rendered when settings change,
//! not per request; `proxy::answer` writes them.

use crate::config::time::format_rfc3339;
use bytes::Bytes;
use http::HeaderValue;
use pingora_error::Result;
use pingora_http::ResponseHeader;

/// A maintenance answer rendered for one site's current settings: bodies
/// and complete response headers, cloned per answer. With a window's end
/// (`until`), `Retry-After` counts down and the JSON body carries it, so
/// both are made per answer ([`MaintenancePage::json_at`]).
#[derive(Debug, Clone)]
pub struct MaintenancePage {
    pub html: Bytes,
    pub json: Bytes,
    pub html_head: ResponseHeader,
    pub json_head: ResponseHeader,
    /// The end of the scheduled window, Unix seconds.
    pub until: Option<u64>,
    site: String,
    message: Option<String>,
}

impl MaintenancePage {
    /// Placeholders in `template`: `{{site}}`, `{{message}}`,
    /// `{{retry_after}}` (the setting, in words), `{{until}}` (the window's
    /// end, RFC 3339, or nothing) and `{{eta}}` (a sentence saying when the
    /// site is back: at the window's end, or in about `retry_after`).
    pub fn render(
        template: &str,
        site: &str,
        retry_after: u64,
        message: Option<&str>,
        until: Option<u64>,
    ) -> Result<Self> {
        let message_html = html_escape(message.unwrap_or(""));
        let until_text = until.map(format_rfc3339).unwrap_or_default();
        let eta = match until {
            Some(_) => format!(
                "Expected back at <strong><time datetime=\"{until_text}\">{}</time></strong>.",
                readable_utc(&until_text)
            ),
            None => format!(
                "Expected back in about <strong>{}</strong>.",
                human_duration(retry_after)
            ),
        };
        let html = template
            .replace("{{site}}", &html_escape(site))
            .replace("{{message}}", &message_html)
            .replace("{{retry_after}}", &human_duration(retry_after))
            .replace("{{until}}", &until_text)
            .replace("{{eta}}", &eta);
        let json = json_body(site, retry_after, message, until);
        let retry_after = Some(retry_after);
        Ok(MaintenancePage {
            html_head: head(503, HTML, html.len(), retry_after)?,
            json_head: head(503, JSON, json.len(), retry_after)?,
            html: Bytes::from(html),
            json: Bytes::from(json),
            until,
            site: site.to_string(),
            message: message.map(str::to_string),
        })
    }

    /// The JSON body with `retry_after` as it is at this moment.
    pub fn json_at(&self, retry_after: u64) -> Bytes {
        Bytes::from(json_body(
            &self.site,
            retry_after,
            self.message.as_deref(),
            self.until,
        ))
    }
}

fn json_body(site: &str, retry_after: u64, message: Option<&str>, until: Option<u64>) -> String {
    let mut v = serde_json::json!({
        "error": "maintenance",
        "site": site,
        "retry_after": retry_after,
        "message": message,
    });
    if let Some(u) = until {
        v["until"] = serde_json::Value::String(format_rfc3339(u));
    }
    v.to_string()
}

/// `2026-12-03T14:00:00Z` as `2026-12-03 14:00 UTC`.
fn readable_utc(rfc3339: &str) -> String {
    match (rfc3339.get(..10), rfc3339.get(11..16)) {
        (Some(day), Some(time)) => format!("{day} {time} UTC"),
        _ => rfc3339.to_string(),
    }
}

/// `Retry-After` at `now_ms` (Unix milliseconds): with a window's end
/// `until` (Unix seconds) still to come, the whole seconds left to it
/// (at least 1); otherwise the site's setting.
pub fn retry_after_at(setting: u64, until: Option<u64>, now_ms: u64) -> u64 {
    match until {
        Some(u) => u
            .saturating_mul(1000)
            .saturating_sub(now_ms)
            .div_ceil(1000)
            .max(1),
        None => setting,
    }
}

pub const HTML: &str = "text/html; charset=utf-8";
pub const JSON: &str = "application/json";

/// The statuses the error page is served with.
pub const ERROR_STATUSES: [u16; 3] = [502, 503, 504];

/// Render the error page for a site and one of [`ERROR_STATUSES`]
/// (`{{status}}`: e.g. "503 · Service unavailable").
pub fn render_error(template: &str, site: &str, status: u16) -> Bytes {
    let reason = match status {
        502 => "Bad gateway",
        503 => "Service unavailable",
        504 => "Gateway timeout",
        _ => "Error",
    };
    Bytes::from(
        template
            .replace("{{site}}", &html_escape(site))
            .replace("{{status}}", &format!("{status} &middot; {reason}")),
    )
}

pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// "10 minutes", "1 hour 30 minutes", "45 seconds".
pub fn human_duration(secs: u64) -> String {
    let unit = |n: u64, one: &str| format!("{n} {one}{}", if n == 1 { "" } else { "s" });
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m, s) {
        (0, 0, s) => unit(s, "second"),
        (0, m, _) => unit(m, "minute"),
        (h, 0, _) => unit(h, "hour"),
        (h, m, _) => format!("{} {}", unit(h, "hour"), unit(m, "minute")),
    }
}

/// Whether an Accept header prefers JSON over HTML.
pub fn prefers_json(accept: Option<&[u8]>) -> bool {
    let Some(accept) = accept.and_then(|a| std::str::from_utf8(a).ok()) else {
        return false;
    };
    let (mut json, mut html) = (0.0f32, 0.0f32);
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        // A specific type outranks a wildcard for the same quality.
        let (j, h) = match media.as_str() {
            "application/json" => (q + 0.002, 0.0),
            "text/html" => (0.0, q + 0.002),
            "application/*" => (q + 0.001, 0.0),
            "text/*" => (0.0, q + 0.001),
            "*/*" => (q, q),
            _ => (0.0, 0.0),
        };
        json = json.max(j);
        html = html.max(h);
    }
    json > html
}

/// The header of a local answer, never cached. Built without Pingora's
/// header-case map: the names are http's constants, sent in their
/// canonical case.
pub fn head(
    status: u16,
    content_type: &'static str,
    len: usize,
    retry_after: Option<u64>,
) -> Result<ResponseHeader> {
    use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
    // Room for Pingora's Date and Connection as well.
    let mut resp = ResponseHeader::build_no_case(status, Some(8))?;
    resp.insert_header(CONTENT_TYPE, HeaderValue::from_static(content_type))?;
    resp.insert_header(CONTENT_LENGTH, HeaderValue::from(len))?;
    resp.insert_header(CACHE_CONTROL, HeaderValue::from_static("no-store"))?;
    if let Some(r) = retry_after {
        resp.insert_header(RETRY_AFTER, HeaderValue::from(r))?;
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_pages_name_their_status() {
        let t = "{{site}}: HTTP {{status}}";
        assert_eq!(
            &render_error(t, "a<b", 504)[..],
            b"a&lt;b: HTTP 504 &middot; Gateway timeout"
        );
        assert_eq!(
            &render_error(t, "app", 502)[..],
            b"app: HTTP 502 &middot; Bad gateway"
        );
    }

    #[test]
    fn accept_negotiation() {
        assert!(!prefers_json(None));
        assert!(prefers_json(Some(b"application/json")));
        assert!(!prefers_json(Some(
            b"text/html,application/xhtml+xml,*/*;q=0.8"
        )));
        assert!(prefers_json(Some(b"text/html;q=0.5, application/json")));
        assert!(!prefers_json(Some(b"*/*")));
        assert!(prefers_json(Some(b"application/*")));
        assert!(!prefers_json(Some(b"\xff")));
    }

    #[test]
    fn renders_escaped_message_and_human_retry() {
        let p = MaintenancePage::render(
            "{{site}}|{{message}}|{{retry_after}}",
            "app",
            5400,
            Some("<b>Back</b> & soon"),
            None,
        )
        .unwrap();
        assert_eq!(
            &p.html[..],
            b"app|&lt;b&gt;Back&lt;/b&gt; &amp; soon|1 hour 30 minutes"
        );
        let j: serde_json::Value = serde_json::from_slice(&p.json).unwrap();
        assert_eq!(j["error"], "maintenance");
        assert_eq!(j["retry_after"], 5400);
        assert_eq!(j["message"], "<b>Back</b> & soon");
        assert!(j.get("until").is_none());
        assert_eq!(human_duration(600), "10 minutes");
        assert_eq!(human_duration(1), "1 second");
        assert_eq!(human_duration(3600), "1 hour");
    }

    #[test]
    fn a_window_shows_its_end_and_counts_retry_after_down() {
        let t = "{{eta}}|{{until}}";
        let until = 1_796_306_400; // 2026-12-03T14:00:00Z
        let p = MaintenancePage::render(t, "app", 600, None, Some(until)).unwrap();
        assert_eq!(
            std::str::from_utf8(&p.html).unwrap(),
            "Expected back at <strong><time datetime=\"2026-12-03T14:00:00Z\">\
             2026-12-03 14:00 UTC</time></strong>.|2026-12-03T14:00:00Z"
        );
        let j: serde_json::Value = serde_json::from_slice(&p.json_at(42)).unwrap();
        assert_eq!(j["until"], "2026-12-03T14:00:00Z");
        assert_eq!(j["retry_after"], 42);
        let open = MaintenancePage::render(t, "app", 600, None, None).unwrap();
        assert_eq!(
            std::str::from_utf8(&open.html).unwrap(),
            "Expected back in about <strong>10 minutes</strong>.|"
        );
        let ms = until * 1000;
        assert_eq!(retry_after_at(600, Some(until), ms - 90_000), 90);
        assert_eq!(
            retry_after_at(600, Some(until), ms - 89_001),
            90,
            "rounded up"
        );
        assert_eq!(retry_after_at(600, Some(until), ms - 1), 1);
        assert_eq!(retry_after_at(600, Some(until), ms + 5_000), 1, "never 0");
        assert_eq!(retry_after_at(600, None, ms), 600);
    }
}
