//! `drawbridge run --upgrade`: a new process takes over the listening
//! sockets of a running one (Pingora's graceful upgrade, the old one is sent
//! SIGQUIT) while clients keep being served, with the runtime state kept.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_new_process_takes_over_the_sockets_without_refusing_clients() {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let mut d = Drawbridge::start(&two_server_yaml(&a.addr, &b.addr));
    let r = d.api(
        "PUT",
        "/api/v1/backends/app/servers/app-02/state",
        Some(r#"{"state":"drain"}"#),
    );
    assert_eq!(r.status, 200);
    let old_pid = d.proc.pid().expect("running");

    let log = std::fs::File::create(d.dir.path().join("new.log")).expect("log");
    let new = Command::new(BIN)
        .args(["run", "--upgrade", "-c"])
        .arg(&d.config)
        .env_remove("DRAWBRIDGE_ADMIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the new process");
    let mut new = Proc(Some(new));
    let new_pid = new.pid().expect("running");
    // The new process listens on the upgrade socket for the listeners; the
    // old one hands them over there on SIGQUIT.
    let sock = d.dir.path().join("upgrade.sock");
    let waiting = wait_until(TIMEOUT, || listens_on_unix(new_pid, &sock) || new.exited());
    assert!(
        waiting && listens_on_unix(new_pid, &sock),
        "the new process does not wait on {}; its log:\n{}",
        sock.display(),
        read(&d.dir.path().join("new.log"))
    );
    let status = Command::new("kill")
        .args(["-QUIT", &old_pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());

    // Clients are served throughout, until the old process is gone, and the
    // drain decision carries over.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut served = 0;
    while !d.proc.exited() {
        assert!(
            Instant::now() < deadline,
            "the old process did not exit within 10 s of handing over"
        );
        let r = d.get("/");
        assert_eq!(r.status, 200, "request {served}");
        assert_eq!(
            r.text().trim(),
            "app-01",
            "request {served}: app-02 is in drain"
        );
        served += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(served > 0, "no request was sent during the handover");
    // Only the new process is left, and it serves the proxy and the API.
    assert_eq!(d.get("/").status, 200);
    let s = d.api("GET", "/api/v1/backends/app/servers/app-02", None);
    assert_eq!(json(&s)["state"], "drain");
    new.kill();
}
