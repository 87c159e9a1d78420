//! The state file under faults (CONTRACT sections 4 and 5): a change is
//! on disk before it is acknowledged, a kill -9 in the middle of a stream
//! of changes leaves a file that parses and holds the last acknowledged
//! change or the one in flight, and a state file that cannot be written
//! refuses the change (500, naming the state file) without changing what
//! the running proxy does.

mod common;

use common::serve_each;
use drawbridge::httpc::{self, Request, Response};
use rand::Rng;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_drawbridge");
const TIMEOUT: Duration = Duration::from_secs(10);
const WEIGHT: &str = "/api/v1/backends/app/servers/app-01/weight";

/// The weight written by the `i`th change of a stream: consecutive
/// changes always differ, and all are valid (0 to 256).
fn weight_of(i: i64) -> u64 {
    (i % 257) as u64
}

#[test]
fn kill9_during_a_stream_of_changes_leaves_the_acknowledged_or_the_next() {
    let upstream = Upstream::start();
    let mut proxy = Proxy::prepare(&upstream.addr, "state.json");
    proxy.launch();
    let mut rng = rand::thread_rng();
    for round in 0..3 {
        // Kill once this many changes were acknowledged, then at whatever
        // point of the next change the signal lands.
        let kill_after: i64 = rng.gen_range(3..120);
        let acked = Arc::new(AtomicI64::new(-1));
        let writer = {
            let (admin, acked) = (proxy.admin.clone(), acked.clone());
            std::thread::spawn(move || -> Result<(), String> {
                for i in 0.. {
                    let body = format!("{{\"weight\":{}}}", weight_of(i));
                    match admin_call(&admin, "PUT", WEIGHT, Some(&body)) {
                        Ok(r) if r.status == 200 => acked.store(i, SeqCst),
                        Ok(r) => return Err(format!("change {i}: {} {}", r.status, r.text())),
                        // The proxy is gone: the stream ends.
                        Err(_) => return Ok(()),
                    }
                }
                Ok(())
            })
        };
        let reached = wait_until(Duration::from_secs(60), || {
            acked.load(SeqCst) >= kill_after || writer.is_finished()
        });
        assert!(
            reached && !writer.is_finished(),
            "round {round}: {} of {kill_after} changes acknowledged; log:\n{}",
            acked.load(SeqCst) + 1,
            proxy.log_tail()
        );
        proxy.kill9();
        writer
            .join()
            .expect("the writer thread")
            .unwrap_or_else(|e| panic!("round {round}: a change was refused: {e}"));
        let last = acked.load(SeqCst);
        let text = std::fs::read_to_string(proxy.state_file())
            .unwrap_or_else(|e| panic!("round {round}: the state file after kill -9: {e}"));
        let state: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("round {round}: the state file after kill -9 is not JSON ({e}):\n{text}")
        });
        let on_disk = state["servers"]["app"]["app-01"]["weight"]
            .as_u64()
            .unwrap_or_else(|| panic!("round {round}: no weight for app/app-01 in {state}"));
        let (acknowledged, in_flight) = (weight_of(last), weight_of(last + 1));
        assert!(
            on_disk == acknowledged || on_disk == in_flight,
            "round {round}: killed after change {last} (weight {acknowledged}) was \
             acknowledged; the file holds weight {on_disk}, neither it nor the next \
             ({in_flight})"
        );
        // Restarted on that file: it starts, and serves what it holds.
        proxy.launch();
        let server = proxy.api("GET", "/api/v1/backends/app/servers/app-01", None);
        assert_eq!(server.status, 200, "{}", server.text());
        assert_eq!(
            json(&server)["weight"].as_u64(),
            Some(on_disk),
            "round {round}: the restarted proxy does not serve the file's weight"
        );
        let r = get(&proxy.web, "/");
        assert_eq!(
            (r.status, r.text()),
            (200, "app".to_string()),
            "round {round}"
        );
        eprintln!(
            "round {round}: killed after {kill_after}+ changes; acknowledged {last}, file \
             holds {}",
            if on_disk == acknowledged {
                "it"
            } else {
                "the next"
            }
        );
    }
}

/// The changes tried while the state file cannot be written; none may
/// take effect.
const CHANGES: &[(&str, &str, &str)] = &[
    (
        "PUT",
        "/api/v1/sites/app/maintenance",
        r#"{"enabled":true}"#,
    ),
    ("PUT", "/api/v1/maintenance", r#"{"enabled":true}"#),
    (
        "POST",
        "/api/v1/sites/app/allow",
        r#"{"cidr":"203.0.113.7/32"}"#,
    ),
    (
        "PUT",
        "/api/v1/backends/app/servers/app-01/state",
        r#"{"state":"maint"}"#,
    ),
    (
        "PUT",
        "/api/v1/backends/app/servers/app-02/state",
        r#"{"state":"maint"}"#,
    ),
    (
        "PUT",
        "/api/v1/backends/app/servers/app-01/weight",
        r#"{"weight":7}"#,
    ),
];

/// Make the state file's folder unwritable. Tests run as root, and root
/// ignores permission bits (chmod 0555 would not stop it), so the folder
/// is renamed away and a regular file takes its name: creating the
/// folder, or a file in it, now fails for root as for anyone (EEXIST /
/// ENOTDIR). Returns where the folder went.
fn break_state_folder(proxy: &Proxy) -> PathBuf {
    let folder = proxy
        .state_file()
        .parent()
        .expect("the state file's folder")
        .to_path_buf();
    let moved = folder.with_extension("moved");
    std::fs::rename(&folder, &moved).unwrap_or_else(|e| panic!("rename {}: {e}", folder.display()));
    std::fs::write(&folder, "not a folder\n")
        .unwrap_or_else(|e| panic!("create the file {}: {e}", folder.display()));
    moved
}

fn repair_state_folder(proxy: &Proxy, moved: &Path) {
    let folder = proxy
        .state_file()
        .parent()
        .expect("the state file's folder")
        .to_path_buf();
    std::fs::remove_file(&folder).unwrap_or_else(|e| panic!("remove {}: {e}", folder.display()));
    std::fs::rename(moved, &folder).unwrap_or_else(|e| panic!("rename back: {e}"));
}

#[test]
fn an_unwritable_state_file_refuses_the_change_and_keeps_the_running_state() {
    let upstream = Upstream::start();
    let mut proxy = Proxy::prepare(&upstream.addr, "state/state.json");
    proxy.launch();
    let r = get(&proxy.web, "/");
    assert_eq!((r.status, r.text()), (200, "app".to_string()));
    let status_before = strip_live(json(&proxy.api("GET", "/api/v1/status", None)));
    let file_before = read(&proxy.state_file());
    assert!(
        !file_before.is_empty(),
        "the proxy wrote no state file at start"
    );

    let moved = break_state_folder(&proxy);
    for (method, path, body) in CHANGES {
        let r = proxy.api(method, path, Some(body));
        assert_eq!(
            r.status,
            500,
            "{method} {path} {body} with an unwritable state file: {}",
            r.text()
        );
        let error = json(&r)["error"].as_str().unwrap_or_default().to_string();
        assert!(
            error.contains("state file"),
            "{method} {path}: the error does not name the state file: {error:?}"
        );
        // Nothing changed: the API, the proxied answer, the file left behind.
        let status = strip_live(json(&proxy.api("GET", "/api/v1/status", None)));
        assert_eq!(status, status_before, "{method} {path} changed the status");
        let r = get(&proxy.web, "/");
        assert_eq!(
            (r.status, r.text()),
            (200, "app".to_string()),
            "after {method} {path}: the proxy no longer serves as before"
        );
    }
    let site = json(&proxy.api("GET", "/api/v1/sites/app", None));
    assert_eq!(site["maintenance"]["enabled"], false, "{site}");
    assert_eq!(site["in_maintenance"], false, "{site}");
    assert_eq!(
        read(&moved.join("state.json")),
        file_before,
        "the state file changed"
    );
    assert!(
        log_contains(&proxy, "state file"),
        "the failure is not logged; log:\n{}",
        proxy.log_tail()
    );

    // Writable again: the next change is taken, written and served.
    repair_state_folder(&proxy, &moved);
    let r = proxy.api(
        "PUT",
        "/api/v1/sites/app/maintenance",
        Some(r#"{"enabled":true}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&proxy.web, "/").status, 503);
    let on_disk: serde_json::Value = serde_json::from_str(&read(&proxy.state_file()))
        .unwrap_or_else(|e| panic!("the state file: {e}"));
    assert_eq!(on_disk["sites"]["app"]["enabled"], true, "{on_disk}");
}

/// An operator reading the 500 must learn which file could not be
/// written: its path, not only the words "the state file".
#[test]
fn the_storage_error_names_the_state_file_path() {
    let upstream = Upstream::start();
    let mut proxy = Proxy::prepare(&upstream.addr, "state/state.json");
    proxy.launch();
    let _moved = break_state_folder(&proxy);
    let r = proxy.api(
        "PUT",
        "/api/v1/sites/app/maintenance",
        Some(r#"{"enabled":true}"#),
    );
    assert_eq!(r.status, 500, "{}", r.text());
    let error = json(&r)["error"].as_str().unwrap_or_default().to_string();
    let path = proxy.state_file().display().to_string();
    assert!(error.contains(&path), "{error:?} does not name {path}");
}

/// A proxy that cannot write its state file does not start, and says
/// which file.
#[test]
fn a_start_with_an_unwritable_state_file_fails_naming_it() {
    let upstream = Upstream::start();
    let mut proxy = Proxy::prepare(&upstream.addr, "state/state.json");
    proxy.launch();
    let _moved = break_state_folder(&proxy);
    proxy.kill9();
    let mut child = proxy.spawn(Stdio::piped());
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let exited = wait_until(TIMEOUT, || matches!(child.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait().expect("wait");
    let text = reader.join().expect("the stderr reader") + &read(&proxy.log);
    assert!(
        exited,
        "drawbridge kept running without a writable state file:\n{text}"
    );
    assert!(!status.success(), "exit {status}:\n{text}");
    let path = proxy.state_file().display().to_string();
    assert!(
        text.contains(&path),
        "the error does not name {path}:\n{text}"
    );
}

/// What admin changes set in the status (sites, and servers without the
/// figures that move by themselves); other sections, such as live
/// connection counts, are left out.
fn strip_live(mut v: serde_json::Value) -> serde_json::Value {
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

fn log_contains(proxy: &Proxy, needle: &str) -> bool {
    wait_until(TIMEOUT, || read(&proxy.log).contains(needle))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn json(r: &Response) -> serde_json::Value {
    r.json()
        .unwrap_or_else(|e| panic!("status {}: {e}", r.status))
}

/// Poll `f` until it holds or `timeout` passes.
fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn free_addr() -> String {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.to_string())
        .expect("a free loopback port")
}

fn get(addr: &str, path: &str) -> Response {
    httpc::request(addr, &Request::new("GET", path), TIMEOUT)
        .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
}

fn admin_call(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<Response> {
    let mut req = Request::new(method, path);
    if let Some(b) = body {
        req = req
            .header("Content-Type", "application/json")
            .body(b.as_bytes().to_vec());
    }
    httpc::request(addr, &req, TIMEOUT)
}

/// An upstream answering `app` to every request, one per connection.
struct Upstream {
    addr: String,
}

impl Upstream {
    fn start() -> Upstream {
        Upstream {
            addr: serve_each(answer),
        }
    }
}

fn answer(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let mut head = Vec::new();
    let mut byte = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&byte[..n]),
        }
    }
    let _ =
        stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\napp");
}

/// The real binary in its own folder, state file at `state` under it;
/// servers app-01 and app-02 on one upstream; killed on drop.
struct Proxy {
    dir: tempfile::TempDir,
    config: PathBuf,
    state: PathBuf,
    web: String,
    admin: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Proxy {
    fn prepare(upstream: &str, state: &str) -> Proxy {
        let dir = tempfile::tempdir().expect("a temp dir");
        let d = dir.path().display().to_string();
        let (web, admin, metrics) = (free_addr(), free_addr(), free_addr());
        let state = dir.path().join(state);
        let yaml = format!(
            r#"server:
  threads: 1
  grace_period_seconds: 1
  graceful_shutdown_timeout_seconds: 1
  upgrade_sock: {d}/upgrade.sock
  pid_file: {d}/drawbridge.pid
state_file: {state}
admin:
  listen: "{admin}"
metrics:
  listen: "{metrics}"
listeners:
  - name: web
    listen: "{web}"
sites:
  - name: app
    backend: app
backends:
  - name: app
    servers:
      - {{ name: app-01, addr: "{upstream}", weight: 3 }}
      - {{ name: app-02, addr: "{upstream}" }}
"#,
            state = state.display()
        );
        let config = dir.path().join("drawbridge.yaml");
        std::fs::write(&config, yaml).expect("write the config");
        Proxy {
            log: dir.path().join("drawbridge.log"),
            dir,
            config,
            state,
            web,
            admin,
            child: None,
        }
    }

    fn state_file(&self) -> PathBuf {
        self.state.clone()
    }

    /// The process, stdout to the log, stderr to `stderr`.
    fn spawn(&self, stderr: Stdio) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("the log file");
        Command::new(BIN)
            .args(["run", "-c"])
            .arg(&self.config)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "info")
            .env_remove("DRAWBRIDGE_ADMIN_TOKEN")
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .expect("start drawbridge")
    }

    /// Start (or restart) and wait until both listeners answer.
    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("the log file");
        self.child = Some(self.spawn(Stdio::from(log)));
        let (admin, web) = (self.admin.clone(), self.web.clone());
        let up = wait_until(TIMEOUT, || {
            httpc::request(&admin, &Request::new("GET", "/healthz"), TIMEOUT)
                .is_ok_and(|r| r.status == 200)
                && TcpStream::connect(&web).is_ok()
        });
        assert!(up, "drawbridge did not start; log:\n{}", self.log_tail());
    }

    /// SIGKILL, and reap.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn api(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        admin_call(&self.admin, method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn log_tail(&self) -> String {
        let text = read(&self.log);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.kill9();
    }
}
