//! Layer-4 listeners: balancing, source-hash affinity, drain keeping open
//! connections, maint and maintenance refusing new ones except from
//! allowed clients, and failover on connect errors.

mod common;

use common::*;
use drawbridge::httpc::{Conn, Request};

/// A tcp listener `raw` on `{tcp}` ([`Drawbridge::tcp`]) to backend `app`.
fn yaml(a: &str, b: &str, balance: &str, maintenance: &str) -> String {
    format!(
        r#"listeners:
  - {{ name: web, listen: "{{web}}" }}
  - name: raw
    listen: "{{tcp}}"
    protocol: tcp
    backend: app
{maintenance}
sites:
  - {{ name: app, backend: app }}
backends:
  - name: app
    balance: {balance}
    health_check: {{ kind: tcp, interval: 200ms, timeout: 200ms, rise: 1, fall: 1 }}
    servers:
      - {{ name: app-01, addr: "{a}" }}
      - {{ name: app-02, addr: "{b}" }}
"#
    )
}

fn name_over_tcp(tcp: &str, from: &str) -> String {
    let mut c = Conn::open_from(tcp, from.parse().unwrap(), TIMEOUT).expect("connect");
    c.send(&Request::new("GET", "/"))
        .expect("response through the tcp listener")
        .text()
        .trim()
        .to_string()
}

#[test]
fn round_robin_and_source_hash() {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let d = Drawbridge::start(&yaml(&a.addr, &b.addr, "round_robin", ""));
    let tcp = d.tcp.clone();
    let names: Vec<String> = (0..4).map(|_| name_over_tcp(&tcp, "127.0.0.1")).collect();
    assert_eq!(
        names.iter().filter(|n| *n == "app-01").count(),
        2,
        "{names:?}"
    );
    drop(d);
    let d = Drawbridge::start(&yaml(&a.addr, &b.addr, "source_hash", ""));
    let tcp = d.tcp.clone();
    for ip in ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        let first = name_over_tcp(&tcp, ip);
        for _ in 0..5 {
            assert_eq!(name_over_tcp(&tcp, ip), first, "client {ip} moved");
        }
    }
}

#[test]
fn drain_keeps_open_connections_and_maint_takes_none() {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let d = Drawbridge::start(&yaml(&a.addr, &b.addr, "round_robin", ""));
    let tcp = d.tcp.clone();
    // Open a keep-alive connection on app-01.
    let mut open = None;
    for _ in 0..2 {
        let mut c = Conn::open(&tcp, TIMEOUT).unwrap();
        if c.send(&Request::new("GET", "/")).unwrap().text().trim() == "app-01" {
            open = Some(c);
        }
    }
    let mut open = open.expect("a connection to app-01");
    assert_eq!(
        d.api(
            "PUT",
            "/api/v1/backends/app/servers/app-01/state",
            Some(r#"{"state":"drain"}"#)
        )
        .status,
        200
    );
    let inflight = d
        .api("GET", "/api/v1/backends/app/servers/app-01", None)
        .json()
        .unwrap()["inflight"]
        .clone();
    assert_eq!(inflight, 1, "the open tcp connection counts as in flight");
    for _ in 0..4 {
        assert_eq!(
            name_over_tcp(&tcp, "127.0.0.1"),
            "app-02",
            "drain takes no new connections"
        );
    }
    assert_eq!(
        open.send(&Request::new("GET", "/")).unwrap().text().trim(),
        "app-01",
        "open connection kept"
    );
    assert_eq!(
        d.api(
            "PUT",
            "/api/v1/backends/app/servers/app-02/state",
            Some(r#"{"state":"maint"}"#)
        )
        .status,
        200
    );
    // app-02 in maint, app-01 in drain: the drain server is the last resort.
    assert_eq!(name_over_tcp(&tcp, "127.0.0.1"), "app-01");
    let m = d.metrics_text();
    assert!(m.contains("drawbridge_tcp_connections_total{backend=\"app\",listener=\"raw\",server=\"app-02\"} 5"), "{m}");
}

#[test]
fn maintenance_refuses_all_but_allowed_clients() {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let m = "    maintenance: { enabled: true, allow: [127.0.0.2/32] }";
    let d = Drawbridge::start(&yaml(&a.addr, &b.addr, "round_robin", m));
    let tcp = d.tcp.clone();
    let mut c = Conn::open(&tcp, TIMEOUT).unwrap();
    assert!(
        c.send(&Request::new("GET", "/")).is_err(),
        "a client outside allow is closed at once"
    );
    assert!(["app-01", "app-02"].contains(&name_over_tcp(&tcp, "127.0.0.2").as_str()));
}

#[test]
fn connect_failure_goes_to_the_other_server() {
    let (mut a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let d = Drawbridge::start(&yaml(&a.addr, &b.addr, "round_robin", ""));
    let tcp = d.tcp.clone();
    a.stop();
    for _ in 0..6 {
        assert_eq!(name_over_tcp(&tcp, "127.0.0.1"), "app-02");
    }
}
