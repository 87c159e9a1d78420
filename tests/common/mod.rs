//! The integration-test harness: starts the real `drawbridge` binary and
//! real upstreams on free loopback ports, each instance with its own temp
//! folder (config, state file, pid file, upgrade socket), and kills every
//! process it started when dropped, even when a test fails.

#![allow(dead_code)]

use drawbridge::httpc::{self, Conn, Request, Response};
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_drawbridge");
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc(pub Option<Child>);

impl Proc {
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.0.as_ref().map(|c| c.id())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Poll `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// One request on a new connection.
pub fn send(addr: &str, req: Request) -> Response {
    httpc::request(addr, &req, TIMEOUT).unwrap_or_else(|e| panic!("request to {addr} failed: {e}"))
}

pub fn get(addr: &str, path: &str) -> Response {
    send(addr, Request::new("GET", path))
}

/// One request from a chosen local address (e.g. 127.0.0.2).
pub fn get_from(addr: &str, local: &str, req: Request) -> Response {
    let ip: IpAddr = local.parse().expect("a local ip");
    let mut c = Conn::open_from(addr, ip, TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to {addr} from {local}: {e}"));
    c.send(&req)
        .unwrap_or_else(|e| panic!("request to {addr} from {local}: {e}"))
}

/// A demo upstream app answering its name.
pub struct Upstream {
    pub name: String,
    pub addr: String,
    pub proc: Proc,
}

impl Upstream {
    pub fn start(name: &str) -> Upstream {
        Upstream::start_on(name, &free_addr())
    }

    pub fn start_on(name: &str, addr: &str) -> Upstream {
        let child = Command::new(BIN)
            .args(["demo-upstream", "--name", name, "--listen", addr])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start demo-upstream");
        let up = Upstream {
            name: name.into(),
            addr: addr.into(),
            proc: Proc(Some(child)),
        };
        let ok = wait_until(TIMEOUT, || {
            httpc::request(
                addr,
                &Request::new("GET", "/healthz"),
                Duration::from_secs(1),
            )
            .is_ok_and(|r| r.status == 200)
        });
        assert!(ok, "demo upstream {name} did not start on {addr}");
        up
    }

    pub fn stop(&mut self) {
        self.proc.kill();
    }
}

/// A drawbridge instance in its own temp folder.
pub struct Drawbridge {
    pub dir: tempfile::TempDir,
    pub web: String,
    pub admin: String,
    pub metrics: String,
    pub config: PathBuf,
    pub proc: Proc,
    pub log: PathBuf,
    env: Vec<(String, String)>,
}

impl Drawbridge {
    /// Write `yaml` (with `{web}`, `{admin}`, `{metrics}`, `{dir}`
    /// placeholders; the `server:` section and `state_file` are added) and
    /// start the proxy on it.
    pub fn start(yaml: &str) -> Drawbridge {
        Drawbridge::start_with_env(yaml, &[])
    }

    pub fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> Drawbridge {
        let d = Drawbridge::prepare(yaml, env);
        d.launch()
    }

    /// Write the config without starting.
    pub fn prepare(yaml: &str, env: &[(&str, &str)]) -> Drawbridge {
        let dir = tempfile::tempdir().expect("temp dir");
        let (web, admin, metrics) = (free_addr(), free_addr(), free_addr());
        let p = dir.path().display().to_string();
        let body = yaml
            .replace("{web}", &web)
            .replace("{admin}", &admin)
            .replace("{metrics}", &metrics)
            .replace("{dir}", &p);
        let mut text = format!(
            "server:\n  threads: 1\n  grace_period_seconds: 1\n  graceful_shutdown_timeout_seconds: 1\n  \
             upgrade_sock: {p}/upgrade.sock\n  pid_file: {p}/drawbridge.pid\nstate_file: {p}/state.json\n"
        );
        if !body.contains("admin:") {
            text.push_str(&format!("admin:\n  listen: {admin}\n"));
        }
        if !body.contains("metrics:") {
            text.push_str(&format!("metrics:\n  listen: {metrics}\n"));
        }
        text.push_str(&body);
        let config = dir.path().join("drawbridge.yaml");
        std::fs::write(&config, text).expect("write config");
        Drawbridge {
            log: dir.path().join("drawbridge.log"),
            dir,
            web,
            admin,
            metrics,
            config,
            proc: Proc(None),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.path().join("state.json")
    }

    /// Start (or restart) the process and wait until it serves.
    pub fn launch(mut self) -> Drawbridge {
        self.spawn();
        let admin = self.admin.clone();
        let web = self.web.clone();
        let ok = wait_until(TIMEOUT, || {
            httpc::request(
                &admin,
                &Request::new("GET", "/healthz"),
                Duration::from_secs(1),
            )
            .is_ok_and(|r| r.status == 200)
                && std::net::TcpStream::connect(&web).is_ok()
        });
        assert!(ok, "drawbridge did not start; log:\n{}", self.log_text());
        self
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "-c"]).arg(&self.config);
        cmd.env("RUST_LOG", "info")
            .env_remove("DRAWBRIDGE_ADMIN_TOKEN");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start drawbridge");
        self.proc = Proc(Some(child));
    }

    /// Run `drawbridge run` to completion (for configs that must not start).
    pub fn run_to_exit(&self) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "-c"])
            .arg(&self.config)
            .env_remove("DRAWBRIDGE_ADMIN_TOKEN");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        run_bounded(cmd)
    }

    /// SIGKILL and start again on the same config and state file.
    pub fn kill9_and_restart(mut self) -> Drawbridge {
        self.proc.kill();
        self.launch()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Response {
        get(&self.web, path)
    }

    pub fn send(&self, req: Request) -> Response {
        send(&self.web, req)
    }

    /// An admin API call (loopback, no token unless given in headers).
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        let mut req = Request::new(method, path);
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.as_bytes().to_vec());
        }
        send(&self.admin, req)
    }

    /// `drawbridge ctl --admin ... ARGS`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("ctl")
            .arg("--admin")
            .arg(format!("http://{}", self.admin))
            .args(args);
        cmd.env_remove("DRAWBRIDGE_ADMIN_TOKEN");
        run_bounded(cmd)
    }

    pub fn metrics_text(&self) -> String {
        get(&self.metrics, "/metrics").text()
    }
}

/// Run a command with a time limit; its output. The pipes are read while
/// it runs, so a command writing more than a pipe holds cannot block.
pub fn run_bounded(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("command did not finish within 60s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// The value of the cookie `name` set by a response, if any.
pub fn set_cookie_value(r: &Response, name: &str) -> Option<String> {
    r.headers_named("set-cookie").find_map(|v| {
        let first = v.split(';').next()?.trim();
        let (n, val) = first.split_once('=')?;
        (n == name).then(|| val.to_string())
    })
}

/// Backend `app`: app-01 at `a`, app-02 at `b`, round robin, sticky
/// cookie `SERVERID`, fast health checks; `extra_servers` are more
/// `      - { ... }` server lines.
pub fn app_backend_yaml(a: &str, b: &str, extra_servers: &str) -> String {
    format!(
        r#"backends:
  - name: app
    balance: round_robin
    sticky:
      cookie: SERVERID
    health_check:
      kind: http
      path: /healthz
      interval: 200ms
      timeout: 200ms
      rise: 1
      fall: 1
    servers:
      - {{ name: app-01, addr: "{a}" }}
      - {{ name: app-02, addr: "{b}" }}
{extra_servers}"#
    )
}

/// One http listener and the default site `app` on [`app_backend_yaml`];
/// `maintenance` is the body of the site's `maintenance:` mapping
/// (6-space indented lines).
pub fn app_site_yaml(a: &str, b: &str, maintenance: &str, extra_servers: &str) -> String {
    format!(
        r#"listeners:
  - name: web
    listen: "{{web}}"
sites:
  - name: app
    backend: app
    maintenance:
{maintenance}
{}"#,
        app_backend_yaml(a, b, extra_servers)
    )
}

/// A two-server backend config with sticky cookies and fast health checks.
pub fn two_server_yaml(a: &str, b: &str) -> String {
    app_site_yaml(a, b, "      allow: []", "")
}

/// A command's standard output, as text.
pub fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A command's standard error, as text.
pub fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A response's JSON body; panics with the status when it is not JSON.
pub fn json(r: &Response) -> serde_json::Value {
    r.json()
        .unwrap_or_else(|e| panic!("status {}: {e}", r.status))
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// `tool` if it is an executable file on `PATH`.
pub fn which(tool: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// An external tool a test needs (promtool, prometheus, docker-compose).
/// Missing, the test fails and says how to install it, unless
/// `DRAWBRIDGE_SKIP_EXTERNAL=1` is set: then it is skipped (`None`).
pub fn external_tool(tool: &str, debian_package: &str) -> Option<PathBuf> {
    if let Some(p) = which(tool) {
        return Some(p);
    }
    if std::env::var("DRAWBRIDGE_SKIP_EXTERNAL").as_deref() == Ok("1") {
        eprintln!("SKIPPED: {tool} is not installed and DRAWBRIDGE_SKIP_EXTERNAL=1");
        return None;
    }
    panic!(
        "{tool} is not on PATH: install it (`apt-get install -y {debian_package}`; CI does \
         this in .ci/run), or set DRAWBRIDGE_SKIP_EXTERNAL=1 to skip the tests that need it"
    );
}

/// A file of the repository.
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}
