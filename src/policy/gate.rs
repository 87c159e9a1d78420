//! The maintenance gate (CONTRACT section 3, steps 2 and 3): who the client
//! is, whether the site is in maintenance for this path, and whether this
//! request bypasses it. Pure functions, tested without sockets.

use super::bypass;
use ipnet::IpNet;
use regex::RegexSet;
use std::net::IpAddr;

/// Why a request passed a site in maintenance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bypass {
    /// The client address is in the site's allow list.
    Allow,
    /// The request carries a valid bypass token.
    Token,
}

impl Bypass {
    pub fn as_str(self) -> &'static str {
        match self {
            Bypass::Allow => "allow",
            Bypass::Token => "token",
        }
    }
}

/// The cookie value with which an allowlisted operator previews what the
/// public sees.
pub const PREVIEW_VALUE: &[u8] = b"off";

/// The client address: the socket peer, or when the peer is a trusted proxy,
/// the right-most `X-Forwarded-For` address that is not itself trusted.
pub fn client_ip<'a>(
    peer: IpAddr,
    trusted: &[IpNet],
    forwarded_for: impl DoubleEndedIterator<Item = &'a [u8]>,
) -> IpAddr {
    if !contains(trusted, peer) {
        return peer;
    }
    let mut client = peer;
    for header in forwarded_for.rev() {
        for hop in header.rsplit(|&b| b == b',') {
            let Some(ip) = std::str::from_utf8(hop)
                .ok()
                .and_then(|s| s.trim().parse::<IpAddr>().ok())
            else {
                // An unparsable hop ends the chain we can believe.
                return client;
            };
            client = ip;
            if !contains(trusted, ip) {
                return ip;
            }
        }
    }
    client
}

/// Whether `ip` is in any of `nets` (IPv4-mapped IPv6 addresses count as IPv4).
pub fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

/// Whether a request for `path` is in maintenance: the site's maintenance is
/// on and the path matches (no `paths` means the whole site), or every server
/// of its backend is in `maint`.
pub fn in_maintenance(
    enabled: bool,
    paths: Option<&RegexSet>,
    path: &str,
    all_servers_maint: bool,
) -> bool {
    all_servers_maint || (enabled && paths.is_none_or(|p| p.is_match(path)))
}

/// Whether a site's maintenance switch is on at this moment: `enabled`,
/// and inside its scheduled window (`from`/`until`, Unix seconds) when one
/// is set. `now_ms` (Unix milliseconds) is read only for a window.
pub fn switched_on(
    enabled: bool,
    from: Option<u64>,
    until: Option<u64>,
    now_ms: impl FnOnce() -> u64,
) -> bool {
    if !enabled {
        return false;
    }
    if from.is_none() && until.is_none() {
        return true;
    }
    let now = now_ms();
    from.is_none_or(|f| now >= f.saturating_mul(1000))
        && until.is_none_or(|u| now < u.saturating_mul(1000))
}

/// Whether a switched-on maintenance has reached the end of its window
/// (`now` in Unix seconds): it is then switched off for good.
pub fn window_over(enabled: bool, until: Option<u64>, now: u64) -> bool {
    enabled && until.is_some_and(|u| now >= u)
}

/// Whether a request bypasses maintenance, and why. `now` (Unix seconds)
/// is called only to check a token's expiry: most requests answered with
/// the maintenance page carry none, and then the clock is not read.
pub fn bypass(
    client: IpAddr,
    allow: &[IpNet],
    cookie: Option<&[u8]>,
    key: &bypass::Key,
    site: &str,
    now: impl FnOnce() -> u64,
) -> Option<Bypass> {
    if cookie == Some(PREVIEW_VALUE) {
        return None;
    }
    if contains(allow, client) {
        return Some(Bypass::Allow);
    }
    cookie
        .filter(|c| bypass::verify(key, site, c, now()))
        .map(|_| Bypass::Token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let trusted = nets(&["10.0.0.0/8"]);
        let xff: [&[u8]; 1] = [b"198.51.100.1, 10.1.1.1"];
        assert_eq!(
            client_ip(ip("203.0.113.9"), &trusted, xff.into_iter()),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &trusted, xff.into_iter()),
            ip("198.51.100.1")
        );
        // Right-most untrusted wins: a client cannot prepend its way in.
        let xff: [&[u8]; 2] = [b"192.0.2.66", b"198.51.100.1"];
        assert_eq!(
            client_ip(ip("10.0.0.1"), &trusted, xff.into_iter()),
            ip("198.51.100.1")
        );
        let garbage: [&[u8]; 1] = [b"nonsense"];
        assert_eq!(
            client_ip(ip("10.0.0.1"), &trusted, garbage.into_iter()),
            ip("10.0.0.1")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &trusted, std::iter::empty()),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn maintenance_by_switch_paths_or_all_servers_maint() {
        let p = RegexSet::new(["^/checkout"]).unwrap();
        assert!(!in_maintenance(false, None, "/", false));
        assert!(in_maintenance(true, None, "/", false));
        assert!(in_maintenance(true, Some(&p), "/checkout/pay", false));
        assert!(!in_maintenance(true, Some(&p), "/shop", false));
        assert!(in_maintenance(false, Some(&p), "/shop", true));
    }

    #[test]
    fn a_window_switches_maintenance_on_and_off_by_the_clock() {
        let clock_unread = || -> u64 { panic!("no window: the clock is not read") };
        assert!(switched_on(true, None, None, clock_unread));
        assert!(!switched_on(false, None, None, clock_unread));
        assert!(!switched_on(false, Some(10), Some(20), clock_unread));
        let at = |ms: u64| switched_on(true, Some(10), Some(20), move || ms);
        assert!(!at(9_999), "before from");
        assert!(at(10_000), "at from");
        assert!(at(19_999));
        assert!(!at(20_000), "at until");
        assert!(switched_on(true, None, Some(20), || 5_000));
        assert!(!switched_on(true, None, Some(20), || 25_000));
        assert!(!switched_on(true, Some(10), None, || 5_000));
        assert!(switched_on(true, Some(10), None, || u64::MAX));
        assert!(!window_over(true, Some(20), 19));
        assert!(window_over(true, Some(20), 20));
        assert!(!window_over(true, None, u64::MAX));
        assert!(!window_over(false, Some(20), 30));
    }

    #[test]
    fn bypass_rules() {
        let key = bypass::Key::derive(b"k");
        let allow = nets(&["127.0.0.2/32"]);
        let tok = bypass::issue(&key, "app", 100);
        let b = |client: &str, cookie: Option<&[u8]>| {
            bypass(ip(client), &allow, cookie, &key, "app", || 50)
        };
        assert_eq!(b("127.0.0.2", None), Some(Bypass::Allow));
        assert_eq!(b("::ffff:127.0.0.2", None), Some(Bypass::Allow));
        assert_eq!(b("127.0.0.2", Some(b"off")), None, "preview");
        assert_eq!(b("127.0.0.1", None), None);
        assert_eq!(b("127.0.0.1", Some(tok.as_bytes())), Some(Bypass::Token));
        assert_eq!(b("127.0.0.1", Some(b"forged.token")), None);
        assert_eq!(
            bypass(
                ip("127.0.0.1"),
                &[],
                Some(tok.as_bytes()),
                &key,
                "app",
                || 100
            ),
            None,
            "expired"
        );
        assert_eq!(
            bypass(ip("127.0.0.1"), &[], None, &key, "app", || 1),
            None,
            "empty allow list allows nobody"
        );
    }

    #[test]
    fn bypass_reads_the_clock_only_for_a_token() {
        let key = bypass::Key::derive(b"k");
        let allow = nets(&["127.0.0.2/32"]);
        let reads = std::cell::Cell::new(0);
        let now = || {
            reads.set(reads.get() + 1);
            50
        };
        assert_eq!(
            bypass(ip("127.0.0.1"), &allow, None, &key, "app", now),
            None
        );
        assert_eq!(
            bypass(ip("127.0.0.2"), &allow, Some(b"x.y"), &key, "app", now),
            Some(Bypass::Allow)
        );
        assert_eq!(
            bypass(ip("127.0.0.1"), &allow, Some(b"off"), &key, "app", now),
            None
        );
        assert_eq!(reads.get(), 0);
        let tok = bypass::issue(&key, "app", 100);
        assert_eq!(
            bypass(
                ip("127.0.0.1"),
                &allow,
                Some(tok.as_bytes()),
                &key,
                "app",
                now
            ),
            Some(Bypass::Token)
        );
        assert_eq!(reads.get(), 1);
    }
}
