//! Request smuggling and desync: raw bytes from a client socket, through
//! the real binary, to a raw backend written here that parses every byte
//! it receives and counts the requests in it.
//!
//! For each case of [`CASES`] the client writes its bytes, reads the
//! answer, then (if the connection stayed open) sends a probe request
//! with `Connection: close` on the same connection and reads until the
//! proxy closes it. A smuggled request is one the backend sees that the
//! client did not mean: it shows as a request for `/smuggled`, as more
//! backend requests than the case expects, as the probe swallowed into
//! another request, or as a second answer to the client. Every case is
//! bounded by socket timeouts; nothing waits on a clock to synchronise:
//! the end of a case is the proxy closing the client connection, and a
//! backend request is recorded before the backend answers it, so before
//! the proxy can relay that answer and close.
//!
//! A new case is one line in [`CASES`] (framing, with maintenance, error
//! and no-site answers) or [`ROUTES`] (host routing with a default site).
//! A case that fails is a bug in `src/`: fix it, never the case.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `GET /smuggled` spelled out, for payloads built with `concat!` (42 bytes).
macro_rules! smuggled {
    () => {
        "GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n"
    };
}

const BIN: &str = env!("CARGO_BIN_EXE_drawbridge");
/// The longest any socket read or the proxy start may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The request every smuggling payload tries to slip through.
const SMUGGLED: &str = smuggled!();
/// Sent after the answer when the connection stayed open.
const PROBE: &[u8] = b"GET /__probe HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n";

/// One corpus entry.
struct Case {
    name: &'static str,
    bytes: &'static [u8],
    /// Requests the backend must see (the probe aside).
    backend: usize,
    /// Statuses the client may get (exactly one answer).
    statuses: &'static [u16],
    /// More to check on each request the backend saw.
    check: Option<Check>,
}

/// A case with no extra check.
const fn case(
    name: &'static str,
    bytes: &'static [u8],
    backend: usize,
    statuses: &'static [u16],
) -> Case {
    Case {
        name,
        bytes,
        backend,
        statuses,
        check: None,
    }
}

/// A case whose backend requests must also pass `check`.
const fn checked(
    name: &'static str,
    bytes: &'static [u8],
    backend: usize,
    statuses: &'static [u16],
    check: fn(&Seen) -> Result<(), String>,
) -> Case {
    Case {
        name,
        bytes,
        backend,
        statuses,
        check: Some(check),
    }
}

const OK: &[u16] = &[200];
const BAD: &[u16] = &[400];

/// The corpus. Site `app` (Host `app.test`) goes to the counting backend,
/// with maintenance on paths `^/closed`; site `dead` (Host `dead.test`)
/// to a closed port; any other host has no site (404).
#[rustfmt::skip]
const CASES: &[Case] = &[
    // Baselines: the harness sees legitimate requests as exactly one.
    case("plain GET", b"GET /ok HTTP/1.1\r\nHost: app.test\r\n\r\n", 1, OK),
    case("POST with Content-Length", b"POST /ok HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\r\nhello", 1, OK),
    case("POST chunked", b"POST /ok HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 1, OK),
    checked("a body that looks like a request stays a body", concat!("POST /ok HTTP/1.1\r\nHost: app.test\r\nContent-Length: 42\r\n\r\n", smuggled!()).as_bytes(), 1, OK, body_is_smuggled_text),
    // Content-Length and Transfer-Encoding together: chunked wins
    // (RFC 9112 6.3), the connection is closed after the answer, and what
    // follows the last chunk is never read as a request.
    case("CL.TE: Content-Length covers a request after the last chunk", concat!("POST /ok HTTP/1.1\r\nHost: app.test\r\nContent-Length: 47\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", smuggled!()).as_bytes(), 1, OK),
    checked("TE.CL: the chunk holds a request, Content-Length stops before it", concat!("POST /ok HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n2a\r\n", smuggled!(), "\r\n0\r\n\r\n").as_bytes(), 1, OK, body_is_smuggled_text),
    case("TE before CL, CL covering a request", concat!("POST /ok HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 47\r\n\r\n0\r\n\r\n", smuggled!()).as_bytes(), 1, OK),
    // Content-Length disagreements.
    case("two differing Content-Length headers", concat!("POST /ok HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0\r\nContent-Length: 42\r\n\r\n", smuggled!()).as_bytes(), 0, BAD),
    case("two differing Content-Length, longer first", concat!("POST /ok HTTP/1.1\r\nHost: app.test\r\nContent-Length: 42\r\nContent-Length: 0\r\n\r\n", smuggled!()).as_bytes(), 0, BAD),
    case("Content-Length list with differing values", concat!("POST /ok HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0, 44\r\n\r\n", smuggled!()).as_bytes(), 0, BAD),
    case("Content-Length: +5", b"POST /ok HTTP/1.1\r\nHost: app.test\r\nContent-Length: +5\r\n\r\nhello", 0, BAD),
    case("Content-Length: -5", b"POST /ok HTTP/1.1\r\nHost: app.test\r\nContent-Length: -5\r\n\r\nhello", 0, BAD),
    case("Content-Length in hex", b"POST /ok HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0x5\r\n\r\nhello", 0, BAD),
    case("Content-Length with an inner space", b"POST /ok HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1 0\r\n\r\nhelloworld", 0, BAD),
    case("Content-Length past 64 bits", b"POST /ok HTTP/1.1\r\nHost: app.test\r\nContent-Length: 18446744073709551621\r\n\r\nhello", 0, BAD),
    // Transfer-Encoding spellings.
    case("Transfer-Encoding: chunked, chunked", concat!("POST /ok HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", smuggled!()).as_bytes(), 1, OK),
    case("Transfer-Encoding: gzip, chunked", concat!("POST /ok HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", smuggled!()).as_bytes(), 1, OK),
    case("Transfer-Encoding: chunked, gzip (chunked not last)", concat!("POST /ok HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked, gzip\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", smuggled!()).as_bytes(), 0, BAD),
    case("two Transfer-Encoding headers, identity last", concat!("POST /ok HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", smuggled!()).as_bytes(), 0, BAD),
    case("Transfer-Encoding: xchunked", concat!("POST /ok HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", smuggled!()).as_bytes(), 0, BAD),
    case("Transfer-Encoding: chunkedx", concat!("POST /ok HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunkedx\r\n\r\n0\r\n\r\n", smuggled!()).as_bytes(), 0, BAD),
    case("Transfer-Encoding: CHUNKED (case-insensitive)", concat!("POST /ok HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n", smuggled!()).as_bytes(), 1, OK),
    case("Transfer-Encoding with two spaces before chunked", concat!("POST /ok HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding:  chunked\r\n\r\n0\r\n\r\n", smuggled!()).as_bytes(), 1, OK),
    case("Transfer-Encoding with a tab before chunked", concat!("POST /ok HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n", smuggled!()).as_bytes(), 1, OK),
    case("Transfer-Encoding with a tab after chunked", concat!("POST /ok HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\t\r\n\r\n0\r\n\r\n", smuggled!()).as_bytes(), 1, OK),
    case("Transfer-Encoding with a vertical tab before chunked", concat!("POST /ok HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: \x0bchunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", smuggled!()).as_bytes(), 0, BAD),
    case("Transfer-Encoding with a form feed before chunked", concat!("POST /ok HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: \x0cchunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", smuggled!()).as_bytes(), 0, BAD),
    case("space before the colon of Transfer-Encoding", concat!("POST /ok HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", smuggled!()).as_bytes(), 0, BAD),
    case("Transfer-Encoding line starting with a space", concat!("POST /ok HTTP/1.1\r\nHost: app.test\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", smuggled!()).as_bytes(), 0, BAD),
    case("Transfer-Encoding line starting with a tab", concat!("POST /ok HTTP/1.1\r\nHost: app.test\r\n\tTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", smuggled!()).as_bytes(), 0, BAD),
    case("Transfer-Encoding as the first header, after a space", concat!("POST /ok HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: app.test\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", smuggled!()).as_bytes(), 0, BAD),
    case("Transfer-Encoding value folded onto the next line", concat!("POST /ok HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", smuggled!()).as_bytes(), 0, BAD),
    // Chunked body framing.
    case("chunk extension", b"POST /ok HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n0\r\n\r\n", 1, OK),
    case("chunk size with leading zeros", b"POST /ok HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n0005\r\nhello\r\n0\r\n\r\n", 1, OK),
    case("chunk longer than its size", concat!("POST /ok HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n", smuggled!()).as_bytes(), 0, BAD),
    case("chunk size past 64 bits", concat!("POST /ok HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n", smuggled!()).as_bytes(), 0, BAD),
    // Line endings.
    case("bare LF line endings", b"GET /ok HTTP/1.1\nHost: app.test\n\n", 1, OK),
    case("bare LF line endings with a body and a request after it", concat!("POST /ok HTTP/1.1\nHost: app.test\nContent-Length: 5\n\nhello", smuggled!()).as_bytes(), 1, OK),
    checked("bare LF hiding Content-Length inside another header's line", concat!("POST /ok HTTP/1.1\r\nHost: app.test\r\nX-Pad: a\nContent-Length: 42\r\n\r\n", smuggled!()).as_bytes(), 1, OK, body_is_smuggled_text),
    case("bare CR inside a header line", concat!("POST /ok HTTP/1.1\r\nHost: app.test\r\nX-Pad: a\rContent-Length: 42\r\n\r\n", smuggled!()).as_bytes(), 0, BAD),
    // Obsolete line folding.
    case("obs-fold: a header continued on a line starting with a space", b"GET /ok HTTP/1.1\r\nHost: app.test\r\nX-Long: part one\r\n part two\r\n\r\n", 0, BAD),
    case("obs-fold: a header continued on a line starting with a tab", b"GET /ok HTTP/1.1\r\nHost: app.test\r\nX-Long: part one\r\n\tpart two\r\n\r\n", 0, BAD),
    // HTTP/1.0 framing.
    case("HTTP/1.0 with Transfer-Encoding", concat!("POST /ok HTTP/1.0\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", smuggled!()).as_bytes(), 0, BAD),
    case("HTTP/1.0 with Transfer-Encoding and Content-Length", concat!("POST /ok HTTP/1.0\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", smuggled!()).as_bytes(), 0, BAD),
    case("HTTP/1.0 with Content-Length", b"POST /ok HTTP/1.0\r\nHost: app.test\r\nContent-Length: 5\r\n\r\nhello", 1, OK),
    // Hop-by-hop nominations of the headers drawbridge sets: refused, so
    // no server ever gets a request without them.
    case("Connection: X-Forwarded-For", b"GET /ok HTTP/1.1\r\nHost: app.test\r\nConnection: X-Forwarded-For\r\n\r\n", 0, BAD),
    case("Connection: keep-alive, x-forwarded-for", b"GET /ok HTTP/1.1\r\nHost: app.test\r\nConnection: keep-alive, x-forwarded-for\r\n\r\n", 0, BAD),
    case("Connection: X-Forwarded-Host", b"GET /ok HTTP/1.1\r\nHost: app.test\r\nConnection: X-Forwarded-Host\r\n\r\n", 0, BAD),
    case("Connection: X-Forwarded-Proto", b"GET /ok HTTP/1.1\r\nHost: app.test\r\nConnection: X-Forwarded-Proto\r\n\r\n", 0, BAD),
    case("Connection: Host", b"GET /ok HTTP/1.1\r\nHost: app.test\r\nConnection: Host\r\n\r\n", 0, BAD),
    case("Connection naming X-Forwarded-For in quotes", b"GET /ok HTTP/1.1\r\nHost: app.test\r\nConnection: \"X-Forwarded-For\"\r\n\r\n", 0, BAD),
    checked("Connection naming another header: it goes, X-Forwarded-* stay", b"GET /ok HTTP/1.1\r\nHost: app.test\r\nConnection: X-Custom\r\nX-Custom: 1\r\n\r\n", 1, OK, forwarded_headers_set),
    checked("a client's own X-Forwarded-For is kept and ours appended", b"GET /ok HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n", 1, OK, forwarded_for_appended),
    // The authority: one Host, agreeing with an absolute target.
    case("two Host headers", b"GET /ok HTTP/1.1\r\nHost: app.test\r\nHost: dead.test\r\n\r\n", 0, BAD),
    case("two identical Host headers", b"GET /ok HTTP/1.1\r\nHost: app.test\r\nHost: app.test\r\n\r\n", 0, BAD),
    case("absolute-URI naming another host than Host", b"GET http://dead.test/ok HTTP/1.1\r\nHost: app.test\r\n\r\n", 0, BAD),
    case("absolute-URI naming the backend's host, Host another site", b"GET http://app.test/ok HTTP/1.1\r\nHost: nosite.test\r\n\r\n", 0, BAD),
    case("absolute-URI with userinfo", b"GET http://app.test@dead.test/ok HTTP/1.1\r\nHost: dead.test\r\n\r\n", 0, BAD),
    checked("absolute-URI agreeing with Host", b"GET http://app.test/ok HTTP/1.1\r\nHost: app.test\r\n\r\n", 1, OK, host_is_app),
    case("absolute-URI of a host without a site, no Host", b"GET http://nosite.test/ok HTTP/1.1\r\n\r\n", 0, &[404]),
    // Answers drawbridge writes itself must consume the body they skip.
    case("maintenance page, Content-Length body holding a request", concat!("POST /closed HTTP/1.1\r\nHost: app.test\r\nContent-Length: 42\r\n\r\n", smuggled!()).as_bytes(), 0, &[503]),
    case("maintenance page, chunked body holding a request", concat!("POST /closed HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n2a\r\n", smuggled!(), "\r\n0\r\n\r\n").as_bytes(), 0, &[503]),
    case("maintenance page, CL.TE", concat!("POST /closed HTTP/1.1\r\nHost: app.test\r\nContent-Length: 47\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", smuggled!()).as_bytes(), 0, &[503]),
    case("no site (404), body holding a request", concat!("POST /ok HTTP/1.1\r\nHost: nosite.test\r\nContent-Length: 42\r\n\r\n", smuggled!()).as_bytes(), 0, &[404]),
    case("no site (404), chunked body holding a request", concat!("POST /ok HTTP/1.1\r\nHost: nosite.test\r\nTransfer-Encoding: chunked\r\n\r\n2a\r\n", smuggled!(), "\r\n0\r\n\r\n").as_bytes(), 0, &[404]),
    case("error page (503), body holding a request", concat!("POST /ok HTTP/1.1\r\nHost: dead.test\r\nContent-Length: 42\r\n\r\n", smuggled!()).as_bytes(), 0, &[503]),
    // RFC 9112 6.3 / RFC 9110 8.6: a recipient of duplicate identical
    // Content-Length values must reject the message or replace them with
    // one value before forwarding; drawbridge forwards one.
    case("two identical Content-Length headers", b"POST /ok HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 1, OK),
    case("Content-Length list of identical values", b"POST /ok HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5, 5\r\n\r\nhello", 1, OK),
    // An HTTP/1 absolute-form target without Host: Pingora forwards it
    // with `Host: app.test` from the target, and drawbridge routes it by
    // that authority too.
    checked("absolute-URI without Host: routed and forwarded by its authority", b"GET http://app.test/ok HTTP/1.1\r\n\r\n", 1, OK, host_is_app),
];

/// Routing with a default site: site `app` (Host `app.test`, maintenance
/// on `^/closed`) on one counting backend, the default site `www` on
/// another. Whatever names
/// the host, the site chosen (its maintenance, allow list, backend) and
/// the Host the server gets must agree.
struct RouteCase {
    name: &'static str,
    bytes: &'static [u8],
    /// Requests backend `app` must see.
    app: usize,
    /// Requests the default site's backend must see.
    www: usize,
    statuses: &'static [u16],
    check: Option<Check>,
}

type Check = fn(&Seen) -> Result<(), String>;

const fn route(
    name: &'static str,
    bytes: &'static [u8],
    app: usize,
    www: usize,
    statuses: &'static [u16],
    check: Option<Check>,
) -> RouteCase {
    RouteCase {
        name,
        bytes,
        app,
        www,
        statuses,
        check,
    }
}

#[rustfmt::skip]
const ROUTES: &[RouteCase] = &[
    route("Host names app", b"GET /ok HTTP/1.1\r\nHost: app.test\r\n\r\n", 1, 0, OK, Some(host_is_app)),
    route("Host in upper case with a port", b"GET /ok HTTP/1.1\r\nHost: APP.TEST:80\r\n\r\n", 1, 0, OK, None),
    route("Host with a trailing dot", b"GET /ok HTTP/1.1\r\nHost: app.test.\r\n\r\n", 1, 0, OK, None),
    route("Host of no site goes to the default site", b"GET /ok HTTP/1.1\r\nHost: other.test\r\n\r\n", 0, 1, OK, Some(host_is_other)),
    route("no Host at all goes to the default site", b"GET /ok HTTP/1.0\r\n\r\n", 0, 1, OK, None),
    route("app's maintenance path", b"GET /closed HTTP/1.1\r\nHost: app.test\r\n\r\n", 0, 0, &[503], None),
    route("absolute-URI agreeing with Host", b"GET http://app.test/ok HTTP/1.1\r\nHost: app.test\r\n\r\n", 1, 0, OK, Some(host_is_app)),
    route("app's maintenance path, absolute-URI agreeing with Host", b"GET http://app.test/closed HTTP/1.1\r\nHost: app.test\r\n\r\n", 0, 0, &[503], None),
    route("absolute-URI naming app, Host naming another", b"GET http://app.test/ok HTTP/1.1\r\nHost: other.test\r\n\r\n", 0, 0, BAD, None),
    route("absolute-URI naming another, Host naming app", b"GET http://other.test/ok HTTP/1.1\r\nHost: app.test\r\n\r\n", 0, 0, BAD, None),
    route("absolute-URI naming app, Host empty", b"GET http://app.test/ok HTTP/1.1\r\nHost: \r\n\r\n", 0, 0, BAD, None),
    route("absolute-URI of no site, no Host, goes to the default site", b"GET http://other.test/ok HTTP/1.1\r\n\r\n", 0, 1, OK, Some(host_is_other)),
    // Pingora keeps an HTTP/1 absolute-form target's authority out of
    // `uri.authority()` and sends it upstream with `Host: app.test`: the
    // router must read the same authority, or the default site's
    // maintenance, allow list and backend would apply.
    route("absolute-URI naming app, no Host: routed as app", b"GET http://app.test/ok HTTP/1.1\r\n\r\n", 1, 0, OK, Some(host_is_app)),
    // The same past app's maintenance: the default site's server gets a
    // request for app's closed path instead of the maintenance page.
    route("absolute-URI of app's maintenance path, no Host: the maintenance page", b"GET http://app.test/closed HTTP/1.1\r\n\r\n", 0, 0, &[503], None),
];

/// The legitimate request's body is the smuggling attempt, as bytes.
fn body_is_smuggled_text(r: &Seen) -> Result<(), String> {
    if r.body == SMUGGLED.as_bytes() {
        Ok(())
    } else {
        Err(format!(
            "body {:?}, expected the request text as a body",
            String::from_utf8_lossy(&r.body)
        ))
    }
}

/// X-Forwarded-For, -Proto and -Host as drawbridge sets them for a
/// loopback client with no trusted proxy.
fn forwarded_headers_set(r: &Seen) -> Result<(), String> {
    let want = [
        ("x-forwarded-for", "127.0.0.1"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "app.test"),
    ];
    for (name, value) in want {
        let got = r.values(name);
        if got != [value] {
            return Err(format!("{name}: {got:?}, expected [{value:?}]"));
        }
    }
    if !r.values("x-custom").is_empty() {
        return Err("X-Custom, named in Connection, reached the server".into());
    }
    Ok(())
}

fn forwarded_for_appended(r: &Seen) -> Result<(), String> {
    let got = r.values("x-forwarded-for").join(", ");
    if got == "203.0.113.9, 127.0.0.1" {
        Ok(())
    } else {
        Err(format!("X-Forwarded-For {got:?}"))
    }
}

fn host_is(r: &Seen, want: &str) -> Result<(), String> {
    let host = r.values("host");
    if host != [want] {
        return Err(format!("Host {host:?}, expected [{want:?}]"));
    }
    let absolute = format!("http://{want}/ok");
    if r.target != "/ok" && r.target != absolute {
        return Err(format!("target {:?}", r.target));
    }
    Ok(())
}

fn host_is_app(r: &Seen) -> Result<(), String> {
    host_is(r, "app.test")
}

fn host_is_other(r: &Seen) -> Result<(), String> {
    host_is(r, "other.test")
}

/// Run `cases` against one proxy on the counting backend; every failure
/// is reported, not only the first.
fn run_corpus(cases: &[Case]) {
    let app = Backend::start();
    let proxy = Proxy::start(&corpus_sites(&app.addr));
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| {
            run_case(
                &proxy.web,
                &[("app", &app, c.backend)],
                c.bytes,
                c.statuses,
                c.check,
            )
            .err()
            .map(|e| format!("- {}: {e}", c.name))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}\nproxy log:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n"),
        proxy.log_tail()
    );
}

fn run_routes(cases: &[RouteCase]) {
    let (app, www) = (Backend::start(), Backend::start());
    let proxy = Proxy::start(&routing_sites(&app.addr, &www.addr));
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| {
            let expect = [("app", &app, c.app), ("www", &www, c.www)];
            run_case(&proxy.web, &expect, c.bytes, c.statuses, c.check)
                .err()
                .map(|e| format!("- {}: {e}", c.name))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}\nproxy log:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n"),
        proxy.log_tail()
    );
}

#[test]
fn the_corpus_reaches_the_backend_as_the_client_meant() {
    run_corpus(CASES);
}

#[test]
fn routing_follows_one_host_consistently() {
    run_routes(ROUTES);
}

/// The harness itself: a smuggled request sent straight to the backend
/// (no proxy) is seen as two requests, then the probe.
#[test]
fn the_backend_counts_what_a_smuggled_request_looks_like() {
    assert_eq!(SMUGGLED.len(), 42, "the corpus's lengths assume 42 bytes");
    let backend = Backend::start();
    let bytes =
        format!("POST /ok HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0\r\n\r\n{SMUGGLED}");
    let got = exchange(&backend.addr, bytes.as_bytes()).expect("exchange with the backend");
    let seen = backend.take();
    let targets: Vec<&str> = seen.requests.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ["/ok", "/smuggled", "/__probe"], "{got:?}");
    assert_eq!(got.answers.len(), 3, "{got:?}");
    // And the run of a case says so.
    let err = run_case(
        &backend.addr,
        &[("raw", &backend, 1)],
        bytes.as_bytes(),
        OK,
        None,
    )
    .expect_err("a smuggled request must fail the case");
    assert!(err.starts_with("SMUGGLED"), "{err}");
}

/// What the client got.
#[derive(Debug, Default)]
struct Exchange {
    /// Status and backend sequence number (X-Seq) of each answer, probe included.
    answers: Vec<(u16, Option<usize>)>,
    probe_sent: bool,
}

/// Send `bytes` to `web`; each backend must then have seen its expected
/// number of requests (the probe aside), none of them smuggled or
/// malformed, and the client exactly one answer with a status in
/// `statuses`.
fn run_case(
    web: &str,
    expect: &[(&str, &Backend, usize)],
    bytes: &[u8],
    statuses: &[u16],
    check: Option<Check>,
) -> Result<(), String> {
    for (_, backend, _) in expect {
        backend.take();
    }
    let got = exchange(web, bytes)?;
    let logs: Vec<(&str, Log, usize)> = expect
        .iter()
        .map(|(label, backend, n)| (*label, backend.take(), *n))
        .collect();
    let is_probe = |seq: Option<usize>| {
        seq.is_some_and(|s| {
            logs.iter()
                .flat_map(|(_, log, _)| &log.requests)
                .any(|r| r.seq == s && r.target == "/__probe")
        })
    };
    let report = || {
        let backends: Vec<String> = logs
            .iter()
            .map(|(label, log, _)| {
                format!(
                    "backend {label} saw {:?}, errors {:?}, unparsed {:?}",
                    log.requests
                        .iter()
                        .map(|r| format!("{} {} (Host {:?})", r.method, r.target, r.values("host")))
                        .collect::<Vec<_>>(),
                    log.errors,
                    log.unparsed
                )
            })
            .collect();
        format!(
            "client got {:?} (probe sent: {}); {}",
            got.answers,
            got.probe_sent,
            backends.join("; ")
        )
    };
    for (label, log, want) in &logs {
        if !log.errors.is_empty() {
            return Err(format!(
                "malformed bytes reached backend {label}: {}",
                report()
            ));
        }
        let mine: Vec<&Seen> = log
            .requests
            .iter()
            .filter(|r| r.target != "/__probe")
            .collect();
        if mine.iter().any(|r| r.target.contains("smuggled")) {
            return Err(format!("SMUGGLED to backend {label}: {}", report()));
        }
        if mine.len() != *want {
            return Err(format!(
                "backend {label} saw {} request(s), expected {want}: {}",
                mine.len(),
                report()
            ));
        }
        if let Some(check) = check {
            for r in &mine {
                check(r).map_err(|e| format!("backend {label}: {e}: {}", report()))?;
            }
        }
    }
    let answers: Vec<u16> = got
        .answers
        .iter()
        .filter(|(_, seq)| !is_probe(*seq))
        .map(|(status, _)| *status)
        .collect();
    if answers.len() != 1 || !statuses.contains(&answers[0]) {
        return Err(format!(
            "client answers {answers:?}, expected one of {statuses:?}: {}",
            report()
        ));
    }
    // The probe is answered at most once: the proxy may also have closed
    // the connection after the answer without saying so.
    if got.answers.iter().filter(|(_, seq)| is_probe(*seq)).count() > 1 {
        return Err(format!("the probe was answered twice: {}", report()));
    }
    Ok(())
}

/// Write `bytes`, read one answer; if the connection stays open, send the
/// probe and read answers until the peer closes.
fn exchange(addr: &str, bytes: &[u8]) -> Result<Exchange, String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|_| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| format!("socket options: {e}"))?;
    let mut writer = stream.try_clone().map_err(|e| format!("clone: {e}"))?;
    writer
        .write_all(bytes)
        .map_err(|e| format!("write the case: {e}"))?;
    let mut reader = BufReader::new(stream);
    let mut got = Exchange::default();
    let first = match read_answer(&mut reader) {
        Ok(Some(a)) => a,
        Ok(None) => return Err("the connection closed without an answer".into()),
        Err(e) => return Err(format!("reading the answer: {e}")),
    };
    got.answers.push((first.status, first.seq));
    if !first.close {
        // Ignored when the proxy closed meanwhile: the reads below end.
        got.probe_sent = writer.write_all(PROBE).is_ok();
    }
    loop {
        match read_answer(&mut reader) {
            Ok(Some(a)) => got.answers.push((a.status, a.seq)),
            Ok(None) => break,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => return Err(format!("reading after the answer: {e} ({got:?})")),
        }
        if got.answers.len() > 8 {
            return Err(format!("answers keep coming: {got:?}"));
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
    Ok(got)
}

struct Answer {
    status: u16,
    seq: Option<usize>,
    close: bool,
}

/// One HTTP/1.1 response; `None` at a clean end of stream.
fn read_answer(r: &mut impl BufRead) -> std::io::Result<Option<Answer>> {
    let bad = |m: String| std::io::Error::new(ErrorKind::InvalidData, m);
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(bad("end of stream inside a response head".into()));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    let close = get("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let seq = get("x-seq").and_then(|v| v.parse().ok());
    if get("transfer-encoding").is_some() {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
            let mut chunk = vec![0; size + 2];
            if size == 0 {
                line.clear();
                r.read_line(&mut line)?;
                break;
            }
            r.read_exact(&mut chunk)?;
        }
    } else if let Some(len) = get("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| bad(format!("bad Content-Length {len:?}")))?;
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
    } else if !(status == 204 || status == 304 || (100..200).contains(&status)) {
        let mut rest = Vec::new();
        r.read_to_end(&mut rest)?;
    }
    Ok(Some(Answer { status, seq, close }))
}

/// One request as the backend parsed it.
#[derive(Debug, Clone)]
struct Seen {
    seq: usize,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[derive(Debug, Default)]
struct Log {
    requests: Vec<Seen>,
    /// Bytes the backend could not parse as HTTP/1.1, per connection.
    errors: Vec<String>,
    /// Bytes waiting for the rest of a request, per open connection.
    unparsed: BTreeMap<usize, usize>,
}

/// Sequence numbers of backend requests, unique across backends.
static NEXT_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A raw HTTP/1.1 server that parses strictly (CRLF only, one
/// Content-Length of digits or `Transfer-Encoding: chunked`, never both)
/// and answers each request `200` with `Content-Length` and its sequence
/// number in `X-Seq`.
struct Backend {
    addr: String,
    log: Arc<Mutex<Log>>,
}

impl Backend {
    fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the backend");
        let addr = listener
            .local_addr()
            .expect("the backend's address")
            .to_string();
        let log = Arc::new(Mutex::new(Log::default()));
        let shared = log.clone();
        std::thread::spawn(move || {
            for (conn, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                let log = shared.clone();
                std::thread::spawn(move || serve(conn, stream, &log));
            }
        });
        Backend { addr, log }
    }

    /// The log so far, emptied.
    fn take(&self) -> Log {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let taken = Log {
            requests: std::mem::take(&mut log.requests),
            errors: std::mem::take(&mut log.errors),
            unparsed: log.unparsed.clone(),
        };
        log.unparsed.retain(|_, n| *n > 0);
        taken
    }
}

fn serve(conn: usize, mut stream: TcpStream, log: &Mutex<Log>) {
    let lock = || log.lock().unwrap_or_else(|p| p.into_inner());
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        loop {
            match parse_request(&buf) {
                Ok(Some((mut req, used))) => {
                    buf.drain(..used);
                    let close = req
                        .values("connection")
                        .iter()
                        .any(|v| v.eq_ignore_ascii_case("close"));
                    let seq = NEXT_SEQ.fetch_add(1, Relaxed);
                    req.seq = seq;
                    {
                        let mut log = lock();
                        log.requests.push(req);
                        log.unparsed.insert(conn, buf.len());
                    }
                    let answer =
                        format!("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Seq: {seq}\r\n\r\nok\n");
                    if stream.write_all(answer.as_bytes()).is_err() || close {
                        let _ = stream.shutdown(Shutdown::Both);
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    lock().errors.push(format!(
                        "connection {conn}: {e} in {:?}",
                        String::from_utf8_lossy(&buf)
                    ));
                    let _ = stream.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
        lock().unparsed.insert(conn, buf.len());
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => {
                lock().unparsed.insert(conn, 0);
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

type Parsed = Result<Option<(Seen, usize)>, String>;

/// One complete request at the start of `buf` and its length; `None`
/// while incomplete.
fn parse_request(buf: &[u8]) -> Parsed {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = &buf[..head_end];
    let text = std::str::from_utf8(head).map_err(|_| "a head that is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    if request_line.contains('\n') || request_line.contains('\r') {
        return Err(format!("bare CR or LF in {request_line:?}"));
    }
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(format!("bad request line {request_line:?}"));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(format!("bad version in {request_line:?}"));
    }
    let mut headers = Vec::new();
    for line in lines {
        if line.contains('\n') || line.contains('\r') {
            return Err(format!("bare CR or LF in {line:?}"));
        }
        if line.starts_with([' ', '\t']) {
            return Err(format!("obs-fold {line:?}"));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("header without a colon {line:?}"))?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("bad header name {name:?}"));
        }
        headers.push((
            name.to_string(),
            value.trim_matches([' ', '\t']).to_string(),
        ));
    }
    let mut req = Seen {
        seq: 0,
        method: method.to_string(),
        target: target.to_string(),
        headers,
        body: Vec::new(),
    };
    let te = req.values("transfer-encoding");
    let cl = req.values("content-length");
    let start = head_end + 4;
    match (te.as_slice(), cl.as_slice()) {
        ([], []) => Ok(Some((req, start))),
        ([], [n]) => {
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("bad Content-Length {n:?}"));
            }
            let n: usize = n.parse().map_err(|_| format!("Content-Length {n:?}"))?;
            if buf.len() < start + n {
                return Ok(None);
            }
            req.body = buf[start..start + n].to_vec();
            Ok(Some((req, start + n)))
        }
        ([te], []) if te.eq_ignore_ascii_case("chunked") => match dechunk(&buf[start..])? {
            Some((body, used)) => {
                req.body = body;
                Ok(Some((req, start + used)))
            }
            None => Ok(None),
        },
        _ => Err(format!(
            "ambiguous framing: Transfer-Encoding {te:?}, Content-Length {cl:?}"
        )),
    }
}

/// A strict chunked body: its bytes and wire length; `None` while incomplete.
fn dechunk(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(end) = find(&buf[at..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[at..at + end]).map_err(|_| "chunk size not UTF-8")?;
        let size = line.split(';').next().unwrap_or("");
        if size.is_empty() || !size.bytes().all(|b| b.is_ascii_hexdigit()) || line.contains('\n') {
            return Err(format!("bad chunk size line {line:?}"));
        }
        let size = usize::from_str_radix(size, 16).map_err(|_| format!("chunk size {size:?}"))?;
        at += end + 2;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let Some(end) = find(&buf[at..], b"\r\n") else {
                    return Ok(None);
                };
                at += end + 2;
                if end == 0 {
                    return Ok(Some((body, at)));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        at += size + 2;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The real binary on free loopback ports, in its own folder; killed on drop.
struct Proxy {
    _dir: tempfile::TempDir,
    web: String,
    log: PathBuf,
    child: Child,
}

fn free_addr() -> String {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.to_string())
        .expect("a free loopback port")
}

/// The corpus's sites: `app` on the counting backend with maintenance on
/// `^/closed`, `dead` on a port nothing listens on, no default site.
fn corpus_sites(backend: &str) -> String {
    let closed = free_addr();
    format!(
        r#"sites:
  - name: app
    hosts: [app.test]
    backend: app
    maintenance:
      enabled: true
      paths: ["^/closed"]
  - name: dead
    hosts: [dead.test]
    backend: dead
backends:
  - name: app
    servers:
      - {{ name: raw, addr: "{backend}" }}
  - name: dead
    retries: 0
    servers:
      - {{ name: gone, addr: "{closed}" }}
"#
    )
}

/// Site `app` (maintenance on `^/closed`) and the default site `www`,
/// each on its own backend.
fn routing_sites(app: &str, www: &str) -> String {
    format!(
        r#"sites:
  - name: app
    hosts: [app.test]
    backend: app
    maintenance:
      enabled: true
      paths: ["^/closed"]
  - name: www
    backend: www
backends:
  - name: app
    servers:
      - {{ name: raw, addr: "{app}" }}
  - name: www
    servers:
      - {{ name: raw, addr: "{www}" }}
"#
    )
}

impl Proxy {
    /// Start on `sites` (the `sites:` and `backends:` sections).
    fn start(sites: &str) -> Proxy {
        let dir = tempfile::tempdir().expect("a temp dir");
        let d = dir.path().display().to_string();
        let (web, admin, metrics) = (free_addr(), free_addr(), free_addr());
        let yaml = format!(
            r#"server:
  threads: 1
  grace_period_seconds: 1
  graceful_shutdown_timeout_seconds: 1
  upgrade_sock: {d}/upgrade.sock
  pid_file: {d}/drawbridge.pid
state_file: {d}/state.json
admin:
  listen: "{admin}"
metrics:
  listen: "{metrics}"
listeners:
  - name: web
    listen: "{web}"
{sites}"#
        );
        let config = dir.path().join("drawbridge.yaml");
        std::fs::write(&config, yaml).expect("write the config");
        let log = dir.path().join("drawbridge.log");
        let out = std::fs::File::create(&log).expect("the log file");
        let child = Command::new(BIN)
            .args(["run", "-c"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .env_remove("DRAWBRIDGE_ADMIN_TOKEN")
            .stdout(out.try_clone().expect("the log file"))
            .stderr(out)
            .spawn()
            .expect("start drawbridge");
        let proxy = Proxy {
            _dir: dir,
            web,
            log,
            child,
        };
        let deadline = Instant::now() + TIMEOUT;
        while TcpStream::connect(&proxy.web).is_err() {
            assert!(
                Instant::now() < deadline,
                "drawbridge did not listen on {} within {TIMEOUT:?}; log:\n{}",
                proxy.web,
                proxy.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
