//! Server admin states end to end (CONTRACT sections 3.4, 4 and 5): drain
//! keeps stuck clients and takes no new ones, `wait-drained` waits for
//! requests in flight and for sticky traffic to stop, maint moves clients
//! (operators excepted), backup servers and weight 0, persistence across
//! kill -9, metrics, and bad input.

mod common;

use common::*;
use drawbridge::config::server_id;
use drawbridge::httpc::{self, Request, Response};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

/// Backend `app` with app-01, app-02 and optionally a backup app-03;
/// 127.0.0.2 is in the site's allow list.
fn config(a: &Upstream, b: &Upstream, backup: Option<&Upstream>) -> String {
    let backup = backup
        .map(|c| {
            format!(
                "      - {{ name: app-03, addr: \"{}\", backup: true }}\n",
                c.addr
            )
        })
        .unwrap_or_default();
    app_site_yaml(&a.addr, &b.addr, "      allow: [127.0.0.2/32]", &backup)
}

fn start() -> (Upstream, Upstream, Drawbridge) {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let d = Drawbridge::start(&config(&a, &b, None));
    (a, b, d)
}

fn name(r: &Response) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.text().trim().to_string()
}

fn sticky(server: &str) -> String {
    format!("SERVERID={}", server_id("app", server))
}

fn get_with(d: &Drawbridge, path: &str, cookie: &str) -> Response {
    d.send(Request::new("GET", path).header("Cookie", cookie.to_string()))
}

fn server(d: &Drawbridge, s: &str) -> Value {
    let r = d.api("GET", &format!("/api/v1/backends/app/servers/{s}"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    json(&r)
}

fn set_state(d: &Drawbridge, s: &str, state: &str) -> Value {
    let r = d.api(
        "PUT",
        &format!("/api/v1/backends/app/servers/{s}/state"),
        Some(&format!(r#"{{"state":"{state}"}}"#)),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = json(&r);
    assert_eq!(v["state"], state);
    v
}

/// New clients (no cookie) until `n` of them were pinned to `server`;
/// their cookies.
fn clients_stuck_to(d: &Drawbridge, server: &str, n: usize) -> Vec<String> {
    let mut cookies = Vec::new();
    for _ in 0..n * 10 {
        let r = d.get("/");
        if name(&r) == server {
            let v = set_cookie_value(&r, "SERVERID").expect("a new client gets a cookie");
            cookies.push(format!("SERVERID={v}"));
            if cookies.len() == n {
                return cookies;
            }
        }
    }
    panic!("only {} clients landed on {server}", cookies.len());
}

/// A thread sending sticky requests for `server` every 50 ms until `stop`
/// (at most `max` requests); every answer must be 200 from `server`.
fn sticky_traffic(
    d: &Drawbridge,
    server: &'static str,
    stop: Arc<AtomicBool>,
    max: usize,
) -> std::thread::JoinHandle<usize> {
    let web = d.web.clone();
    let cookie = sticky(server);
    std::thread::spawn(move || {
        let mut sent = 0;
        while sent < max && !stop.load(SeqCst) {
            let r = send(
                &web,
                Request::new("GET", "/").header("Cookie", cookie.clone()),
            );
            assert_eq!(r.status, 200);
            assert_eq!(r.text().trim(), server);
            sent += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        sent
    })
}

#[test]
fn drain_keeps_stuck_clients_and_sends_new_clients_elsewhere() {
    let (_a, _b, d) = start();
    let stuck = clients_stuck_to(&d, "app-01", 20);
    assert!(stuck.iter().all(|c| *c == sticky("app-01")));

    set_state(&d, "app-01", "drain");
    let before = redispatches(&d);
    for (i, c) in stuck.iter().enumerate() {
        let r = get_with(&d, "/", c);
        assert_eq!(name(&r), "app-01", "stuck client {i} was moved");
        assert!(
            r.header("set-cookie").is_none(),
            "stuck client {i} was re-pinned"
        );
    }
    for i in 0..50 {
        let r = d.get("/");
        assert_eq!(
            name(&r),
            "app-02",
            "new client {i} landed on the drain server"
        );
        assert_eq!(
            set_cookie_value(&r, "SERVERID"),
            Some(server_id("app", "app-02"))
        );
    }
    assert_eq!(
        redispatches(&d),
        before,
        "a stuck client of a drain server is not redispatched"
    );
    let v = server(&d, "app-01");
    assert_eq!(v["state"], "drain");
    assert!(v["sticky_last_seen"].is_string(), "{v}");
    let m = d.metrics_text();
    assert!(
        m.contains(r#"drawbridge_server_state{backend="app",server="app-01",state="drain"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"drawbridge_server_state{backend="app",server="app-01",state="ready"} 0"#),
        "{m}"
    );
}

#[test]
fn maint_moves_stuck_clients_without_failures_but_not_operators() {
    let (_a, _b, d) = start();
    let stuck = clients_stuck_to(&d, "app-01", 20);
    set_state(&d, "app-01", "drain");
    assert_eq!(name(&get_with(&d, "/", &stuck[0])), "app-01");

    let maint = || d.metric(REDISPATCH_MAINT);
    let before = maint();
    set_state(&d, "app-01", "maint");
    for (i, c) in stuck.iter().enumerate() {
        let r = get_with(&d, "/", c);
        assert_eq!(name(&r), "app-02", "client {i} stayed on the maint server");
        assert_eq!(
            set_cookie_value(&r, "SERVERID"),
            Some(server_id("app", "app-02")),
            "client {i} was not re-pinned"
        );
        // With its new cookie it stays on app-02.
        let again = get_with(&d, "/", &sticky("app-02"));
        assert_eq!(name(&again), "app-02");
        assert!(again.header("set-cookie").is_none());
    }
    assert_eq!(
        maint() - before,
        stuck.len() as f64,
        "each stuck client moved off the maint server is one redispatch"
    );
    let before = maint();
    // An operator (allow list) keeps testing app-01 through its cookie; the
    // same cookie from elsewhere is moved.
    let operator = || {
        get_from(
            &d.web,
            "127.0.0.2",
            Request::new("GET", "/").header("Cookie", sticky("app-01")),
        )
    };
    for _ in 0..5 {
        let r = operator();
        assert_eq!(name(&r), "app-01");
        assert!(r.header("set-cookie").is_none());
        let r = get_from(
            &d.web,
            "127.0.0.3",
            Request::new("GET", "/").header("Cookie", sticky("app-01")),
        );
        assert_eq!(name(&r), "app-02");
    }
    assert_eq!(
        maint() - before,
        5.0,
        "the 5 requests moved are counted, the operator's 5 are not"
    );
}

const REDISPATCH_MAINT: &str =
    r#"drawbridge_sticky_redispatch_total{backend="app",reason="maint"}"#;

/// The redispatch counters of backend `app`: down, maint, unknown.
fn redispatches(d: &Drawbridge) -> [f64; 3] {
    ["down", "maint", "unknown"].map(|reason| {
        d.metric(&format!(
            r#"drawbridge_sticky_redispatch_total{{backend="app",reason="{reason}"}}"#
        ))
    })
}

#[test]
fn wait_drained_waits_for_requests_in_flight_and_for_sticky_traffic_to_stop() {
    let (_a, _b, d) = start();
    set_state(&d, "app-01", "drain");
    let order = Arc::new(AtomicUsize::new(0));

    // A slow request pinned to app-01 is in flight when the wait begins,
    // and still at ctl's first 2 s poll (which then shows it).
    let slow = {
        let (web, order) = (d.web.clone(), order.clone());
        std::thread::spawn(move || {
            let r = send(
                &web,
                Request::new("GET", "/slow?ms=4000").header("Cookie", sticky("app-01")),
            );
            let done = order.fetch_add(1, SeqCst);
            (r.status, r.text(), done)
        })
    };
    assert!(
        wait_until(TIMEOUT, || server(&d, "app-01")["inflight"] == 1),
        "the slow request never showed as in flight"
    );
    let o = d.ctl(&[
        "wait-drained",
        "app/app-01",
        "--timeout",
        "20s",
        "--idle",
        "1s",
    ]);
    let ctl_done = order.fetch_add(1, SeqCst);
    let (status, body, slow_done) = slow.join().expect("slow request thread");
    assert_eq!((status, body.trim()), (200, "app-01"));
    assert!(
        slow_done < ctl_done,
        "wait-drained returned while the slow request was in flight"
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), err(&o));
    assert!(out(&o).contains("app/app-01 is drained"), "{}", out(&o));
    let progress = err(&o);
    assert!(
        progress.lines().any(|l| l.contains("in flight 1")),
        "no progress line while the request was in flight:\n{progress}"
    );
    assert!(
        progress
            .lines()
            .last()
            .is_some_and(|l| l.contains("in flight 0")),
        "{progress}"
    );

    // Sticky traffic keeps the server busy until it stops for `idle`.
    let started = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (order, started) = (order.clone(), started.clone());
        let web = d.web.clone();
        std::thread::spawn(move || {
            for _ in 0..30 {
                let r = send(
                    &web,
                    Request::new("GET", "/").header("Cookie", sticky("app-01")),
                );
                assert_eq!(r.text().trim(), "app-01");
                started.store(true, SeqCst);
                std::thread::sleep(Duration::from_millis(50));
            }
            order.fetch_add(1, SeqCst)
        })
    };
    assert!(wait_until(TIMEOUT, || started.load(SeqCst)));
    let r = d.api(
        "GET",
        "/api/v1/backends/app/servers/app-01/drained?timeout=20&idle=1",
        None,
    );
    let api_done = order.fetch_add(1, SeqCst);
    let traffic_done = traffic.join().expect("traffic thread");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = json(&r);
    assert_eq!(v["drained"], true);
    assert_eq!(v["inflight"], 0);
    assert!(
        traffic_done < api_done,
        "drained answered while sticky requests were still coming"
    );
}

#[test]
fn wait_drained_times_out_while_sticky_users_keep_coming() {
    let (_a, _b, d) = start();
    set_state(&d, "app-01", "drain");
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = sticky_traffic(&d, "app-01", stop.clone(), 400);
    assert!(wait_until(TIMEOUT, || server(&d, "app-01")
        ["sticky_last_seen"]
        .is_string()));

    let o = d.ctl(&[
        "wait-drained",
        "app/app-01",
        "--timeout",
        "2s",
        "--idle",
        "5s",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}{}", out(&o), err(&o));
    assert!(out(&o).contains("not drained"), "{}", out(&o));
    let lines = err(&o).lines().count();
    assert!(
        (1..=20).contains(&lines),
        "{lines} progress lines in 2 seconds:\n{}",
        err(&o)
    );

    let r = d.api(
        "GET",
        "/api/v1/backends/app/servers/app-01/drained?timeout=1&idle=5",
        None,
    );
    assert_eq!(r.status, 408, "{}", r.text());
    let v = json(&r);
    assert_eq!(v["drained"], false);
    assert!(v["inflight"].is_u64(), "{v}");
    assert!(v["sticky_last_seen"].is_string(), "{v}");

    stop.store(true, SeqCst);
    assert!(traffic.join().expect("traffic thread") > 0);
}

#[test]
fn all_servers_in_maint_is_the_maintenance_page_not_the_error_page() {
    let (_a, _b, d) = start();
    for s in ["app-01", "app-02"] {
        let o = d.ctl(&["server", &format!("app/{s}"), "maint"]);
        assert!(o.status.success(), "{}", err(&o));
    }
    for _ in 0..3 {
        let r = d.get("/");
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), Some("600"));
        let body = r.text();
        assert!(body.contains("Planned maintenance"), "{body}");
        assert!(!body.contains("went wrong"), "{body}");
    }
    let v = json(&d.api("GET", "/api/v1/status", None));
    assert_eq!(v["sites"][0]["in_maintenance"], true);
    assert_eq!(v["sites"][0]["maintenance"]["enabled"], false);
    let o = d.ctl(&["status"]);
    assert!(out(&o).contains("every server is in maint"), "{}", out(&o));

    // Operators still reach the servers in maint.
    let r = get_from(&d.web, "127.0.0.2", Request::new("GET", "/"));
    assert!(name(&r).starts_with("app-0"));

    set_state(&d, "app-02", "ready");
    assert_eq!(name(&d.get("/")), "app-02");
    let v = json(&d.api("GET", "/api/v1/status", None));
    assert_eq!(v["sites"][0]["in_maintenance"], false);
}

#[test]
fn backup_servers_and_weight_zero() {
    let (a, b, c) = (
        Upstream::start("app-01"),
        Upstream::start("app-02"),
        Upstream::start("app-03"),
    );
    let d = Drawbridge::start(&config(&a, &b, Some(&c)));
    let new_clients = |n: usize| {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for _ in 0..n {
            *seen.entry(name(&d.get("/"))).or_default() += 1;
        }
        seen
    };
    let seen = new_clients(30);
    assert_eq!(seen.get("app-01"), Some(&15), "{seen:?}");
    assert_eq!(seen.get("app-02"), Some(&15), "{seen:?}");
    assert!(
        !seen.contains_key("app-03"),
        "the backup took traffic: {seen:?}"
    );

    // Weight 0: no new users, but its stuck users stay.
    let o = d.ctl(&["weight", "app/app-01", "0"]);
    assert!(o.status.success(), "{}", err(&o));
    let seen = new_clients(20);
    assert_eq!(seen.get("app-02"), Some(&20), "{seen:?}");
    assert_eq!(name(&get_with(&d, "/", &sticky("app-01"))), "app-01");

    // Both regular servers draining: the backup takes the new users, the
    // stuck ones stay.
    let o = d.ctl(&["weight", "app/app-01", "1"]);
    assert!(o.status.success(), "{}", err(&o));
    set_state(&d, "app-01", "drain");
    set_state(&d, "app-02", "drain");
    let seen = new_clients(20);
    assert_eq!(seen.get("app-03"), Some(&20), "{seen:?}");
    assert_eq!(name(&get_with(&d, "/", &sticky("app-01"))), "app-01");
    assert_eq!(name(&get_with(&d, "/", &sticky("app-02"))), "app-02");

    // The backup in maint too: the drain servers are the last resort, not
    // the maintenance page (not every server is in maint).
    set_state(&d, "app-03", "maint");
    let seen = new_clients(10);
    assert_eq!(seen.values().sum::<usize>(), 10, "{seen:?}");
    assert!(!seen.contains_key("app-03"), "{seen:?}");
}

#[test]
fn states_and_weights_survive_kill9_and_show_in_metrics() {
    let (_a, _b, d) = start();
    set_state(&d, "app-01", "drain");
    let r = d.api(
        "PUT",
        "/api/v1/backends/app/servers/app-02/weight",
        Some(r#"{"weight":7}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["weight"], 7);

    let d = d.kill9_and_restart();
    let one = server(&d, "app-01");
    let two = server(&d, "app-02");
    assert_eq!(
        (&one["state"], &one["weight"]),
        (&"drain".into(), &1.into())
    );
    assert_eq!(
        (&two["state"], &two["weight"]),
        (&"ready".into(), &7.into())
    );
    let m = d.metrics_text();
    for line in [
        r#"drawbridge_server_state{backend="app",server="app-01",state="drain"} 1"#,
        r#"drawbridge_server_state{backend="app",server="app-01",state="ready"} 0"#,
        r#"drawbridge_server_state{backend="app",server="app-02",state="ready"} 1"#,
        r#"drawbridge_server_weight{backend="app",server="app-02"} 7"#,
    ] {
        assert!(m.contains(line), "metrics lack {line}:\n{m}");
    }
    // In force, not only shown: new clients avoid the drain server.
    for _ in 0..10 {
        assert_eq!(name(&d.get("/")), "app-02");
    }
    assert_eq!(name(&get_with(&d, "/", &sticky("app-01"))), "app-01");
}

#[test]
fn bad_server_input_is_refused_and_changes_nothing() {
    let (_a, _b, d) = start();
    set_state(&d, "app-02", "drain");
    let state = read(&d.state_file());
    let before = json(&d.api("GET", "/api/v1/status", None));
    let admin_view = |v: &Value| -> Vec<(Value, Value)> {
        v["backends"][0]["servers"]
            .as_array()
            .expect("servers")
            .iter()
            .map(|s| (s["state"].clone(), s["weight"].clone()))
            .collect()
    };
    let s1 = "/api/v1/backends/app/servers/app-01";
    let s2 = "/api/v1/backends/app/servers/app-02";
    let cases: Vec<(&str, String, Option<&str>, u16)> = vec![
        (
            "PUT",
            format!("{s1}/state"),
            Some(r#"{"state":"sleeping"}"#),
            400,
        ),
        (
            "PUT",
            format!("{s1}/state"),
            Some(r#"{"state":"DRAIN"}"#),
            400,
        ),
        ("PUT", format!("{s1}/state"), Some(r#"{"state":1}"#), 400),
        (
            "PUT",
            format!("{s1}/state"),
            Some(r#"{"state":"drain","x":1}"#),
            400,
        ),
        ("PUT", format!("{s1}/state"), Some("drain"), 400),
        ("PUT", format!("{s1}/weight"), Some(r#"{"weight":-1}"#), 400),
        (
            "PUT",
            format!("{s1}/weight"),
            Some(r#"{"weight":1000}"#),
            400,
        ),
        (
            "PUT",
            format!("{s1}/weight"),
            Some(r#"{"weight":257}"#),
            400,
        ),
        (
            "PUT",
            format!("{s1}/weight"),
            Some(r#"{"weight":1.5}"#),
            400,
        ),
        (
            "PUT",
            format!("{s1}/weight"),
            Some(r#"{"weight":"3"}"#),
            400,
        ),
        ("PUT", format!("{s1}/weight"), Some(r#"{}"#), 400),
        (
            "PUT",
            "/api/v1/backends/nope/servers/app-01/state".into(),
            Some(r#"{"state":"drain"}"#),
            404,
        ),
        (
            "PUT",
            "/api/v1/backends/app/servers/app-09/state".into(),
            Some(r#"{"state":"drain"}"#),
            404,
        ),
        (
            "PUT",
            "/api/v1/backends/app/servers/app-09/weight".into(),
            Some(r#"{"weight":1}"#),
            404,
        ),
        (
            "GET",
            "/api/v1/backends/app/servers/app-09/drained".into(),
            None,
            404,
        ),
        ("GET", format!("{s2}/drained?timeout=abc"), None, 400),
        ("GET", format!("{s2}/drained?timeout=999999"), None, 400),
        ("GET", format!("{s2}/drained?idle=-1"), None, 400),
        ("GET", format!("{s1}/drained?timeout=abc"), None, 400),
        ("GET", format!("{s1}/state"), None, 405),
        ("POST", format!("{s1}/weight"), Some(r#"{"weight":1}"#), 405),
        // A ready server is not deleted.
        ("DELETE", s1.to_string(), None, 409),
        ("DELETE", format!("{s1}?force=maybe"), None, 400),
        (
            "DELETE",
            "/api/v1/backends/app/servers/app-09".into(),
            None,
            404,
        ),
        ("PUT", "/api/v1/backends/app/servers".into(), None, 405),
        // Servers added with a bad name, address or setting.
        (
            "POST",
            "/api/v1/backends/app/servers".into(),
            Some(r#"{"name":"app-01","addr":"127.0.0.1:9"}"#),
            409,
        ),
        (
            "POST",
            "/api/v1/backends/nope/servers".into(),
            Some(r#"{"name":"app-09","addr":"127.0.0.1:9"}"#),
            404,
        ),
        (
            "POST",
            "/api/v1/backends/app/servers".into(),
            Some(r#"{"name":"app 09","addr":"127.0.0.1:9"}"#),
            400,
        ),
        (
            "POST",
            "/api/v1/backends/app/servers".into(),
            Some(r#"{"name":"app-09","addr":"app.internal:80"}"#),
            400,
        ),
        (
            "POST",
            "/api/v1/backends/app/servers".into(),
            Some(r#"{"name":"app-09","addr":"127.0.0.1:0"}"#),
            400,
        ),
        (
            "POST",
            "/api/v1/backends/app/servers".into(),
            Some(r#"{"name":"app-09","addr":"127.0.0.1:9","weight":257}"#),
            400,
        ),
        (
            "POST",
            "/api/v1/backends/app/servers".into(),
            Some(r#"{"name":"app-09","addr":"127.0.0.1:9","state":"up"}"#),
            400,
        ),
        (
            "POST",
            "/api/v1/backends/app/servers".into(),
            Some(r#"{"name":"app-09","addr":"127.0.0.1:9","port":80}"#),
            400,
        ),
        ("POST", "/api/v1/backends/app/servers".into(), None, 400),
    ];
    let unchanged = |what: &str| {
        assert_eq!(
            read(&d.state_file()),
            state,
            "{what} changed the state file"
        );
        let now = json(&d.api("GET", "/api/v1/status", None));
        assert_eq!(admin_view(&now), admin_view(&before), "{what}");
    };
    for (method, path, body, want) in &cases {
        let r = d.api(method, path, *body);
        let what = format!("{method} {path} {body:?}");
        assert_eq!(r.status, *want, "{what}: {}", r.text());
        let v = json(&r);
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {v}"
        );
        unchanged(&what);
    }

    // On a ready server `drained` refuses at once instead of waiting.
    let r = httpc::request(
        &d.admin,
        &Request::new(
            "GET",
            "/api/v1/backends/app/servers/app-01/drained?timeout=60",
        ),
        Duration::from_secs(5),
    )
    .expect("drained on a ready server answers");
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(json(&r)["error"]
        .as_str()
        .is_some_and(|e| e.contains("ready")));
    unchanged("drained on a ready server");
    // Traffic still goes where it went.
    for _ in 0..4 {
        assert_eq!(name(&d.get("/")), "app-01");
    }
}

#[test]
fn ctl_server_and_weight_print_readable_lines() {
    let (a, _b, d) = start();
    let o = d.ctl(&["server", "app/app-01", "drain"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let line = out(&o);
    assert!(
        line.contains("app/app-01")
            && line.contains(&a.addr)
            && line.contains("state drain")
            && line.contains("health up"),
        "{line}"
    );
    let o = d.ctl(&["weight", "app/app-01", "3"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(out(&o).contains("weight 3"), "{}", out(&o));
    assert_eq!(server(&d, "app-01")["weight"], 3);

    let o = d.ctl(&["--json", "server", "app/app-01", "ready"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let v: Value = serde_json::from_str(&out(&o)).expect("JSON");
    assert_eq!(v["state"], "ready");

    let bad: &[(&[&str], &str)] = &[
        (&["server", "app/app-01", "sleeping"], "unknown state"),
        (&["server", "app/app-09", "drain"], "unknown server"),
        (&["server", "nope/app-01", "drain"], "unknown backend"),
        (&["server", "app-01", "drain"], "BACKEND/SERVER"),
        (&["weight", "app/app-01", "1000"], "between 0 and 256"),
        (&["weight", "app/app-01", "-1"], "between 0 and 256"),
        // A usage error is 1: for wait-drained, 2 means "timed out".
        (&["wait-drained", "app/app-01", "--idel", "1s"], "--idel"),
        (&["wait-drained", "app/app-01", "--timeout", "5s"], "ready"),
        (
            &["wait-drained", "app/app-01", "--timeout", "soon"],
            "--timeout",
        ),
    ];
    for (args, msg) in bad {
        let o = d.ctl(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", out(&o));
        assert!(err(&o).contains(msg), "{args:?}: {}", err(&o));
    }
    let v = server(&d, "app-01");
    assert_eq!((&v["state"], &v["weight"]), (&"ready".into(), &3.into()));
}
