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

/// How many times a server is started again, on a new port, when a port
/// picked for it was taken by another process in the meantime.
pub const PORT_ATTEMPTS: usize = 4;

/// A loopback port that was free a moment ago. Another test running at the
/// same time may take it before the process it is meant for binds it: start
/// that process with [`await_listening`], which notices and lets the caller
/// try again on a new port. Never the same port twice in one test process
/// (a port is free again as soon as it is handed out, and the addresses of
/// one config must differ).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A loopback address where nothing listens, and nothing can while this
/// lives: the port stays bound (without `SO_REUSEADDR`, never listening), so
/// connections to it are refused and no other process can take it.
pub struct DeadAddr {
    pub addr: String,
    _held: socket2::Socket,
}

pub fn dead_addr() -> DeadAddr {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a socket");
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("an address");
    sock.bind(&any.into()).expect("bind a loopback port");
    let addr = sock
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("the bound address");
    DeadAddr {
        addr: addr.to_string(),
        _held: sock,
    }
}

/// The port of `addr` (`host:port`).
pub fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

/// Whether process `pid` itself listens on TCP `port`: a server answering
/// on the port may otherwise be another test's process that got it first.
pub fn listens_on(pid: u32, port: u16) -> bool {
    owns_socket(pid, &listening_inodes(port))
}

pub use drawbridge::procfs::{listening_inodes, owns_socket};

/// Whether process `pid` listens on the unix socket at `path`.
pub fn listens_on_unix(pid: u32, path: &Path) -> bool {
    owns_socket(pid, &drawbridge::procfs::listening_unix_inodes(path))
}

/// How a server process started on picked ports came up.
#[derive(Debug, PartialEq)]
pub enum Startup {
    /// It listens on every one of its ports itself and is ready.
    Serving,
    /// This address was taken by another process before it could bind it.
    PortTaken(String),
}

/// Whether `log` says that `addr` could not be bound because it is in use
/// (Pingora: "ADDR is in use, will try again"; Go: "listen tcp ADDR: bind:
/// address already in use").
fn says_in_use(log: &str, addr: &str) -> bool {
    log.lines().map(str::to_ascii_lowercase).any(|l| {
        l.contains(addr) && (l.contains(" is in use") || l.contains("address already in use"))
    })
}

/// Wait until the process `child` listens itself on every one of `addrs`
/// and `ready` holds (a server answering on one of the ports could be
/// another process that took it first), or until one of `addrs` turns out
/// to be taken: its log (what `log` returns: written since it started) says
/// so, or another process listens there. Panics, with the log, when the
/// process exits or is not ready within [`TIMEOUT`] for another reason.
pub fn await_listening(
    what: &str,
    child: &mut Proc,
    addrs: &[String],
    log: impl Fn() -> String,
    mut ready: impl FnMut() -> bool,
) -> Startup {
    let pid = child.pid().expect("a started process");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        // Exited: read the log again, it may say why.
        let exited = child.exited();
        let text = log();
        if let Some(a) = addrs.iter().find(|a| says_in_use(&text, a)) {
            return Startup::PortTaken(a.clone());
        }
        if exited {
            panic!("{what} exited while starting; log:\n{text}");
        }
        let mine: Vec<bool> = addrs.iter().map(|a| listens_on(pid, port_of(a))).collect();
        if mine.iter().all(|m| *m) && ready() {
            return Startup::Serving;
        }
        // Another process listening on a port this one has not bound.
        if let Some((a, _)) = addrs
            .iter()
            .zip(&mine)
            .find(|(a, m)| !**m && !listening_inodes(port_of(a)).is_empty())
        {
            // Unless it bound it between the two looks.
            if !listens_on(pid, port_of(a)) {
                return Startup::PortTaken(a.clone());
            }
        }
        if Instant::now() > deadline {
            panic!("{what} did not start within {TIMEOUT:?}; log:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `text` with the address `from` replaced by `to` wherever it stands whole
/// (not as the start of a longer port number).
pub fn replace_addr(text: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(from) {
        let after = &rest[i + from.len()..];
        out.push_str(&rest[..i]);
        if after.starts_with(|c: char| c.is_ascii_digit()) {
            out.push_str(from);
        } else {
            out.push_str(to);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Whether `text` holds the address `addr` whole.
fn holds_addr(text: &str, addr: &str) -> bool {
    replace_addr(text, addr, "") != text
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

    /// Whether the process has exited (it is reaped if so).
    pub fn exited(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some())
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
    log: tempfile::NamedTempFile,
}

impl Upstream {
    /// Start on a free loopback port (a new one if another process took it
    /// first).
    pub fn start(name: &str) -> Upstream {
        for _ in 0..PORT_ATTEMPTS {
            let mut up = Upstream::spawn(name, &free_addr());
            match up.await_serving() {
                Startup::Serving => return up,
                Startup::PortTaken(a) => {
                    eprintln!("demo upstream {name}: {a} was taken, trying another port")
                }
            }
        }
        panic!("demo upstream {name}: {PORT_ATTEMPTS} ports in a row were taken");
    }

    /// Start on `addr`, which must be free.
    pub fn start_on(name: &str, addr: &str) -> Upstream {
        let mut up = Upstream::spawn(name, addr);
        match up.await_serving() {
            Startup::Serving => up,
            Startup::PortTaken(a) => panic!("demo upstream {name}: {a} is taken"),
        }
    }

    fn spawn(name: &str, addr: &str) -> Upstream {
        let log = tempfile::NamedTempFile::new().expect("a log file");
        let child = Command::new(BIN)
            .args(["demo-upstream", "--name", name, "--listen", addr])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("the log file"))
            .spawn()
            .expect("start demo-upstream");
        Upstream {
            name: name.into(),
            addr: addr.into(),
            proc: Proc(Some(child)),
            log,
        }
    }

    fn await_serving(&mut self) -> Startup {
        let (addr, log) = (self.addr.clone(), self.log.path().to_path_buf());
        let health = || {
            httpc::request(
                &addr,
                &Request::new("GET", "/healthz"),
                Duration::from_secs(1),
            )
            .is_ok_and(|r| r.status == 200)
        };
        await_listening(
            &format!("demo upstream {}", self.name),
            &mut self.proc,
            std::slice::from_ref(&self.addr),
            || read(&log),
            health,
        )
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
    /// For a tcp listener: `{tcp}` in the config.
    pub tcp: String,
    pub config: PathBuf,
    pub proc: Proc,
    pub log: PathBuf,
    env: Vec<(String, String)>,
}

impl Drawbridge {
    /// Write `yaml` (with `{web}`, `{admin}`, `{metrics}`, `{tcp}`, `{dir}`
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
        let (web, admin, metrics, tcp) = (free_addr(), free_addr(), free_addr(), free_addr());
        let p = dir.path().display().to_string();
        let body = yaml
            .replace("{web}", &web)
            .replace("{admin}", &admin)
            .replace("{metrics}", &metrics)
            .replace("{tcp}", &tcp)
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
            tcp,
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

    /// Start (or restart) the process and wait until it serves: it listens
    /// itself on each of its addresses in the config, and the admin API
    /// answers. An address that another process took in the meantime is
    /// replaced by a new free one (in the config and in `self`) and the
    /// process started again.
    pub fn launch(mut self) -> Drawbridge {
        for _ in 0..PORT_ATTEMPTS {
            let from = self.log_text().len();
            self.spawn();
            let text = read(&self.config);
            let addrs: Vec<String> = [&self.web, &self.admin, &self.metrics, &self.tcp]
                .into_iter()
                .filter(|a| holds_addr(&text, a))
                .cloned()
                .collect();
            let (admin, log) = (self.admin.clone(), self.log.clone());
            let health = || {
                httpc::request(
                    &admin,
                    &Request::new("GET", "/healthz"),
                    Duration::from_secs(1),
                )
                .is_ok_and(|r| r.status == 200)
            };
            let since_start = || read(&log).get(from..).unwrap_or_default().to_string();
            match await_listening("drawbridge", &mut self.proc, &addrs, since_start, health) {
                Startup::Serving => return self,
                Startup::PortTaken(taken) => {
                    eprintln!("drawbridge: {taken} was taken, trying another port");
                    self.proc.kill();
                    self.move_off(&taken);
                }
            }
        }
        panic!(
            "drawbridge: {PORT_ATTEMPTS} starts in a row found a port taken; log:\n{}",
            self.log_text()
        );
    }

    /// Replace the address `taken` by a free one, in the config and here.
    fn move_off(&mut self, taken: &str) {
        let new = free_addr();
        let text = read(&self.config);
        std::fs::write(&self.config, replace_addr(&text, taken, &new)).expect("write config");
        for a in [
            &mut self.web,
            &mut self.admin,
            &mut self.metrics,
            &mut self.tcp,
        ] {
            if a == taken {
                *a = new.clone();
            }
        }
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

    /// The value of one series, written as /metrics writes it:
    /// `name{a="x",b="y"}` (labels in its order). Panics when it is missing.
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.metrics_text();
        metric_value(&text, series)
            .unwrap_or_else(|| panic!("no series {series} in /metrics:\n{text}"))
    }
}

/// The value of the series `series` (`name{labels}` exactly as written) in
/// a Prometheus text exposition.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
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

/// A server on a free loopback port that runs `handle` on each connection,
/// in a thread of its own, for as long as the test process lives; returns
/// its address.
pub fn serve_each(handle: impl Fn(std::net::TcpStream) + Send + Sync + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a test server");
    let addr = listener.local_addr().expect("its address").to_string();
    let handle = std::sync::Arc::new(handle);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let handle = handle.clone();
            std::thread::spawn(move || handle(conn));
        }
    });
    addr
}

/// New clients (no cookie) on new connections until stopped: (ok, failed).
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    failed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: &str) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ok, failed) = (
            std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        );
        let thread = {
            let (addr, stop, ok, failed) =
                (addr.to_string(), stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = drawbridge::httpc::request(
                        &addr,
                        &Request::new("GET", "/"),
                        Duration::from_secs(5),
                    );
                    match r {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        }
                        _ => failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    };
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Load {
            stop,
            ok,
            failed,
            thread: Some(thread),
        }
    }

    /// (ok, failed) so far.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.ok.load(std::sync::atomic::Ordering::Relaxed),
            self.failed.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Stop, and (ok, failed).
    pub fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.counts()
    }
}
