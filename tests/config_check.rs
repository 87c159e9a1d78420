//! `drawbridge check` and `run` on bad configurations: every problem is
//! reported, one line each, naming the file and the key path, and a bad
//! config never starts the proxy.

mod common;

use common::*;
use std::process::Command;

const GOOD: &str = r#"
listeners:
  - { name: web, listen: "127.0.0.1:18999" }
sites:
  - { name: app, backend: app }
backends:
  - name: app
    servers:
      - { name: app-01, addr: "127.0.0.1:18081" }
"#;

fn check(yaml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("x.yaml");
    std::fs::write(&path, yaml).expect("write");
    let mut cmd = Command::new(BIN);
    cmd.args(["check", "-c"])
        .arg(&path)
        .env_remove("DRAWBRIDGE_ADMIN_TOKEN");
    let out = run_bounded(cmd);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `yaml` must be rejected with a line naming the file, `key` and `words`.
fn rejects(yaml: &str, key: &str, words: &str) {
    let (code, _, err) = check(yaml);
    assert_eq!(code, 1, "accepted:\n{yaml}");
    let line = err
        .lines()
        .find(|l| l.contains(&format!("x.yaml: {key}: ")))
        .unwrap_or_else(|| panic!("no problem reported at {key}; got:\n{err}"));
    assert!(line.contains(words), "line {line:?} does not say {words:?}");
}

#[test]
fn a_good_config_prints_a_summary() {
    let (code, out, err) = check(GOOD);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "ok: 1 sites, 1 backends, 1 servers");
}

#[test]
fn each_bad_config_names_its_key_path() {
    let cases: Vec<(String, &str, &str)> = vec![
        (
            GOOD.replace("name: web,", "name: web, lissen: x,"),
            "listeners[0].lissen",
            "unknown field",
        ),
        (
            GOOD.replace("127.0.0.1:18081", "foo"),
            "backends[0].servers[0].addr",
            "invalid socket address \"foo\"",
        ),
        (
            format!("{GOOD}    connect_timeout: 2 parsecs\n"),
            "backends[0].connect_timeout",
            "invalid duration",
        ),
        (
            format!("trusted_proxies: [10.0.0.0/33]\n{GOOD}"),
            "trusted_proxies[0]",
            "invalid CIDR",
        ),
        (
            GOOD.replace(
                "{ name: app, backend: app }",
                "{ name: app, backend: app, maintenance: { paths: [\"(x\"] } }",
            ),
            "sites[0].maintenance.paths[0]",
            "invalid regex",
        ),
        (
            GOOD.replace(
                "{ name: app, backend: app }",
                "{ name: app, backend: app, maintenance: { allow: [nope] } }",
            ),
            "sites[0].maintenance.allow[0]",
            "invalid CIDR",
        ),
        (
            format!("{GOOD}      - {{ name: app-01, addr: \"127.0.0.1:18082\" }}\n"),
            "backends[0].servers[1].name",
            "duplicate server name",
        ),
        (
            GOOD.replace("backend: app }", "backend: nope }"),
            "sites[0].backend",
            "unknown backend \"nope\"",
        ),
        (
            GOOD.replace(
                "{ name: app, backend: app }",
                "{ name: app, backend: app, error_page: missing.html }",
            ),
            "sites[0].error_page",
            "cannot read",
        ),
        (
            GOOD.replace(
                "listeners:\n  - { name: web, listen: \"127.0.0.1:18999\" }\n",
                "",
            ),
            "listeners",
            "at least one listener",
        ),
        (
            format!("admin: {{ listen: \"0.0.0.0:19090\" }}\n{GOOD}"),
            "admin.listen",
            "needs a token",
        ),
        (
            GOOD.replace(
                "addr: \"127.0.0.1:18081\"",
                "addr: \"127.0.0.1:18081\", weight: 300",
            ),
            "backends[0].servers[0].weight",
            "between 0 and 256",
        ),
        (
            GOOD.replace(
                "addr: \"127.0.0.1:18081\"",
                "addr: \"127.0.0.1:18081\", state: sleeping",
            ),
            "backends[0].servers[0].state",
            "unknown state",
        ),
        (
            format!("{GOOD}    balance: fastest\n"),
            "backends[0].balance",
            "unknown balance",
        ),
        (
            format!("{GOOD}    sticky: {{ cookie: \"bad name\" }}\n"),
            "backends[0].sticky.cookie",
            "invalid cookie name",
        ),
        (
            format!("{GOOD}    health_check: {{ rise: 0 }}\n"),
            "backends[0].health_check.rise",
            "between 1 and 100",
        ),
        (format!("bogus: 1\n{GOOD}"), "bogus", "unknown key"),
        (
            format!("limits: {{ header_timeout: 500ms }}\n{GOOD}"),
            "limits.header_timeout",
            "between 1s and 1h",
        ),
        (
            format!("limits: {{ keepalive_timeout: soon }}\n{GOOD}"),
            "limits.keepalive_timeout",
            "invalid duration",
        ),
        (
            format!("limits: {{ max_connections: 10, max_connections_per_client: 20 }}\n{GOOD}"),
            "limits.max_connections_per_client",
            "must not exceed",
        ),
        (
            GOOD.replace(
                "{ name: app, backend: app }",
                "{ name: app, backend: app, maintenance: { retry_after: 0 } }",
            ),
            "sites[0].maintenance.retry_after",
            "between 1 and 604800",
        ),
        (
            GOOD.replace(
                "{ name: app, backend: app }",
                "{ name: app, backend: app, maintenance: { retry_after: soon } }",
            ),
            "sites[0].maintenance.retry_after",
            "invalid type",
        ),
        (
            GOOD.replace("name: web,", "name: web, tls: { cert: a.pem, key: a.key },"),
            "listeners[0].tls",
            "cannot read",
        ),
        (
            GOOD.replace("listen: \"127.0.0.1:18999\"", "listen: \"127.0.0.1:9090\""),
            "listeners[0].listen",
            "also admin.listen",
        ),
        (
            GOOD.replace(
                "\"127.0.0.1:18081\" }",
                "\"127.0.0.1:18081\", max_conns: -1 }",
            ),
            "backends[0].servers[0].max_conns",
            "invalid value",
        ),
        (
            GOOD.replace(
                "\"127.0.0.1:18081\" }",
                "\"127.0.0.1:18081\", slowstart: 2h }",
            ),
            "backends[0].servers[0].slowstart",
            "at most 1h",
        ),
        (
            format!("{GOOD}    queue: {{ max: 2000000, timeout: 5s }}\n"),
            "backends[0].queue.max",
            "between 0 and",
        ),
        (
            format!("{GOOD}    queue: {{ timeout: 2h }}\n"),
            "backends[0].queue.timeout",
            "between 1ms and 1h",
        ),
        (
            format!("{GOOD}    on_marked_down: shutdown\n"),
            "backends[0].on_marked_down",
            "expected none or shutdown_sessions",
        ),
        (
            format!("{GOOD}    on_marked_down: shutdown_sessions\n"),
            "backends[0].on_marked_down",
            "needs a health_check",
        ),
        (
            GOOD.replace(
                "{ name: app, backend: app }",
                "{ name: app, backend: app, maintenance: { backend: sorry } }",
            ),
            "sites[0].maintenance.backend",
            "unknown backend \"sorry\"",
        ),
        (
            GOOD.replace(
                "{ name: app, backend: app }",
                "{ name: app, backend: app, maintenance: { backend: app } }",
            ),
            "sites[0].maintenance.backend",
            "site's own backend",
        ),
    ];
    assert!(cases.len() >= 10);
    for (yaml, key, words) in &cases {
        rejects(yaml, key, words);
    }
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let yaml = r#"
metrics: { listen: nope }
listeners:
  - { name: web, listen: "127.0.0.1:18999", protocl: http }
sites:
  - { name: app, backend: app, maintenance: { allow: [bad] } }
backends:
  - name: app
    servers:
      - { name: app-01, addr: foo }
      - { name: app-02, adr: "127.0.0.1:1" }
"#;
    let (code, _, err) = check(yaml);
    assert_eq!(code, 1);
    for key in [
        "metrics.listen",
        "listeners[0].protocl",
        "sites[0].maintenance.allow[0]",
        "backends[0].servers[0].addr",
        "backends[0].servers[1].adr",
    ] {
        assert!(
            err.contains(&format!("x.yaml: {key}: ")),
            "{key} missing from:\n{err}"
        );
    }
    assert!(
        err.lines().all(|l| l.contains("x.yaml: ")),
        "one line per problem:\n{err}"
    );
}

#[test]
fn run_refuses_a_bad_config_with_the_same_messages() {
    let d = Drawbridge::prepare(
        "listeners:\n  - { name: web, listen: \"{web}\" }\nsites: []\nbackends: []\nbogus: 1\n",
        &[],
    );
    let out = d.run_to_exit();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bogus: unknown key"), "{err}");
    assert!(
        err.contains("sites: an http listener needs at least one site"),
        "{err}"
    );
    let mut cmd = Command::new(BIN);
    cmd.args(["check", "-c"]).arg(&d.config);
    let check_err = String::from_utf8_lossy(&run_bounded(cmd).stderr).into_owned();
    for line in check_err.lines() {
        assert!(err.contains(line), "run did not print {line:?}");
    }
}

#[test]
fn unreadable_or_malformed_files_are_clear_errors() {
    let (code, _, err) = check("listeners: [ {");
    assert_eq!(code, 1);
    assert!(err.contains("x.yaml"), "{err}");
    let mut cmd = Command::new(BIN);
    cmd.args(["check", "-c", "/nonexistent/drawbridge.yaml"]);
    let out = run_bounded(cmd);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/drawbridge.yaml: cannot read")
    );
}

#[test]
fn check_refuses_a_state_file_run_would_refuse() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("x.yaml");
    std::fs::write(&path, format!("state_file: state.json\n{GOOD}")).expect("write");
    std::fs::write(dir.path().join("state.json"), "{ not json").expect("write");
    let mut cmd = Command::new(BIN);
    cmd.args(["check", "-c"]).arg(&path);
    let out = run_bounded(cmd);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("state.json") && err.contains("cannot parse"),
        "{err}"
    );
    // A valid state file is fine.
    std::fs::write(dir.path().join("state.json"), r#"{"version":1}"#).expect("write");
    let mut cmd = Command::new(BIN);
    cmd.args(["check", "-c"]).arg(&path);
    assert_eq!(run_bounded(cmd).status.code(), Some(0));
}
