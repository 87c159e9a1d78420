//! Logging: `env_logger` (level from `RUST_LOG`, default `info`), except
//! that access-log lines (target `access`, one per request) are batched in
//! memory and written every 100 ms or every 64 KiB, so a request costs no
//! write system call of its own. Other records are written at once.

use log::{Log, Metadata, Record};
use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

thread_local! {
    /// The current second and its RFC 3339 text, per thread.
    static TIMESTAMP: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

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
        let mut buf = self.access.lock().unwrap_or_else(|p| p.into_inner());
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
            let _ = writeln!(
                buf,
                "[{} {:<5} access] {}",
                ts.1,
                record.level(),
                record.args()
            );
        });
        if buf.len() >= FLUSH_BYTES {
            write_out(&mut buf);
        }
    }

    fn flush(&self) {
        write_out(&mut self.access.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// Install the logger; call once at start.
pub fn init() {
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let max = inner.filter();
    let access = Arc::new(Mutex::new(Vec::with_capacity(FLUSH_BYTES)));
    let flusher = access.clone();
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || loop {
            std::thread::sleep(FLUSH_EVERY);
            write_out(&mut flusher.lock().unwrap_or_else(|p| p.into_inner()));
        })
        .ok();
    if log::set_boxed_logger(Box::new(Logger { inner, access })).is_ok() {
        log::set_max_level(max);
    }
}
