//! One server of a backend: what it is (its config), its live figures
//! (health, requests in flight, last sticky request, the traffic controls'
//! timestamps), its metric series and its sticky `Set-Cookie` values. It
//! lives behind an `Arc` from the moment it joins its backend (at start,
//! or added through the API) until the last request to it ends; its admin
//! state and weight are the snapshot's ([`super::Member`]).

use crate::config::{self, Config, Sticky};
use crate::metrics::{Metrics, ServerMetrics};
use crate::policy::{select::mix, slowstart, sticky};
use crate::queue::{Queue, Slots};
use crate::sessions::Sessions;
use http::header::HeaderValue;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// A backend's queue, whose slots are servers.
pub type ServerQueue = Queue<Arc<Server>>;

static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// A server of a backend.
pub struct Server {
    /// Unique in the process and never reused: what the queue and the
    /// health checks know it by.
    pub key: u64,
    /// Its backend's position in the config.
    pub backend: usize,
    /// Name, address, sticky id, `backup`, `max_conns`, `slowstart`.
    pub conf: Arc<config::Server>,
    /// Added through the API (kept in the state file), not from the config.
    pub added: bool,
    pub addr: SocketAddr,
    pub up: AtomicBool,
    /// Requests (HTTP) and connections (TCP) in flight; see [`InFlight`].
    pub inflight: AtomicU64,
    /// Unix milliseconds of the last request routed here by its cookie; 0 = never.
    pub last_sticky_ms: AtomicU64,
    /// Distinct clients routed here by their cookie, recently.
    pub sticky_clients: crate::sketch::RecentClients,
    pub requests_total: AtomicU64,
    pub seed: u64,
    /// Its backend's queue, when a server of the backend has a `max_conns`.
    pub queue: Option<Arc<ServerQueue>>,
    /// Unix milliseconds when it last became usable again (health up,
    /// or `ready` from `drain`/`maint`); 0: usable since the start.
    pub usable_since_ms: AtomicU64,
    /// Its requests' upstream sockets, with `shutdown_sessions`.
    pub sessions: Option<Arc<Sessions>>,
    /// Woken when health marks it down, with `shutdown_sessions`: its tcp
    /// connections close.
    pub marked_down: tokio::sync::Notify,
    /// Consecutive health-check results of the same kind as the last one:
    /// positive for passes, negative for failures.
    pub checks_in_a_row: AtomicU32,
    pub metrics: ServerMetrics,
    /// Its sticky `Set-Cookie` values, `[plain, tls]`; `None` for a backend
    /// without stickiness.
    pins: Option<[HeaderValue; 2]>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("key", &self.key)
            .field("name", &self.conf.name)
            .field("addr", &self.addr)
            .finish()
    }
}

impl Server {
    /// A server joining backend `b`: its address resolved, its metric
    /// series made. `up`: whether it counts as healthy before its first
    /// check.
    pub fn new(
        config: &Config,
        metrics: &Metrics,
        queue: Option<Arc<ServerQueue>>,
        b: usize,
        conf: Arc<config::Server>,
        added: bool,
        up: bool,
    ) -> Result<Server, String> {
        let backend = &config.backends[b];
        let addr = conf
            .addr
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| {
                format!(
                    "backend {}: server {}: cannot resolve {:?}",
                    backend.name, conf.name, conf.addr
                )
            })?;
        let shutdown = backend.on_marked_down == config::OnMarkedDown::ShutdownSessions;
        Ok(Server {
            key: NEXT_KEY.fetch_add(1, Relaxed),
            backend: b,
            added,
            addr,
            up: AtomicBool::new(up),
            inflight: AtomicU64::new(0),
            last_sticky_ms: AtomicU64::new(0),
            sticky_clients: crate::sketch::RecentClients::new(),
            requests_total: AtomicU64::new(0),
            seed: mix(u64::from_str_radix(&conf.id, 16).unwrap_or(0)),
            queue,
            usable_since_ms: AtomicU64::new(0),
            sessions: shutdown.then(|| Arc::new(Sessions::default())),
            marked_down: tokio::sync::Notify::new(),
            checks_in_a_row: AtomicU32::new(0),
            metrics: metrics.server(config, b, &conf.name),
            pins: backend.sticky.as_ref().map(|st| pins(st, &conf.id)),
            conf,
        })
    }

    pub fn name(&self) -> &str {
        &self.conf.name
    }

    /// Its share of its weight now ([`slowstart::share`]).
    pub fn share(&self, now_ms: u64) -> u16 {
        let since = self.usable_since_ms.load(Relaxed);
        slowstart::share(
            self.conf.slowstart,
            (since != 0).then(|| Duration::from_millis(now_ms.saturating_sub(since))),
        )
    }

    /// The `Set-Cookie` value pinning a client here (`None`: its backend
    /// has no stickiness).
    pub fn pin(&self, tls: bool) -> Option<&HeaderValue> {
        self.pins.as_ref().map(|p| &p[usize::from(tls)])
    }
}

/// The `Set-Cookie` values for a server's sticky id, over plain HTTP and
/// over TLS (for `secure: auto`).
fn pins(st: &Sticky, id: &str) -> [HeaderValue; 2] {
    [false, true].map(|tls| {
        // Cookie names and ids are checked tokens: always a valid value.
        HeaderValue::from_str(&sticky::set_cookie(st, id, tls))
            .unwrap_or_else(|_| HeaderValue::from_static(""))
    })
}

impl Slots for Arc<Server> {
    fn inflight(&self) -> &AtomicU64 {
        &self.inflight
    }
    fn max_conns(&self) -> u64 {
        self.conf.max_conns
    }
    fn key(&self) -> u64 {
        self.key
    }
}

/// A request or connection in flight to a server: counted while this
/// lives, so no path can forget the decrement. On a server with a
/// `max_conns`, its end hands the slot to the backend's queue.
#[derive(Debug)]
pub struct InFlight(Arc<Server>);

impl InFlight {
    pub fn new(server: &Arc<Server>) -> InFlight {
        server.inflight.fetch_add(1, Relaxed);
        InFlight(server.clone())
    }

    /// A request already counted (a slot taken with [`Slots::try_take`]
    /// or handed over by the queue).
    pub fn adopt(server: Arc<Server>) -> InFlight {
        InFlight(server)
    }

    pub fn server(&self) -> &Arc<Server> {
        &self.0
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
            q.release(&self.0);
        }
    }
}
