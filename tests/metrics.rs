//! `/metrics` (CONTRACT section 6) on the real binary: the values after real
//! traffic, maintenance and drain; every metric with exactly its contract
//! labels; `promtool check metrics` finds nothing to say; and every query of
//! the Grafana dashboard returns data from a real Prometheus scraping a
//! drawbridge that served the traffic the dashboard is meant to show.

mod common;

use common::*;
use drawbridge::httpc::{self, Request};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

// ------------------------------------------------ the exposition format

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A Prometheus text exposition (format 0.0.4), as the samples it writes.
#[derive(Debug, Default)]
struct Exposition {
    samples: Vec<Sample>,
    /// `# TYPE` of each family.
    types: HashMap<String, String>,
    helps: HashMap<String, String>,
}

/// The exposition `text`, read by openmetrics-parser (which refuses what
/// is not the text format: a bad line, a repeated series, label or
/// `# TYPE`, a sample outside its family), its families written out again
/// as samples: a histogram `h` as `h_bucket` (with `le`), `h_sum` and
/// `h_count`.
fn read_exposition(text: &str) -> Result<Exposition, String> {
    use openmetrics_parser::{prometheus::parse_prometheus, PrometheusType, PrometheusValue};
    let parsed = parse_prometheus(text).map_err(|e| format!("{e:?}"))?;
    let mut e = Exposition::default();
    for (name, family) in &parsed.families {
        if family.family_type != PrometheusType::Unknown {
            e.types.insert(name.clone(), family.family_type.to_string());
        }
        if !family.help.is_empty() {
            e.helps.insert(name.clone(), family.help.clone());
        }
        for sample in family.iter_samples() {
            let labels: BTreeMap<String, String> = sample
                .get_labelset()
                .map_err(|e| format!("{name}: {e:?}"))?
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut push = |suffix: &str, extra: Option<(&str, String)>, value: f64| {
                let mut labels = labels.clone();
                labels.extend(extra.map(|(k, v)| (k.to_string(), v)));
                e.samples.push(Sample {
                    name: format!("{name}{suffix}"),
                    labels,
                    value,
                });
            };
            match &sample.value {
                PrometheusValue::Unknown(n) | PrometheusValue::Gauge(n) => {
                    push("", None, n.as_f64())
                }
                PrometheusValue::Counter(c) => push("", None, c.value.as_f64()),
                PrometheusValue::Histogram(h) => {
                    for b in &h.buckets {
                        let le = Some(("le", bound(b.upper_bound)));
                        push("_bucket", le, b.count.as_f64());
                    }
                    if let Some(sum) = h.sum {
                        push("_sum", None, sum.as_f64());
                    }
                    if let Some(count) = h.count {
                        push("_count", None, count as f64);
                    }
                }
                PrometheusValue::Summary(s) => {
                    for q in &s.quantiles {
                        let quantile = Some(("quantile", bound(q.quantile)));
                        push("", quantile, q.value.as_f64());
                    }
                    if let Some(sum) = s.sum {
                        push("_sum", None, sum.as_f64());
                    }
                    if let Some(count) = s.count {
                        push("_count", None, count as f64);
                    }
                }
            }
        }
    }
    Ok(e)
}

fn parse_exposition(text: &str) -> Exposition {
    read_exposition(text).unwrap_or_else(|e| panic!("not a valid exposition: {e}\n{text}"))
}

/// A bucket bound or quantile as the text format writes it.
fn bound(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else {
        v.to_string()
    }
}

/// The bound of a bucket sample, from its `le` label.
fn le(s: &Sample) -> f64 {
    match s.labels["le"].as_str() {
        "+Inf" => f64::INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad le {v:?} in {s:?}")),
    }
}

impl Exposition {
    /// Series of `name` having every label of `filter`.
    fn matching<'a>(
        &'a self,
        name: &'a str,
        filter: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && filter
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The value of the one series of `name` whose labels are exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == want)
            .collect();
        match found.as_slice() {
            [one] => one.value,
            [] => panic!("no series {name}{want:?}"),
            _ => panic!("{} series {name}{want:?}", found.len()),
        }
    }

    fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.matching(name, filter).map(|s| s.value).sum()
    }

    /// The label-name sets the series of `name` have.
    fn label_sets(&self, name: &str) -> BTreeSet<Vec<String>> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.labels.keys().cloned().collect())
            .collect()
    }
}

#[test]
fn the_exposition_is_read_as_samples() {
    let e = parse_exposition(
        "# HELP a_total Things\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"u\\\\o\\nte\"} 3\n\
         # TYPE b gauge\nb 1.5e3 1700000000000\n# TYPE c gauge\nc{le=\"+Inf\",} +Inf\n\
         # HELP h Latency\n# TYPE h histogram\nh_bucket{s=\"x\",le=\"0.5\"} 1\n\
         h_bucket{s=\"x\",le=\"+Inf\"} 2\nh_sum{s=\"x\"} 0.75\nh_count{s=\"x\"} 2\n",
    );
    assert_eq!(e.types.get("a_total").map(String::as_str), Some("counter"));
    assert_eq!(e.types.get("h").map(String::as_str), Some("histogram"));
    assert_eq!(e.helps.get("a_total").map(String::as_str), Some("Things"));
    assert_eq!(e.value("a_total", &[("x", "1"), ("y", "q\"u\\o\nte")]), 3.0);
    assert_eq!(e.value("b", &[]), 1500.0);
    assert!(e.value("c", &[("le", "+Inf")]).is_infinite());
    assert_eq!(e.value("h_bucket", &[("s", "x"), ("le", "0.5")]), 1.0);
    assert_eq!(e.value("h_bucket", &[("s", "x"), ("le", "+Inf")]), 2.0);
    assert_eq!(e.value("h_sum", &[("s", "x")]), 0.75);
    assert_eq!(e.value("h_count", &[("s", "x")]), 2.0);
    assert_eq!(e.samples.len(), 7);
    // What is not the text format is refused, not skipped.
    for bad in [
        "a{x=\"1\" 3\n",
        "# TYPE a gauge\na one\n",
        "# TYPE a gauge\na 1\na 2\n",
        "# TYPE a gauge\n# TYPE a gauge\na 1\n",
        "# TYPE a gauge\na{x=\"1\",x=\"2\"} 1\n",
        "# TYPE a gauge\na 1\nb_total 2\n",
    ] {
        assert!(read_exposition(bad).is_err(), "{bad:?} was read");
    }
}

// ----------------------------------------------------------- helpers

fn scrape(d: &Drawbridge) -> Exposition {
    parse_exposition(&d.metrics_text())
}

/// Scrape until `f` holds (counters are updated when a request's logging
/// phase ends, a moment after the client has its response); the last scrape.
fn scrape_until(d: &Drawbridge, f: impl Fn(&Exposition) -> bool) -> Exposition {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let e = scrape(d);
        if f(&e) || Instant::now() > deadline {
            return e;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn api_ok(d: &Drawbridge, method: &str, path: &str, body: Option<&str>) -> serde_json::Value {
    let r = d.api(method, path, body);
    assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
    r.json().unwrap_or_default()
}

/// `yaml` (from [`two_server_yaml`]) with a tcp listener `raw` on `{tcp}`
/// ([`Drawbridge::tcp`]) to the same backend.
fn with_tcp_listener(yaml: &str) -> String {
    yaml.replacen(
        "sites:\n",
        "  - { name: raw, listen: \"{tcp}\", protocol: tcp, backend: app }\nsites:\n",
        1,
    )
}

/// One request through the tcp listener; the server's name.
fn get_over_tcp(tcp: &str) -> String {
    let r = httpc::request(tcp, &Request::new("GET", "/"), TIMEOUT)
        .unwrap_or_else(|e| panic!("request through the tcp listener {tcp}: {e}"));
    assert_eq!(r.status, 200);
    r.text().trim().to_string()
}

const SITE: (&str, &str) = ("site", "app");
const BACKEND: (&str, &str) = ("backend", "app");

// --------------------------------------------- (a) values are right

#[test]
fn metric_values_follow_traffic_maintenance_and_drain() {
    const N: usize = 17;
    const M: usize = 5;
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let d = Drawbridge::start(&two_server_yaml(&a.addr, &b.addr));

    let before = scrape(&d);
    assert_eq!(before.value("drawbridge_maintenance_enabled", &[SITE]), 0.0);
    for i in 0..N {
        let r = d.get("/");
        assert_eq!(r.status, 200, "proxied request {i}");
    }
    api_ok(
        &d,
        "PUT",
        "/api/v1/sites/app/maintenance",
        Some(r#"{"enabled":true}"#),
    );
    for i in 0..M {
        let r = d.get("/");
        assert_eq!(r.status, 503, "maintenance request {i}");
    }
    let total = (N + M) as f64;
    let count = [SITE, BACKEND];
    let e = scrape_until(&d, |e| {
        e.sum("drawbridge_request_duration_seconds_count", &count) >= total
    });
    println!("--- /metrics after {N} proxied requests, maintenance on, {M} maintenance answers:");
    for line in d.metrics_text().lines().filter(|l| {
        l.contains("maintenance") || l.contains("requests_total{") && !l.ends_with(" 0")
    }) {
        println!("{line}");
    }

    // Proxied requests, by server and class.
    let ok = |server| {
        e.value(
            "drawbridge_requests_total",
            &[SITE, BACKEND, ("server", server), ("code", "2xx")],
        )
    };
    let (ok1, ok2) = (ok("app-01"), ok("app-02"));
    assert_eq!(ok1 + ok2, N as f64, "2xx on app-01 + app-02");
    assert_eq!((ok1, ok2), (9.0, 8.0), "round robin over two servers");
    // The maintenance answers are 5xx of the pseudo-server "maintenance",
    // and nothing else was counted.
    assert_eq!(
        e.value(
            "drawbridge_requests_total",
            &[SITE, BACKEND, ("server", "maintenance"), ("code", "5xx")]
        ),
        M as f64
    );
    assert_eq!(e.sum("drawbridge_requests_total", &[]), total);
    assert_eq!(
        e.value("drawbridge_maintenance_responses_total", &[SITE]),
        M as f64
    );
    assert_eq!(e.value("drawbridge_maintenance_enabled", &[SITE]), 1.0);
    assert_eq!(e.sum("drawbridge_maintenance_bypass_total", &[SITE]), 0.0);
    assert_eq!(
        e.value("drawbridge_error_page_responses_total", &[SITE]),
        0.0
    );
    // No tcp listener here: no tcp series, but the family is announced.
    assert_eq!(
        e.types
            .get("drawbridge_tcp_connections_total")
            .map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        e.matching("drawbridge_tcp_connections_total", &[]).count(),
        0
    );

    // The latency histogram saw every answer, proxied or local.
    assert_eq!(
        e.value("drawbridge_request_duration_seconds_count", &count),
        total
    );
    assert_eq!(
        e.value(
            "drawbridge_request_duration_seconds_bucket",
            &[SITE, BACKEND, ("le", "+Inf")]
        ),
        total
    );
    let mut buckets: Vec<(f64, f64)> = e
        .matching("drawbridge_request_duration_seconds_bucket", &count)
        .map(|s| (le(s), s.value))
        .collect();
    buckets.sort_by(|x, y| x.0.total_cmp(&y.0));
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "buckets must be cumulative: {buckets:?}"
    );
    assert!(e.value("drawbridge_request_duration_seconds_sum", &count) > 0.0);

    // Drain app-01; weights.
    api_ok(
        &d,
        "PUT",
        "/api/v1/backends/app/servers/app-01/state",
        Some(r#"{"state":"drain"}"#),
    );
    api_ok(
        &d,
        "PUT",
        "/api/v1/backends/app/servers/app-02/weight",
        Some(r#"{"weight":5}"#),
    );
    let e = scrape(&d);
    let state = |server, st| {
        e.value(
            "drawbridge_server_state",
            &[BACKEND, ("server", server), ("state", st)],
        )
    };
    assert_eq!(state("app-01", "drain"), 1.0);
    assert_eq!(state("app-01", "ready"), 0.0);
    assert_eq!(state("app-01", "maint"), 0.0);
    assert_eq!(state("app-02", "ready"), 1.0);
    assert_eq!(state("app-02", "drain"), 0.0);
    assert_eq!(state("app-02", "maint"), 0.0);
    for s in ["app-01", "app-02"] {
        let srv = [BACKEND, ("server", s)];
        assert_eq!(e.value("drawbridge_server_up", &srv), 1.0, "{s} up");
        assert_eq!(e.value("drawbridge_server_inflight", &srv), 0.0, "{s} idle");
        assert_eq!(
            e.value("drawbridge_upstream_connect_errors_total", &srv),
            0.0
        );
    }
    assert_eq!(
        e.value("drawbridge_server_weight", &[BACKEND, ("server", "app-01")]),
        1.0
    );
    assert_eq!(
        e.value("drawbridge_server_weight", &[BACKEND, ("server", "app-02")]),
        5.0
    );

    // In flight while a request is at the server, 0 again after. The demo
    // upstream answers at once, so hold a request open: send only its head
    // and half of a declared body.
    api_ok(
        &d,
        "PUT",
        "/api/v1/sites/app/maintenance",
        Some(r#"{"enabled":false}"#),
    );
    let mut slow = std::net::TcpStream::connect(&d.web).expect("connect");
    use std::io::Write;
    slow.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhalf")
        .expect("write");
    let busy = scrape_until(&d, |e| e.sum("drawbridge_server_inflight", &[]) == 1.0);
    assert_eq!(busy.sum("drawbridge_server_inflight", &[]), 1.0);
    slow.write_all(b"-done").expect("write");
    slow.write_all(b"!").expect("write");
    drop(slow);
    let idle = scrape_until(&d, |e| e.sum("drawbridge_server_inflight", &[]) == 0.0);
    assert_eq!(
        idle.sum("drawbridge_server_inflight", &[]),
        0.0,
        "in flight returns to 0"
    );
    drop((a, b));
}

// ------------------------------ (b) every contract metric, its labels

/// CONTRACT sections 6 and 15 (as far as built), the limits in force and
/// the maintenance windows (docs/metrics.md): name, type, labels. The TLS families have series only
/// with a TLS listener: tests/tls.rs reads them.
/// The CONTRACT families with series only with a TLS listener (their
/// labels are checked in tests/tls.rs).
const TLS_ONLY: &[(&str, &str, &[&str])] = &[
    (
        "drawbridge_tls_handshakes_total",
        "counter",
        &["listener", "result"],
    ),
    (
        "drawbridge_certificate_expiry_timestamp_seconds",
        "gauge",
        &["listener", "name"],
    ),
];

const CONTRACT: &[(&str, &str, &[&str])] = &[
    ("drawbridge_connections", "gauge", &["listener"]),
    (
        "drawbridge_connections_rejected_total",
        "counter",
        &["listener", "reason"],
    ),
    ("drawbridge_limit", "gauge", &["limit"]),
    ("drawbridge_queue_length", "gauge", &["backend"]),
    ("drawbridge_queue_timeouts_total", "counter", &["backend"]),
    (
        "drawbridge_requests_total",
        "counter",
        &["site", "backend", "server", "code"],
    ),
    (
        "drawbridge_request_duration_seconds",
        "histogram",
        &["site", "backend"],
    ),
    ("drawbridge_maintenance_enabled", "gauge", &["site"]),
    (
        "drawbridge_maintenance_window_start_timestamp_seconds",
        "gauge",
        &["site"],
    ),
    (
        "drawbridge_maintenance_window_end_timestamp_seconds",
        "gauge",
        &["site"],
    ),
    (
        "drawbridge_maintenance_responses_total",
        "counter",
        &["site"],
    ),
    (
        "drawbridge_maintenance_bypass_total",
        "counter",
        &["site", "reason"],
    ),
    (
        "drawbridge_error_page_responses_total",
        "counter",
        &["site"],
    ),
    (
        "drawbridge_server_state",
        "gauge",
        &["backend", "server", "state"],
    ),
    ("drawbridge_server_up", "gauge", &["backend", "server"]),
    ("drawbridge_server_weight", "gauge", &["backend", "server"]),
    (
        "drawbridge_server_inflight",
        "gauge",
        &["backend", "server"],
    ),
    (
        "drawbridge_sticky_redispatch_total",
        "counter",
        &["backend", "reason"],
    ),
    (
        "drawbridge_upstream_connect_errors_total",
        "counter",
        &["backend", "server"],
    ),
    (
        "drawbridge_tcp_connections_total",
        "counter",
        &["listener", "backend", "server"],
    ),
];

fn names(labels: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn every_contract_metric_has_exactly_its_labels() {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let d = Drawbridge::start(&with_tcp_listener(&two_server_yaml(&a.addr, &b.addr)));
    assert_eq!(d.get("/").status, 200);
    get_over_tcp(&d.tcp);
    let e = scrape_until(&d, |e| {
        e.sum("drawbridge_request_duration_seconds_count", &[]) >= 1.0
            && e.sum("drawbridge_tcp_connections_total", &[]) >= 1.0
    });
    let mut families: BTreeSet<&str> = BTreeSet::new();
    for (name, kind, labels) in CONTRACT {
        families.insert(name);
        assert_eq!(
            e.types.get(*name).map(String::as_str),
            Some(*kind),
            "# TYPE of {name}"
        );
        assert!(e.helps.contains_key(*name), "# HELP of {name}");
        if *kind == "histogram" {
            let mut with_le = labels.to_vec();
            with_le.push("le");
            for (suffix, want) in [
                ("_bucket", &with_le[..]),
                ("_sum", labels),
                ("_count", labels),
            ] {
                let n = format!("{name}{suffix}");
                assert_eq!(
                    e.label_sets(&n),
                    BTreeSet::from([names(want)]),
                    "labels of {n}"
                );
            }
            continue;
        }
        assert_eq!(
            e.label_sets(name),
            BTreeSet::from([names(labels)]),
            "labels of {name}"
        );
    }
    // Label values the contract fixes.
    let values = |name: &str, label: &str| -> BTreeSet<String> {
        e.matching(name, &[])
            .map(|s| s.labels[label].clone())
            .collect()
    };
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        values("drawbridge_requests_total", "code"),
        set(&["1xx", "2xx", "3xx", "4xx", "5xx"])
    );
    assert_eq!(
        values("drawbridge_maintenance_bypass_total", "reason"),
        set(&["allow", "token"])
    );
    assert_eq!(
        values("drawbridge_server_state", "state"),
        set(&["ready", "drain", "maint"])
    );
    assert_eq!(
        values("drawbridge_sticky_redispatch_total", "reason"),
        set(&["down", "maint", "unknown"])
    );
    assert_eq!(
        values("drawbridge_tcp_connections_total", "listener"),
        set(&["raw"])
    );
    assert_eq!(
        values("drawbridge_connections_rejected_total", "reason"),
        set(&[
            "max_connections",
            "max_connections_per_client",
            "header_timeout"
        ])
    );
    assert_eq!(
        values("drawbridge_tcp_connections_total", "server"),
        set(&["app-01", "app-02"])
    );
    // Nothing outside the contract under our prefix.
    for s in &e.samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suf| {
                s.name
                    .strip_suffix(suf)
                    .filter(|f| e.types.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(&s.name);
        assert!(
            !family.starts_with("drawbridge_") || families.contains(family),
            "{} is not in CONTRACT sections 6 and 15",
            s.name
        );
    }
    drop((a, b));
}

// -------------------------------------------- (c) promtool is happy

#[test]
fn promtool_finds_nothing_to_say() {
    let Some(promtool) = external_tool("promtool", "prometheus") else {
        return;
    };
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let d = Drawbridge::start(&with_tcp_listener(&two_server_yaml(&a.addr, &b.addr)));
    assert_eq!(d.get("/").status, 200);
    get_over_tcp(&d.tcp);
    api_ok(
        &d,
        "PUT",
        "/api/v1/sites/app/maintenance",
        Some(r#"{"enabled":true}"#),
    );
    assert_eq!(d.get("/").status, 503);
    let text = d.metrics_text();
    let file = d.dir.path().join("metrics.txt");
    std::fs::write(&file, &text).expect("write the exposition");
    let mut cmd = Command::new(promtool);
    cmd.args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).expect("open"));
    let out = run_bounded(cmd);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics (exit {:?}):\n{said}",
        out.status.code()
    );
    drop((a, b));
}

// ------------------------------ (d) the dashboard against Prometheus

/// Percent-encoding for a URL query value: everything but RFC 3986
/// unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[test]
fn percent_encoding() {
    assert_eq!(
        percent_encode("sum by (a) (x{b!=\"c\"}[1m]) + 2"),
        "sum%20by%20%28a%29%20%28x%7Bb%21%3D%22c%22%7D%5B1m%5D%29%20%2B%202"
    );
}

/// A Prometheus on a free loopback port, scraping `target` every second,
/// killed on drop.
struct Prometheus {
    addr: String,
    dir: tempfile::TempDir,
    _proc: Proc,
}

impl Prometheus {
    fn start(bin: &Path, target: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: drawbridge\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .expect("write prometheus.yml");
        let log = dir.path().join("prometheus.log");
        let mut p = None;
        for _ in 0..PORT_ATTEMPTS {
            let addr = free_addr();
            let out = std::fs::File::create(&log).expect("log");
            let child = Command::new(bin)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("log"))
                .stderr(out)
                .spawn()
                .expect("start prometheus");
            let mut proc = Proc(Some(child));
            let addrs = [addr.clone()];
            match await_listening("prometheus", &mut proc, &addrs, || read(&log), || true) {
                Startup::Serving => {
                    p = Some(Prometheus {
                        addr,
                        dir,
                        _proc: proc,
                    });
                    break;
                }
                Startup::PortTaken(a) => {
                    eprintln!("prometheus: {a} was taken, trying another port")
                }
            }
        }
        let p =
            p.unwrap_or_else(|| panic!("prometheus: {PORT_ATTEMPTS} ports in a row were taken"));
        let ready = wait_until(Duration::from_secs(20), || {
            httpc::request(
                &p.addr,
                &Request::new("GET", "/-/ready"),
                Duration::from_secs(1),
            )
            .is_ok_and(|r| r.status == 200)
        });
        assert!(ready, "prometheus not ready in 20 s:\n{}", p.log());
        p
    }

    fn log(&self) -> String {
        read(&self.dir.path().join("prometheus.log"))
    }

    /// An instant query: `(status, result)`.
    fn query(&self, q: &str) -> (String, Vec<serde_json::Value>) {
        let path = format!("/api/v1/query?query={}", percent_encode(q));
        let r = httpc::request(
            &self.addr,
            &Request::new("GET", &path),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("query {q}: {e}"));
        let v = r
            .json()
            .unwrap_or_else(|e| panic!("query {q}: {e}: {}", r.text()));
        let status = v["status"].as_str().unwrap_or("?").to_string();
        let result = match &v["data"]["result"] {
            serde_json::Value::Array(a) => a.clone(),
            serde_json::Value::Null => Vec::new(),
            // A scalar or string result is one value.
            other => vec![other.clone()],
        };
        if status != "success" {
            return (format!("{status}: {}", v["error"]), result);
        }
        (status, result)
    }

    fn has_data(&self, q: &str) -> bool {
        let (status, result) = self.query(q);
        status == "success" && !result.is_empty()
    }

    /// Wait until the query `q` returns data: Prometheus has scraped what
    /// it asks for.
    fn wait_for(&self, q: &str) {
        assert!(
            wait_until(Duration::from_secs(10), || self.has_data(q)),
            "prometheus has no data for {q} after 10 s:\n{}",
            self.log()
        );
    }
}

/// Every `expr` of the dashboard, with its panel title, in order.
fn dashboard_exprs() -> Vec<(String, String)> {
    fn walk(v: &serde_json::Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(m) => {
                let title = m.get("title").and_then(|t| t.as_str()).unwrap_or(title);
                if let Some(e) = m.get("expr").and_then(|e| e.as_str()) {
                    out.push((title.to_string(), e.to_string()));
                }
                m.values().for_each(|x| walk(x, title, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, title, out)),
            _ => {}
        }
    }
    let text = read(&repo_path("deploy/grafana/dashboards/drawbridge.json"));
    let v: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    walk(&v, "", &mut out);
    out
}

/// The `drawbridge_*` metric names an expression reads.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("drawbridge_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let preceded_by_name_char = rest[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !preceded_by_name_char {
            out.push(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

/// Grafana's interval macros, as Grafana would expand them at the
/// dashboard's 5 s scrape interval.
fn expand_macros(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("${__rate_interval}", "1m")
        .replace("$__interval", "5s")
        .replace("${__interval}", "5s")
        .replace("$__range", "15m")
}

/// The sticky cookie value for each server, from first responses.
fn cookies(d: &Drawbridge) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for _ in 0..4 {
        let r = d.get("/");
        assert_eq!(r.status, 200);
        if let Some(c) = set_cookie_value(&r, "SERVERID") {
            out.insert(r.text().trim().to_string(), c);
        }
    }
    out
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let Some(bin) = external_tool("prometheus", "prometheus") else {
        return;
    };
    let exprs = dashboard_exprs();
    assert!(!exprs.is_empty(), "the dashboard has no queries");

    // Health checks slow enough that a stopped server is still "up" for a
    // moment: the next request then meets a real connect error.
    let (a, mut b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    // A TLS listener too, for the certificate-expiry panel.
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");
    let yaml = with_tcp_listener(&two_server_yaml(&a.addr, &b.addr))
        .replace("interval: 200ms", "interval: 1s")
        .replace("fall: 1", "fall: 3")
        .replacen(
            "sites:\n",
            &format!(
                "  - name: websecure\n    listen: \"{}\"\n    tls: {{ cert: {fixtures}/default.pem, key: {fixtures}/default.key }}\nsites:\n",
                free_addr()
            ),
            1,
        );
    let d = Drawbridge::start(&yaml);
    let mut a = a;
    let prom = Prometheus::start(&bin, &d.metrics);
    let scraped = wait_until(Duration::from_secs(10), || {
        prom.has_data("up{job=\"drawbridge\"} == 1")
    });
    assert!(
        scraped,
        "prometheus never scraped drawbridge:\n{}",
        prom.log()
    );
    let with_cookie = |c: &str| Request::new("GET", "/").header("Cookie", c.to_string());

    // 1. Proxied traffic over both servers.
    let ids = cookies(&d);
    let (c1, c2) = (
        format!("SERVERID={}", ids["app-01"]),
        format!("SERVERID={}", ids["app-02"]),
    );
    for _ in 0..10 {
        assert_eq!(d.get("/").status, 200);
    }
    // And connections through the tcp listener.
    for _ in 0..4 {
        get_over_tcp(&d.tcp);
    }
    // Each phase waits until Prometheus has scraped its effect.
    prom.wait_for(r#"sum(drawbridge_requests_total{code="2xx"}) >= 14"#);
    prom.wait_for("sum(drawbridge_tcp_connections_total) >= 4");

    // 2. Drain app-01: its sticky users stay, new ones go to app-02.
    api_ok(
        &d,
        "PUT",
        "/api/v1/backends/app/servers/app-01/state",
        Some(r#"{"state":"drain"}"#),
    );
    for _ in 0..5 {
        assert_eq!(d.send(with_cookie(&c1)).text().trim(), "app-01");
        assert_eq!(d.get("/").text().trim(), "app-02");
    }
    prom.wait_for(r#"drawbridge_server_state{server="app-01",state="drain"} == 1"#);
    prom.wait_for(r#"sum(drawbridge_requests_total{code="2xx"}) >= 24"#);

    // 3. Sticky redispatch: app-02 in maint, its users move (to the
    //    drained app-01, the last resort); an unknown cookie value too.
    api_ok(
        &d,
        "PUT",
        "/api/v1/backends/app/servers/app-02/state",
        Some(r#"{"state":"maint"}"#),
    );
    let redispatched = |e: &Exposition, reason| {
        e.value(
            "drawbridge_sticky_redispatch_total",
            &[BACKEND, ("reason", reason)],
        )
    };
    let before = scrape(&d);
    for _ in 0..3 {
        assert_eq!(d.send(with_cookie(&c2)).status, 200);
        assert_eq!(d.send(with_cookie("SERVERID=0123456789abcdef")).status, 200);
    }
    let after = scrape(&d);
    for reason in ["maint", "unknown"] {
        assert_eq!(
            redispatched(&after, reason) - redispatched(&before, reason),
            3.0,
            "3 requests redispatched for {reason}"
        );
    }
    assert_eq!(
        redispatched(&after, "down"),
        redispatched(&before, "down"),
        "no server is down"
    );
    api_ok(
        &d,
        "PUT",
        "/api/v1/backends/app/servers/app-02/state",
        Some(r#"{"state":"ready"}"#),
    );
    prom.wait_for(r#"sum(drawbridge_sticky_redispatch_total{reason="maint"}) >= 3"#);
    prom.wait_for(r#"sum(drawbridge_sticky_redispatch_total{reason="unknown"}) >= 3"#);

    // 4. Maintenance: the public gets the page, an allow-listed operator
    //    (127.0.0.2) and a bypass-token holder get through.
    api_ok(
        &d,
        "PUT",
        "/api/v1/sites/app/maintenance",
        Some(r#"{"enabled":true,"message":"dashboard test"}"#),
    );
    api_ok(
        &d,
        "POST",
        "/api/v1/sites/app/allow",
        Some(r#"{"cidr":"127.0.0.2/32"}"#),
    );
    let token = api_ok(
        &d,
        "POST",
        "/api/v1/sites/app/bypass-tokens",
        Some(r#"{"ttl":"1h"}"#),
    );
    let token = token["cookie"]
        .as_str()
        .expect("a bypass cookie")
        .to_string();
    for _ in 0..5 {
        assert_eq!(d.get("/").status, 503);
        assert_eq!(
            get_from(&d.web, "127.0.0.2", Request::new("GET", "/")).status,
            200
        );
        assert_eq!(d.send(with_cookie(&token)).status, 200);
    }
    prom.wait_for("sum(drawbridge_maintenance_enabled) == 1");
    prom.wait_for("sum(drawbridge_maintenance_responses_total) >= 5");
    for reason in ["allow", "token"] {
        prom.wait_for(&format!(
            r#"sum(drawbridge_maintenance_bypass_total{{reason="{reason}"}}) >= 5"#
        ));
    }
    api_ok(
        &d,
        "PUT",
        "/api/v1/sites/app/maintenance",
        Some(r#"{"enabled":false}"#),
    );

    // 5. A connect error: app-02 (the only ready server) stops; the health
    //    check has not noticed yet, so the next request tries it, fails to
    //    connect, and is retried on app-01.
    b.stop();
    let r = d.get("/");
    assert_eq!(r.status, 200, "retried on app-01 after a connect error");
    assert_eq!(r.text().trim(), "app-01");
    prom.wait_for("sum(drawbridge_upstream_connect_errors_total) >= 1");

    // 6. Both servers gone: the error page.
    a.stop();
    for _ in 0..3 {
        assert_eq!(d.get("/").status, 503);
    }
    let e = scrape(&d);
    assert!(e.sum("drawbridge_upstream_connect_errors_total", &[]) >= 1.0);
    assert!(e.sum("drawbridge_error_page_responses_total", &[]) >= 3.0);
    assert!(e.sum("drawbridge_sticky_redispatch_total", &[("reason", "maint")]) >= 3.0);
    assert!(
        e.sum(
            "drawbridge_sticky_redispatch_total",
            &[("reason", "unknown")]
        ) >= 3.0
    );

    // Until Prometheus has scraped the end of it.
    prom.wait_for("drawbridge_error_page_responses_total >= 3");

    // Every query returns data once Prometheus has enough scrapes of all
    // that (a rate needs two samples of a series in its window).
    let empty_queries = || {
        let mut empty = Vec::new();
        for (title, expr) in &exprs {
            let (status, result) = prom.query(&expand_macros(expr));
            if status != "success" {
                empty.push(format!("[{title}] {expr}: {status}"));
            } else if result.is_empty() {
                empty.push(format!("[{title}] {expr}: no series"));
            }
        }
        empty
    };
    wait_until(Duration::from_secs(10), || empty_queries().is_empty());
    println!("--- dashboard queries (series returned):");
    for (title, expr) in &exprs {
        let (_, result) = prom.query(&expand_macros(expr));
        println!("{:>3}  [{title}]  {expr}", result.len());
    }
    let empty = empty_queries();
    assert!(
        empty.is_empty(),
        "dashboard queries that would show nothing:\n{}",
        empty.join("\n")
    );

    // Fallbacks such as `or vector(0)` keep a panel from going blank, but
    // must not hide a metric name that matches nothing (a typo, a rename):
    // every name the dashboard reads is a contract metric with data.
    let contract: BTreeSet<&str> = CONTRACT
        .iter()
        .chain(TLS_ONLY)
        .map(|(n, _, _)| *n)
        .collect();
    let referenced: BTreeSet<String> = exprs.iter().flat_map(|(_, e)| metric_names(e)).collect();
    for name in &referenced {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suf| name.strip_suffix(suf).filter(|f| contract.contains(f)))
            .unwrap_or(name);
        assert!(
            contract.contains(family),
            "the dashboard reads {name}, which is not a metric of CONTRACT section 6"
        );
        assert!(
            prom.has_data(&format!("count({name})")),
            "the dashboard reads {name}, which Prometheus has no series of"
        );
    }
}
