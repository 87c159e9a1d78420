//! Logging: `env_logger` (level from `RUST_LOG`, default `info`), except
//! that access-log lines (target `access`, one per request) are batched in
//! memory and written every 100 ms (by [`Flusher`], a background service of
//! the server, also through a graceful shutdown) or every 64 KiB, so a
//! request costs no write system call of its own. Other records are written
//! at once.
//!
//! The HTTP proxy writes its access-log lines through [`access`], which
//! formats them by hand: `fmt` machinery would cost more than the rest of
//! drawbridge's work on a request.

use log::{Log, Metadata, Record};
use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

thread_local! {
    /// The current second and its RFC 3339 text, per thread.
    static TIMESTAMP: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

/// Pending access-log lines, set by [`init`].
static ACCESS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

const FLUSH_EVERY: Duration = Duration::from_millis(100);
const FLUSH_BYTES: usize = 64 * 1024;

struct Logger {
    inner: env_logger::Logger,
    access: Arc<Mutex<Vec<u8>>>,
}

fn write_out(buf: &mut Vec<u8>) {
    if !buf.is_empty() {
        let _ = std::io::stderr().lock().write_all(buf);
        buf.clear();
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if record.target() != "access" {
            // Keep order: pending access lines go out before this record.
            self.flush();
            self.inner.log(record);
            return;
        }
        if !self.inner.matches(record) {
            return;
        }
        let mut buf = lock(&self.access);
        start_line(&mut buf);
        let _ = write!(buf, "{}", record.args());
        end_line(&mut buf);
    }

    fn flush(&self) {
        write_out(&mut lock(&self.access));
    }
}

fn lock(buf: &Mutex<Vec<u8>>) -> MutexGuard<'_, Vec<u8>> {
    buf.lock().unwrap_or_else(|p| p.into_inner())
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

fn end_line(buf: &mut Vec<u8>) {
    buf.push(b'\n');
    if buf.len() >= FLUSH_BYTES {
        write_out(buf);
    }
}

/// Whether access-log lines are wanted (`RUST_LOG` enables target `access`
/// at `info`). The filter is fixed at start, so callers may keep the answer.
pub fn access_enabled() -> bool {
    ACCESS.get().is_some() && log::log_enabled!(target: "access", log::Level::Info)
}

/// Queue one access-log line: `line` appends its text (no newline).
pub fn access(line: impl FnOnce(&mut Vec<u8>)) {
    let Some(pending) = ACCESS.get() else { return };
    let mut buf = lock(pending);
    start_line(&mut buf);
    line(&mut buf);
    end_line(&mut buf);
}

/// Write pending access-log lines now.
pub fn flush_access() {
    if let Some(pending) = ACCESS.get() {
        write_out(&mut lock(pending));
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

/// Append the decimal digits of `n`.
pub fn push_decimal(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Install the logger; call once at start.
pub fn init() {
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let max = inner.filter();
    let access = Arc::new(Mutex::new(Vec::with_capacity(FLUSH_BYTES)));
    if log::set_boxed_logger(Box::new(Logger {
        inner,
        access: access.clone(),
    }))
    .is_ok()
    {
        log::set_max_level(max);
        let _ = ACCESS.set(access);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        for n in [0u64, 7, 10, 99, 100, 65535, u64::MAX] {
            let mut buf = Vec::new();
            push_decimal(&mut buf, n);
            assert_eq!(buf, n.to_string().into_bytes());
        }
    }
}
