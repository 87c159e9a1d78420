//! `drawbridge reload -c FILE` (CONTRACT section 11): a changed file taken
//! over under load without a failed request, the runtime state kept; a
//! file `check` refuses changes nothing; a new process that cannot start
//! leaves the old one serving; ten reloads in a row under keep-alive load
//! cut nothing.

mod common;

use common::*;
use drawbridge::httpc::Request;
use std::net::TcpListener;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The pid that answers the admin API's /healthz.
fn serving_pid(d: &Drawbridge) -> Option<u32> {
    let r = d.api("GET", "/healthz", None);
    r.header("x-drawbridge-pid").and_then(|p| p.parse().ok())
}

fn reload(config: &std::path::Path) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("reload").arg("-c").arg(config);
    run_bounded(cmd)
}

/// Kills the process a reload started (not a child of the test) on drop.
struct Adopted(Option<u32>);

impl Drop for Adopted {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

#[test]
fn a_changed_file_is_taken_over_under_load_with_the_state_kept() {
    let (a, b, c) = (
        Upstream::start("app-01"),
        Upstream::start("app-02"),
        Upstream::start("app-03"),
    );
    let d = Arc::new(Drawbridge::start(&two_server_yaml(&a.addr, &b.addr)));
    let old = serving_pid(&d).expect("pid");
    // Runtime state: app-02 drains; a sticky client is on app-01.
    let r = d.api(
        "PUT",
        "/api/v1/backends/app/servers/app-02/state",
        Some(r#"{"state":"drain"}"#),
    );
    assert_eq!(r.status, 200);
    let first = d.get("/");
    assert_eq!(first.text().trim(), "app-01");
    let cookie = format!(
        "SERVERID={}",
        set_cookie_value(&first, "SERVERID").expect("cookie")
    );

    // Steady load: requests on new connections, every answer counted.
    let load = Load::start(&d.web);

    // The file gains a server and a site.
    let text = read(&d.config)
        .replace(
            "      - { name: app-02, addr: \"",
            &format!(
                "      - {{ name: app-03, addr: \"{}\" }}\n      - {{ name: app-02, addr: \"",
                c.addr
            ),
        )
        .replace(
            "sites:\n",
            "sites:\n  - { name: shop, hosts: [shop.test], backend: app }\n",
        );
    std::fs::write(&d.config, text).expect("write the config");
    let o = reload(&d.config);
    // Both processes answer until the old one stops accepting.
    let mut new = None;
    wait_until(Duration::from_secs(10), || {
        new = serving_pid(&d).filter(|p| *p != old);
        new.is_some()
    });
    let _adopted = Adopted(new);
    assert!(o.status.success(), "{}", err(&o));
    assert!(err(&o).contains("serves"), "{}", err(&o));
    assert!(new.is_some(), "the new process answers");

    // The old process finishes and exits; the new one serves alone.
    // A few seconds more of load across the old process's exit.
    std::thread::sleep(Duration::from_secs(3));
    let (ok, failed) = load.finish();
    let mut d = Arc::into_inner(d).expect("one owner");
    assert!(
        wait_until(Duration::from_secs(15), || d.proc.exited()),
        "the old process did not exit"
    );
    assert_eq!(failed, 0, "failed requests");
    assert!(ok > 20);
    // The new server takes new clients once healthy; the state carried over.
    assert!(wait_until(Duration::from_secs(5), || d
        .get("/")
        .text()
        .trim()
        == "app-03"));
    for _ in 0..5 {
        let r = d.send(Request::new("GET", "/").header("Cookie", cookie.clone()));
        assert_eq!(r.text().trim(), "app-01", "the sticky client stays");
    }
    let s = d.api("GET", "/api/v1/backends/app/servers/app-02", None);
    assert_eq!(json(&s)["state"], "drain");
    assert_eq!(d.api("GET", "/api/v1/sites/shop", None).status, 200);
    drop((a, b, c));
}

#[test]
fn a_file_check_refuses_changes_nothing() {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let d = Drawbridge::start(&two_server_yaml(&a.addr, &b.addr));
    let old = serving_pid(&d);
    let bad = d.dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        read(&d.config).replace("balance: round_robin", "balance: fastest"),
    )
    .expect("write");
    let o = reload(&bad);
    assert_eq!(o.status.code(), Some(1));
    let mut check = Command::new(BIN);
    check.arg("check").arg("-c").arg(&bad);
    let checked = run_bounded(check);
    let first_line = err(&checked).lines().next().unwrap_or_default().to_string();
    assert!(!first_line.is_empty());
    assert!(err(&o).contains(&first_line), "{}", err(&o));
    assert!(err(&o).contains("nothing changed"), "{}", err(&o));
    assert_eq!(serving_pid(&d), old);
    assert_eq!(d.get("/").status, 200);
}

/// Servers added and deleted through the API are kept by a reload, and
/// the new process serves them.
#[test]
fn servers_changed_through_the_api_are_kept_by_a_reload() {
    let (a, b, c) = (
        Upstream::start("app-01"),
        Upstream::start("app-02"),
        Upstream::start("app-03"),
    );
    let d = Drawbridge::start(&two_server_yaml(&a.addr, &b.addr));
    let old = serving_pid(&d).expect("pid");
    let body = format!(r#"{{"name":"app-03","addr":"{}","state":"ready"}}"#, c.addr);
    let r = d.api("POST", "/api/v1/backends/app/servers", Some(&body));
    assert_eq!(r.status, 201, "{}", r.text());
    let gone = "/api/v1/backends/app/servers/app-01";
    let r = d.api(
        "PUT",
        &format!("{gone}/state"),
        Some(r#"{"state":"maint"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(wait_until(TIMEOUT, || d.api("DELETE", gone, None).status == 200));

    let o = reload(&d.config);
    let mut new = None;
    wait_until(TIMEOUT, || {
        new = serving_pid(&d).filter(|p| *p != old);
        new.is_some()
    });
    let _adopted = Adopted(new);
    assert!(o.status.success(), "{}", err(&o));
    // The old process may still take an admin connection, answered 503
    // until it exits.
    let mut status = serde_json::Value::Null;
    assert!(wait_until(TIMEOUT, || {
        let r = d.api("GET", "/api/v1/status", None);
        status = r.json().unwrap_or_default();
        r.status == 200
    }));
    let names: Vec<&str> = status["backends"][0]["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["app-02", "app-03"], "{status}");
    assert!(wait_until(TIMEOUT, || d.get("/").text().trim() == "app-03"));
    assert!(wait_until(TIMEOUT, || d.api("GET", gone, None).status == 404));
}

#[test]
fn a_new_process_that_cannot_start_leaves_the_old_one_serving() {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let d = Drawbridge::start(&two_server_yaml(&a.addr, &b.addr));
    let old = serving_pid(&d);
    // A new listener on a port another program holds.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let next = d.dir.path().join("next.yaml");
    std::fs::write(
        &next,
        read(&d.config).replace(
            "listeners:\n",
            &format!("listeners:\n  - {{ name: more, listen: \"{addr}\" }}\n"),
        ),
    )
    .expect("write");
    let o = reload(&next);
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert!(err(&o).contains("keeps serving"), "{}", err(&o));
    assert!(
        d.log_text().contains(&format!("{addr} is in use")),
        "{}",
        d.log_text()
    );
    // Still the old process, still serving, for a while after.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(serving_pid(&d), old);
    assert_eq!(d.get("/").status, 200);
    drop(taken);
}

/// Ten reloads in a row under steady keep-alive load: no connection
/// refused, no request cut, every answer 2xx, and each new process served.
#[test]
fn ten_reloads_under_keep_alive_load() {
    use drawbridge::httpc::Conn;
    const CLIENTS: usize = 4;
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let d = Drawbridge::start(&two_server_yaml(&a.addr, &b.addr));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (web, stop, ok, bad, errors) = (
                d.web.clone(),
                stop.clone(),
                ok.clone(),
                bad.clone(),
                errors.clone(),
            );
            std::thread::spawn(move || {
                let mut conn: Option<Conn> = None;
                while !stop.load(Ordering::Relaxed) {
                    let c = match conn.take() {
                        Some(c) => c,
                        None => match Conn::open(&web, Duration::from_secs(5)) {
                            Ok(c) => c,
                            Err(e) => {
                                bad.fetch_add(1, Ordering::Relaxed);
                                errors.lock().expect("errors").push(format!("connect: {e}"));
                                continue;
                            }
                        },
                    };
                    let mut c = c;
                    match c.send(&Request::new("GET", "/")) {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            if !r
                                .header("connection")
                                .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                            {
                                conn = Some(c);
                            }
                        }
                        Ok(r) => {
                            bad.fetch_add(1, Ordering::Relaxed);
                            errors
                                .lock()
                                .expect("errors")
                                .push(format!("status {}", r.status));
                        }
                        Err(e) => {
                            bad.fetch_add(1, Ordering::Relaxed);
                            errors.lock().expect("errors").push(format!("cut: {e}"));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        })
        .collect();
    let mut adopted = Vec::new();
    let mut pids = vec![serving_pid(&d).expect("pid")];
    for round in 0..10 {
        let o = reload(&d.config);
        assert!(o.status.success(), "round {round}: {}", err(&o));
        let mut new = None;
        wait_until(Duration::from_secs(10), || {
            new = serving_pid(&d).filter(|p| !pids.contains(p));
            new.is_some()
        });
        let new = new.unwrap_or_else(|| panic!("round {round}: no new process answers"));
        pids.push(new);
        adopted.push(Adopted(Some(new)));
    }
    // Load across the last old processes' exits.
    std::thread::sleep(Duration::from_secs(8));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("a client");
    }
    let errors = errors.lock().expect("errors").clone();
    assert!(errors.is_empty(), "{} failures: {errors:?}", errors.len());
    assert_eq!(bad.load(Ordering::Relaxed), 0);
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "{} answers",
        ok.load(Ordering::Relaxed)
    );
    // Only the last process is left (the first one is the test's child:
    // reaped by `exited`, not a zombie in /proc).
    let mut d = d;
    assert!(d.proc.exited(), "the first process is still running");
    let alive: Vec<&u32> = pids[1..]
        .iter()
        .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        .collect();
    assert_eq!(alive, vec![pids.last().expect("pids")], "processes left");
    drop((a, b));
}

#[test]
fn reload_never_signals_another_program_nor_hands_over_to_another_socket() {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let d = Drawbridge::start(&two_server_yaml(&a.addr, &b.addr));
    let old = serving_pid(&d);
    // A new file with another upgrade socket: the old process would send
    // its sockets where nobody waits.
    let moved = d.dir.path().join("moved.yaml");
    std::fs::write(
        &moved,
        read(&d.config).replace("upgrade.sock", "elsewhere.sock"),
    )
    .expect("write");
    let o = reload(&moved);
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert!(err(&o).contains("server.upgrade_sock"), "{}", err(&o));
    assert_eq!(serving_pid(&d), old);

    // A stale pid file naming another program: it is not sent SIGQUIT.
    let pid_file = d.dir.path().join("drawbridge.pid");
    let mut other = Proc(Some(
        Command::new("sleep").arg("30").spawn().expect("sleep"),
    ));
    let real = std::fs::read_to_string(&pid_file).expect("pid file");
    std::fs::write(&pid_file, format!("{}\n", other.pid().expect("pid"))).expect("write");
    let o = reload(&d.config);
    std::fs::write(&pid_file, real).expect("restore");
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert!(err(&o).contains("another program"), "{}", err(&o));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!other.exited(), "the other program was signalled");
    assert_eq!(serving_pid(&d), old);
    assert_eq!(d.get("/").status, 200);
}

/// During a handover both processes accept on the admin listener: the old
/// one refuses changes (503, which `ctl` retries), so every change is made
/// by the new process and kept; changes the old one made before are in the
/// state file the new one reads again after the handover.
#[test]
fn changes_during_a_handover_are_made_by_the_new_process_and_kept() {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let mut d = Drawbridge::start(&two_server_yaml(&a.addr, &b.addr));
    let old = serving_pid(&d).expect("pid");
    let o = reload(&d.config);
    assert!(o.status.success(), "{}", err(&o));
    let mut new = None;
    // Changes right after the handover, while the old process still
    // accepts connections: each is answered by the new one or refused.
    let mut refused = 0;
    for w in 1..=20 {
        let r = d.api(
            "PUT",
            "/api/v1/backends/app/servers/app-02/weight",
            Some(&format!(r#"{{"weight":{w}}}"#)),
        );
        let by: Option<u32> = r.header("x-drawbridge-pid").and_then(|p| p.parse().ok());
        match r.status {
            200 => {
                assert_ne!(by, Some(old), "change {w} made by the old process");
                new = by;
            }
            503 => {
                assert_eq!(by, Some(old));
                refused += 1;
            }
            s => panic!("change {w}: {s} {}", r.text()),
        }
    }
    let _adopted = Adopted(new);
    // ctl retries the refusals until the new process takes the change.
    let o = d.ctl(&["weight", "app/app-02", "42"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(wait_until(Duration::from_secs(15), || d.proc.exited()));
    let s = d.api("GET", "/api/v1/backends/app/servers/app-02", None);
    assert_eq!(json(&s)["weight"], 42);
    eprintln!("{refused} changes refused by the old process");
}
