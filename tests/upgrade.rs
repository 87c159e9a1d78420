//! `drawbridge run --upgrade`: a new process takes over the listening
//! sockets of a running one (Pingora's graceful upgrade, the old one is sent
//! SIGQUIT) while clients keep being served, with the runtime state kept.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

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
    // The new process waits on the upgrade socket; the old one hands over
    // its listeners on SIGQUIT.
    std::thread::sleep(Duration::from_millis(500));
    let status = Command::new("kill")
        .args(["-QUIT", &old_pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());

    // Clients are served throughout, and the drain decision carries over.
    for i in 0..40 {
        let r = d.get("/");
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.text().trim(), "app-01", "request {i}: app-02 is in drain");
        std::thread::sleep(Duration::from_millis(50));
    }
    let old_exited = wait_until(Duration::from_secs(10), || {
        d.proc
            .0
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some())
    });
    assert!(
        old_exited,
        "the old process did not exit after handing over"
    );
    // Only the new process is left, and it serves the proxy and the API.
    assert_eq!(d.get("/").status, 200);
    let s = d.api("GET", "/api/v1/backends/app/servers/app-02", None);
    assert_eq!(json(&s)["state"], "drain");
    new.kill();
}
