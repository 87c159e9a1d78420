//! Live per-server figures beside the snapshot: health, requests in
//! flight (counted by [`InFlight`]), the traffic controls' limits and
//! timestamps.

use crate::policy::slowstart;
use crate::queue::{Queue, Slots};
use crate::sessions::Sessions;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// A request or connection in flight to a server: counted while this
/// lives, so no path can forget the decrement. On a server with a
/// `max_conns`, its end hands the slot to the backend's queue.
#[derive(Debug)]
pub struct InFlight(Arc<ServerLive>);

impl InFlight {
    pub fn new(server: &Arc<ServerLive>) -> InFlight {
        server.inflight.fetch_add(1, Relaxed);
        InFlight(server.clone())
    }

    /// A request already counted (a slot taken with [`Slots::try_take`]
    /// or handed over by the queue).
    pub fn adopt(server: &Arc<ServerLive>) -> InFlight {
        InFlight(server.clone())
    }

    /// The server's position in its backend.
    pub fn server(&self) -> usize {
        self.0.index
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // SeqCst with the queue's length: a waiter that queues as this
        // slot frees sees it, or this release sees the waiter.
        self.0
            .inflight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        if let Some(q) = &self.0.queue {
            q.release(self.0.index, &*self.0);
        }
    }
}

/// Live per-server figures, updated by the proxy and health checks.
#[derive(Debug)]
pub struct ServerLive {
    pub up: AtomicBool,
    /// Requests (HTTP) and connections (TCP) in flight; see [`InFlight`].
    pub inflight: AtomicU64,
    /// Unix milliseconds of the last request routed here by its cookie; 0 = never.
    pub last_sticky_ms: AtomicU64,
    /// Distinct clients routed here by their cookie, recently.
    pub sticky_clients: crate::sketch::RecentClients,
    pub requests_total: AtomicU64,
    pub seed: u64,
    pub addr: SocketAddr,
    /// Its position in its backend.
    pub index: usize,
    /// Its `max_conns` (0: no limit).
    pub max_conns: u64,
    /// Its backend's queue, when a server of the backend has a `max_conns`.
    pub queue: Option<Arc<Queue>>,
    /// Unix milliseconds when it last became usable again (health up,
    /// or `ready` from `drain`/`maint`); 0: usable since the start.
    pub usable_since_ms: AtomicU64,
    pub slowstart: Duration,
    /// Its requests' upstream sockets, with `shutdown_sessions`.
    pub sessions: Option<Arc<Sessions>>,
    /// Woken when health marks it down, with `shutdown_sessions`: its tcp
    /// connections close.
    pub marked_down: tokio::sync::Notify,
}

impl Slots for ServerLive {
    fn inflight(&self) -> &AtomicU64 {
        &self.inflight
    }
    fn max_conns(&self) -> u64 {
        self.max_conns
    }
}

impl Slots for Arc<ServerLive> {
    fn inflight(&self) -> &AtomicU64 {
        &self.inflight
    }
    fn max_conns(&self) -> u64 {
        self.max_conns
    }
}

impl ServerLive {
    /// Its share of its weight now ([`slowstart::share`]).
    pub fn share(&self, now_ms: u64) -> u16 {
        let since = self.usable_since_ms.load(Relaxed);
        slowstart::share(
            self.slowstart,
            (since != 0).then(|| Duration::from_millis(now_ms.saturating_sub(since))),
        )
    }
}
