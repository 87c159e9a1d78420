//! Logging: `env_logger` (level from `RUST_LOG`, default `info`), except
//! that access-log lines (target `access`, one per request) are batched in
//! memory and written every 100 ms (by [`Flusher`], a background service of
//! the server, also through a graceful shutdown) or every 64 KiB, so a
//! request costs no write system call of its own. Other records are written
//! at once.
//!
//! Each thread batches its lines in a buffer of its own, so a request takes
//! no lock that another request could hold: only the flusher looks at a
//! thread's buffer besides its thread. Lines leave in writes of whole lines
//! of at most `PIPE_BUF` bytes, so lines of different threads never mix,
//! even on a pipe.
//!
//! The HTTP proxy formats its lines with [`access_line`], by hand: `fmt`
//! machinery would cost more than the rest of drawbridge's work on a
//! request.

use crate::wire::{push_decimal, push_ip};
use log::{Log, Metadata, Record};
use std::cell::RefCell;
use std::fs::File;
use std::io::Write;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One thread's pending access-log lines.
type Shard = Arc<Mutex<Vec<u8>>>;

thread_local! {
    /// The current second and its RFC 3339 text, per thread.
    static TIMESTAMP: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    /// This thread's shard, registered on its first line.
    static SHARD: RefCell<Option<Shard>> = const { RefCell::new(None) };
}

/// Where access lines go and every thread's shard, set by [`init`].
struct Access {
    out: File,
    /// Locked when a thread writes its first line and by the flusher.
    shards: Mutex<Vec<Shard>>,
}

static ACCESS: OnceLock<Access> = OnceLock::new();

const FLUSH_EVERY: Duration = Duration::from_millis(100);
const FLUSH_BYTES: usize = 64 * 1024;
/// The largest write a pipe takes whole (POSIX `PIPE_BUF` on Linux).
const ATOMIC_WRITE: usize = 4096;

struct Logger {
    inner: env_logger::Logger,
}

fn lock(buf: &Mutex<Vec<u8>>) -> MutexGuard<'_, Vec<u8>> {
    buf.lock().unwrap_or_else(|p| p.into_inner())
}

/// Write `buf` out in whole lines, at most [`ATOMIC_WRITE`] bytes a write
/// (a longer line goes alone), and empty it.
fn write_out(out: &File, buf: &mut Vec<u8>) {
    let mut rest = &buf[..];
    while !rest.is_empty() {
        let window = &rest[..rest.len().min(ATOMIC_WRITE)];
        let end = match window.iter().rposition(|&b| b == b'\n') {
            Some(nl) => nl + 1,
            None => rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |nl| nl + 1),
        };
        if (&*out).write_all(&rest[..end]).is_err() {
            break;
        }
        rest = &rest[end..];
    }
    buf.clear();
}

/// Run `f` on this thread's shard, registering it on first use.
fn with_shard(access: &Access, f: impl FnOnce(&mut Vec<u8>)) {
    let mut f = Some(f);
    let _ = SHARD.try_with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return;
        };
        let shard = slot.get_or_insert_with(|| {
            let shard = Arc::new(Mutex::new(Vec::with_capacity(FLUSH_BYTES)));
            access
                .shards
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(shard.clone());
            shard
        });
        if let Some(f) = f.take() {
            f(&mut lock(shard));
        }
    });
    // The thread is exiting (or its shard is in use): a one-line buffer.
    if let Some(f) = f.take() {
        let mut buf = Vec::new();
        f(&mut buf);
        write_out(&access.out, &mut buf);
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        let Some(access) = ACCESS.get() else {
            self.inner.log(record);
            return;
        };
        if record.target() != "access" {
            // Keep this thread's order: its pending access lines first.
            let shard = SHARD.try_with(|c| c.try_borrow().ok().and_then(|s| s.clone()));
            if let Ok(Some(shard)) = shard {
                write_out(&access.out, &mut lock(&shard));
            }
            self.inner.log(record);
            return;
        }
        if !self.inner.matches(record) {
            return;
        }
        with_shard(access, |buf| {
            start_line(buf);
            let _ = write!(buf, "{}", record.args());
            end_line(&access.out, buf);
        });
    }

    fn flush(&self) {
        flush_access();
    }
}

/// `[<RFC 3339 time> INFO  access] `, the prefix env_logger gives records.
fn start_line(buf: &mut Vec<u8>) {
    TIMESTAMP.with(|ts| {
        let mut ts = ts.borrow_mut();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // Formatting a date is costly next to the rest: once a second.
        if ts.0 != now || ts.1.is_empty() {
            ts.0 = now;
            ts.1 = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(now))
                .to_string();
        }
        buf.push(b'[');
        buf.extend_from_slice(ts.1.as_bytes());
        buf.extend_from_slice(b" INFO  access] ");
    });
}

fn end_line(out: &File, buf: &mut Vec<u8>) {
    buf.push(b'\n');
    if buf.len() >= FLUSH_BYTES {
        write_out(out, buf);
    }
}

/// One proxied request, as its access-log line tells it.
#[derive(Debug, Clone, Copy)]
pub struct AccessEntry<'a> {
    pub client: IpAddr,
    /// `-` when no site matched.
    pub site: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// 0 when nothing was answered.
    pub status: u16,
    /// Empty for a local answer.
    pub backend: &'a str,
    /// The server, or `maintenance`, `error` or `-` for a local answer.
    pub server: &'a str,
    pub micros: u64,
    /// `HTTP/1.1`, `HTTP/2`, ...
    pub protocol: &'a str,
    pub error: Option<&'a str>,
}

/// `client site METHOD /path status backend/server 1.234ms PROTOCOL
/// [error=...]` (CONTRACT section 1), appended to `line`.
pub fn access_line(line: &mut Vec<u8>, e: &AccessEntry) {
    push_ip(line, e.client);
    for field in [e.site, e.method, e.path] {
        line.push(b' ');
        line.extend_from_slice(field.as_bytes());
    }
    line.push(b' ');
    push_decimal(line, u64::from(e.status));
    line.push(b' ');
    if !e.backend.is_empty() {
        line.extend_from_slice(e.backend.as_bytes());
        line.push(b'/');
    }
    line.extend_from_slice(e.server.as_bytes());
    line.push(b' ');
    push_decimal(line, e.micros / 1000);
    let frac = e.micros % 1000;
    line.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
    line.extend_from_slice(b"ms ");
    line.extend_from_slice(e.protocol.as_bytes());
    if let Some(err) = e.error {
        line.extend_from_slice(b" error=");
        line.extend_from_slice(err.as_bytes());
    }
}

/// Whether access-log lines are wanted (`RUST_LOG` enables target `access`
/// at `info`). The filter is fixed at start, so callers may keep the answer.
pub fn access_enabled() -> bool {
    ACCESS.get().is_some() && log::log_enabled!(target: "access", log::Level::Info)
}

/// Queue one access-log line for this request.
pub fn access(entry: &AccessEntry) {
    let Some(access) = ACCESS.get() else { return };
    with_shard(access, |buf| {
        start_line(buf);
        access_line(buf, entry);
        end_line(&access.out, buf);
    });
}

/// Write every thread's pending access-log lines now.
pub fn flush_access() {
    let Some(access) = ACCESS.get() else { return };
    let shards: Vec<Shard> = access
        .shards
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for shard in shards {
        write_out(&access.out, &mut lock(&shard));
    }
}

/// Writes pending access-log lines every 100 ms for as long as the server
/// runs, and once more when it stops. A graceful shutdown keeps serving the
/// requests in flight for `grace_period_seconds`, so the flusher does not
/// stop at the shutdown signal: it runs until Pingora drops its runtime, and
/// the lines left then are written as the task is dropped.
///
/// A Pingora background service rather than a thread started with the
/// logger: services start after `--daemon` forks, and a thread started
/// before the fork would not exist in the daemon.
pub struct Flusher;

/// Writes the pending lines when dropped.
struct FlushOnDrop;

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        flush_access();
    }
}

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for Flusher {
    async fn start(&self, _shutdown: pingora_core::server::ShutdownWatch) {
        let _last = FlushOnDrop;
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        loop {
            tick.tick().await;
            flush_access();
        }
    }
}

/// Install the logger; call once at start.
pub fn init() {
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let max = inner.filter();
    let out = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(File::from);
    if log::set_boxed_logger(Box::new(Logger { inner })).is_ok() {
        log::set_max_level(max);
        match out {
            Ok(out) => {
                let _ = ACCESS.set(Access {
                    out,
                    shards: Mutex::new(Vec::new()),
                });
            }
            Err(e) => log::warn!("access log off: cannot use stderr: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(e: &AccessEntry) -> String {
        let mut buf = Vec::new();
        access_line(&mut buf, e);
        String::from_utf8_lossy(&buf).into_owned()
    }

    #[test]
    fn access_lines() {
        let e = AccessEntry {
            client: IpAddr::from([203, 0, 113, 7]),
            site: "app",
            method: "GET",
            path: "/cart",
            status: 200,
            backend: "app",
            server: "app-01",
            micros: 1_234,
            protocol: "HTTP/1.1",
            error: None,
        };
        assert_eq!(
            line(&e),
            "203.0.113.7 app GET /cart 200 app/app-01 1.234ms HTTP/1.1"
        );
        let local = AccessEntry {
            backend: "",
            server: "maintenance",
            status: 503,
            micros: 56_007,
            error: Some("ReadTimedout"),
            protocol: "HTTP/2",
            ..e
        };
        assert_eq!(
            line(&local),
            "203.0.113.7 app GET /cart 503 maintenance 56.007ms HTTP/2 error=ReadTimedout"
        );
    }

    #[test]
    fn writes_whole_lines_within_pipe_buf() {
        let path = std::env::temp_dir().join(format!("drawbridge-log-{}", std::process::id()));
        let out = File::create(&path).unwrap_or_else(|e| panic!("{e}"));
        let mut buf = Vec::new();
        for i in 0..500 {
            buf.extend_from_slice(format!("line {i:04} {}\n", "x".repeat(i % 50)).as_bytes());
        }
        let long = "y".repeat(ATOMIC_WRITE + 10);
        buf.extend_from_slice(long.as_bytes());
        buf.push(b'\n');
        let expected = buf.clone();
        write_out(&out, &mut buf);
        assert!(buf.is_empty());
        let written = std::fs::read(&path).unwrap_or_default();
        assert_eq!(written, expected);
        let _ = std::fs::remove_file(path);
    }
}
