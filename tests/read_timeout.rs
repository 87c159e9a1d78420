//! `read_timeout` on proxied HTTP requests, against a scripted server that
//! stalls at chosen points: before its header, in the middle of a body
//! framed by length or by the connection's close, or that sends its body
//! slowly but steadily. Also: a request that timed out is never sent again.

mod common;

use common::*;
use drawbridge::httpc::{self, Conn, Request};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A server that reads requests (keep-alive, no bodies) and answers each by
/// its path:
/// - `/fast`: `ok` at once;
/// - `/stall`: nothing, until the connection closes;
/// - `/stall-body`: a header for 100 bytes, 10 of them, then nothing;
/// - `/stall-close`: a header without length (the close ends the body),
///   a few bytes, then nothing;
/// - `/drip`: 5 bytes, one every 300 ms;
/// - `/upload`: reads the request's body (`Content-Length`), then answers
///   how many bytes it got;
/// - `/big`: 16 MiB at once, more than the sockets between the server and
///   a client that does not read can hold.
struct Scripted {
    addr: String,
    requests: Arc<AtomicUsize>,
}

impl Scripted {
    fn start() -> Scripted {
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        let addr = serve_each(move |conn| serve(conn, &count));
        Scripted { addr, requests }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

const BIG: usize = 16 << 20;

fn serve(conn: TcpStream, count: &AtomicUsize) {
    // Bounded: a test never waits on this server for long.
    let _ = conn.set_read_timeout(Some(Duration::from_secs(20)));
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        count.fetch_add(1, Ordering::SeqCst);
        let out = reader.get_mut();
        let wait_for_close = |r: &mut BufReader<TcpStream>| {
            let mut buf = [0u8; 64];
            while matches!(r.read(&mut buf), Ok(n) if n > 0) {}
        };
        match path.as_str() {
            "/fast" => {
                let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            }
            "/stall" => return wait_for_close(&mut reader),
            "/stall-body" => {
                let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789");
                return wait_for_close(&mut reader);
            }
            "/stall-close" => {
                let _ = out.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npartial");
                return wait_for_close(&mut reader);
            }
            "/drip" => {
                let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
                for b in b"drip!" {
                    std::thread::sleep(Duration::from_millis(300));
                    if out.write_all(&[*b]).is_err() {
                        return;
                    }
                }
            }
            "/big" => {
                let body = vec![b'x'; BIG];
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n");
                let _ = out.write_all(head.as_bytes());
                let _ = out.write_all(&body);
            }
            "/upload" => {
                let mut body = vec![0u8; length];
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
                let text = format!("got {length}");
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", text.len());
                let out = reader.get_mut();
                let _ = out.write_all(head.as_bytes());
                let _ = out.write_all(text.as_bytes());
            }
            _ => {
                let _ = out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            }
        }
    }
}

fn yaml(options: &str, addr: &str) -> String {
    format!(
        "listeners:\n  - {{ name: web, listen: \"{{web}}\" }}\nsites:\n  - {{ name: app, backend: app }}\nbackends:\n  - {{ name: app, read_timeout: 1s, {options} servers: [{{ name: s, addr: \"{addr}\" }}] }}\n"
    )
}

/// The client's own limit, far above `read_timeout`: reaching it means
/// drawbridge never gave up on the server.
const CLIENT_LIMIT: Duration = Duration::from_secs(8);

/// A scripted server behind drawbridge (with `read_timeout: 1s`), and the
/// answer to one GET of `path`.
fn get_through(path: &str) -> (Scripted, Drawbridge, std::io::Result<httpc::Response>) {
    let s = Scripted::start();
    let d = Drawbridge::start(&yaml("", &s.addr));
    let r = httpc::request(&d.web, &Request::new("GET", path), CLIENT_LIMIT);
    (s, d, r)
}

/// A scripted server behind drawbridge, and a plain connection to
/// drawbridge on which `head` was sent.
fn raw_client(head: &[u8]) -> (Scripted, Drawbridge, TcpStream) {
    let s = Scripted::start();
    let d = Drawbridge::start(&yaml("", &s.addr));
    let mut c = TcpStream::connect(d.web.trim_start_matches("http://")).expect("connect");
    c.set_read_timeout(Some(CLIENT_LIMIT)).expect("timeout");
    c.write_all(head).expect("request head");
    (s, d, c)
}

fn client_gave_up(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

#[test]
fn a_server_silent_before_its_header_gets_504() {
    let (_s, d, r) = get_through("/stall");
    let r = r.expect("an answer from drawbridge");
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("went wrong"), "{}", r.text());
    assert!(
        wait_until(TIMEOUT, || d.log_text().contains("GET /stall 504 error ")
            && d.log_text().contains("error=ReadTimedout")),
        "{}",
        d.log_text()
    );
}

#[test]
fn a_server_stalling_in_the_body_is_cut_off() {
    let (_s, _d, r) = get_through("/stall-body");
    let e = r.expect_err("a response cut short");
    assert!(!client_gave_up(&e), "drawbridge waited on the server: {e}");
}

#[test]
fn a_body_ended_by_the_close_is_not_passed_off_as_complete() {
    let (_s, _d, got) = get_through("/stall-close");
    match got {
        Ok(r) => panic!(
            "a cut response looked complete: {} {:?}",
            r.status,
            r.text()
        ),
        Err(e) => assert!(!client_gave_up(&e), "drawbridge waited on the server: {e}"),
    }
}

#[test]
fn a_slow_but_steady_body_is_not_cut() {
    // 1.5 s in all, more than read_timeout, but never 1 s without a byte.
    let (_s, _d, r) = get_through("/drip");
    let r = r.expect("the whole body");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "drip!");
}

#[test]
fn a_client_that_reads_late_gets_the_whole_body() {
    let (_s, _d, mut c) =
        raw_client(b"GET /big HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n");
    // The server has sent all it can; drawbridge waits on this client,
    // not on the server, for more than read_timeout.
    std::thread::sleep(Duration::from_millis(2500));
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    let head_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header");
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    assert_eq!(answer.len() - head_end - 4, BIG, "the whole body");
}

#[test]
fn a_slow_but_steady_upload_is_not_cut() {
    let (_s, _d, mut c) = raw_client(
        b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
    );
    // 1.5 s in all, more than read_timeout: the server waits on the
    // client, not drawbridge on the server.
    for b in b"12345" {
        std::thread::sleep(Duration::from_millis(300));
        c.write_all(&[*b]).expect("body byte");
    }
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("got 5"), "{answer}");
}

#[test]
fn a_timed_out_request_is_never_sent_again() {
    let s = Scripted::start();
    let d = Drawbridge::start(&yaml("retries: 2,", &s.addr));
    let base = d.web.trim_start_matches("http://");
    let mut conn = Conn::open(base, CLIENT_LIMIT).expect("connect");
    // The first request leaves a pooled connection to the server; the
    // second one times out on it. A read error on a reused connection is
    // one Pingora retries, but not this one: the server may be working on
    // the request.
    assert_eq!(
        conn.send(&Request::new("GET", "/fast"))
            .expect("fast")
            .status,
        200
    );
    let r = conn
        .send(&Request::new("GET", "/stall"))
        .expect("an answer");
    assert_eq!(r.status, 504, "{}", r.text());
    let post = Request::new("POST", "/stall").body("form=1");
    let r = httpc::request(&d.web, &post, CLIENT_LIMIT).expect("an answer");
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(
        wait_until(TIMEOUT, || s.requests() >= 3),
        "{} requests",
        s.requests()
    );
    // A request's access-log line is written once drawbridge is done with
    // it, retries included; a retry would have reached the server a whole
    // read_timeout before drawbridge gave up on it.
    assert!(
        wait_until(TIMEOUT, || {
            let log = d.log_text();
            log.contains("GET /stall 504 error ") && log.contains("POST /stall 504 error ")
        }),
        "no access-log line for the two timed-out requests:\n{}",
        d.log_text()
    );
    assert_eq!(s.requests(), 3, "a request was sent twice");
}
