//! The traffic controls of a backend and its servers (`max_conns`,
//! `slowstart`, `queue`, `on_marked_down`) and a site's maintenance
//! backend, read from the file and checked.

use super::file::{BackendFile, ServerEntryFile};
use super::model::{OnMarkedDown, QueueSettings};
use super::{check, Validator};
use std::time::Duration;

/// `queue.max` when the file gives none.
pub const DEFAULT_QUEUE_MAX: usize = 1000;
/// `queue.timeout` when the file gives none.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

impl Validator {
    /// A server's `max_conns` and `slowstart`.
    pub(super) fn server_traffic(&mut self, s: &ServerEntryFile, key: &str) -> (u64, Duration) {
        let max_conns = check::max_conns(s.max_conns.unwrap_or(0)).unwrap_or_else(|e| {
            self.problem(&format!("{key}.max_conns"), e);
            0
        });
        let skey = format!("{key}.slowstart");
        let slowstart = self.duration(s.slowstart.as_deref(), Duration::ZERO, &skey);
        if let Err(e) = check::slowstart(slowstart) {
            self.problem(&skey, e);
        }
        (max_conns, slowstart)
    }

    /// A backend's `queue` and `on_marked_down`.
    pub(super) fn backend_traffic(
        &mut self,
        f: &BackendFile,
        key: &str,
    ) -> (QueueSettings, OnMarkedDown) {
        let q = f.queue.as_ref();
        let max = match q.and_then(|q| q.max) {
            None => DEFAULT_QUEUE_MAX,
            Some(n) => check::queue_max(n).unwrap_or_else(|e| {
                self.problem(&format!("{key}.queue.max"), e);
                DEFAULT_QUEUE_MAX
            }),
        };
        let tkey = format!("{key}.queue.timeout");
        let timeout = self.duration(
            q.and_then(|q| q.timeout.as_deref()),
            DEFAULT_QUEUE_TIMEOUT,
            &tkey,
        );
        if let Err(e) = check::queue_timeout(timeout) {
            self.problem(&tkey, e);
        }
        let on_marked_down = match f.on_marked_down.as_deref().unwrap_or("none") {
            "none" => OnMarkedDown::None,
            "shutdown_sessions" => OnMarkedDown::ShutdownSessions,
            other => {
                self.problem(
                    &format!("{key}.on_marked_down"),
                    format!("unknown value {other:?}, expected none or shutdown_sessions"),
                );
                OnMarkedDown::None
            }
        };
        if on_marked_down == OnMarkedDown::ShutdownSessions && f.health_check.is_none() {
            self.problem(
                &format!("{key}.on_marked_down"),
                "shutdown_sessions needs a health_check (nothing else marks a server down)",
            );
        }
        (QueueSettings { max, timeout }, on_marked_down)
    }

    /// A site's `maintenance.backend`: a known backend other than the
    /// site's own.
    pub(super) fn maintenance_backend(
        &mut self,
        name: Option<&str>,
        own: usize,
        backends: &[&str],
        key: &str,
    ) -> Option<usize> {
        let name = name?;
        match backends.iter().position(|b| *b == name) {
            None => {
                self.problem(key, format!("unknown backend {name:?}"));
                None
            }
            Some(b) if b == own => {
                self.problem(
                    key,
                    "must not be the site's own backend (it is the one in maintenance)",
                );
                None
            }
            Some(b) => Some(b),
        }
    }
}
