//! HTTP/2 at a TLS listener, frame by frame (a raw client over rustls): an
//! idle HTTP/2 connection, and one trickling a header block that never
//! ends, is closed after `keepalive_timeout`; a malformed
//! frame and a header block far over the limit end that one connection and
//! nothing else.

mod common;

use common::*;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn start(keepalive: &str) -> (Upstream, Drawbridge) {
    let up = Upstream::start("app-01");
    let yaml = format!(
        "limits:\n  keepalive_timeout: {keepalive}\nlisteners:\n  - {{ name: web, listen: \"{{web}}\" }}\n  - name: websecure\n    listen: \"{{tcp}}\"\n    tls: {{ cert: {FIXTURES}/default.pem, key: {FIXTURES}/default.key }}\n\
         sites:\n  - {{ name: app, backend: app }}\n\
         backends:\n  - name: app\n    servers:\n      - {{ name: a, addr: \"{}\" }}\n",
        up.addr
    );
    (up, Drawbridge::start(&yaml))
}

/// The test's certificate is its own CA, which webpki refuses as a server
/// certificate: accept any (the certificate is not what these tests check;
/// tests/tls.rs checks it with curl).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection that negotiated h2, with the client preface and an
/// empty SETTINGS frame sent.
fn h2_connect(d: &Drawbridge) -> Tls {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from("default.test").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let tcp = TcpStream::connect(&d.tcp).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(PREFACE).expect("preface");
    tls.write_all(&frame(4, 0, 0, &[])).expect("settings");
    tls.flush().expect("flush");
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]), "h2 by ALPN");
    tls
}

/// One frame: 24-bit length, type, flags, stream id.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Read until the server closes; the bytes and how long it took. Panics
/// if it is still open after the read timeout.
fn until_closed(tls: &mut Tls) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => return (out, start.elapsed()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe
                ) =>
            {
                return (out, start.elapsed())
            }
            Err(e) => panic!("still open after {:?}: {e}", start.elapsed()),
        }
    }
}

/// The types of the frames in `bytes` (whole frames only).
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len =
            (usize::from(bytes[0]) << 16) | (usize::from(bytes[1]) << 8) | usize::from(bytes[2]);
        types.push(bytes[3]);
        bytes = bytes.get(9 + len..).unwrap_or_default();
    }
    types
}

const GOAWAY: u8 = 7;

fn https_status(d: &Drawbridge) -> String {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sk",
        "--http2",
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

#[test]
fn an_idle_h2_connection_is_closed_after_keepalive_timeout() {
    let (_up, d) = start("2s");
    let mut idle = h2_connect(&d);
    let (_, after) = until_closed(&mut idle);
    assert!(
        after >= Duration::from_millis(1500) && after < Duration::from_secs(8),
        "closed after {after:?}, keepalive_timeout is 2s"
    );
    assert_eq!(https_status(&d), "200");
}

#[test]
fn a_malformed_frame_ends_only_its_connection() {
    let (_up, d) = start("60s");
    let mut bad = h2_connect(&d);
    // DATA on stream 0 is a connection error (PROTOCOL_ERROR).
    bad.write_all(&frame(0, 1, 0, b"nonsense")).expect("write");
    bad.flush().expect("flush");
    let (bytes, _) = until_closed(&mut bad);
    assert!(
        frame_types(&bytes).contains(&GOAWAY),
        "GOAWAY expected, got frames {:?}",
        frame_types(&bytes)
    );
    assert_eq!(https_status(&d), "200");
    assert_eq!(d.get("/").status, 200);
}

#[test]
fn a_huge_header_block_ends_only_its_connection() {
    let (_up, d) = start("60s");
    let mut big = h2_connect(&d);
    // GET / with its pseudo-headers (HPACK static table), then 4 MiB of
    // headers in CONTINUATION frames that never end the block.
    let mut block = vec![0x82, 0x87, 0x84, 0x41, 12];
    block.extend_from_slice(b"default.test");
    big.write_all(&frame(1, 0x1, 1, &block)).expect("headers"); // END_STREAM, not END_HEADERS
    let value = vec![b'x'; 16_000];
    let mut header = vec![0x00, 5];
    header.extend_from_slice(b"x-big");
    header.extend_from_slice(&[0x7f, 0x81, 0x7c]); // length 16,000 as an HPACK integer
    header.extend_from_slice(&value);
    let mut sent = 0usize;
    let mut refused = false;
    for _ in 0..256 {
        if big
            .write_all(&frame(9, 0, 1, &header))
            .and_then(|()| big.flush())
            .is_err()
        {
            refused = true;
            break;
        }
        sent += header.len();
    }
    let (bytes, _) = until_closed(&mut big);
    eprintln!(
        "sent {sent} bytes of headers, refused {refused}, answer frames {:?}",
        frame_types(&bytes)
    );
    assert!(
        refused || !bytes.is_empty(),
        "the connection took {sent} bytes of headers without a word"
    );
    assert_eq!(https_status(&d), "200");
    assert_eq!(d.get("/").status, 200);
    assert!(!d.log_text().contains("panicked"), "{}", d.log_text());
}

#[test]
fn a_trickled_header_block_is_closed_at_keepalive_timeout() {
    let (_up, d) = start("2s");
    let mut slow = h2_connect(&d);
    // HEADERS without END_HEADERS, then one small CONTINUATION frame every
    // 300 ms: the stream never starts, so the connection counts as idle.
    let block = [0x82, 0x87, 0x84];
    slow.write_all(&frame(1, 0x1, 1, &block)).expect("headers");
    slow.flush().expect("flush");
    let start = Instant::now();
    let header = [0x40, 1, b'x', 1, b'y']; // x: y, literal with indexing
    let mut closed = None;
    while start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(300));
        if slow
            .write_all(&frame(9, 0, 1, &header))
            .and_then(|()| slow.flush())
            .is_err()
        {
            closed = Some(start.elapsed());
            break;
        }
    }
    let closed = closed.unwrap_or_else(|| until_closed(&mut slow).1 + start.elapsed());
    assert!(
        closed >= Duration::from_millis(1500) && closed < Duration::from_secs(8),
        "closed after {closed:?}, keepalive_timeout is 2s"
    );
    assert_eq!(https_status(&d), "200");
}
