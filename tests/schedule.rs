//! Scheduled maintenance windows and the rolling step (CONTRACT section
//! 13): a window opens and closes by itself with a falling Retry-After and
//! a page that reloads itself, survives a restart, is over when it ended
//! while drawbridge was stopped, and bad windows change nothing; `ctl
//! server ... maint --drain` drains, waits and sets maint (exit 0) or
//! leaves the server in drain at its timeout (exit 2); the drain view
//! counts the distinct clients still pinned to a server.

mod common;

use common::*;
use drawbridge::config::time::{format_rfc3339, parse_rfc3339};
use drawbridge::httpc::{Request, Response};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

fn start() -> (Upstream, Upstream, Drawbridge) {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let d = Drawbridge::start(&app_site_yaml(
        &a.addr,
        &b.addr,
        "      enabled: false\n      retry_after: 600",
        "",
    ));
    (a, b, d)
}

fn site(d: &Drawbridge) -> serde_json::Value {
    json(&d.api("GET", "/api/v1/sites/app", None))
}

/// A window from `from` to `until` (Unix seconds).
fn schedule(d: &Drawbridge, from: u64, until: u64) -> Response {
    d.api(
        "PUT",
        "/api/v1/sites/app/maintenance",
        Some(&format!(
            r#"{{"enabled":true,"from":"{}","until":"{}","message":"Database upgrade"}}"#,
            format_rfc3339(from),
            format_rfc3339(until)
        )),
    )
}

/// What one request saw: when (ms), status, Retry-After, Refresh.
struct Seen {
    at: u64,
    status: u16,
    retry_after: Option<u64>,
    refresh: Option<u64>,
}

fn look(d: &Drawbridge) -> Seen {
    let r = d.get("/");
    Seen {
        at: now_ms(),
        status: r.status,
        retry_after: r.header("retry-after").and_then(|v| v.parse().ok()),
        refresh: r.header("refresh").and_then(|v| v.parse().ok()),
    }
}

#[test]
fn a_window_opens_and_closes_by_itself() {
    let (_a, _b, d) = start();
    assert_eq!(d.get("/").status, 200);
    assert_eq!(
        d.metric(r#"drawbridge_maintenance_window_end_timestamp_seconds{site="app"}"#),
        0.0
    );
    // Whole seconds, about 3 s and 6 s ahead.
    let from = now_ms() / 1000 + 3;
    let until = from + 3;
    let r = schedule(&d, from, until);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = json(&r);
    assert_eq!(v["maintenance"]["from"], format_rfc3339(from));
    assert_eq!(v["maintenance"]["until"], format_rfc3339(until));
    assert_eq!(v["in_maintenance"], false, "not yet");
    assert_eq!(
        d.metric(r#"drawbridge_maintenance_window_start_timestamp_seconds{site="app"}"#),
        from as f64
    );
    assert_eq!(
        d.metric(r#"drawbridge_maintenance_window_end_timestamp_seconds{site="app"}"#),
        until as f64
    );
    let status = out(&d.ctl(&["status"]));
    assert!(status.contains("(scheduled)"), "{status}");

    // Watch, without any call to the API, until 2 s after the end.
    let mut seen = Vec::new();
    let mut page = None;
    let mut json_answer = None;
    while now_ms() < (until + 2) * 1000 {
        let s = look(&d);
        if s.status == 503 && page.is_none() {
            page = Some(d.get("/").text());
            json_answer = Some(json(
                &d.send(Request::new("GET", "/").header("Accept", "application/json")),
            ));
        }
        seen.push(s);
        std::thread::sleep(Duration::from_millis(100));
    }
    let (from_ms, until_ms) = (from * 1000, until * 1000);
    for s in &seen {
        let inside = s.at >= from_ms + 1000 && s.at + 1000 <= until_ms;
        let outside = s.at + 1000 <= from_ms || s.at >= until_ms + 1000;
        if inside {
            assert_eq!(s.status, 503, "inside the window at {}", s.at);
        }
        if outside {
            assert_eq!(s.status, 200, "outside the window at {}", s.at);
        }
    }
    let closed: Vec<&Seen> = seen.iter().filter(|s| s.status == 503).collect();
    assert!(closed.len() >= 10, "{} maintenance answers", closed.len());
    // Retry-After counts down to `until`, never up; Refresh just past it.
    for s in &closed {
        let left = until_ms.saturating_sub(s.at).div_ceil(1000).max(1);
        let retry = s.retry_after.expect("Retry-After");
        assert!(
            retry.abs_diff(left) <= 1,
            "Retry-After {retry}, {left} s left"
        );
        assert_eq!(s.refresh, Some(retry + 1), "the page reloads itself");
    }
    assert!(closed
        .windows(2)
        .all(|w| w[1].retry_after <= w[0].retry_after));
    assert!(closed[0].retry_after > closed[closed.len() - 1].retry_after);
    let page = page.expect("a page");
    assert!(page.contains(&format_rfc3339(until)), "{page}");
    assert!(page.contains("Database upgrade"));
    let j = json_answer.expect("a JSON answer");
    assert_eq!(j["until"], format_rfc3339(until));
    assert!(j["retry_after"].as_u64().is_some_and(|r| r <= 3));

    // Afterwards the settings say so too, and the state file keeps it.
    assert!(wait_until(Duration::from_secs(3), || {
        site(&d)["maintenance"]["enabled"] == false
    }));
    let v = site(&d);
    assert!(v["maintenance"]["until"].is_null(), "{v}");
    let state = std::fs::read_to_string(d.state_file()).expect("state file");
    assert!(!state.contains("until"), "{state}");
    assert!(d.log_text().contains("maintenance window began"));
    assert!(d.log_text().contains("maintenance window over"));
    assert_eq!(
        d.metric(r#"drawbridge_maintenance_window_end_timestamp_seconds{site="app"}"#),
        0.0
    );
}

#[test]
fn a_window_survives_a_restart_and_one_that_ended_while_stopped_is_over() {
    let (_a, _b, d) = start();
    let now = now_ms() / 1000;
    let until = now + 4;
    assert_eq!(schedule(&d, now - 60, until).status, 200);
    assert_eq!(d.get("/").status, 503);
    let d = d.kill9_and_restart();
    assert_eq!(d.get("/").status, 503, "still inside the window");
    assert_eq!(site(&d)["maintenance"]["until"], format_rfc3339(until));

    // Stopped across the end: the window is simply over.
    let mut d = d;
    d.proc.kill();
    while now_ms() < (until + 1) * 1000 {
        std::thread::sleep(Duration::from_millis(100));
    }
    let d = d.launch();
    assert_eq!(d.get("/").status, 200);
    let v = site(&d);
    assert_eq!(v["maintenance"]["enabled"], false, "{v}");
    assert!(d.log_text().contains("ended while drawbridge was stopped"));
}

#[test]
fn bad_windows_are_refused_and_change_nothing() {
    let (_a, _b, d) = start();
    let now = now_ms() / 1000;
    assert_eq!(schedule(&d, now + 100, now + 200).status, 200);
    let before = site(&d);
    for (body, says) in [
        (
            format!(
                r#"{{"enabled":true,"from":"{}","until":"{}"}}"#,
                format_rfc3339(now + 300),
                format_rfc3339(now + 250)
            ),
            "is not after from",
        ),
        (
            format!(
                r#"{{"enabled":true,"until":"{}"}}"#,
                format_rfc3339(now - 10)
            ),
            "in the past",
        ),
        (
            r#"{"enabled":true,"until":"tomorrow"}"#.to_string(),
            "expected RFC 3339",
        ),
        (r#"{"enabled":true,"from":42}"#.to_string(), "invalid type"),
    ] {
        let r = d.api("PUT", "/api/v1/sites/app/maintenance", Some(&body));
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains(says), "{body}: {}", r.text());
        assert_eq!(site(&d), before, "{body} changed the site");
    }
    // `off` ends the window as well.
    let r = d.api(
        "PUT",
        "/api/v1/sites/app/maintenance",
        Some(r#"{"enabled":false}"#),
    );
    assert!(json(&r)["maintenance"]["from"].is_null());
    assert!(json(&r)["maintenance"]["until"].is_null());
}

#[test]
fn ctl_schedules_with_offsets() {
    let (_a, _b, d) = start();
    let o = d.ctl(&["maintenance", "on", "app", "--until", "+1h"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).contains("window now to"), "{}", out(&o));
    let until = site(&d)["maintenance"]["until"]
        .as_str()
        .and_then(|t| parse_rfc3339(t).ok())
        .expect("until set");
    assert!(until.abs_diff(now_ms() / 1000 + 3600) <= 5);
    assert_eq!(d.get("/").status, 503);
    // `on` without a window replaces it: on now, until switched off.
    assert!(d.ctl(&["maintenance", "on", "app"]).status.success());
    assert!(site(&d)["maintenance"]["until"].is_null());
    let o = d.ctl(&["maintenance", "on", "app", "--from", "soon"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("--from"), "{}", err(&o));
}

/// A client pinned to a server: its cookie, taken from a first answer.
fn pinned_to(d: &Drawbridge, server: &str, local: &str) -> String {
    for _ in 0..20 {
        let r = get_from(&d.web, local, Request::new("GET", "/"));
        if r.text().trim() == server {
            return set_cookie_value(&r, "SERVERID").expect("sticky cookie");
        }
    }
    panic!("never sent to {server}");
}

#[test]
fn the_rolling_step_drains_then_sets_maint_and_counts_clients() {
    let (_a, _b, d) = start();
    let d = Arc::new(d);
    let cookies: Vec<(String, String)> = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        .iter()
        .map(|ip| (ip.to_string(), pinned_to(&d, "app-01", ip)))
        .collect();
    let server = || json(&d.api("GET", "/api/v1/backends/app/servers/app-01", None));
    assert_eq!(server()["clients"], 0, "no request came by cookie yet");
    for (ip, cookie) in &cookies {
        for _ in 0..3 {
            let req = Request::new("GET", "/").header("Cookie", format!("SERVERID={cookie}"));
            assert_eq!(get_from(&d.web, ip, req).text().trim(), "app-01");
        }
    }
    assert_eq!(server()["clients"], 3, "three clients, nine requests");

    // One of them keeps coming back: at the timeout the server stays in drain.
    let stop = Arc::new(AtomicBool::new(false));
    let user = {
        let (d, stop, cookie) = (d.clone(), stop.clone(), cookies[0].1.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let req = Request::new("GET", "/").header("Cookie", format!("SERVERID={cookie}"));
                assert_eq!(d.send(req).status, 200);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let rolling_step = |timeout: &str| {
        d.ctl(&[
            "server",
            "app/app-01",
            "maint",
            "--drain",
            "--timeout",
            timeout,
            "--idle",
            "1s",
        ])
    };
    let t = Instant::now();
    let o = rolling_step("2s");
    stop.store(true, Ordering::Relaxed);
    user.join().expect("user thread");
    assert_eq!(o.status.code(), Some(2), "{}{}", out(&o), err(&o));
    assert!(t.elapsed() >= Duration::from_secs(2));
    assert!(out(&o).contains("left in drain"), "{}", out(&o));
    assert!(err(&o).contains("clients in the last 1s"), "{}", err(&o));
    assert_eq!(server()["state"], "drain");

    // Nobody left: drained, then maint.
    let o = rolling_step("10s");
    assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), err(&o));
    assert!(err(&o).contains("is drained"), "{}", err(&o));
    assert!(out(&o).contains("state maint"), "{}", out(&o));
    assert_eq!(server()["state"], "maint");
    let o = d.ctl(&["server", "app/app-02", "ready", "--drain"]);
    assert_eq!(o.status.code(), Some(1), "--drain goes with maint");
}
