//! `drawbridge reload -c FILE`: a new process on FILE takes over the
//! listening sockets of the running one (Pingora's graceful upgrade), which
//! then finishes its requests in flight and exits.
//!
//! The order guards the old process: FILE is checked first (`check`'s
//! messages, exit 1, nothing started); the new process loads it, reads the
//! state file and builds its runtime before it waits for the sockets; only
//! once it waits on the upgrade socket is the old one sent SIGQUIT. Pingora
//! closes the old process's listeners on SIGQUIT even when handing them
//! over fails, so a new process that died or never got as far as waiting
//! is never signalled: the old one keeps serving and `reload` says why.

use crate::config::{self, Config};
use crate::procfs;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the new process may take to load its config and wait for the
/// sockets.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long it may take to serve once the sockets are sent.
const SERVE_TIMEOUT: Duration = Duration::from_secs(15);

pub fn reload(path: &Path) -> i32 {
    match run(path) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("reload: {e}");
            1
        }
    }
}

fn run(path: &Path) -> Result<(), String> {
    let config = match config::load(path) {
        Ok(c) => c,
        Err(problems) => {
            problems.iter().for_each(|p| eprintln!("{p}"));
            return Err(format!(
                "{} refused: nothing changed, the running process keeps serving",
                path.display()
            ));
        }
    };
    let old = running_pid(&config)?;
    same_upgrade_sock(&config)?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my executable: {e}"))?;
    let sock = Path::new(&config.server.upgrade_sock);
    let mut cmd = Command::new(exe);
    cmd.args(["run", "--upgrade", "-c"]).arg(path);
    // Its own process group: a Ctrl-C meant for `reload` does not reach it.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.stdin(Stdio::null());
    if let Some(log) = log_of(old) {
        // The new process logs where the old one does (a file, the
        // container's output), not to this terminal.
        let err = log
            .try_clone()
            .map_err(|e| format!("cannot share the log: {e}"))?;
        cmd.stdout(log).stderr(err);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the new process: {e}"))?;
    let new = child.id();
    eprintln!("reload: new process {new} on {}", path.display());

    // 1. The new process waits on the upgrade socket.
    wait(START_TIMEOUT, &mut child, || {
        listens_on_unix(new, sock)
    })
    .map_err(|why| {
        let _ = child.kill();
        let _ = child.wait();
        format!("the new process {why} before waiting for the sockets on {}: the old process {old} keeps serving", sock.display())
    })?;
    // 2. The old one hands the sockets over.
    kill(Pid::from_raw(old), Signal::SIGQUIT)
        .map_err(|e| format!("cannot signal the old process {old}: {e}"))?;
    // 3. The new one serves: it holds the listening sockets and answers.
    let admin = config.admin.listen.clone();
    wait(SERVE_TIMEOUT, &mut child, || serves(&admin, new))
        .map_err(|why| format!("the new process {why} after the handover: see its log"))?;
    eprintln!(
        "reload: new process {new} serves; the old process {old} finishes its requests and exits"
    );
    // The new process outlives this command.
    std::mem::forget(child);
    Ok(())
}

/// Poll `ready` until it holds; the reason when `child` exits first or the
/// time is up.
fn wait(
    timeout: Duration,
    child: &mut Child,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited ({status})"));
        }
        if Instant::now() >= deadline {
            return Err(format!("was not ready after {} s", timeout.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

static HANDING_OVER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process is handing its sockets over to a new one (it was
/// sent SIGQUIT): its admin API then refuses requests, so that no change
/// is made to a process about to exit (the new one serves them).
pub fn handing_over() -> bool {
    HANDING_OVER.load(std::sync::atomic::Ordering::Relaxed)
}

/// The admin API's answer while handing over.
pub const HANDING_OVER_ERROR: &str =
    "this process is handing over to a new one (reload or upgrade): retry in a moment";

/// Notes the SIGQUIT of a handover for [`handing_over`] (Pingora handles
/// the handover itself on the same signal).
pub struct HandoverWatch;

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for HandoverWatch {
    async fn start(&self, _shutdown: pingora_core::server::ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut quit) = signal(SignalKind::quit()) else {
            log::warn!("cannot watch for SIGQUIT: the admin API stays open during a handover");
            return;
        };
        if quit.recv().await.is_some() {
            HANDING_OVER.store(true, std::sync::atomic::Ordering::Relaxed);
            log::info!("handing over: the admin API refuses requests from now on");
        }
    }
}

/// Where a running process keeps the path it hands its sockets over on
/// (next to its pid file).
fn upgrade_sock_file(pid_file: &str) -> String {
    format!("{pid_file}.upgrade_sock")
}

fn absolute(path: &str) -> std::path::PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// Write, next to the pid file, the absolute path of the upgrade socket
/// this process sends its sockets to, for `reload` to compare.
pub fn record_upgrade_sock(pid_file: &str, upgrade_sock: &str) {
    let path = absolute(upgrade_sock);
    if let Err(e) = std::fs::write(
        upgrade_sock_file(pid_file),
        path.to_string_lossy().as_bytes(),
    ) {
        log::warn!("cannot write {}: {e}", upgrade_sock_file(pid_file));
    }
}

/// The running process sends its sockets to its own upgrade socket; the
/// new one must wait on the same path, or the handover fails after the old
/// process closed its listeners.
fn same_upgrade_sock(config: &Config) -> Result<(), String> {
    let file = upgrade_sock_file(&config.server.pid_file);
    let Ok(running) = std::fs::read_to_string(&file) else {
        return Err(format!(
            "cannot read {file}: the running process's upgrade socket is unknown; restart it once with this version"
        ));
    };
    let new = absolute(&config.server.upgrade_sock);
    if Path::new(running.trim()) != new {
        return Err(format!(
            "server.upgrade_sock is {} in the new file but {} in the running process: a handover would fail; restart instead",
            new.display(),
            running.trim()
        ));
    }
    Ok(())
}

/// The pid of the running instance, from its pid file.
fn running_pid(config: &Config) -> Result<i32, String> {
    let file = &config.server.pid_file;
    let text = std::fs::read_to_string(file).map_err(|e| {
        format!("no running drawbridge found: cannot read its pid file {file}: {e}")
    })?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| format!("pid file {file} holds {:?}, not a pid", text.trim()))?;
    // A stale pid file may name another program now: only a `drawbridge
    // run` is ever sent SIGQUIT.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let is_drawbridge = args.first().is_some_and(|a| {
        Path::new(a)
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("drawbridge"))
    }) && args.iter().any(|a| a == "run");
    if !is_drawbridge {
        return Err(format!(
            "no running drawbridge: process {pid} (pid file {file}) is gone or is another program; start it with `drawbridge run`"
        ));
    }
    Ok(pid)
}

/// Where process `pid` writes its log (its stderr), opened for appending,
/// when that is a file or a pipe this process may open.
fn log_of(pid: i32) -> Option<std::fs::File> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(format!("/proc/{pid}/fd/2"))
        .ok()
}

/// Whether the admin API answers from process `pid` (`X-Drawbridge-Pid`).
fn serves(admin: &str, pid: u32) -> bool {
    let req = crate::httpc::Request::new("GET", "/healthz");
    crate::httpc::request(admin, &req, Duration::from_secs(1)).is_ok_and(|r| {
        r.status == 200 && r.header("x-drawbridge-pid") == Some(pid.to_string().as_str())
    })
}

/// Whether process `pid` listens on the unix socket at `path`.
fn listens_on_unix(pid: u32, path: &Path) -> bool {
    procfs::owns_socket(pid, &procfs::listening_unix_inodes(path))
}

/// Before a new process waits for the sockets of the running one: every
/// address of `config` is free, or listened on by the running process
/// (whose sockets come over). An address another program holds would make
/// the new process fail after the old one let go of its sockets.
pub fn can_bind(config: &Config) -> Result<(), String> {
    let old = running_pid(config).ok().and_then(|p| u32::try_from(p).ok());
    let mut addrs: Vec<(String, &str)> = config
        .listeners
        .iter()
        .map(|l| (format!("listener {}", l.name), l.listen.as_str()))
        .collect();
    addrs.push(("admin.listen".into(), &config.admin.listen));
    addrs.push(("metrics.listen".into(), &config.metrics_listen));
    for (what, addr) in addrs {
        match std::net::TcpListener::bind(addr) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                let port = addr
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .unwrap_or(0);
                let handed_over = old
                    .is_some_and(|pid| procfs::owns_socket(pid, &procfs::listening_inodes(port)));
                if !handed_over {
                    return Err(format!("{what}: {addr} is in use by another program"));
                }
            }
            Err(e) => return Err(format!("{what}: cannot listen on {addr}: {e}")),
        }
    }
    Ok(())
}
