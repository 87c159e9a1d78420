//! Whether a browser request comes from the admin listener's own page
//! (CONTRACT section 14): a change whose `Origin` names another site is a
//! cross-site request and is refused, whatever credentials it carries.

/// Whether `origin` (the `Origin` header) names the same host and port as
/// `host` (the `Host` header the request was addressed to). `null`, an
/// origin without a scheme, or a missing `Host` never match.
pub fn same_origin(origin: &[u8], host: Option<&[u8]>) -> bool {
    let Some(host) = host.map(<[u8]>::trim_ascii).filter(|h| !h.is_empty()) else {
        return false;
    };
    let origin = origin.trim_ascii();
    let rest = origin
        .strip_prefix(b"http://")
        .or_else(|| origin.strip_prefix(b"https://"));
    match rest {
        Some(authority) => authority.eq_ignore_ascii_case(host),
        None => false,
    }
}

/// Whether a request is refused as cross-site: it changes something (any
/// method but GET and HEAD) and carries an `Origin` that is not the
/// listener's own. Without `Origin` (a command-line client) it is not.
pub fn cross_site(changes: bool, origin: Option<&[u8]>, host: Option<&[u8]>) -> bool {
    changes && origin.is_some_and(|o| !same_origin(o, host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_host_and_port_match() {
        let host = Some(&b"127.0.0.1:9090"[..]);
        assert!(same_origin(b"http://127.0.0.1:9090", host));
        assert!(same_origin(b"https://127.0.0.1:9090", host));
        assert!(same_origin(
            b"http://Admin.Example:9090",
            Some(b"admin.example:9090")
        ));
        assert!(same_origin(b"http://[::1]:9090", Some(b"[::1]:9090")));
    }

    #[test]
    fn other_sites_ports_and_null_do_not_match() {
        let host = Some(&b"127.0.0.1:9090"[..]);
        assert!(!same_origin(b"http://evil.example", host));
        assert!(!same_origin(b"http://127.0.0.1:8080", host));
        assert!(!same_origin(b"http://127.0.0.1:9090.evil.example", host));
        assert!(!same_origin(b"null", host));
        assert!(!same_origin(b"127.0.0.1:9090", host));
        assert!(!same_origin(b"http://127.0.0.1:9090", None));
        assert!(!same_origin(b"http://", Some(b"")));
    }

    #[test]
    fn only_changes_with_a_foreign_origin_are_cross_site() {
        let host = Some(&b"127.0.0.1:9090"[..]);
        assert!(cross_site(true, Some(b"http://evil.example"), host));
        assert!(!cross_site(false, Some(b"http://evil.example"), host));
        assert!(!cross_site(true, Some(b"http://127.0.0.1:9090"), host));
        assert!(!cross_site(true, None, host));
    }
}
