//! Host routing (CONTRACT section 3, step 1): the site whose `hosts` match
//! the request's Host, first match in config order, else the default site.

use crate::config::Site;
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<String, usize>,
    /// `(".example.org", site)` for `*.example.org`, in config order.
    wildcards: Vec<(String, usize)>,
    default: Option<usize>,
}

impl Router {
    pub fn new(sites: &[Site]) -> Router {
        let mut r = Router::default();
        for (i, site) in sites.iter().enumerate() {
            if site.hosts.is_empty() && r.default.is_none() {
                r.default = Some(i);
            }
            for h in &site.hosts {
                match h.strip_prefix('*') {
                    Some(suffix) => r.wildcards.push((suffix.to_string(), i)),
                    None => {
                        r.exact.entry(h.clone()).or_insert(i);
                    }
                }
            }
        }
        r
    }

    /// Whether routing looks at Host at all (not with only a default site).
    pub fn reads_host(&self) -> bool {
        !self.exact.is_empty() || !self.wildcards.is_empty()
    }

    /// The site for a Host header value (port ignored, case-insensitive).
    pub fn route(&self, host: Option<&[u8]>) -> Option<usize> {
        let mut buf = [0u8; 256];
        let name = host.and_then(|h| normalise(h, &mut buf));
        let Some(name) = name else {
            return self.default;
        };
        let exact = self.exact.get(name).copied();
        let wild = self
            .wildcards
            .iter()
            .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            .map(|(_, i)| *i);
        match (exact, wild) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b).or(self.default),
        }
    }
}

/// The authority of an absolute-form request target
/// (`http://app.example/path`): what names the host when a request has no
/// Host header. `None` for an origin-form target (`/path`).
pub fn target_authority(target: &[u8]) -> Option<&[u8]> {
    let scheme_end = target.windows(3).position(|w| w == b"://")?;
    let scheme = &target[..scheme_end];
    if !scheme.eq_ignore_ascii_case(b"http") && !scheme.eq_ignore_ascii_case(b"https") {
        return None;
    }
    let rest = &target[scheme_end + 3..];
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    // Without userinfo (`user@host`), which names no host of ours.
    let host = match authority.iter().rposition(|&b| b == b'@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    };
    (!host.is_empty()).then_some(host)
}

/// Where `force_https` sends a request that came over plain HTTP:
/// `https://host[:port]/path?query`, the port left out when 443. `None`
/// when the request names no usable host (it is then served as it is).
pub fn https_redirect(
    host: Option<&[u8]>,
    https_port: u16,
    path_and_query: &str,
) -> Option<String> {
    let host = std::str::from_utf8(trim_port(host?)).ok()?;
    if host.is_empty()
        || host
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b == b'/' || b == b'@')
    {
        return None;
    }
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let port = match https_port {
        443 => String::new(),
        p => format!(":{p}"),
    };
    let target = if path_and_query.starts_with('/') {
        path_and_query
    } else {
        "/"
    };
    Some(format!("https://{host}{port}{target}"))
}

/// Lower-case host name without port or trailing dot, written into `buf`.
fn normalise<'a>(host: &[u8], buf: &'a mut [u8; 256]) -> Option<&'a str> {
    let host = trim_port(host);
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() || host.len() > buf.len() {
        return None;
    }
    let out = &mut buf[..host.len()];
    for (o, b) in out.iter_mut().zip(host) {
        *o = b.to_ascii_lowercase();
    }
    std::str::from_utf8(out).ok()
}

fn trim_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        // An IPv6 literal: keep the brackets' content.
        return match host.iter().position(|&b| b == b']') {
            Some(end) => &host[1..end],
            None => host,
        };
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(colon) => &host[..colon],
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_redirects_keep_host_path_and_query() {
        let r = |h: &[u8], p: u16, t: &str| https_redirect(Some(h), p, t);
        assert_eq!(
            r(b"shop.test:8080", 443, "/a?b=c").as_deref(),
            Some("https://shop.test/a?b=c")
        );
        assert_eq!(
            r(b"shop.test", 8443, "/").as_deref(),
            Some("https://shop.test:8443/")
        );
        assert_eq!(
            r(b"[::1]:80", 443, "/x").as_deref(),
            Some("https://[::1]/x")
        );
        assert_eq!(r(b"evil.test/x", 443, "/").as_deref(), None);
        assert_eq!(r(b"user@evil.test", 443, "/").as_deref(), None);
        assert_eq!(https_redirect(None, 443, "/"), None);
        assert_eq!(
            r(b"shop.test", 443, "*").as_deref(),
            Some("https://shop.test/")
        );
    }

    #[test]
    fn authority_of_absolute_targets() {
        let a = target_authority;
        assert_eq!(a(b"http://app.test/ok"), Some(&b"app.test"[..]));
        assert_eq!(a(b"HTTPS://App.Test:8443?q=1"), Some(&b"App.Test:8443"[..]));
        assert_eq!(a(b"http://user@app.test/"), Some(&b"app.test"[..]));
        assert_eq!(a(b"http://"), None);
        assert_eq!(a(b"/ok"), None);
        assert_eq!(a(b"/redirect?to=http://evil.test/"), None);
        assert_eq!(a(b"ftp://app.test/"), None);
    }
    use crate::config::MaintenanceSettings;

    fn site(name: &str, hosts: &[&str]) -> Site {
        Site {
            name: name.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            backend: 0,
            error_page: Default::default(),
            maintenance_page: String::new(),
            maintenance: MaintenanceSettings {
                enabled: false,
                retry_after: 1,
                paths: vec![],
                message: None,
                allow: vec![],
                from: None,
                until: None,
            },
            bypass_cookie: "B".into(),
            force_https: false,
            https_port: 443,
            maintenance_backend: None,
            hsts: None,
            bypass_secret_env: None,
        }
    }

    #[test]
    fn routes_by_host_with_wildcards_and_default() {
        let r = Router::new(&[
            site("a", &["app.example.org"]),
            site("w", &["*.example.org"]),
            site("d", &[]),
        ]);
        assert_eq!(r.route(Some(b"app.example.org")), Some(0));
        assert_eq!(r.route(Some(b"APP.Example.org:8080")), Some(0));
        assert_eq!(r.route(Some(b"app.example.org.")), Some(0));
        assert_eq!(r.route(Some(b"x.y.example.org")), Some(1));
        assert_eq!(r.route(Some(b"example.org")), Some(2));
        assert_eq!(r.route(Some(b"[::1]:8080")), Some(2));
        assert_eq!(r.route(None), Some(2));
        assert_eq!(r.route(Some(&[0xff, 0xfe])), Some(2));
        assert_eq!(r.route(Some(&[b'a'; 5000])), Some(2));
        assert!(r.reads_host());
        let only_default = Router::new(&[site("d", &[])]);
        assert!(!only_default.reads_host());
        assert_eq!(only_default.route(Some(b"app.example.org")), Some(0));
    }

    #[test]
    fn first_match_wins_and_no_default_means_none() {
        let r = Router::new(&[
            site("w", &["*.example.org"]),
            site("a", &["app.example.org"]),
        ]);
        assert_eq!(r.route(Some(b"app.example.org")), Some(0));
        assert_eq!(r.route(Some(b"other.net")), None);
    }
}
