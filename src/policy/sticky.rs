//! Sticky-session cookies: the opaque server ids, reading a cookie out of
//! `Cookie` headers, removing ours before the request goes upstream, and the
//! `Set-Cookie` value. Pure functions over strings, tested without sockets.

use crate::config::{Secure, Sticky};
use smallvec::SmallVec;

/// The `name` and `value` of one `Cookie` piece (already trimmed), or
/// `None` for a malformed piece without `=` (skipped, as browsers do).
fn pair(piece: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = piece.iter().position(|&b| b == b'=')?;
    let (name, value) = (trim(&piece[..eq]), trim(&piece[eq + 1..]));
    let value = value
        .strip_prefix(b"\"")
        .and_then(|v| v.strip_suffix(b"\""))
        .unwrap_or(value);
    Some((name, value))
}

fn trim(s: &[u8]) -> &[u8] {
    let (start, end) = trim_bounds(s);
    &s[start..end]
}

/// Where `s` starts and ends without surrounding whitespace.
fn trim_bounds(s: &[u8]) -> (usize, usize) {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    (start, end)
}

/// What one pass over the `Cookie` headers found.
#[derive(Debug, PartialEq, Eq)]
pub struct Found<'a, const N: usize> {
    /// The first value of each cookie looked for.
    pub values: [Option<&'a [u8]>; N],
    /// Whether the headers hold anything else: other cookies, or pieces
    /// that are not `name=value` (which [`strip`] keeps as well).
    pub others: bool,
}

/// The first value of each cookie in `names` (`None` names are not looked
/// for), in one pass over the `Cookie` header values, and whether anything
/// else is there.
pub fn find_each<'a, const N: usize>(
    headers: impl IntoIterator<Item = &'a [u8]>,
    names: [Option<&str>; N],
) -> Found<'a, N> {
    let mut found = Found {
        values: [None; N],
        others: false,
    };
    let mut missing = names.iter().filter(|n| n.is_some()).count();
    for h in headers {
        for piece in h.split(|&b| b == b';') {
            let piece = trim(piece);
            if piece.is_empty() {
                continue;
            }
            let mut named = false;
            if let Some((n, v)) = pair(piece) {
                for (slot, name) in found.values.iter_mut().zip(&names) {
                    if name.is_some_and(|name| name.as_bytes() == n) {
                        named = true;
                        if slot.is_none() {
                            *slot = Some(v);
                            missing -= 1;
                        }
                    }
                }
            }
            found.others |= !named;
            if missing == 0 && found.others {
                return found;
            }
        }
    }
    found
}

/// The `Cookie` header value without the cookies named in `drop`, or `None`
/// when none of them is present (the header is then left untouched). An
/// empty result means the header should be removed. One pass: the kept
/// pieces are remembered and joined only when something was dropped.
pub fn strip(header: &[u8], drop: &[&str]) -> Option<Vec<u8>> {
    let mut kept: SmallVec<[(usize, usize); 8]> = SmallVec::new();
    let mut dropped = false;
    let mut start = 0;
    for piece in header.split(|&b| b == b';') {
        let at = start;
        start += piece.len() + 1;
        let (from, to) = trim_bounds(piece);
        let trimmed = &piece[from..to];
        if trimmed.is_empty() {
            continue;
        }
        // Named as find_each names it, so both agree on what is ours.
        let named = pair(trimmed).is_some_and(|(n, _)| drop.iter().any(|d| d.as_bytes() == n));
        if named {
            dropped = true;
        } else {
            kept.push((at + from, at + to));
        }
    }
    if !dropped {
        return None;
    }
    if kept.is_empty() {
        return Some(Vec::new());
    }
    let mut out = Vec::with_capacity(header.len());
    for (i, &(from, to)) in kept.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(&header[from..to]);
    }
    Some(out)
}

/// The `Set-Cookie` value that pins a client to the server with `id`;
/// `tls`: the request came over TLS (for `secure: auto`).
pub fn set_cookie(sticky: &Sticky, id: &str, tls: bool) -> String {
    let mut v = format!("{}={id}; Path=/", sticky.cookie);
    if let Some(age) = sticky.max_age {
        v.push_str(&format!("; Max-Age={age}"));
    }
    if sticky.http_only {
        v.push_str("; HttpOnly");
    }
    let secure = match sticky.secure {
        Secure::Always => true,
        Secure::Never => false,
        Secure::Auto => tls,
    };
    if secure {
        v.push_str("; Secure");
    }
    if let Some(ss) = &sticky.same_site {
        v.push_str("; SameSite=");
        v.push_str(ss);
    }
    v
}

/// Whether a response's `Cache-Control` already keeps shared caches from
/// storing it, so `private` need not be added.
pub fn forbids_shared_cache(cache_control: &[u8]) -> bool {
    cache_control.split(|&b| b == b',').any(|d| {
        let d = trim(d);
        let name = d.split(|&b| b == b'=').next().unwrap_or(d);
        name.eq_ignore_ascii_case(b"private") || name.eq_ignore_ascii_case(b"no-store")
    })
}

/// The `Cache-Control` a response gets when it pins a client with
/// `Set-Cookie`, so that no shared cache hands the cookie to others:
/// `private` added (and `public` removed), unless the server's value
/// (`current`) already forbids shared caching. `None`: keep `current`.
pub fn pinned_cache_control(current: Option<&[u8]>) -> Option<String> {
    let Some(current) = current else {
        return Some("private".to_string());
    };
    if forbids_shared_cache(current) {
        return None;
    }
    let kept: Vec<&str> = std::str::from_utf8(current)
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty() && !d.eq_ignore_ascii_case("public"))
        .collect();
    let mut value = kept.join(", ");
    if !value.is_empty() {
        value.push_str(", ");
    }
    value.push_str("private");
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first value of cookie `name` across all given `Cookie` values.
    fn find<'a>(headers: impl IntoIterator<Item = &'a [u8]>, name: &str) -> Option<&'a [u8]> {
        let [v] = find_each(headers, [Some(name)]).values;
        v
    }

    fn sticky() -> Sticky {
        Sticky {
            cookie: "SERVERID".into(),
            http_only: true,
            secure: Secure::Auto,
            same_site: Some("Lax".into()),
            max_age: None,
        }
    }

    #[test]
    fn pinned_responses_are_kept_from_shared_caches() {
        assert_eq!(pinned_cache_control(None).as_deref(), Some("private"));
        assert_eq!(
            pinned_cache_control(Some(b"public, max-age=60")).as_deref(),
            Some("max-age=60, private")
        );
        assert_eq!(
            pinned_cache_control(Some(b"PUBLIC")).as_deref(),
            Some("private")
        );
        assert_eq!(pinned_cache_control(Some(b"no-store")), None);
        assert_eq!(pinned_cache_control(Some(b"max-age=5, Private")), None);
        assert_eq!(
            pinned_cache_control(Some(b"no-cache")).as_deref(),
            Some("no-cache, private")
        );
    }

    #[test]
    fn ids_are_stable_opaque_and_distinct() {
        use crate::config::server_id;
        let a = server_id("app", "app-01");
        assert_eq!(a, server_id("app", "app-01"));
        assert_eq!(a.len(), 16);
        assert_ne!(a, server_id("app", "app-02"));
        assert_ne!(a, server_id("other", "app-01"));
        // The separator keeps ("ab","c") apart from ("a","bc").
        assert_ne!(server_id("ab", "c"), server_id("a", "bc"));
    }

    #[test]
    fn finds_cookie_across_headers_and_ignores_garbage() {
        let h1: &[u8] = b"a=1; garbage; SERVERID=\"abc\"";
        let h2: &[u8] = b"SERVERID=zzz";
        assert_eq!(find([h1, h2], "SERVERID"), Some(&b"abc"[..]));
        assert_eq!(find([h2, h1], "SERVERID"), Some(&b"zzz"[..]));
        assert_eq!(find([&b";;;==;"[..]], "SERVERID"), None);
        assert_eq!(find([&b"XSERVERID=1"[..]], "SERVERID"), None);
        assert_eq!(find([&b"SERVERID="[..]], "SERVERID"), Some(&b""[..]));
    }

    #[test]
    fn finds_several_cookies_in_one_pass() {
        let h1: &[u8] = b"B=1; S=first";
        let h2: &[u8] = b"S=second; =empty; C=3";
        let names = [Some("S"), Some("B"), None, Some("C"), Some("Z")];
        assert_eq!(
            find_each([h1, h2], names).values,
            [
                Some(&b"first"[..]),
                Some(&b"1"[..]),
                None,
                Some(&b"3"[..]),
                None
            ]
        );
        // A missing name never matches the empty cookie name.
        assert_eq!(
            find_each([&b"=x"[..]], [None, Some("")]).values,
            [None, Some(&b"x"[..])]
        );
    }

    #[test]
    fn tells_whether_other_cookies_are_there() {
        let names = [Some("S"), Some("B")];
        let only_ours: [&[u8]; 2] = [b" S=1 ;B=2; ", b"S=3"];
        assert!(!find_each(only_ours, names).others);
        // As strip() counts them: any other piece is kept.
        for other in [&b"S=1; a=2"[..], b"S=1; flag", b"=x; S=1", b"S"] {
            assert!(find_each([other], names).others, "{other:?}");
            let dropped = strip(other, &["S", "B"]);
            assert_ne!(dropped.as_deref(), Some(&b""[..]), "{other:?}");
        }
        assert_eq!(strip(b" S=1 ;B=2; ", &["S", "B"]), Some(Vec::new()));
        // Found early: other cookies and every name, wherever they are.
        let f = find_each([&b"x=1; B=2; S=3; S=4"[..]], names);
        assert_eq!(f.values, [Some(&b"3"[..]), Some(&b"2"[..])]);
        assert!(f.others);
    }

    #[test]
    fn strips_only_named_cookies() {
        assert_eq!(strip(b"a=1; b=2", &["SERVERID"]), None);
        assert_eq!(
            strip(
                b"a=1; SERVERID=x; b=2;DRAWBRIDGE_BYPASS=t",
                &["SERVERID", "DRAWBRIDGE_BYPASS"]
            ),
            Some(b"a=1; b=2".to_vec())
        );
        assert_eq!(strip(b"SERVERID=x", &["SERVERID"]), Some(Vec::new()));
        assert_eq!(
            strip(b" ;a=1 ;; SERVERID = x ;  flag ; c=\"q\" ", &["SERVERID"]),
            Some(b"a=1; flag; c=\"q\"".to_vec())
        );
        // A piece without "=" is not a cookie named SERVERID.
        assert_eq!(strip(b"SERVERID; a=1", &["SERVERID"]), None);
        let many: Vec<u8> = (0..20)
            .map(|i| format!("k{i}=v; "))
            .collect::<String>()
            .into_bytes();
        let mut with_ours = many.clone();
        with_ours.extend_from_slice(b"SERVERID=x");
        assert_eq!(
            strip(&with_ours, &["SERVERID"]),
            Some(many[..many.len() - 2].to_vec())
        );
    }

    #[test]
    fn set_cookie_has_the_configured_attributes() {
        let mut s = sticky();
        assert_eq!(
            set_cookie(&s, "ab", false),
            "SERVERID=ab; Path=/; HttpOnly; SameSite=Lax"
        );
        // secure: auto follows the request.
        assert_eq!(
            set_cookie(&s, "ab", true),
            "SERVERID=ab; Path=/; HttpOnly; Secure; SameSite=Lax"
        );
        s.secure = Secure::Always;
        s.max_age = Some(3600);
        s.http_only = false;
        assert_eq!(
            set_cookie(&s, "ab", false),
            "SERVERID=ab; Path=/; Max-Age=3600; Secure; SameSite=Lax"
        );
        s.secure = Secure::Never;
        assert!(!set_cookie(&s, "ab", true).contains("Secure"));
    }

    #[test]
    fn shared_cache_directives() {
        assert!(forbids_shared_cache(b"no-store"));
        assert!(forbids_shared_cache(b"max-age=0, Private"));
        assert!(!forbids_shared_cache(b"public, max-age=60"));
        assert!(!forbids_shared_cache(b"privateish"));
    }
}
