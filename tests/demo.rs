//! `drawbridge demo`, as the README runs it: two upstream apps behind the
//! proxy, on plain HTTP and on HTTPS with HTTP/2 and the self-signed
//! certificate the demo makes, which curl trusts with `--cacert`.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn the_demo_serves_http_and_https_with_its_own_certificate() {
    let repo = env!("CARGO_MANIFEST_DIR");
    let mut demo = Proc(Some(
        Command::new(BIN)
            .arg("demo")
            .current_dir(repo)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the demo"),
    ));
    let served = wait_until(Duration::from_secs(20), || {
        drawbridge::httpc::request(
            "127.0.0.1:8080",
            &drawbridge::httpc::Request::new("GET", "/"),
            Duration::from_secs(1),
        )
        .is_ok_and(|r| r.status == 200)
    });
    assert!(served, "the demo did not serve http://127.0.0.1:8080/");
    let cacert = format!("{}/cert.pem", drawbridge::demo::DEMO_TLS_DIR);
    let mut curl = Command::new("curl");
    curl.args([
        "-sS",
        "-v",
        "--http2",
        "--max-time",
        "10",
        "--cacert",
        &cacert,
    ])
    .arg("https://localhost:8443/");
    let o = run_bounded(curl);
    assert!(o.status.success(), "{}", err(&o));
    assert!(err(&o).contains("< HTTP/2 200"), "{}", err(&o));
    assert!(
        err(&o).contains("subjectAltName: host \"localhost\" matched"),
        "{}",
        err(&o)
    );
    let body = out(&o);
    assert!(matches!(body.trim(), "app-01" | "app-02"), "{body}");
    demo.kill();
}
