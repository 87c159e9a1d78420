//! Header edits on the proxied request and response.
//!
//! Pingora's `RequestHeader` and `ResponseHeader` keep a second map with
//! the original case of every header name, and each insert through them
//! parses the name again and grows both maps. drawbridge edits the plain
//! `http::HeaderMap` instead: it takes the parts out, reserves room once,
//! inserts with constant names and puts the parts back without the case
//! map. Names then go out in canonical case (`Content-Type` for standard
//! headers, lower case for the others), as HTTP/1.1 allows (field names are
//! case-insensitive, RFC 9110 §5.1) and as HAProxy sends them. The request
//! target, reason phrase and extensions are kept exactly.

use http::header::{Entry, HeaderMap, HeaderName, HeaderValue, COOKIE};
use pingora_http::{RequestHeader, ResponseHeader};
use smallvec::SmallVec;
use std::cell::RefCell;
use std::net::IpAddr;

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

fn empty_request_parts() -> http::request::Parts {
    http::Request::new(()).into_parts().0
}

fn empty_response_parts() -> http::response::Parts {
    http::Response::new(()).into_parts().0
}

/// Edit the headers of `req` as a plain map, with room for `extra` more.
pub fn edit_request<R>(
    req: &mut RequestHeader,
    extra: usize,
    edit: impl FnOnce(&mut HeaderMap) -> R,
) -> R {
    // The request target is normally rebuilt from the URI; keep the raw
    // bytes when they differ (absolute form, bytes that are not UTF-8).
    let from_uri = req
        .uri
        .path_and_query()
        .map_or(&b""[..], |p| p.as_str().as_bytes());
    let raw =
        (!req.raw_path_is_utf8() || req.raw_path() != from_uri).then(|| req.raw_path().to_vec());
    let taken = std::mem::replace(req, RequestHeader::from(empty_request_parts()));
    let mut parts = http::request::Parts::from(taken);
    parts.headers.reserve(extra);
    let out = edit(&mut parts.headers);
    *req = RequestHeader::from(parts);
    if let Some(raw) = raw {
        // It was accepted as this request's target already.
        if let Err(e) = req.set_raw_path(&raw) {
            log::debug!("cannot restore the request target: {e}");
        }
    }
    out
}

/// Edit the headers of `resp` as a plain map, with room for `extra` more.
pub fn edit_response<R>(
    resp: &mut ResponseHeader,
    extra: usize,
    edit: impl FnOnce(&mut HeaderMap) -> R,
) -> R {
    // Pingora keeps only a reason that differs from the standard one.
    let reason = resp
        .get_reason_phrase()
        .filter(|r| Some(*r) != resp.status.canonical_reason())
        .map(str::to_owned);
    let taken = std::mem::replace(resp, ResponseHeader::from(empty_response_parts()));
    let mut parts = http::response::Parts::from(taken);
    parts.headers.reserve(extra);
    let out = edit(&mut parts.headers);
    *resp = ResponseHeader::from(parts);
    if let Some(reason) = reason {
        // It came from the upstream's status line, so it is valid.
        if let Err(e) = resp.set_reason_phrase(Some(&reason)) {
            log::debug!("cannot keep the reason phrase: {e}");
        }
    }
    out
}

/// Set `X-Forwarded-For` to the values that came before (joined into one
/// list) followed by `peer`. Without a peer address the header is left as
/// it is.
pub fn append_forwarded_for(h: &mut HeaderMap, peer: Option<IpAddr>) {
    let Some(ip) = peer else { return };
    match h.entry(X_FORWARDED_FOR) {
        Entry::Vacant(e) => {
            if let Some(v) = forwarded_value(ip) {
                e.insert(v);
            }
        }
        Entry::Occupied(mut e) => {
            let mut xff: SmallVec<[u8; 64]> = SmallVec::new();
            for prev in e.iter() {
                xff.extend_from_slice(prev.as_bytes());
                xff.extend_from_slice(b", ");
            }
            crate::wire::push_ip(&mut xff, ip);
            // Valid values joined by ", ": still a valid value.
            if let Ok(v) = HeaderValue::from_bytes(&xff) {
                e.insert(v);
            }
        }
    }
}

thread_local! {
    /// The last `X-Forwarded-For` value made on this thread from a request
    /// without one: consecutive requests mostly come from one client (a
    /// keep-alive connection) or one load balancer, and a shared copy is
    /// cheaper than a new one.
    static LAST_FORWARDED: RefCell<Option<(IpAddr, HeaderValue)>> = const { RefCell::new(None) };
}

/// `ip` as a header value.
fn forwarded_value(ip: IpAddr) -> Option<HeaderValue> {
    let make = || {
        let mut text: SmallVec<[u8; 64]> = SmallVec::new();
        crate::wire::push_ip(&mut text, ip);
        HeaderValue::from_bytes(&text).ok()
    };
    LAST_FORWARDED
        .try_with(|last| {
            let Ok(mut last) = last.try_borrow_mut() else {
                return make();
            };
            match &*last {
                Some((seen, v)) if *seen == ip => Some(v.clone()),
                _ => {
                    let v = make()?;
                    *last = Some((ip, v.clone()));
                    Some(v)
                }
            }
        })
        .unwrap_or_else(|_| make())
}

/// Remove the cookies named in `names` from the `Cookie` headers; a header
/// left empty is removed. Headers without those cookies are kept as they
/// are.
/// Duplicate `Content-Length` values that agree (two header lines, or a
/// list such as `5, 5`) replaced by one, as RFC 9110 section 8.6 asks of a
/// proxy; values that disagree were refused by Pingora already. Returns
/// whether anything changed.
pub fn single_content_length(h: &mut HeaderMap) -> bool {
    use http::header::CONTENT_LENGTH;
    let mut values = h.get_all(CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return false;
    };
    if values.next().is_none() && !first.as_bytes().contains(&b',') {
        return false;
    }
    let mut agreed: Option<Vec<u8>> = None;
    for v in h.get_all(CONTENT_LENGTH) {
        for part in v.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            match &agreed {
                _ if part.is_empty() => {}
                None => agreed = Some(part.to_vec()),
                Some(a) if a == part => {}
                Some(_) => return false,
            }
        }
    }
    match agreed.and_then(|a| HeaderValue::from_bytes(&a).ok()) {
        Some(v) => {
            h.insert(CONTENT_LENGTH, v);
            true
        }
        None => false,
    }
}

pub fn strip_cookies(h: &mut HeaderMap, names: &[&str]) {
    let Entry::Occupied(mut entry) = h.entry(COOKIE) else {
        return;
    };
    let edited: SmallVec<[Option<Vec<u8>>; 2]> = entry
        .iter()
        .map(|v| super::sticky::strip(v.as_bytes(), names))
        .collect();
    if edited.iter().all(Option::is_none) {
        return;
    }
    if let [Some(only)] = &edited[..] {
        // One Cookie header, the usual case: replace it in place.
        // Pieces of a valid header value, joined by "; ", are valid.
        if only.is_empty() {
            entry.remove();
        } else if let Ok(v) = HeaderValue::from_bytes(only) {
            entry.insert(v);
        }
        return;
    }
    let old: SmallVec<[HeaderValue; 2]> = entry.remove_entry_mult().1.collect();
    for (old, new) in old.into_iter().zip(edited) {
        match new {
            None => {
                h.append(COOKIE, old);
            }
            Some(v) if v.is_empty() => {}
            Some(v) => {
                if let Ok(v) = HeaderValue::from_bytes(&v) {
                    h.append(COOKIE, v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_content_lengths_become_one() {
        use http::header::CONTENT_LENGTH;
        let map = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(
                    CONTENT_LENGTH,
                    HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("x")),
                );
            }
            h
        };
        let mut two = map(&["5", "5"]);
        assert!(single_content_length(&mut two));
        assert_eq!(
            two.get_all(CONTENT_LENGTH).iter().collect::<Vec<_>>(),
            ["5"]
        );
        let mut list = map(&["5, 5"]);
        assert!(single_content_length(&mut list));
        assert_eq!(
            list.get_all(CONTENT_LENGTH).iter().collect::<Vec<_>>(),
            ["5"]
        );
        for unchanged in [&["5"][..], &[], &["5", "6"], &["5, 6"]] {
            let mut h = map(unchanged);
            assert!(!single_content_length(&mut h), "{unchanged:?}");
            assert_eq!(h.get_all(CONTENT_LENGTH).iter().count(), unchanged.len());
        }
    }
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn ip_text() {
        for ip in [
            Ipv4Addr::new(0, 0, 0, 0),
            Ipv4Addr::new(127, 0, 0, 1),
            Ipv4Addr::new(10, 99, 100, 255),
            Ipv4Addr::new(192, 168, 9, 10),
        ] {
            let mut out: SmallVec<[u8; 64]> = SmallVec::new();
            crate::wire::push_ip(&mut out, IpAddr::V4(ip));
            assert_eq!(std::str::from_utf8(&out).unwrap(), ip.to_string());
        }
        let mut out = Vec::new();
        crate::wire::push_ip(&mut out, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(&out[..], b"::1");
    }

    #[test]
    fn forwarded_for_joins_earlier_values() {
        let peer = Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)));
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, peer);
        assert_eq!(h.get_all(X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(h[X_FORWARDED_FOR], "10.1.2.3");

        let mut h = HeaderMap::new();
        h.append(
            X_FORWARDED_FOR,
            HeaderValue::from_static("1.1.1.1, 2.2.2.2"),
        );
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("3.3.3.3"));
        append_forwarded_for(&mut h, peer);
        assert_eq!(h.get_all(X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(h[X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3");

        append_forwarded_for(&mut h, None);
        assert_eq!(h[X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3");
    }

    #[test]
    fn forwarded_for_of_alternating_clients() {
        for ip in ["10.0.0.1", "10.0.0.2", "10.0.0.2", "::1", "10.0.0.1"] {
            let mut h = HeaderMap::new();
            append_forwarded_for(&mut h, Some(ip.parse().unwrap()));
            assert_eq!(h[X_FORWARDED_FOR], ip);
        }
    }

    #[test]
    fn request_edit_keeps_target_and_drops_case_map() {
        let mut req = RequestHeader::build("GET", b"/a%20b?x=1", None).unwrap();
        req.insert_header("Host", "example.com").unwrap();
        req.insert_header("X-Custom", "1").unwrap();
        let n = edit_request(&mut req, 1, |h| {
            h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
            h.len()
        });
        assert_eq!(n, 3);
        assert_eq!(req.raw_path(), b"/a%20b?x=1");
        assert_eq!(req.method, http::Method::GET);
        let mut wire = Vec::new();
        req.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        assert!(wire.contains("Host: example.com\r\n"), "{wire}");
        assert!(wire.contains("x-custom: 1\r\n"), "{wire}");
        assert!(wire.contains("x-forwarded-proto: http\r\n"), "{wire}");
    }

    #[test]
    fn request_edit_keeps_a_raw_target() {
        let mut req = RequestHeader::build("GET", b"/caf\xe9", None).unwrap();
        assert!(!req.raw_path_is_utf8());
        edit_request(&mut req, 0, |_| ());
        assert_eq!(req.raw_path(), b"/caf\xe9");
    }

    #[test]
    fn response_edit_keeps_reason() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.set_reason_phrase(Some("Fine")).unwrap();
        resp.insert_header("Content-Length", "0").unwrap();
        edit_response(&mut resp, 1, |h| {
            h.insert(COOKIE, HeaderValue::from_static("a=1"));
        });
        assert_eq!(resp.get_reason_phrase(), Some("Fine"));
        assert_eq!(resp.status, 200);
        assert_eq!(resp.headers.len(), 2);
    }

    #[test]
    fn cookie_stripping() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; SERVERID=x"));
        h.append(COOKIE, HeaderValue::from_static("SERVERID=y"));
        h.append(COOKIE, HeaderValue::from_static("b=2"));
        strip_cookies(&mut h, &["SERVERID", "BYPASS"]);
        let got: Vec<_> = h.get_all(COOKIE).iter().map(|v| v.as_bytes()).collect();
        assert_eq!(got, vec![&b"a=1"[..], &b"b=2"[..]]);
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1"));
        strip_cookies(&mut h, &["SERVERID"]);
        assert_eq!(h.get(COOKIE).unwrap(), "a=1");
        // One header: edited in place, or removed when nothing is left.
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("SERVERID=x; a=1"));
        strip_cookies(&mut h, &["SERVERID"]);
        assert_eq!(h.get_all(COOKIE).iter().count(), 1);
        assert_eq!(h.get(COOKIE).unwrap(), "a=1");
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("SERVERID=x"));
        h.append(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        strip_cookies(&mut h, &["SERVERID"]);
        assert!(h.get(COOKIE).is_none());
        assert_eq!(h.len(), 1);
    }
}
