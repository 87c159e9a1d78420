//! The proxy core against real upstreams: balancing, stickiness, cookie
//! hygiene, failover with connect retries, the error page, host routing,
//! X-Forwarded-For, the access log, and bad input.

mod common;

use common::*;
use drawbridge::httpc::{Conn, Request};
use std::collections::HashMap;
use std::time::Duration;

fn body_name(r: &drawbridge::httpc::Response) -> String {
    r.text().trim().to_string()
}

#[test]
fn round_robin_spreads_across_both_servers() {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let d = Drawbridge::start(&two_server_yaml(&a.addr, &b.addr));
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..20 {
        let r = d.get("/");
        assert_eq!(r.status, 200);
        *seen.entry(body_name(&r)).or_default() += 1;
    }
    assert_eq!(seen.get("app-01"), Some(&10), "{seen:?}");
    assert_eq!(seen.get("app-02"), Some(&10), "{seen:?}");
}

#[test]
fn a_client_keeping_its_cookie_stays_and_the_app_never_sees_it() {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let d = Drawbridge::start(&two_server_yaml(&a.addr, &b.addr));
    let first = d.get("/");
    let cookie =
        set_cookie_value(&first, "SERVERID").expect("a sticky cookie on the first response");
    assert_eq!(first.header("cache-control"), Some("private"));
    let set_cookie = first.header("set-cookie").unwrap_or("");
    assert!(
        set_cookie.contains("Path=/")
            && set_cookie.contains("HttpOnly")
            && set_cookie.contains("SameSite=Lax")
    );
    assert!(
        !set_cookie.contains("127.0.0.1"),
        "the cookie must not reveal the address: {set_cookie}"
    );
    let name = body_name(&first);
    for i in 0..50 {
        let r = d
            .send(Request::new("GET", "/").header("Cookie", format!("other=1; SERVERID={cookie}")));
        assert_eq!(body_name(&r), name, "request {i} left its server");
        assert!(
            r.header("set-cookie").is_none(),
            "Set-Cookie again on request {i}"
        );
    }
    let echoed = d
        .send(
            Request::new("GET", "/headers")
                .header("Cookie", format!("other=1; SERVERID={cookie}; more=2")),
        )
        .text();
    assert!(echoed.contains("cookie: other=1; more=2"), "{echoed}");
    assert!(
        !echoed.contains("SERVERID"),
        "the app saw the sticky cookie: {echoed}"
    );
    // Sticky values that name no server, and the maintenance bypass
    // cookie, are removed as well; other cookies are kept.
    for sent in [
        "other=1; SERVERID=not-a-server",
        "SERVERID=; other=1",
        "other=1; DRAWBRIDGE_BYPASS=abc",
    ] {
        let echoed = d
            .send(Request::new("GET", "/headers").header("Cookie", sent))
            .text();
        assert!(echoed.contains("cookie: other=1"), "{sent}: {echoed}");
        assert!(
            !echoed.contains("SERVERID") && !echoed.contains("DRAWBRIDGE_BYPASS"),
            "{sent}: the app saw our cookie: {echoed}"
        );
    }
    // With nothing but our cookies, the app gets no Cookie header at all.
    let echoed = d
        .send(
            Request::new("GET", "/headers")
                .header(
                    "Cookie",
                    format!("SERVERID={cookie}; DRAWBRIDGE_BYPASS=abc"),
                )
                .header("Cookie", "SERVERID=x"),
        )
        .text();
    assert!(!echoed.to_ascii_lowercase().contains("cookie"), "{echoed}");
}

#[test]
fn killing_the_sticky_server_moves_the_client_without_failed_requests() {
    let (mut a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let d = Drawbridge::start(&two_server_yaml(&a.addr, &b.addr));
    // Find a cookie for app-01.
    let mut cookie = None;
    for _ in 0..4 {
        let r = d.get("/");
        if body_name(&r) == "app-01" {
            cookie = set_cookie_value(&r, "SERVERID");
            break;
        }
    }
    let cookie = cookie.expect("a cookie for app-01");
    let redispatched_down = || d.metric(REDISPATCH_DOWN);
    assert_eq!(redispatched_down(), 0.0, "nothing was redispatched yet");
    a.stop();
    // Right after the kill the health check has not noticed yet: the connect
    // failure is retried on app-02. Then the health check takes over.
    let mut moved_cookie = None;
    for i in 0..30 {
        let r = d.send(Request::new("GET", "/").header("Cookie", format!("SERVERID={cookie}")));
        assert_eq!(r.status, 200, "request {i} failed while app-01 went away");
        assert_eq!(body_name(&r), "app-02");
        if let Some(c) = set_cookie_value(&r, "SERVERID") {
            moved_cookie = Some(c);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let moved = moved_cookie.expect("the client was re-cookied");
    assert_ne!(moved, cookie);
    // Within fall x interval plus slack the status shows app-01 down.
    let down = wait_until(Duration::from_secs(5), || {
        let s = d.api("GET", "/api/v1/backends/app/servers/app-01", None);
        s.json().is_ok_and(|v| v["health"] == "down")
    });
    assert!(down, "health check did not mark app-01 down");
    // From now on each request whose cookie names app-01 is redispatched
    // because app-01 is down, and counted once.
    let before = redispatched_down();
    for i in 0..5 {
        let r = d.send(Request::new("GET", "/").header("Cookie", format!("SERVERID={cookie}")));
        assert_eq!(
            r.status, 200,
            "request {i} with the cookie of the down server"
        );
        assert_eq!(body_name(&r), "app-02");
        assert!(
            set_cookie_value(&r, "SERVERID").is_some(),
            "request {i} was not re-cookied"
        );
    }
    assert_eq!(
        redispatched_down() - before,
        5.0,
        "5 requests for the down server, 5 redispatches counted"
    );
}

const REDISPATCH_DOWN: &str = r#"drawbridge_sticky_redispatch_total{backend="app",reason="down"}"#;

#[test]
fn all_servers_down_gives_the_error_page_not_the_maintenance_page() {
    let (mut a, mut b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let d = Drawbridge::start(&two_server_yaml(&a.addr, &b.addr));
    a.stop();
    b.stop();
    for _ in 0..5 {
        let r = d.get("/");
        assert_eq!(r.status, 503);
        assert!(
            r.header("retry-after").is_none(),
            "the error page is not maintenance"
        );
        let body = r.text();
        assert!(body.contains("went wrong"), "{body}");
        assert!(!body.to_lowercase().contains("maintenance"), "{body}");
    }
    // Also once health checks have marked both down (no connect attempt).
    assert!(wait_until(Duration::from_secs(5), || d
        .api("GET", "/api/v1/status", None)
        .text()
        .matches("\"down\"")
        .count()
        == 2));
    let r = d.get("/");
    assert_eq!(r.status, 503);
    assert!(r.text().contains("went wrong"));
}

#[test]
fn host_routing_between_two_sites_and_the_default() {
    let (a, b, c) = (
        Upstream::start("one"),
        Upstream::start("two"),
        Upstream::start("dflt"),
    );
    let yaml = format!(
        r#"listeners:
  - {{ name: web, listen: "{{web}}" }}
sites:
  - {{ name: one, hosts: [one.example.org], backend: one }}
  - {{ name: two, hosts: ["*.two.example.org"], backend: two }}
  - {{ name: fallback, backend: dflt }}
backends:
  - {{ name: one, servers: [{{ name: s, addr: "{}" }}] }}
  - {{ name: two, servers: [{{ name: s, addr: "{}" }}] }}
  - {{ name: dflt, servers: [{{ name: s, addr: "{}" }}] }}
"#,
        a.addr, b.addr, c.addr
    );
    let d = Drawbridge::start(&yaml);
    let host = |h: &str| body_name(&d.send(Request::new("GET", "/").header("Host", h)));
    assert_eq!(host("one.example.org"), "one");
    assert_eq!(host("ONE.Example.ORG:8080"), "one");
    assert_eq!(host("a.b.two.example.org"), "two");
    assert_eq!(host("two.example.org"), "dflt");
    assert_eq!(host("elsewhere.net"), "dflt");
}

#[test]
fn no_matching_site_and_no_default_is_a_plain_404() {
    let a = Upstream::start("one");
    let yaml = format!(
        "listeners:\n  - {{ name: web, listen: \"{{web}}\" }}\nsites:\n  - {{ name: one, hosts: [one.example.org], backend: one }}\nbackends:\n  - {{ name: one, servers: [{{ name: s, addr: \"{}\" }}] }}\n",
        a.addr
    );
    let d = Drawbridge::start(&yaml);
    let r = d.send(Request::new("GET", "/").header("Host", "other.example.org"));
    assert_eq!(r.status, 404);
    assert!(r.text().contains("no site"));
}

#[test]
fn forwarded_headers_are_appended() {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let d = Drawbridge::start(&two_server_yaml(&a.addr, &b.addr));
    let r = d.send(
        Request::new("GET", "/headers")
            .header("Host", "shop.example.org")
            .header("X-Forwarded-For", "198.51.100.7"),
    );
    let t = r.text();
    assert!(
        t.contains("x-forwarded-for: 198.51.100.7, 127.0.0.1"),
        "{t}"
    );
    assert!(t.contains("x-forwarded-proto: http"), "{t}");
    assert!(t.contains("x-forwarded-host: shop.example.org"), "{t}");
    // Several X-Forwarded-For headers become one list, in order; the
    // request target reaches the app byte for byte.
    let r = d.send(
        Request::new("GET", "/headers?q=a%20b&next=%2Fx")
            .header("X-Forwarded-For", "198.51.100.7")
            .header("X-Forwarded-For", "203.0.113.9, 192.0.2.1")
            .header("X-Custom-Thing", "kept"),
    );
    let t = r.text();
    assert!(t.starts_with("target: /headers?q=a%20b&next=%2Fx\n"), "{t}");
    let xff: Vec<&str> = t
        .lines()
        .filter(|l| l.starts_with("x-forwarded-for:"))
        .collect();
    assert_eq!(
        xff,
        ["x-forwarded-for: 198.51.100.7, 203.0.113.9, 192.0.2.1, 127.0.0.1"],
        "{t}"
    );
    assert!(t.contains("x-custom-thing: kept"), "{t}");
}

/// The request is edited once for the upstream: a connect failure retried
/// on another server sends the same request, with one X-Forwarded-For hop
/// and without our cookies.
#[test]
fn a_retried_request_carries_the_forwarded_headers_once() {
    let live = Upstream::start("live");
    let refusing = dead_addr();
    let dead = &refusing.addr;
    let d = Drawbridge::start(&format!(
        "listeners:\n  - {{ name: web, listen: \"{{web}}\" }}\nsites:\n  - {{ name: app, backend: app }}\nbackends:\n  - name: app\n    sticky: {{ cookie: SERVERID }}\n    servers:\n      - {{ name: dead, addr: \"{dead}\" }}\n      - {{ name: live, addr: \"{}\" }}\n",
        live.addr
    ));
    // Each new client goes to the dead server first (a retry moves the
    // round-robin counter on too), then to the live one.
    for i in 0..4 {
        let r = d.send(
            Request::new("GET", "/headers")
                .header("X-Forwarded-For", "198.51.100.7")
                .header("Cookie", "other=1; SERVERID=nobody; DRAWBRIDGE_BYPASS=x"),
        );
        assert_eq!(r.status, 200, "request {i}");
        let t = r.text();
        let xff: Vec<&str> = t
            .lines()
            .filter(|l| l.starts_with("x-forwarded-for:"))
            .collect();
        assert_eq!(xff, ["x-forwarded-for: 198.51.100.7, 127.0.0.1"], "{t}");
        let cookies: Vec<&str> = t.lines().filter(|l| l.starts_with("cookie:")).collect();
        assert_eq!(cookies, ["cookie: other=1"], "{t}");
    }
    let m = d.metrics_text();
    assert!(
        m.contains("drawbridge_upstream_connect_errors_total{backend=\"app\",server=\"dead\"} 4"),
        "{m}"
    );
}

#[test]
fn bad_cookies_and_odd_hosts_never_break_requests() {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let other = "SERVERID=ffffffffffffffff";
    let d = Drawbridge::start(&two_server_yaml(&a.addr, &b.addr));
    let garbage = [
        "SERVERID=",
        "SERVERID=not-a-server",
        "SERVERID=\"\"; ;;; =; SERVERID",
        other,
        "SERVERID=30e387bba64f6c83ffffffffffffffffffffffffffffffff",
        ";;;;====;;;;",
    ];
    for g in garbage {
        let r = d.send(Request::new("GET", "/").header("Cookie", g));
        assert_eq!(r.status, 200, "cookie {g:?}");
        assert!(
            set_cookie_value(&r, "SERVERID").is_some(),
            "a bad sticky value is treated as no cookie: {g:?}"
        );
    }
    // Duplicated Cookie headers.
    let r = d.send(
        Request::new("GET", "/")
            .header("Cookie", "SERVERID=zzz")
            .header("Cookie", "SERVERID=yyy"),
    );
    assert_eq!(r.status, 200);
    // A cookie naming a server of another backend (same server name).
    let foreign = drawbridge::config::server_id("other", "app-01");
    let r = d.send(Request::new("GET", "/").header("Cookie", format!("SERVERID={foreign}")));
    assert_eq!(r.status, 200);
    assert!(set_cookie_value(&r, "SERVERID").is_some());
    // A huge header: refused cleanly or served, never a 500 or a crash.
    let r = d.send(Request::new("GET", "/").header("X-Big", "a".repeat(100_000)));
    assert!(r.status < 500, "status {}", r.status);
    // Odd Host values.
    for h in ["APP.EXAMPLE.ORG:99999", "[::1]", "a..b", "\u{7f}"] {
        let r = d.send(Request::new("GET", "/").header("Host", h));
        assert!(r.status < 500, "host {h:?}: {}", r.status);
    }
    // The proxy still serves on a keep-alive connection afterwards.
    let mut c = Conn::open(&d.web, TIMEOUT).unwrap();
    for _ in 0..3 {
        assert_eq!(c.send(&Request::new("GET", "/")).unwrap().status, 200);
    }
}

/// One listener, the default site `app` and backend `app` with one server
/// `s` at `addr`; `options` go into the backend's mapping (`"retries: 0,"`).
fn one_server_yaml(options: &str, addr: &str) -> String {
    format!(
        "listeners:\n  - {{ name: web, listen: \"{{web}}\" }}\nsites:\n  - {{ name: app, backend: app }}\nbackends:\n  - {{ name: app, {options} servers: [{{ name: s, addr: \"{addr}\" }}] }}\n"
    )
}

#[test]
fn a_server_refusing_connections_without_health_checks_gives_the_error_page() {
    let dead = dead_addr();
    let d = Drawbridge::start(&one_server_yaml("retries: 0,", &dead.addr));
    let r = d.get("/");
    assert_eq!(r.status, 503);
    assert!(r.text().contains("went wrong"));
    let m = d.metrics_text();
    assert!(
        m.contains("drawbridge_upstream_connect_errors_total{backend=\"app\",server=\"s\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("drawbridge_error_page_responses_total{site=\"app\"} 1"),
        "{m}"
    );
}

#[test]
fn a_slow_upstream_gets_the_error_page_after_read_timeout() {
    let slow = Upstream::start("slow");
    let d = Drawbridge::start(&one_server_yaml("read_timeout: 1s,", &slow.addr));
    // The upstream answers after 6 s: the 1 s read timeout answers first.
    let r = d.get("/slow?ms=6000");
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("went wrong"), "{}", r.text());
    // A quick request on the same server still works.
    assert_eq!(d.get("/slow?ms=10").status, 200);
}

/// The access-log line that contains `needle`, once it was flushed.
fn access_line(d: &Drawbridge, needle: &str) -> String {
    let mut found = String::new();
    wait_until(TIMEOUT, || {
        found = d
            .log_text()
            .lines()
            .find(|l| l.contains(" access] ") && l.contains(needle))
            .unwrap_or_default()
            .to_string();
        !found.is_empty()
    });
    found
}

#[test]
fn every_request_gets_one_access_log_line() {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let d = Drawbridge::start(&two_server_yaml(&a.addr, &b.addr));
    let r = d.get("/shop/cart?id=7");
    let server = body_name(&r);
    let line = access_line(&d, "/shop/cart");
    // `[time INFO  access] client site METHOD path status backend/server 1.234ms HTTP/1.1`
    let fields: Vec<&str> = line
        .split("access] ")
        .nth(1)
        .unwrap_or_default()
        .split(' ')
        .collect();
    assert_eq!(fields.len(), 8, "{line}");
    assert_eq!(fields[7], "HTTP/1.1", "{line}");
    assert_eq!(
        &fields[..6],
        [
            "127.0.0.1",
            "app",
            "GET",
            "/shop/cart",
            "200",
            &format!("app/{server}")
        ],
        "{line}"
    );
    let ms = fields[6].strip_suffix("ms").unwrap_or_default();
    let (whole, frac) = ms.split_once('.').unwrap_or_default();
    assert!(
        whole.parse::<u64>().is_ok() && frac.len() == 3 && frac.parse::<u64>().is_ok(),
        "{line}"
    );

    // A request no server could take: the error page, with the reason.
    let dead = dead_addr();
    let d = Drawbridge::start(&one_server_yaml("retries: 0,", &dead.addr));
    assert_eq!(d.get("/gone").status, 503);
    let line = access_line(&d, "/gone");
    assert!(
        line.contains("] 127.0.0.1 app GET /gone 503 error ")
            && line.ends_with("ms HTTP/1.1 error=ConnectRefused"),
        "{line}"
    );
}

/// Kills the process named in a pid file when dropped (a daemon is no
/// child of the test).
struct KillOnDrop(std::path::PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(&self.0).unwrap_or_default();
        if let Ok(pid) = pid.trim().parse::<i32>() {
            // SAFETY: kill(2) with a pid read from our own pid file.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

#[test]
fn a_daemon_writes_its_access_log_too() {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let d = Drawbridge::prepare(&two_server_yaml(&a.addr, &b.addr), &[]);
    let _daemon = KillOnDrop(d.dir.path().join("drawbridge.pid"));
    let log = std::fs::File::create(&d.log).expect("log file");
    let mut parent = std::process::Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .args(["run", "--daemon", "-c"])
        .arg(&d.config)
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start drawbridge --daemon");
    // The parent returns once the daemon is forked off.
    let exited = wait_until(TIMEOUT, || parent.try_wait().is_ok_and(|s| s.is_some()));
    if !exited {
        let _ = parent.kill();
    }
    assert!(exited, "drawbridge --daemon did not return");
    assert!(
        wait_until(TIMEOUT, || std::net::TcpStream::connect(&d.web).is_ok()),
        "the daemon does not serve; log:\n{}",
        d.log_text()
    );
    assert_eq!(d.get("/from-the-daemon").status, 200);
    // Lines are flushed every 100 ms by the server, not only when 64 KiB
    // are pending.
    let line = access_line(&d, "/from-the-daemon");
    assert!(line.contains(" 200 app/app-0"), "{line}");
}

#[test]
fn access_lines_keep_coming_during_a_graceful_shutdown() {
    let a = Upstream::start("app-01");
    let d = Drawbridge::prepare(&one_server_yaml("", &a.addr), &[]);
    // A grace period far longer than the test: a line that shows up is
    // written by the server while it drains, not at its exit.
    let conf = read(&d.config).replace("grace_period_seconds: 1", "grace_period_seconds: 60");
    std::fs::write(&d.config, conf).expect("write config");
    let d = d.launch();
    let web = d.web.clone();
    let slow = std::thread::spawn(move || get(&web, "/slow?ms=1500").status);
    let in_flight = r#"drawbridge_server_inflight{backend="app",server="s"} 1"#;
    assert!(
        wait_until(TIMEOUT, || d.metrics_text().contains(in_flight)),
        "the slow request never showed as in flight"
    );
    let pid = i32::try_from(d.proc.pid().expect("pid")).expect("pid");
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    // The request in flight is still answered...
    assert_eq!(slow.join().expect("slow request thread"), 200);
    // ...and logged within the flush interval, long before the grace
    // period ends.
    let line = access_line(&d, "/slow");
    assert!(line.contains(" GET /slow 200 app/s "), "{}", d.log_text());
    assert!(
        d.log_text().contains("grace period 60s starts")
            && !d.log_text().contains("grace period ends"),
        "{}",
        d.log_text()
    );
}
