//! TLS termination (CONTRACT section 9) against the real binary and curl:
//! the certificate chosen by SNI, HTTP/2 by ALPN, X-Forwarded-Proto, the
//! sticky cookie and the maintenance gate over HTTP/2, and `check`
//! refusing bad certificates.

mod common;

use common::*;
use std::process::Command;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");

fn tls_yaml(a: &str, b: &str, extra: &str) -> String {
    format!(
        r#"listeners:
  - {{ name: web, listen: "{{web}}" }}
  - name: websecure
    listen: "{{tcp}}"
    tls:
      cert: {FIXTURES}/default.pem
      key: {FIXTURES}/default.key
      certs:
        - {{ cert: {FIXTURES}/shop.pem, key: {FIXTURES}/shop.key }}
{extra}sites:
  - name: app
    backend: app
{}"#,
        app_backend_yaml(a, b, "")
    )
}

/// curl against the TLS listener as `host` (resolved to it, so SNI names
/// it); returns (status line and headers with curl's notes, body).
fn curl(d: &Drawbridge, host: &str, args: &[&str]) -> (String, String) {
    let port = port_of(&d.tcp);
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-v", "--max-time", "10"])
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(args)
        .arg(format!("https://{host}:{port}/headers"));
    let o = run_bounded(cmd);
    (err(&o), out(&o))
}

fn subject(verbose: &str) -> String {
    verbose
        .lines()
        .find_map(|l| l.split_once("subject: ").map(|(_, s)| s.trim().to_string()))
        .unwrap_or_default()
}

#[test]
fn the_certificate_follows_sni_and_h2_is_offered() {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let d = Drawbridge::start(&tls_yaml(&a.addr, &b.addr, ""));
    let shop = format!("{FIXTURES}/shop.pem");
    let default = format!("{FIXTURES}/default.pem");
    // An exact name, a wildcard name, and a name no certificate carries.
    let (v, body) = curl(&d, "shop.test", &["--cacert", &shop]);
    assert_eq!(subject(&v), "CN=shop.test", "{v}");
    assert!(v.contains("< HTTP/2 200"), "h2 by ALPN: {v}");
    assert!(body.contains("x-forwarded-proto: https"), "{body}");
    assert!(body.contains("x-forwarded-host: shop.test"), "{body}");
    let (v, _) = curl(&d, "www.shop.test", &["--cacert", &shop]);
    assert_eq!(subject(&v), "CN=shop.test", "{v}");
    let (v, _) = curl(&d, "other.test", &["-k"]);
    assert_eq!(subject(&v), "CN=default.test", "no match: the default");
    let (v, body) = curl(&d, "default.test", &["--cacert", &default, "--http1.1"]);
    assert!(v.contains("< HTTP/1.1 200"), "{v}");
    assert!(body.contains("x-forwarded-proto: https"), "{body}");
    // The plain listener says http.
    let plain = d.get("/headers");
    assert!(plain.text().contains("x-forwarded-proto: http\n"));
    // Handshakes are counted.
    assert_eq!(
        d.metric("drawbridge_tls_handshakes_total{listener=\"websecure\",result=\"ok\"}"),
        4.0
    );
    assert!(d.metric("drawbridge_certificate_expiry_timestamp_seconds{listener=\"websecure\",name=\"*.shop.test\"}") > 0.0);
}

#[test]
fn stickiness_and_maintenance_over_h2() {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let d = Drawbridge::start(&tls_yaml(&a.addr, &b.addr, ""));
    let jar = d.dir.path().join("jar");
    let jar = jar.to_str().unwrap_or("jar");
    let port = port_of(&d.tcp);
    let get = |args: &[&str]| {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-k", "--http2", "--max-time", "10"])
            .args(args)
            .arg(format!("https://127.0.0.1:{port}/"));
        out(&run_bounded(cmd))
    };
    let first = get(&["-c", jar, "-b", jar]);
    for _ in 0..4 {
        assert_eq!(
            get(&["-c", jar, "-b", jar]),
            first,
            "the cookie keeps its server"
        );
    }
    let (x, y) = (get(&[]), get(&[]));
    assert_ne!(x, y, "new clients are balanced");
    let on = d.api(
        "PUT",
        "/api/v1/sites/app/maintenance",
        Some(r#"{"enabled":true,"message":"Back soon"}"#),
    );
    assert_eq!(on.status, 200);
    let page = get(&["-i"]);
    assert!(page.starts_with("HTTP/2 503"), "{page}");
    assert!(
        page.to_ascii_lowercase().contains("retry-after: 600"),
        "{page}"
    );
    assert!(page.contains("Back soon"), "{page}");
    let json = get(&["-H", "Accept: application/json"]);
    assert!(json.contains("\"error\":\"maintenance\""), "{json}");
    let token = json_of(&d.api("POST", "/api/v1/sites/app/bypass-tokens", Some("{}")));
    let cookie = token["cookie"].as_str().unwrap_or_default().to_string();
    let through = get(&["-i", "-b", &cookie]);
    assert!(through.starts_with("HTTP/2 200"), "{through}");
    // The access log names the protocol of each request.
    let logged = |needle: &str| {
        wait_until(std::time::Duration::from_secs(3), || {
            d.log_text()
                .lines()
                .any(|l| l.contains(" access] ") && l.contains(needle))
        })
    };
    assert!(logged(" 503 maintenance "), "{}", d.log_text());
    assert!(
        logged("ms HTTP/2") && !logged("ms HTTP/1.1"),
        "{}",
        d.log_text()
    );
}

fn json_of(r: &drawbridge::httpc::Response) -> serde_json::Value {
    json(r)
}

#[test]
fn check_refuses_bad_certificates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = [
        ("nothere.pem", "default.key", "cannot read"),
        ("default.pem", "shop.key", "does not match"),
        ("default.key", "default.key", "no certificate"),
    ];
    for (cert, key, words) in cases {
        let yaml = format!(
            "listeners:\n  - name: websecure\n    listen: 127.0.0.1:1\n    tls: {{ cert: {FIXTURES}/{cert}, key: {FIXTURES}/{key} }}\n\
             sites:\n  - {{ name: app, backend: app }}\n\
             backends:\n  - name: app\n    servers:\n      - {{ name: a, addr: 127.0.0.1:2 }}\n"
        );
        let path = dir.path().join("drawbridge.yaml");
        std::fs::write(&path, yaml).expect("config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_drawbridge"));
        cmd.args(["check", "-c"]).arg(&path);
        let o = run_bounded(cmd);
        assert_eq!(o.status.code(), Some(1), "{cert}/{key}: {}", err(&o));
        let e = err(&o);
        assert!(e.contains("listeners[0].tls") && e.contains(words), "{e}");
    }
}

/// A kept-alive TLS connection made before a reload, from Python's ssl
/// module: one request, then another on the same connection when told to
/// (a line on stdin); prints each answer's status line.
const KEEP_ALIVE_CLIENT: &str = r#"
import socket, ssl, sys
port = int(sys.argv[1])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="other.test")
f = s.makefile("rb")
def ask():
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: other.test\r\n\r\n")
    status = f.readline().decode().strip()
    length = 0
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        k, _, v = line.decode().partition(":")
        if k.lower() == "content-length":
            length = int(v)
    f.read(length)
    print(status, flush=True)
ask()
sys.stdin.readline()
ask()
"#;

#[test]
fn certificates_reload_for_new_handshakes_only_and_a_bad_file_changes_nothing() {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    // The default certificate from files of its own, relative to the
    // config, put in place before the start.
    let yaml = tls_yaml(&a.addr, &b.addr, "")
        .replace(&format!("{FIXTURES}/default.pem"), "live.pem")
        .replace(&format!("{FIXTURES}/default.key"), "live.key");
    let d = Drawbridge::prepare(&yaml, &[]);
    let live = |name: &str| d.dir.path().join(name);
    std::fs::copy(format!("{FIXTURES}/default.pem"), live("live.pem")).expect("copy");
    std::fs::copy(format!("{FIXTURES}/default.key"), live("live.key")).expect("copy");
    let d = d.launch();
    let live = |name: &str| d.dir.path().join(name);
    let (v, _) = curl(&d, "other.test", &["-k"]);
    assert_eq!(subject(&v), "CN=default.test");

    let mut client = Command::new("python3");
    client
        .args(["-c", KEEP_ALIVE_CLIENT, &port_of(&d.tcp).to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut client = client.spawn().expect("python3");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(
        client.stdout.take().expect("stdout"),
    ));
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(first, "HTTP/1.1 200 OK");

    // A bad file: 400 naming it, and the next handshake is as before.
    std::fs::write(live("live.pem"), "not a certificate").expect("write");
    let bad = d.api("POST", "/api/v1/certificates/reload", None);
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("live.pem"), "{}", bad.text());
    let (v, _) = curl(&d, "other.test", &["-k"]);
    assert_eq!(subject(&v), "CN=default.test", "nothing changed");

    // The shop certificate as the default: the next handshake gets it.
    std::fs::copy(format!("{FIXTURES}/shop.pem"), live("live.pem")).expect("copy");
    std::fs::copy(format!("{FIXTURES}/shop.key"), live("live.key")).expect("copy");
    let ok = d.ctl(&["certs", "reload"]);
    assert_eq!(ok.status.code(), Some(0), "{}", err(&ok));
    assert!(out(&ok).contains("shop.test"), "{}", out(&ok));
    let (v, _) = curl(&d, "other.test", &["-k"]);
    assert_eq!(subject(&v), "CN=shop.test", "the next handshake");
    let listed = json(&d.api("GET", "/api/v1/certificates", None));
    assert_eq!(listed["certificates"][0]["names"][0], "shop.test");

    // The connection opened before the reloads still works.
    if let Some(stdin) = client.stdin.as_mut() {
        std::io::Write::write_all(stdin, b"go\n").expect("stdin");
    }
    let second = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(second, "HTTP/1.1 200 OK", "the open connection");
    let _ = client.wait();
}

/// `force_https` sends plain requests to https:// with path and query;
/// `hsts` goes on answers over TLS only (proxied, maintenance and error
/// pages); the sticky cookie is Secure over TLS only (`secure: auto`).
#[test]
fn force_https_hsts_and_secure_cookies() {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let yaml = tls_yaml(&a.addr, &b.addr, "").replace(
        "    backend: app\n",
        "    backend: app\n    force_https: true\n    https_port: 8443\n    hsts: \"max-age=31536000\"\n",
    );
    let d = Drawbridge::start(&yaml);
    let plain = d.send(
        drawbridge::httpc::Request::new("GET", "/cart?item=7&q=a%20b")
            .header("Host", "shop.test:8080"),
    );
    assert_eq!(plain.status, 308);
    assert_eq!(
        plain.header("location"),
        Some("https://shop.test:8443/cart?item=7&q=a%20b")
    );
    assert_eq!(plain.header("strict-transport-security"), None);
    assert!(
        plain.header("set-cookie").is_none(),
        "no cookie on a redirect"
    );

    let (v, _) = curl(&d, "shop.test", &["-k", "--http1.1"]);
    assert!(v.contains("< HTTP/1.1 200"), "{v}");
    assert!(
        v.contains("< strict-transport-security: max-age=31536000"),
        "{v}"
    );
    let cookie = v
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("< set-cookie: serverid=")
        })
        .unwrap_or_default();
    assert!(cookie.contains("; Secure"), "{cookie}");

    // The maintenance page over TLS carries HSTS too.
    d.api(
        "PUT",
        "/api/v1/sites/app/maintenance",
        Some(r#"{"enabled":true}"#),
    );
    let (v, _) = curl(&d, "shop.test", &["-k"]);
    assert!(v.contains("< HTTP/2 503"), "{v}");
    assert!(
        v.contains("< strict-transport-security: max-age=31536000"),
        "{v}"
    );
}

/// Without `force_https`, a plain request is served, and its sticky cookie
/// is not Secure (`secure: auto`).
#[test]
fn plain_requests_get_a_cookie_without_secure() {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let d = Drawbridge::start(&tls_yaml(&a.addr, &b.addr, ""));
    let r = d.get("/");
    assert_eq!(r.status, 200);
    let cookie = r.header("set-cookie").unwrap_or_default();
    assert!(
        cookie.starts_with("SERVERID=") && !cookie.contains("Secure"),
        "{cookie}"
    );
}
