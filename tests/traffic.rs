//! Traffic controls end to end (CONTRACT section 12): `max_conns` and the
//! backend queue (counted at the servers), slow start (shares of new
//! clients measured in windows), a site's maintenance backend, and
//! `on_marked_down: shutdown_sessions`.

mod common;

use common::*;
use drawbridge::httpc::{Request, Response};
use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A test server that counts the requests it holds at once: `GET /slow/MS`
/// is answered after MS milliseconds, anything else at once; the body is
/// its name. `/healthz` answers 503 once `sick` is set.
struct Counting {
    addr: String,
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
    sick: Arc<AtomicBool>,
}

impl Counting {
    fn start(name: &'static str) -> Counting {
        let (now, max, served) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let sick = Arc::new(AtomicBool::new(false));
        let (n, m, s, k) = (now.clone(), max.clone(), served.clone(), sick.clone());
        let addr = serve_each(move |conn| {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
            let mut reader = BufReader::new(match conn.try_clone() {
                Ok(c) => c,
                Err(_) => return,
            });
            let mut conn = conn;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let (status, body) = if path == "/healthz" {
                    if k.load(SeqCst) {
                        ("503 Service Unavailable", "sick")
                    } else {
                        ("200 OK", "ok")
                    }
                } else {
                    let held = n.fetch_add(1, SeqCst) + 1;
                    m.fetch_max(held, SeqCst);
                    let ms = path
                        .strip_prefix("/slow/")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    std::thread::sleep(Duration::from_millis(ms));
                    n.fetch_sub(1, SeqCst);
                    s.fetch_add(1, SeqCst);
                    ("200 OK", name)
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if conn.write_all(answer.as_bytes()).is_err() {
                    return;
                }
            }
        });
        Counting {
            addr,
            now,
            max,
            served,
            sick,
        }
    }
}

/// Site `app` on backend `app` with app-01 at `a` and app-02 at `b`,
/// sticky cookie SERVERID; `servers` is what each server line adds
/// (`max_conns: 5`), `backend` more backend keys (4-space indented).
fn limited_yaml(a: &str, b: &str, servers: &str, backend: &str) -> String {
    format!(
        r#"listeners:
  - name: web
    listen: "{{web}}"
sites:
  - name: app
    backend: app
backends:
  - name: app
    sticky:
      cookie: SERVERID
    read_timeout: 30s
{backend}
    servers:
      - {{ name: app-01, addr: "{a}", {servers} }}
      - {{ name: app-02, addr: "{b}", {servers} }}
"#
    )
}

/// `n` requests at once, each on its own connection; their answers (or
/// the client's error) and each one's duration.
fn at_once(
    web: &str,
    n: usize,
    req: impl Fn(usize) -> Request<'static> + Sync,
) -> Vec<Result<(Response, Duration), String>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let r = req(i);
                scope.spawn(move || {
                    let start = Instant::now();
                    drawbridge::httpc::request(web, &r, Duration::from_secs(30))
                        .map(|resp| (resp, start.elapsed()))
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("client thread panicked".into()))
            })
            .collect()
    })
}

/// The highest value a metric series took while `f` ran (sampled).
fn sample_max_while<T>(d: &Drawbridge, series: &str, f: impl FnOnce() -> T) -> (T, f64) {
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut max = 0f64;
            while !done.load(SeqCst) {
                let text = get(&d.metrics, "/metrics").text();
                max = max.max(metric_value(&text, series).unwrap_or(0.0));
                std::thread::sleep(Duration::from_millis(20));
            }
            max
        });
        let out = f();
        done.store(true, SeqCst);
        (out, sampler.join().unwrap_or(0.0))
    })
}

/// Add app-03 at `addr` to backend `app`, ready, with `flags` more.
fn add_ready(d: &Drawbridge, addr: &str, flags: &[&str]) {
    let mut args = vec!["server", "add", "app/app-03", addr, "--state", "ready"];
    args.extend_from_slice(flags);
    let o = d.ctl(&args);
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
}

/// The share of new clients `name` answers, by 1-second window from now.
fn shares_by_second(d: &Drawbridge, name: &str, seconds: u32) -> Vec<f64> {
    let start = Instant::now();
    let mut shares = Vec::new();
    for w in 1..=seconds {
        let (mut total, mut to) = (0, 0);
        while start.elapsed() < Duration::from_secs(u64::from(w)) {
            total += 1;
            to += usize::from(d.get("/").text() == name);
        }
        shares.push(to as f64 / total.max(1) as f64);
    }
    shares
}

#[test]
fn max_conns_bounds_each_server_and_the_queue_serves_everyone_in_turn() {
    let (a, b) = (Counting::start("app-01"), Counting::start("app-02"));
    let d = Drawbridge::start(&limited_yaml(
        &a.addr,
        &b.addr,
        "max_conns: 5",
        "    queue: { max: 1000, timeout: 30s }",
    ));
    let (answers, queued) =
        sample_max_while(&d, "drawbridge_queue_length{backend=\"app\"}", || {
            at_once(&d.web, 200, |_| Request::new("GET", "/slow/100"))
        });
    let ok = answers
        .iter()
        .filter(|r| matches!(r, Ok((resp, _)) if resp.status == 200))
        .count();
    let (max_a, max_b) = (a.max.load(SeqCst), b.max.load(SeqCst));
    eprintln!(
        "200 requests, max_conns 5: app-01 held at most {max_a} at once ({} served), \
         app-02 at most {max_b} ({} served); queue length up to {queued}",
        a.served.load(SeqCst),
        b.served.load(SeqCst)
    );
    assert_eq!(ok, 200, "every request waited and succeeded: {answers:?}");
    assert!(
        max_a <= 5 && max_b <= 5,
        "app-01 {max_a}, app-02 {max_b} at once"
    );
    // The limit was reached (the requests did queue), on both servers.
    assert_eq!((max_a, max_b), (5, 5));
    assert!(queued > 0.0, "the queue length metric never rose");
    let status = json(&d.api("GET", "/api/v1/status", None));
    assert_eq!(status["backends"][0]["queue"]["length"], 0);
    assert_eq!(status["backends"][0]["servers"][0]["max_conns"], 5);
    let ctl = out(&d.ctl(&["status"]));
    assert!(
        ctl.contains("app queue: 0 waiting (max 1000, timeout 30s), 0 timed out"),
        "{ctl}"
    );
    assert!(ctl.contains("max_conns 5"), "{ctl}");
}

/// A server added through the API with a `max_conns` holds no more than
/// that at once, the rest waiting in the backend's queue; its limit and
/// slow start are kept across a restart; a backend without a queue
/// refuses a `max_conns`.
#[test]
fn a_server_added_with_max_conns_is_bounded_and_keeps_it() {
    let (a, b, c) = (
        Counting::start("app-01"),
        Counting::start("app-02"),
        Counting::start("app-03"),
    );
    let d = Drawbridge::start(&limited_yaml(
        &a.addr,
        &b.addr,
        "max_conns: 5",
        "    queue: { max: 1000, timeout: 30s }",
    ));
    add_ready(&d, &c.addr, &["--max-conns", "3", "--slowstart", "1s"]);
    // app-03 alone takes the requests.
    for s in ["app/app-01", "app/app-02"] {
        let o = d.ctl(&["server", s, "maint"]);
        assert!(o.status.success(), "{}", err(&o));
    }
    std::thread::sleep(std::time::Duration::from_millis(1200)); // past its slow start
    let answers = at_once(&d.web, 40, |_| Request::new("GET", "/slow/100"));
    let ok = answers
        .iter()
        .filter(|r| matches!(r, Ok((resp, _)) if resp.status == 200 && resp.text() == "app-03"))
        .count();
    let max_c = c.max.load(SeqCst);
    assert_eq!(ok, 40, "every request waited for app-03: {answers:?}");
    assert_eq!(max_c, 3, "app-03 held {max_c} at once, max_conns 3");

    let d = d.kill9_and_restart();
    let status = json(&d.api("GET", "/api/v1/status", None));
    let s = &status["backends"][0]["servers"][2];
    assert_eq!(
        (s["name"].as_str(), s["max_conns"].as_u64()),
        (Some("app-03"), Some(3)),
        "{s}"
    );
    let state = read(&d.state_file());
    assert!(state.contains(r#""slowstart": "1s""#), "{state}");

    // Without a queue (no config server has a max_conns): refused, named.
    let plain = Drawbridge::start(&limited_yaml(&a.addr, &b.addr, "weight: 1", ""));
    let body = format!(r#"{{"name":"app-03","addr":"{}","max_conns":3}}"#, c.addr);
    let r = plain.api("POST", "/api/v1/backends/app/servers", Some(&body));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("has no queue"), "{}", r.text());
}

/// A server added ready with a `slowstart`, to a backend whose config
/// has none, gets a rising share of new clients from the moment it is
/// added.
#[test]
fn a_server_added_with_slowstart_ramps_up() {
    let (a, b, c) = (
        Counting::start("app-01"),
        Counting::start("app-02"),
        Counting::start("app-03"),
    );
    let d = Drawbridge::start(&limited_yaml(&a.addr, &b.addr, "weight: 1", ""));
    add_ready(&d, &c.addr, &["--slowstart", "4s"]);
    let shares = shares_by_second(&d, "app-03", 5);
    eprintln!(
        "app-03's share of new clients by second after it was added (slowstart 4s): {shares:.2?}"
    );
    assert!(shares[0] < 0.2, "first second: {shares:?}");
    assert!(shares[3] > shares[0] + 0.05, "no rise: {shares:?}");
    assert!(
        (0.2..0.5).contains(&shares[4]),
        "after the ramp: {shares:?}"
    );
}

#[test]
fn a_queue_timeout_answers_503_with_retry_after_and_loses_nobody() {
    let (a, b) = (Counting::start("app-01"), Counting::start("app-02"));
    let d = Drawbridge::start(&limited_yaml(
        &a.addr,
        &b.addr,
        "max_conns: 2",
        "    queue: { max: 1000, timeout: 300ms }",
    ));
    let answers = at_once(&d.web, 40, |_| Request::new("GET", "/slow/1500"));
    let mut ok = 0;
    let mut refused = 0;
    for r in &answers {
        let (resp, took) = r
            .as_ref()
            .unwrap_or_else(|e| panic!("a request was lost: {e}"));
        match resp.status {
            200 => ok += 1,
            503 => {
                refused += 1;
                assert_eq!(resp.header("retry-after"), Some("1"));
                assert!(*took < Duration::from_millis(1400), "503 after {took:?}");
            }
            s => panic!("unexpected status {s}: {}", resp.text()),
        }
    }
    eprintln!("40 requests, max_conns 2 x 2, queue timeout 300ms: {ok} served, {refused} got 503");
    assert_eq!(ok + refused, 40);
    assert!(ok >= 4 && refused > 0, "{ok} served, {refused} refused");
    assert!(a.max.load(SeqCst) <= 2 && b.max.load(SeqCst) <= 2);
    assert_eq!(
        d.metric("drawbridge_queue_timeouts_total{backend=\"app\"}"),
        refused as f64
    );
    // A full queue refuses at once.
    drop(d);
    let d = Drawbridge::start(&limited_yaml(
        &a.addr,
        &b.addr,
        "max_conns: 1",
        "    queue: { max: 0, timeout: 10s }",
    ));
    let answers = at_once(&d.web, 6, |_| Request::new("GET", "/slow/1000"));
    let quick_503 = answers
        .iter()
        .filter(|r| {
            matches!(r, Ok((resp, took)) if resp.status == 503 && *took < Duration::from_millis(900))
        })
        .count();
    assert_eq!(quick_503, 4, "{answers:?}");
}

#[test]
fn a_sticky_request_waits_for_its_own_server() {
    let (a, b) = (Counting::start("app-01"), Counting::start("app-02"));
    let d = Drawbridge::start(&limited_yaml(
        &a.addr,
        &b.addr,
        "max_conns: 1",
        "    queue: { max: 10, timeout: 10s }",
    ));
    // A cookie for app-01.
    let cookie = (0..4)
        .find_map(|_| {
            let r = d.get("/");
            (r.text() == "app-01").then(|| set_cookie_value(&r, "SERVERID"))?
        })
        .expect("a cookie for app-01");
    let sticky = format!("SERVERID={cookie}");
    let answers = std::thread::scope(|scope| {
        let busy = scope
            .spawn(|| d.send(Request::new("GET", "/slow/1200").header("Cookie", sticky.clone())));
        assert!(wait_until(Duration::from_secs(5), || a.now.load(SeqCst) == 1));
        let start = Instant::now();
        let waited = d.send(Request::new("GET", "/slow/0").header("Cookie", sticky.clone()));
        (busy.join().map(|r| r.text()), waited, start.elapsed())
    });
    let (busy, waited, took) = answers;
    assert_eq!(busy.ok().as_deref(), Some("app-01"));
    assert_eq!(waited.status, 200);
    assert_eq!(waited.text(), "app-01", "the sticky request was moved");
    assert!(
        took > Duration::from_millis(500),
        "it did not wait ({took:?})"
    );
    assert_eq!(a.max.load(SeqCst), 1, "app-01 held more than max_conns");
}

#[test]
fn slowstart_gives_a_returning_server_a_rising_share() {
    let (a, b) = (Counting::start("app-01"), Counting::start("app-02"));
    let d = Drawbridge::start(&limited_yaml(&a.addr, &b.addr, "slowstart: 4s", ""));
    let put = |state: &str| {
        let body = format!("{{\"state\":\"{state}\"}}");
        let r = d.api(
            "PUT",
            "/api/v1/backends/app/servers/app-02/state",
            Some(&body),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    };
    put("maint");
    put("ready");
    let status = json(&d.api("GET", "/api/v1/status", None));
    let eff = status["backends"][0]["servers"][1]["effective_weight"]
        .as_f64()
        .unwrap_or(1.0);
    assert!(eff < 0.3, "effective weight right after ready: {eff}");
    let metric = d.metric("drawbridge_server_weight{backend=\"app\",server=\"app-02\"}");
    assert!(metric < 0.5, "weight metric right after ready: {metric}");
    let shares = shares_by_second(&d, "app-02", 5);
    eprintln!("app-02's share of new clients by second after ready (slowstart 4s): {shares:.2?}");
    assert!(shares[0] < 0.3, "first second: {shares:?}");
    assert!(shares[3] > shares[0] + 0.1, "no rise: {shares:?}");
    assert!(
        (0.35..0.65).contains(&shares[4]),
        "after the ramp: {shares:?}"
    );
    let status = json(&d.api("GET", "/api/v1/status", None));
    assert_eq!(status["backends"][0]["servers"][1]["effective_weight"], 1.0);
}

#[test]
fn maintenance_backend_answers_for_the_public() {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let sorry = Counting::start("sorry-app");
    let yaml = format!(
        r#"listeners:
  - name: web
    listen: "{{web}}"
sites:
  - name: app
    backend: app
    maintenance:
      enabled: true
      allow: [127.0.0.2/32]
      backend: sorry
{}
  - name: sorry
    health_check: {{ kind: http, path: /healthz, interval: 200ms, timeout: 200ms, rise: 1, fall: 1 }}
    servers:
      - {{ name: sorry-01, addr: "{}" }}
"#,
        app_backend_yaml(&a.addr, &b.addr, ""),
        sorry.addr
    );
    let d = Drawbridge::start(&yaml);
    let public = d.get("/");
    assert_eq!(public.status, 200);
    assert_eq!(public.text(), "sorry-app");
    assert!(public.header("set-cookie").is_none(), "no sticky cookie");
    let operator = get_from(&d.web, "127.0.0.2", Request::new("GET", "/"));
    assert!(operator.text().starts_with("app-0"), "{}", operator.text());
    assert!(operator.header("set-cookie").is_some());
    // Maintenance off: the public gets the real app.
    let off = d.api(
        "PUT",
        "/api/v1/sites/app/maintenance",
        Some("{\"enabled\":false}"),
    );
    assert_eq!(off.status, 200);
    assert!(d.get("/").text().starts_with("app-0"));
    let on = d.api(
        "PUT",
        "/api/v1/sites/app/maintenance",
        Some("{\"enabled\":true}"),
    );
    assert_eq!(on.status, 200);
    assert_eq!(d.get("/").text(), "sorry-app");
    // The maintenance app down: the local page.
    sorry.sick.store(true, SeqCst);
    assert!(wait_until(Duration::from_secs(5), || {
        json(&d.api("GET", "/api/v1/status", None))["backends"][1]["servers"][0]["health"] == "down"
    }));
    let local = d.get("/");
    assert_eq!(local.status, 503);
    assert!(local.header("retry-after").is_some());
    assert_ne!(local.text(), "sorry-app");
}

#[test]
fn a_failing_maintenance_backend_falls_back_to_the_page_counted_once() {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let dead = dead_addr();
    // No health check: the dead server is tried, and fails, every time.
    let yaml = format!(
        r#"listeners:
  - name: web
    listen: "{{web}}"
sites:
  - name: app
    backend: app
    maintenance:
      enabled: true
      backend: sorry
{}
  - name: sorry
    retries: 0
    servers:
      - {{ name: sorry-01, addr: "{}" }}
"#,
        app_backend_yaml(&a.addr, &b.addr, ""),
        dead.addr
    );
    let d = Drawbridge::start(&yaml);
    let series = r#"drawbridge_maintenance_responses_total{site="app"}"#;
    let before = d.metric(series);
    for _ in 0..3 {
        let r = d.get("/");
        assert_eq!(r.status, 503);
        assert!(r.header("retry-after").is_some());
    }
    assert_eq!(
        d.metric(series) - before,
        3.0,
        "one maintenance answer each"
    );
}

#[test]
fn shutdown_sessions_ends_requests_to_a_server_marked_down() {
    let a = Counting::start("app-01");
    let yaml = format!(
        r#"listeners:
  - name: web
    listen: "{{web}}"
sites:
  - name: app
    backend: app
backends:
  - name: app
    on_marked_down: shutdown_sessions
    read_timeout: 20s
    health_check: {{ kind: http, path: /healthz, interval: 200ms, timeout: 200ms, rise: 1, fall: 2 }}
    servers:
      - {{ name: app-01, addr: "{}" }}
"#,
        a.addr
    );
    let d = Drawbridge::start(&yaml);
    let (resp, took) = std::thread::scope(|scope| {
        let slow = scope.spawn(|| {
            let start = Instant::now();
            let r = drawbridge::httpc::request(
                &d.web,
                &Request::new("GET", "/slow/15000"),
                Duration::from_secs(30),
            );
            (r, start.elapsed())
        });
        assert!(wait_until(Duration::from_secs(5), || a.now.load(SeqCst) == 1));
        let marked = Instant::now();
        a.sick.store(true, SeqCst);
        let out = slow
            .join()
            .unwrap_or_else(|_| panic!("client thread panicked"));
        eprintln!(
            "the request ended {:?} after the server turned sick",
            marked.elapsed()
        );
        out
    });
    // fall 2 x interval 200ms, plus slack: far below the 15 s the server
    // would take and the 20 s read_timeout.
    assert!(took < Duration::from_secs(5), "ended after {took:?}");
    let resp = resp.unwrap_or_else(|e| panic!("no answer: {e}"));
    assert!(matches!(resp.status, 502 | 503), "status {}", resp.status);
    assert_ne!(resp.text(), "app-01");
}

#[test]
fn a_sticky_request_waiting_for_a_server_put_in_maint_moves_on() {
    let (a, b) = (Counting::start("app-01"), Counting::start("app-02"));
    let d = Drawbridge::start(&limited_yaml(
        &a.addr,
        &b.addr,
        "max_conns: 1",
        "    queue: { max: 10, timeout: 20s }",
    ));
    let cookie = (0..4)
        .find_map(|_| {
            let r = d.get("/");
            (r.text() == "app-01").then(|| set_cookie_value(&r, "SERVERID"))?
        })
        .expect("a cookie for app-01");
    let sticky = format!("SERVERID={cookie}");
    let slow = Request::new("GET", "/slow/4000").header("Cookie", sticky.clone());
    let (waited, took) = std::thread::scope(|scope| {
        let _busy = scope.spawn(|| d.send(slow));
        assert!(wait_until(Duration::from_secs(5), || a.now.load(SeqCst) == 1));
        let waiter = scope.spawn(|| {
            let start = Instant::now();
            let r = d.send(Request::new("GET", "/").header("Cookie", sticky.clone()));
            (r, start.elapsed())
        });
        assert!(wait_until(Duration::from_secs(5), || {
            json(&d.api("GET", "/api/v1/status", None))["backends"][0]["queue"]["length"] == 1
        }));
        let r = d.api(
            "PUT",
            "/api/v1/backends/app/servers/app-01/state",
            Some("{\"state\":\"maint\"}"),
        );
        assert_eq!(r.status, 200);
        waiter
            .join()
            .unwrap_or_else(|_| panic!("client thread panicked"))
    });
    assert_eq!(waited.status, 200);
    assert_eq!(waited.text(), "app-02", "redispatched once its server left");
    assert!(took < Duration::from_secs(3), "it waited {took:?}");
}

/// A tcp listener `raw` on `{tcp}` to backend `app` (app-01 at `a`,
/// app-02 at `b`, each with `servers` added); `backend` adds keys.
fn tcp_yaml(a: &str, b: &str, servers: &str, backend: &str) -> String {
    format!(
        r#"listeners:
  - {{ name: web, listen: "{{web}}" }}
  - {{ name: raw, listen: "{{tcp}}", protocol: tcp, backend: app }}
sites:
  - {{ name: app, backend: app }}
backends:
  - name: app
{backend}
    servers:
      - {{ name: app-01, addr: "{a}", {servers} }}
      - {{ name: app-02, addr: "{b}", {servers} }}
"#
    )
}

#[test]
fn tcp_max_conns_bounds_connections_and_the_rest_wait() {
    let (a, b) = (Counting::start("app-01"), Counting::start("app-02"));
    let d = Drawbridge::start(&tcp_yaml(
        &a.addr,
        &b.addr,
        "max_conns: 1",
        "    queue: { max: 10, timeout: 20s }",
    ));
    // Six connections at once, each holding its server for 400ms.
    let answers = at_once(&d.tcp, 6, |_| Request::new("GET", "/slow/400"));
    for r in &answers {
        let (resp, _) = r
            .as_ref()
            .unwrap_or_else(|e| panic!("a connection failed: {e}"));
        assert_eq!(resp.status, 200);
    }
    assert_eq!((a.max.load(SeqCst), b.max.load(SeqCst)), (1, 1));
    assert_eq!(a.served.load(SeqCst) + b.served.load(SeqCst), 6);
}

#[test]
fn tcp_shutdown_sessions_closes_connections_to_a_server_marked_down() {
    let (a, b) = (Counting::start("app-01"), Counting::start("app-02"));
    let d = Drawbridge::start(&tcp_yaml(
        &a.addr,
        &b.addr,
        "weight: 1",
        "    balance: round_robin\n    on_marked_down: shutdown_sessions\n    read_timeout: 30s\n    \
         health_check: { kind: http, path: /healthz, interval: 200ms, timeout: 200ms, rise: 1, fall: 2 }",
    ));
    let (outcome, took) = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let start = Instant::now();
                    let r = drawbridge::httpc::request(
                        &d.tcp,
                        &Request::new("GET", "/slow/8000"),
                        Duration::from_secs(30),
                    );
                    (r.map(|r| r.text()), start.elapsed())
                })
            })
            .collect();
        assert!(wait_until(Duration::from_secs(5), || {
            a.now.load(SeqCst) == 1 && b.now.load(SeqCst) == 1
        }));
        a.sick.store(true, SeqCst);
        let mut results: Vec<_> = clients
            .into_iter()
            .map(|c| {
                c.join()
                    .unwrap_or_else(|_| panic!("client thread panicked"))
            })
            .collect();
        results.sort_by_key(|(_, took)| *took);
        results.remove(0)
    });
    // The connection to app-01 closed soon after it was marked down
    // (fall 2 x 200ms, plus slack); the one to app-02 ran its 8 s.
    assert!(took < Duration::from_secs(4), "closed after {took:?}");
    assert!(outcome.is_err(), "it got an answer: {outcome:?}");
}
