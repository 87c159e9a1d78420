//! Servers added and deleted at runtime (CONTRACT section 11): an added
//! server is health-checked, takes new clients, has its series and its
//! sticky cookie; it is deleted only from `maint` with nothing in flight
//! (or forced), its cookie holders are pinned again without an error, its
//! series go; the change survives a restart; a hundred changes leave
//! memory flat.

mod common;

use common::*;
use drawbridge::httpc::Request;

/// The servers of backend `app`, as status lists them: (name, state).
fn servers(d: &Drawbridge) -> Vec<(String, String)> {
    let v = json(&d.api("GET", "/api/v1/status", None));
    v["backends"][0]["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or("?").to_string(),
                s["state"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect()
}

fn ctl_ok(d: &Drawbridge, args: &[&str]) -> String {
    let o = d.ctl(args);
    assert!(o.status.success(), "ctl {args:?}: {}{}", out(&o), err(&o));
    out(&o)
}

#[test]
fn a_server_added_through_the_api_serves_then_leaves_without_an_error() {
    let (a, b, c) = (
        Upstream::start("app-01"),
        Upstream::start("app-02"),
        Upstream::start("app-03"),
    );
    let d = Drawbridge::start(&two_server_yaml(&a.addr, &b.addr));
    let up03 = r#"drawbridge_server_up{backend="app",server="app-03"}"#;
    assert!(!d.metrics_text().contains(up03));
    let load = Load::start(&d.web);

    // Added in ready: health-checked first, then it takes new clients.
    let said = ctl_ok(
        &d,
        &["server", "add", "app/app-03", &c.addr, "--state", "ready"],
    );
    assert!(
        said.contains("app/app-03") && said.contains("added"),
        "{said}"
    );
    assert!(d.metrics_text().contains(up03), "its series appeared");
    assert!(
        wait_until(TIMEOUT, || d.get("/").text().trim() == "app-03"),
        "app-03 never took a new client"
    );
    assert_eq!(d.metric(up03), 1.0);
    let again = d.api(
        "POST",
        "/api/v1/backends/app/servers",
        Some(&format!(r#"{{"name":"app-03","addr":"{}"}}"#, c.addr)),
    );
    assert_eq!(again.status, 409, "{}", again.text());

    // A client pinned to app-03.
    let pinned = (0..50)
        .map(|_| d.get("/"))
        .find(|r| r.text().trim() == "app-03")
        .expect("a response from app-03");
    let id = set_cookie_value(&pinned, "SERVERID").expect("app-03's cookie");
    let cookie = format!("SERVERID={id}");
    let sticky = || d.send(Request::new("GET", "/").header("Cookie", &cookie));
    assert_eq!(sticky().text().trim(), "app-03");

    // Not deleted while ready, nor by ctl without --force.
    let refused = d.api("DELETE", "/api/v1/backends/app/servers/app-03", None);
    assert_eq!(refused.status, 409, "{}", refused.text());
    let o = d.ctl(&["server", "del", "app/app-03"]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(err(&o).contains("maint"), "{}", err(&o));

    // maint, nothing in flight: deleted.
    ctl_ok(&d, &["server", "app/app-03", "maint"]);
    let unknown = r#"drawbridge_sticky_redispatch_total{backend="app",reason="unknown"}"#;
    let before = d.metric(unknown);
    assert!(
        wait_until(TIMEOUT, || {
            d.ctl(&["server", "del", "app/app-03"]).status.success()
        }),
        "app-03 could not be deleted from maint"
    );
    assert_eq!(
        servers(&d),
        [
            ("app-01".into(), "ready".into()),
            ("app-02".into(), "ready".into())
        ]
    );
    let text = d.metrics_text();
    assert!(
        !text.contains(r#"server="app-03""#),
        "its series went:\n{text}"
    );

    // Its cookie holder is balanced and pinned again, without an error.
    let moved = sticky();
    assert_eq!(moved.status, 200);
    let name = moved.text().trim().to_string();
    assert!(name == "app-01" || name == "app-02", "{name}");
    let new_id = set_cookie_value(&moved, "SERVERID").expect("pinned again");
    assert_ne!(new_id, id);
    assert_eq!(d.metric(unknown), before + 1.0);

    let (ok, failed) = load.finish();
    assert!(ok > 10, "{ok} requests");
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
}

#[test]
fn servers_added_and_deleted_survive_a_restart() {
    let (a, b, c) = (
        Upstream::start("app-01"),
        Upstream::start("app-02"),
        Upstream::start("app-03"),
    );
    let d = Drawbridge::start(&two_server_yaml(&a.addr, &b.addr));
    let body = format!(r#"{{"name":"app-03","addr":"{}","weight":3}}"#, c.addr);
    let r = d.api("POST", "/api/v1/backends/app/servers", Some(&body));
    assert_eq!(r.status, 201, "{}", r.text());
    let added = json(&r);
    assert_eq!(
        (added["state"].as_str(), added["weight"].as_u64()),
        (Some("maint"), Some(3)),
        "added in maint by default: {added}"
    );
    ctl_ok(&d, &["server", "app/app-02", "maint"]);
    ctl_ok(&d, &["server", "del", "app/app-02"]);
    let expected: Vec<(String, String)> = vec![
        ("app-01".into(), "ready".into()),
        ("app-03".into(), "maint".into()),
    ];
    assert_eq!(servers(&d), expected);

    let d = d.kill9_and_restart();
    assert_eq!(servers(&d), expected, "after a restart");
    let log = d.log_text();
    assert!(log.contains("server(s) added app/app-03"), "{log}");
    assert!(log.contains("server(s) deleted app/app-02"), "{log}");
    // It is a server like the others: ready, it serves.
    ctl_ok(&d, &["server", "app/app-03", "ready"]);
    assert!(wait_until(TIMEOUT, || d.get("/").text().trim() == "app-03"));
    assert!(!d.metrics_text().contains(r#"server="app-02""#));
}

/// VmRSS of a process, in KB.
fn rss_kb(pid: u32) -> u64 {
    let status = read(std::path::Path::new(&format!("/proc/{pid}/status")));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn adding_and_deleting_servers_in_a_loop_leaves_memory_flat() {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let d = Drawbridge::start(&two_server_yaml(&a.addr, &b.addr));
    let pid = d.proc.pid().expect("pid");
    let cycle = |i: usize| {
        let name = format!("tmp-{i}");
        let body = format!(r#"{{"name":"{name}","addr":"127.0.0.1:9"}}"#);
        let r = d.api("POST", "/api/v1/backends/app/servers", Some(&body));
        assert_eq!(r.status, 201, "{}", r.text());
        let path = format!("/api/v1/backends/app/servers/{name}");
        let r = d.api("DELETE", &path, None);
        assert_eq!(r.status, 200, "{}", r.text());
    };
    let series = |d: &Drawbridge| d.metrics_text().lines().count();
    // RSS, the highest of four samples a quarter of `n` changes apart,
    // from change `from` on: the allocator moves RSS up and down by a
    // megabyte or two (returning memory, then growing its pools again), a
    // leak only up.
    let highest = |from: usize, n: usize| {
        (0..4)
            .map(|q| {
                for i in 0..n / 4 {
                    cycle(from + q * n / 4 + i);
                }
                rss_kb(pid)
            })
            .max()
            .unwrap_or(0)
    };
    for i in 0..300 {
        cycle(i);
    }
    let series_before = series(&d);
    let (first, second) = (highest(300, 1000), highest(1300, 1000));
    let series_after = series(&d);
    eprintln!(
        "RSS at most {first} KB over 1000 additions and deletions, then {second} KB over 1000 more"
    );
    assert_eq!(series_after, series_before, "series left behind");
    assert_eq!(servers(&d).len(), 2);
    // A server costs about 10 KB (its clients sketch alone is 8 KB): one
    // kept per change would add 10 MB from one thousand to the next.
    assert!(
        second < first + 2 * 1024,
        "RSS grew from at most {first} KB to {second} KB"
    );
}
