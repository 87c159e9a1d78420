//! The admin token guards every admin route (CONTRACT section 4), and no
//! answer gives away a secret.
//!
//! [`ROUTES`] is the one list of admin routes. A test reads
//! `src/admin/api.rs` at run time and checks that its `route` match has
//! exactly these routes and methods, so a route added there without a
//! line here fails the suite. Every route then answers 401 without the
//! token and with each wrong one (and changes nothing), and does not
//! answer 401 with the right one. The GET answers, the 401 answers, the
//! metrics and the log never contain the admin token or a bypass secret.

use drawbridge::httpc::{self, Request, Response};
use std::collections::BTreeSet;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_drawbridge");
const TIMEOUT: Duration = Duration::from_secs(10);
const TOKEN: &str = "adm1n-t0ken-7f3c9a1e5b";
/// The bypass secret of site `shop`, from its `bypass_secret_env`.
const SHOP_SECRET: &str = "sh0p-bypass-secret-42d1e0";

/// One admin route: how `src/admin/api.rs` matches it and a call of it.
struct Route {
    method: &'static str,
    /// The match arm's pattern written as a path: literals as they are,
    /// bindings as `{name}` with api.rs's binding names.
    pattern: &'static str,
    /// A concrete path for it.
    path: &'static str,
    /// The body sent with the right token.
    body: Option<&'static str>,
    /// The body sent without or with a wrong token: a change that must not
    /// happen.
    attack: Option<&'static str>,
    /// The status with the right token.
    status: u16,
}

/// Every admin route, in an order where each call with the right token
/// succeeds (an allow entry is added before it is deleted).
#[rustfmt::skip]
const ROUTES: &[Route] = &[
    Route { method: "GET", pattern: "/api/v1/status", path: "/api/v1/status", body: None, attack: None, status: 200 },
    Route { method: "GET", pattern: "/api/v1/certificates", path: "/api/v1/certificates", body: None, attack: None, status: 200 },
    Route { method: "POST", pattern: "/api/v1/certificates/reload", path: "/api/v1/certificates/reload", body: None, attack: None, status: 200 },
    Route { method: "PUT", pattern: "/api/v1/maintenance", path: "/api/v1/maintenance", body: Some(r#"{"enabled":false}"#), attack: Some(r#"{"enabled":true}"#), status: 200 },
    Route { method: "GET", pattern: "/api/v1/sites/{site}", path: "/api/v1/sites/app", body: None, attack: None, status: 200 },
    Route { method: "PUT", pattern: "/api/v1/sites/{site}/maintenance", path: "/api/v1/sites/app/maintenance", body: Some(r#"{"enabled":false,"message":"ok"}"#), attack: Some(r#"{"enabled":true,"message":"pwned"}"#), status: 200 },
    Route { method: "POST", pattern: "/api/v1/sites/{site}/allow", path: "/api/v1/sites/app/allow", body: Some(r#"{"cidr":"203.0.113.7/32"}"#), attack: Some(r#"{"cidr":"0.0.0.0/0"}"#), status: 200 },
    Route { method: "DELETE", pattern: "/api/v1/sites/{site}/allow", path: "/api/v1/sites/app/allow", body: Some(r#"{"cidr":"203.0.113.7/32"}"#), attack: Some(r#"{"cidr":"203.0.113.7/32"}"#), status: 200 },
    Route { method: "POST", pattern: "/api/v1/sites/{site}/bypass-tokens", path: "/api/v1/sites/app/bypass-tokens", body: Some(r#"{"ttl":"1h"}"#), attack: Some(r#"{"ttl":"30days"}"#), status: 200 },
    Route { method: "GET", pattern: "/api/v1/backends/{b}/servers/{s}", path: "/api/v1/backends/app/servers/app-01", body: None, attack: None, status: 200 },
    Route { method: "PUT", pattern: "/api/v1/backends/{b}/servers/{s}/state", path: "/api/v1/backends/app/servers/app-01/state", body: Some(r#"{"state":"ready"}"#), attack: Some(r#"{"state":"maint"}"#), status: 200 },
    Route { method: "PUT", pattern: "/api/v1/backends/{b}/servers/{s}/weight", path: "/api/v1/backends/app/servers/app-01/weight", body: Some(r#"{"weight":1}"#), attack: Some(r#"{"weight":0}"#), status: 200 },
    // app-01 is ready: the long poll refuses at once (409).
    Route { method: "GET", pattern: "/api/v1/backends/{b}/servers/{s}/drained", path: "/api/v1/backends/app/servers/app-01/drained?timeout=1&idle=0", body: None, attack: None, status: 409 },
    Route { method: "POST", pattern: "/api/v1/backends/{b}/servers", path: "/api/v1/backends/app/servers", body: Some(r#"{"name":"app-09","addr":"127.0.0.1:9"}"#), attack: Some(r#"{"name":"evil","addr":"127.0.0.1:9","state":"ready"}"#), status: 201 },
    Route { method: "DELETE", pattern: "/api/v1/backends/{b}/servers/{s}", path: "/api/v1/backends/app/servers/app-09", body: None, attack: None, status: 200 },
];

/// Authorization headers that must be refused (`None`: no header).
fn wrong_auth() -> Vec<Option<String>> {
    vec![
        None,
        Some("Bearer wrong".into()),
        Some("Bearer ".into()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        Some(format!("Bearer {}", TOKEN.to_uppercase())),
        Some(format!("Basic {TOKEN}")),
        Some(TOKEN.to_string()),
        Some(format!("Bearer{TOKEN}")),
    ]
}

/// The routes of `src/admin/api.rs`'s `route` function, read from its
/// source: each arm starting with `["api", "v1"`, and the methods its
/// `only(&m, &[...])` call allows.
fn routes_in_source() -> (usize, BTreeSet<(String, String)>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/admin/api.rs");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let start = text
        .find("pub async fn route(")
        .unwrap_or_else(|| panic!("{}: no `pub async fn route(`", path.display()));
    let body = &text[start..];
    let end = body
        .find("\n}\n")
        .unwrap_or_else(|| panic!("{}: the end of `route`", path.display()));
    let body = &body[..end];
    // Split into arms: each starts at a line beginning with the pattern.
    let mut arms: Vec<String> = Vec::new();
    for line in body.lines() {
        let t = line.trim_start();
        if t.starts_with("[\"api\", \"v1\"") {
            arms.push(String::new());
        } else if t.starts_with("_ =>") {
            break;
        }
        if let Some(arm) = arms.last_mut() {
            arm.push_str(t);
            arm.push('\n');
        }
    }
    let mut routes = BTreeSet::new();
    for arm in &arms {
        let close = arm
            .find(']')
            .unwrap_or_else(|| panic!("an arm without its pattern's end: {arm}"));
        let pattern: String = arm[1..close]
            .split(',')
            .map(|p| {
                let p = p.trim();
                match p.strip_prefix('"').and_then(|p| p.strip_suffix('"')) {
                    Some(literal) => format!("/{literal}"),
                    None => format!("/{{{p}}}"),
                }
            })
            .collect();
        let only = arm
            .find("only(&m, &[")
            .unwrap_or_else(|| panic!("an arm that names no method: {arm}"));
        let list = &arm[only + "only(&m, &[".len()..];
        let list = &list[..list.find("])").unwrap_or(list.len())];
        let methods: Vec<&str> = list
            .split(',')
            .filter_map(|m| m.trim().strip_prefix("Method::"))
            .collect();
        assert!(!methods.is_empty(), "no methods read from {arm}");
        for m in methods {
            routes.insert((m.to_string(), pattern.clone()));
        }
    }
    (arms.len(), routes)
}

#[test]
fn the_table_holds_every_route_of_the_api() {
    let (arms, in_source) = routes_in_source();
    let patterns: BTreeSet<&str> = ROUTES.iter().map(|r| r.pattern).collect();
    assert_eq!(
        patterns.len(),
        arms,
        "src/admin/api.rs has {arms} route arms, ROUTES has {} paths: add the new route to ROUTES",
        patterns.len()
    );
    let in_table: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.pattern.to_string()))
        .collect();
    assert_eq!(in_table.len(), ROUTES.len(), "a route is twice in ROUTES");
    let missing: Vec<_> = in_source.difference(&in_table).collect();
    let extra: Vec<_> = in_table.difference(&in_source).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "ROUTES and src/admin/api.rs disagree: in the source only {missing:?}, in ROUTES only {extra:?}"
    );
    for r in ROUTES {
        assert!(
            matches(r.pattern, r.path),
            "{} {}: path {} does not fit its pattern",
            r.method,
            r.pattern,
            r.path
        );
    }
}

/// Whether `path` (its query aside) fits `pattern`.
fn matches(pattern: &str, path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    let (p, q): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), path.split('/').collect());
    p.len() == q.len()
        && p.iter()
            .zip(&q)
            .all(|(a, b)| (a.starts_with('{') && !b.is_empty()) || a == b)
}

#[test]
fn every_route_needs_the_token_from_token_env() {
    let proxy = Proxy::start(TokenFrom::Env);
    every_route_needs_the_token(&proxy);
}

#[test]
fn every_route_needs_the_token_from_token_file() {
    let proxy = Proxy::start(TokenFrom::File);
    every_route_needs_the_token(&proxy);
}

fn every_route_needs_the_token(proxy: &Proxy) {
    let before = read(&proxy.state_file());
    let status_before = proxy.call("GET", "/api/v1/status", Some(TOKEN), None);
    assert_eq!(status_before.status, 200, "{}", status_before.text());
    for r in ROUTES {
        for auth in wrong_auth() {
            let got = proxy.call_with(r.method, r.path, auth.clone(), r.attack.or(r.body));
            assert_eq!(
                got.status,
                401,
                "{} {} with Authorization {auth:?}: {}",
                r.method,
                r.path,
                got.text()
            );
            let error = got
                .json()
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string));
            assert!(
                error.is_some_and(|e| !e.is_empty()),
                "{} {}: a 401 without a JSON error: {}",
                r.method,
                r.path,
                got.text()
            );
            assert_no_secret(
                &format!("401 to {} {}", r.method, r.path),
                &got.text(),
                proxy,
            );
            if let Some(a) = auth.as_deref() {
                let given = a.trim_start_matches("Bearer ").trim_start_matches("Basic ");
                if given.len() > 4 {
                    assert!(
                        !got.text().contains(given),
                        "the 401 echoes the token given: {}",
                        got.text()
                    );
                }
            }
        }
    }
    // An unknown /api/ path is refused before routing: no route list leaks.
    let got = proxy.call("GET", "/api/v1/no-such-thing", None, None);
    assert_eq!(got.status, 401, "{}", got.text());
    // Nothing changed: the state file and the status are as before.
    assert_eq!(
        read(&proxy.state_file()),
        before,
        "a refused call changed the state file"
    );
    let status_after = proxy.call("GET", "/api/v1/status", Some(TOKEN), None);
    assert_eq!(
        strip_live(status_after.json()),
        strip_live(status_before.json()),
        "a refused call changed the status"
    );
    // /healthz is public.
    let got = proxy.call("GET", "/healthz", None, None);
    assert_eq!(got.status, 200, "{}", got.text());

    // The whole table twice: the scheme's case does not matter.
    for scheme in ["Bearer", "bearer"] {
        for r in ROUTES {
            let auth = Some(format!("{scheme} {TOKEN}"));
            let got = proxy.call_with(r.method, r.path, auth, r.body);
            assert_eq!(
                got.status,
                r.status,
                "{} {} with `{scheme} <the token>`: {}",
                r.method,
                r.path,
                got.text()
            );
        }
    }
}

/// What admin changes set in the status (sites, and servers without the
/// figures that move by themselves); other sections, such as live
/// connection counts, are left out.
fn strip_live(v: Result<serde_json::Value, String>) -> serde_json::Value {
    let mut v = v.unwrap_or_else(|e| panic!("status: {e}"));
    let mut v = serde_json::json!({"sites": v["sites"].take(), "backends": v["backends"].take()});
    if let Some(backends) = v["backends"].as_array_mut() {
        for b in backends {
            if let Some(servers) = b["servers"].as_array_mut() {
                for s in servers {
                    for k in ["health", "inflight", "sticky_last_seen", "requests_total"] {
                        s[k] = serde_json::Value::Null;
                    }
                }
            }
        }
    }
    v
}

#[test]
fn no_answer_gives_away_the_token_or_a_bypass_secret() {
    let proxy = Proxy::start(TokenFrom::Env);
    let state: serde_json::Value = serde_json::from_str(&read(&proxy.state_file()))
        .unwrap_or_else(|e| panic!("the state file is JSON: {e}"));
    let secret = state["bypass_secret"]
        .as_str()
        .unwrap_or_else(|| panic!("no bypass_secret in the state file: {state}"));
    assert!(secret.len() >= 32, "a short bypass secret: {secret:?}");

    // Something in every field: an allow entry, a message, a server in
    // drain so that `drained` answers 200 with its figures.
    for (method, path, body) in [
        (
            "POST",
            "/api/v1/sites/app/allow",
            r#"{"cidr":"203.0.113.7/32"}"#,
        ),
        (
            "PUT",
            "/api/v1/sites/shop/maintenance",
            r#"{"enabled":true,"message":"back soon"}"#,
        ),
        (
            "PUT",
            "/api/v1/backends/app/servers/app-02/state",
            r#"{"state":"drain"}"#,
        ),
    ] {
        let got = proxy.call(method, path, Some(TOKEN), Some(body));
        assert_eq!(got.status, 200, "{method} {path}: {}", got.text());
    }
    let mut answers: Vec<(String, Response)> = Vec::new();
    for r in ROUTES.iter().filter(|r| r.method == "GET") {
        for site in ["app", "shop"] {
            let path = r.path.replace("/sites/app", &format!("/sites/{site}"));
            answers.push((path.clone(), proxy.call("GET", &path, Some(TOKEN), None)));
        }
    }
    let drained = "/api/v1/backends/app/servers/app-02/drained?timeout=5&idle=0";
    let got = proxy.call("GET", drained, Some(TOKEN), None);
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        got.json().ok().map(|v| v["drained"].clone()),
        Some(true.into())
    );
    answers.push((drained.into(), got));
    for site in ["app", "shop"] {
        let path = format!("/api/v1/sites/{site}/bypass-tokens");
        let got = proxy.call("POST", &path, Some(TOKEN), Some(r#"{"ttl":"1h"}"#));
        assert_eq!(got.status, 200, "{path}: {}", got.text());
        answers.push((path, got));
    }
    for (path, got) in &answers {
        assert_ne!(got.status, 401, "{path}");
        let text = got.text();
        assert!(!text.is_empty(), "{path}: an empty answer");
        for (name, s) in [
            ("the admin token", TOKEN),
            ("app's bypass secret", secret),
            ("shop's bypass secret", SHOP_SECRET),
        ] {
            assert!(!text.contains(s), "{path} gives away {name}:\n{text}");
        }
    }
    let metrics = httpc::request(&proxy.metrics, &Request::new("GET", "/metrics"), TIMEOUT)
        .unwrap_or_else(|e| panic!("metrics: {e}"));
    assert_eq!(metrics.status, 200);
    assert_no_secret_in("/metrics", &metrics.text(), secret);
    assert_no_secret_in("the log", &read(&proxy.log), secret);
    assert!(
        !read(&proxy.log).is_empty(),
        "the proxy wrote no log at all"
    );
}

fn assert_no_secret(what: &str, text: &str, proxy: &Proxy) {
    let state: serde_json::Value =
        serde_json::from_str(&read(&proxy.state_file())).unwrap_or(serde_json::Value::Null);
    let secret = state["bypass_secret"].as_str().unwrap_or("no secret read");
    assert_no_secret_in(what, text, secret);
}

fn assert_no_secret_in(what: &str, text: &str, secret: &str) {
    for (name, s) in [
        ("the admin token", TOKEN),
        ("app's bypass secret", secret),
        ("shop's bypass secret", SHOP_SECRET),
    ] {
        assert!(!text.contains(s), "{what} gives away {name}:\n{text}");
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[derive(Clone, Copy)]
enum TokenFrom {
    Env,
    File,
}

/// The real binary with an admin token, sites `app` (generated bypass
/// secret, kept in the state file) and `shop` (secret from the
/// environment), servers on a port nothing listens on; killed on drop.
struct Proxy {
    dir: tempfile::TempDir,
    admin: String,
    metrics: String,
    log: PathBuf,
    child: Child,
}

fn free_addr() -> String {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.to_string())
        .expect("a free loopback port")
}

impl Proxy {
    fn start(from: TokenFrom) -> Proxy {
        let dir = tempfile::tempdir().expect("a temp dir");
        let d = dir.path().display().to_string();
        let (web, admin, metrics, closed) = (free_addr(), free_addr(), free_addr(), free_addr());
        let token = match from {
            TokenFrom::Env => "token_env: TEST_ADMIN_TOKEN".to_string(),
            TokenFrom::File => {
                let file = dir.path().join("admin-token");
                std::fs::write(&file, format!("{TOKEN}\n")).expect("write the token file");
                format!("token_file: {}", file.display())
            }
        };
        let yaml = format!(
            r#"server:
  threads: 1
  grace_period_seconds: 1
  graceful_shutdown_timeout_seconds: 1
  upgrade_sock: {d}/upgrade.sock
  pid_file: {d}/drawbridge.pid
state_file: {d}/state.json
admin:
  listen: "{admin}"
  {token}
metrics:
  listen: "{metrics}"
listeners:
  - name: web
    listen: "{web}"
sites:
  - name: app
    hosts: [app.test]
    backend: app
  - name: shop
    hosts: [shop.test]
    backend: app
    maintenance:
      bypass_secret_env: TEST_SHOP_SECRET
backends:
  - name: app
    servers:
      - {{ name: app-01, addr: "{closed}" }}
      - {{ name: app-02, addr: "{closed}" }}
"#
        );
        let config = dir.path().join("drawbridge.yaml");
        std::fs::write(&config, yaml).expect("write the config");
        let log = dir.path().join("drawbridge.log");
        let out = std::fs::File::create(&log).expect("the log file");
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "-c"])
            .arg(&config)
            .env("RUST_LOG", "debug")
            .env_remove("DRAWBRIDGE_ADMIN_TOKEN")
            .env_remove("DRAWBRIDGE_BYPASS_SECRET")
            .env("TEST_SHOP_SECRET", SHOP_SECRET);
        if let TokenFrom::Env = from {
            cmd.env("TEST_ADMIN_TOKEN", TOKEN);
        }
        let child = cmd
            .stdout(out.try_clone().expect("the log file"))
            .stderr(out)
            .spawn()
            .expect("start drawbridge");
        let proxy = Proxy {
            dir,
            admin,
            metrics,
            log,
            child,
        };
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let up = httpc::request(&proxy.admin, &Request::new("GET", "/healthz"), TIMEOUT)
                .is_ok_and(|r| r.status == 200)
                && TcpStream::connect(&web).is_ok();
            if up {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "drawbridge did not start within {TIMEOUT:?}; log:\n{}",
                read(&proxy.log)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy
    }

    fn state_file(&self) -> PathBuf {
        self.dir.path().join("state.json")
    }

    /// An admin call with `Authorization: Bearer <token>` when given.
    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Response {
        self.call_with(method, path, token.map(|t| format!("Bearer {t}")), body)
    }

    /// An admin call with this `Authorization` header, if any.
    fn call_with(
        &self,
        method: &str,
        path: &str,
        authorization: Option<String>,
        body: Option<&str>,
    ) -> Response {
        let mut req = Request::new(method, path);
        if let Some(a) = authorization {
            req = req.header("Authorization", a);
        }
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.as_bytes().to_vec());
        }
        httpc::request(&self.admin, &req, TIMEOUT)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
