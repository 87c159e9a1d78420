//! Bad input at a TLS listener: plain HTTP sent to it, a TLS hello sent to
//! a plain listener, a truncated handshake, and 1,000 handshakes that never
//! finish. None of them disturbs other clients; a handshake has a deadline
//! (`header_timeout`).

mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");

fn start() -> (Upstream, Drawbridge) {
    let up = Upstream::start("app-01");
    let yaml = format!(
        "limits:\n  header_timeout: 1s\nlisteners:\n  - {{ name: web, listen: \"{{web}}\" }}\n  - name: websecure\n    listen: \"{{tcp}}\"\n    tls: {{ cert: {FIXTURES}/default.pem, key: {FIXTURES}/default.key }}\n\
         sites:\n  - {{ name: app, backend: app }}\n\
         backends:\n  - name: app\n    servers:\n      - {{ name: a, addr: \"{}\" }}\n",
        up.addr
    );
    (up, Drawbridge::start(&yaml))
}

/// An HTTPS request by curl: its status code.
fn https_status(d: &Drawbridge) -> String {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sk",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
    ])
    .arg(format!("https://127.0.0.1:{}/", port_of(&d.tcp)));
    out(&run_bounded(cmd))
}

/// Whatever the peer sends until it closes; panics if it is still open
/// after 10 s.
fn until_closed(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("still open: {e}"),
        }
    }
}

fn handshake_errors(d: &Drawbridge) -> f64 {
    d.metric("drawbridge_tls_handshakes_total{listener=\"websecure\",result=\"error\"}")
}

#[test]
fn plain_http_to_the_tls_port_and_tls_to_the_plain_port() {
    let (_up, d) = start();
    let before = handshake_errors(&d);
    let mut plain = TcpStream::connect(&d.tcp).expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        .expect("write");
    let answer = until_closed(&mut plain);
    assert!(
        !answer.starts_with(b"HTTP/1.1 200"),
        "no HTTP answer on a TLS port"
    );
    assert!(wait_until(Duration::from_secs(5), || handshake_errors(&d) > before));
    // A TLS hello on the plain listener is not HTTP: refused, closed.
    let mut cmd = Command::new("curl");
    cmd.args(["-sk", "--max-time", "5"])
        .arg(format!("https://127.0.0.1:{}/", port_of(&d.web)));
    let o = run_bounded(cmd);
    assert_ne!(o.status.code(), Some(0), "no TLS on the plain port");
    assert_eq!(d.get("/").status, 200);
    assert_eq!(https_status(&d), "200");
}

#[test]
fn truncated_and_stalled_handshakes_are_closed_at_the_deadline() {
    let (_up, d) = start();
    let before = handshake_errors(&d);
    // The first bytes of a ClientHello, then nothing.
    let mut truncated = TcpStream::connect(&d.tcp).expect("connect");
    truncated
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03])
        .expect("write");
    // 1,000 connections that never start their handshake.
    let mut stalled: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(&d.tcp).expect("connect"))
        .collect();
    // Other clients are served meanwhile, over TLS and not.
    assert_eq!(https_status(&d), "200");
    assert_eq!(d.get("/").status, 200);
    assert_eq!(until_closed(&mut truncated), b"");
    for s in stalled.iter_mut() {
        assert_eq!(until_closed(s), b"", "a stalled handshake is closed");
    }
    assert!(wait_until(Duration::from_secs(5), || handshake_errors(&d)
        >= before + 1001.0));
    assert_eq!(https_status(&d), "200");
}
