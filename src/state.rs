//! Runtime state. What operators change at runtime (maintenance settings,
//! allow lists, server admin states and weights) lives in one immutable
//! [`Snapshot`] behind an `ArcSwap`: the proxy loads it once per request,
//! lock-free, and every admin change builds a new one, writes it to the
//! state file, and only then swaps it in. Live figures (health, requests in
//! flight, last sticky request) are atomics beside it.

mod file;
mod live;

use file::{end_window, generate_secret, to_file, write_state};
pub use file::{initial_state, restored};
pub use live::{InFlight, ServerLive};

use crate::config::{check, compile_paths, AdminState, Config, MaintenanceSettings};
use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::policy::pages::{render_error, MaintenancePage, ERROR_STATUSES};
use crate::policy::route::Router;
use crate::policy::select::{self, mix, up_bit, Candidate, ReadyTier};
use crate::policy::{bypass, gate, slowstart};
use crate::queue::Queue;
use crate::sessions::Sessions;
use crate::tls::{CertSet, CertStore};
use arc_swap::ArcSwap;
use bytes::Bytes;
use regex::RegexSet;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::net::ToSocketAddrs;
use std::sync::atomic::{
    AtomicBool, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a change of the runtime state was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    /// A setting out of its bounds (see [`crate::config::check`]).
    Invalid(String),
    /// The state file could not be written.
    Storage(String),
    /// A rendering step failed that no input should make fail.
    Internal(String),
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateError::Invalid(m) | StateError::Storage(m) | StateError::Internal(m) => {
                f.write_str(m)
            }
        }
    }
}

/// A server's operator-set state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerAdmin {
    pub state: AdminState,
    pub weight: u32,
}

/// One site's maintenance settings, compiled and rendered.
#[derive(Debug)]
pub struct SiteState {
    pub settings: MaintenanceSettings,
    pub paths: Option<RegexSet>,
    pub page: MaintenancePage,
}

/// Everything an admin change can touch, replaced whole on each change.
#[derive(Debug)]
pub struct Snapshot {
    pub sites: Vec<SiteState>,
    pub servers: Vec<Vec<ServerAdmin>>,
    /// Per backend: every server is in `maint`, which puts its sites in
    /// maintenance.
    pub all_maint: Vec<bool>,
    /// Per backend: its ready tier, for balancing while it is all up.
    pub ready: Vec<Option<ReadyTier>>,
}

/// The editable part of a snapshot, handed to admin changes.
#[derive(Debug, Clone)]
pub struct Draft {
    pub sites: Vec<MaintenanceSettings>,
    pub servers: Vec<Vec<ServerAdmin>>,
}

impl Draft {
    /// The config's initial values, before any state file.
    pub fn from_config(config: &Config) -> Draft {
        Draft {
            sites: config.sites.iter().map(|s| s.maintenance.clone()).collect(),
            servers: config
                .backends
                .iter()
                .map(|b| {
                    b.servers
                        .iter()
                        .map(|s| ServerAdmin {
                            state: s.state,
                            weight: s.weight,
                        })
                        .collect()
                })
                .collect(),
        }
    }

    /// What `snap` holds, to edit.
    pub fn of(snap: &Snapshot) -> Draft {
        Draft {
            sites: snap.sites.iter().map(|s| s.settings.clone()).collect(),
            servers: snap.servers.clone(),
        }
    }
}

pub struct Runtime {
    pub config: Arc<Config>,
    snapshot: ArcSwap<Snapshot>,
    /// Which runtime a thread's cached snapshot belongs to.
    id: u64,
    /// Bumped after each new snapshot is stored: a thread's cached copy is
    /// current while this has not moved.
    generation: AtomicU64,
    pub live: Vec<Vec<Arc<ServerLive>>>,
    /// Per backend: the up bits ([`up_bit`]) of its first 64 servers, as
    /// `live[..].up` has them, read in one load when balancing.
    pub up_mask: Vec<AtomicU64>,
    /// Round-robin counters, one per backend.
    pub rr: Vec<AtomicU64>,
    /// Bypass-token key per site.
    pub keys: Vec<bypass::Key>,
    /// Per site, the error page for each of `pages::ERROR_STATUSES`.
    pub error_pages: Vec<[Bytes; 3]>,
    pub router: Router,
    pub metrics: Metrics,
    /// Client connection counts and limits.
    pub limiter: Arc<Limiter>,
    /// Per listener: its certificates, if it terminates TLS.
    pub certs: Vec<Option<CertStore>>,
    /// Per backend: its queue, when a server of it has a `max_conns`.
    pub queues: Vec<Option<Arc<Queue>>>,
    /// Per backend: a server of it has a `slowstart`.
    pub slow: Vec<bool>,
    /// Serialises admin changes and state-file writes; holds the generated
    /// bypass secret so each write keeps it.
    writer: Mutex<Option<String>>,
}

static NEXT_RUNTIME: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's copy of the last snapshot it loaded, with its runtime
    /// and generation: taking a reference to it costs one increment, where
    /// `ArcSwap::load_full` takes several synchronised operations.
    static SNAPSHOT: RefCell<Option<(u64, u64, Arc<Snapshot>)>> = const { RefCell::new(None) };
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Runtime {
    /// Build the runtime from a checked config and the state file, which
    /// overrides the config's initial values. A state file that cannot be
    /// read or parsed is an error: an operator's decision is never dropped
    /// silently.
    pub fn new(config: Config, nofile: u64) -> Result<Runtime, String> {
        let path = config.state_file.clone();
        let (draft, secret) = initial_state(&config)?;
        let secret = secret.unwrap_or_else(generate_secret);
        let keys = config
            .sites
            .iter()
            .map(|s| {
                let from_env = s
                    .bypass_secret_env
                    .as_deref()
                    .and_then(|e| std::env::var(e).ok())
                    .filter(|v| !v.is_empty());
                bypass::Key::derive(from_env.as_deref().unwrap_or(&secret).as_bytes())
            })
            .collect();
        let mut live = Vec::new();
        let mut queues = Vec::new();
        for b in &config.backends {
            let queue = b.limited().then(|| Arc::new(Queue::new(b.queue, u64::MAX)));
            let shutdown = b.on_marked_down == crate::config::OnMarkedDown::ShutdownSessions;
            let mut servers = Vec::new();
            for (index, s) in b.servers.iter().enumerate() {
                let addr = s
                    .addr
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or_else(|| {
                        format!(
                            "backend {}: server {}: cannot resolve {:?}",
                            b.name, s.name, s.addr
                        )
                    })?;
                servers.push(Arc::new(ServerLive {
                    up: AtomicBool::new(true),
                    inflight: AtomicU64::new(0),
                    last_sticky_ms: AtomicU64::new(0),
                    sticky_clients: crate::sketch::RecentClients::new(),
                    requests_total: AtomicU64::new(0),
                    seed: mix(u64::from_str_radix(&s.id, 16).unwrap_or(0)),
                    addr,
                    index,
                    max_conns: s.max_conns,
                    queue: queue.clone(),
                    usable_since_ms: AtomicU64::new(0),
                    slowstart: s.slowstart,
                    sessions: shutdown.then(|| Arc::new(Sessions::default())),
                    marked_down: tokio::sync::Notify::new(),
                }));
            }
            live.push(servers);
            queues.push(queue);
        }
        let metrics = Metrics::new(&config).map_err(|e| format!("metrics: {e}"))?;
        let snapshot = build_snapshot(&config, &draft)
            .map_err(|e| format!("state file {}: {e}", path.display()))?;
        let up_mask = live
            .iter()
            .map(|servers| {
                let bits = (0..servers.len()).filter_map(up_bit);
                AtomicU64::new(bits.fold(0, |m, b| m | b))
            })
            .collect();
        let limiter = Arc::new(Limiter::new(&config, nofile));
        let certs = config
            .listeners
            .iter()
            .map(|l| {
                l.tls
                    .as_ref()
                    .map(|t| {
                        CertSet::load(t)
                            .map(|set| Arc::new(ArcSwap::from_pointee(set)))
                            .map_err(|e| format!("listener {}: {e}", l.name))
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let rt = Runtime {
            queues,
            slow: config.backends.iter().map(|b| b.slowstarts()).collect(),
            limiter,
            certs,
            id: NEXT_RUNTIME.fetch_add(1, Relaxed),
            generation: AtomicU64::new(0),
            up_mask,
            rr: config.backends.iter().map(|_| AtomicU64::new(0)).collect(),
            keys,
            error_pages: config
                .sites
                .iter()
                .map(|s| {
                    let template = String::from_utf8_lossy(&s.error_page);
                    ERROR_STATUSES.map(|status| render_error(&template, &s.name, status))
                })
                .collect(),
            router: Router::new(&config.sites),
            metrics,
            live,
            snapshot: ArcSwap::from_pointee(snapshot),
            writer: Mutex::new(Some(secret)),
            config: Arc::new(config),
        };
        rt.publish_metrics(&rt.snapshot.load());
        for b in 0..rt.queues.len() {
            rt.refresh_queue(b);
        }
        rt.publish_limits();
        rt.publish_certificates();
        for servers in &rt.metrics.servers {
            for m in servers {
                m.up.set(1);
            }
        }
        // Write at once: the generated secret must outlive this process,
        // and names gone from the config leave the file.
        rt.persist(&draft)
            .map_err(|e| format!("state file {}: cannot write: {e}", path.display()))?;
        Ok(rt)
    }

    /// The current snapshot; cheap, lock-free. Each thread keeps the last
    /// one it loaded and takes it again while no admin change was stored
    /// since.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        let generation = self.generation.load(Acquire);
        let cached = SNAPSHOT.try_with(|cell| {
            let mut cell = cell.try_borrow_mut().ok()?;
            match &*cell {
                Some((id, g, snap)) if *id == self.id && *g == generation => Some(snap.clone()),
                _ => {
                    // Loaded after the generation was read: at least as new.
                    let snap = self.snapshot.load_full();
                    *cell = Some((self.id, generation, snap.clone()));
                    Some(snap)
                }
            }
        });
        cached
            .ok()
            .flatten()
            .unwrap_or_else(|| self.snapshot.load_full())
    }

    /// Take the state file again as the current state: a process that took
    /// over the sockets of another reads it once more after the handover,
    /// so that a change the old process made after this one started is
    /// kept (the old one refuses changes from the handover on).
    pub fn reread_state(&self) -> Result<(), String> {
        let guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let (draft, _) = initial_state(&self.config)?;
        let snapshot = build_snapshot(&self.config, &draft).map_err(|e| e.to_string())?;
        self.publish_metrics(&snapshot);
        self.snapshot.store(Arc::new(snapshot));
        self.generation.fetch_add(1, Release);
        drop(guard);
        Ok(())
    }

    /// Apply an admin change: edit a draft of the current state, check it,
    /// write it to the state file, then make it the state the next request
    /// sees. Nothing changes when any step fails.
    pub fn update<T, E: From<StateError>>(
        &self,
        edit: impl FnOnce(&mut Draft) -> Result<T, E>,
    ) -> Result<T, E> {
        let guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.snapshot.load();
        let mut draft = Draft::of(&current);
        let out = edit(&mut draft)?;
        let snapshot = build_snapshot(&self.config, &draft)?;
        write_state(
            &self.config.state_file,
            &to_file(&self.config, &draft, guard.as_deref()),
        )
        .map_err(|e| {
            StateError::Storage(format!(
                "cannot write the state file {}: {e}",
                self.config.state_file.display()
            ))
        })?;
        self.publish_metrics(&snapshot);
        let now = now_ms();
        for (b, (before, after)) in current.servers.iter().zip(&snapshot.servers).enumerate() {
            for (s, (x, y)) in before.iter().zip(after).enumerate() {
                if x.state != AdminState::Ready && y.state == AdminState::Ready {
                    self.live[b][s].usable_since_ms.store(now, Relaxed);
                }
            }
        }
        self.snapshot.store(Arc::new(snapshot));
        self.generation.fetch_add(1, Release);
        drop(guard);
        for b in 0..self.queues.len() {
            self.refresh_queue(b);
        }
        Ok(out)
    }

    fn persist(&self, draft: &Draft) -> std::io::Result<()> {
        let guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        write_state(
            &self.config.state_file,
            &to_file(&self.config, draft, guard.as_deref()),
        )
    }

    /// The metrics text, with the gauges read from live figures at scrape
    /// time (requests in flight) brought up to date first.
    pub fn render_metrics(&self) -> Vec<u8> {
        let snap = self.snapshot();
        self.publish_sites(&snap);
        let now = now_ms();
        for (b, (metrics, live)) in self.metrics.servers.iter().zip(&self.live).enumerate() {
            for (s, (m, l)) in metrics.iter().zip(live).enumerate() {
                m.inflight
                    .set(i64::try_from(l.inflight.load(Relaxed)).unwrap_or(i64::MAX));
                m.weight.set(slowstart::effective_weight(
                    snap.servers[b][s].weight,
                    l.share(now),
                ));
            }
            if let Some(q) = &self.queues[b] {
                let len = i64::try_from(q.len()).unwrap_or(i64::MAX);
                self.metrics.backends[b].queue_length.set(len);
            }
        }
        self.metrics.render()
    }

    /// Every TLS listener's certificates, as the API lists them.
    pub fn certificates(&self) -> Vec<serde_json::Value> {
        self.config
            .listeners
            .iter()
            .zip(&self.certs)
            .filter_map(|(l, c)| c.as_ref().map(|c| crate::tls::describe(&l.name, &c.load())))
            .flatten()
            .collect()
    }

    /// Re-read every certificate of every TLS listener; when all load, swap
    /// them in for the next handshakes (open connections keep theirs),
    /// else change nothing and say which failed.
    pub fn reload_certificates(&self) -> Result<(), StateError> {
        let mut loaded = Vec::new();
        for (l, store) in self.config.listeners.iter().zip(&self.certs) {
            let (Some(tls), Some(store)) = (&l.tls, store) else {
                continue;
            };
            let set = CertSet::load(tls)
                .map_err(|e| StateError::Invalid(format!("listener {}: {e}", l.name)))?;
            loaded.push((store, set));
        }
        for (store, set) in loaded {
            store.store(Arc::new(set));
        }
        self.publish_certificates();
        log::warn!("admin: certificates reloaded");
        Ok(())
    }

    /// Each certificate's expiry gauge, for the names the current sets
    /// carry (names gone with a reload lose their series).
    fn publish_certificates(&self) {
        self.metrics.cert_expiry.reset();
        for (l, store) in self.config.listeners.iter().zip(&self.certs) {
            if let Some(store) = store {
                crate::tls::publish_expiry(&l.name, &store.load(), &self.metrics);
            }
        }
    }

    /// The limits in force, as gauges (seconds for the timeouts).
    fn publish_limits(&self) {
        let l = &self.limiter.limits;
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let secs = |d: std::time::Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        for (name, value) in [
            ("max_connections", count(self.limiter.max_connections)),
            (
                "max_connections_per_client",
                count(l.max_connections_per_client),
            ),
            ("header_timeout_seconds", secs(l.header_timeout)),
            ("keepalive_timeout_seconds", secs(l.keepalive_timeout)),
            ("client_body_timeout_seconds", secs(l.client_body_timeout)),
            (
                "open_files",
                i64::try_from(self.limiter.nofile).unwrap_or(i64::MAX),
            ),
        ] {
            self.metrics.limits.with_label_values(&[name]).set(value);
        }
    }

    /// Switch off the maintenance of sites whose window has ended, and
    /// keep that in the state file. The proxy already stopped answering
    /// with the page at `until` (it reads the clock); this makes the
    /// settings, `status` and the file say so. Returns the sites switched
    /// off.
    pub fn end_windows(&self, now_ms: u64) -> Result<Vec<usize>, StateError> {
        let now = now_ms / 1000;
        let due = self
            .snapshot()
            .sites
            .iter()
            .any(|s| gate::window_over(s.settings.enabled, s.settings.until, now));
        if !due {
            return Ok(Vec::new());
        }
        let ended = self.update(|d| {
            let ended: Vec<usize> = (0..d.sites.len())
                .filter(|&i| end_window(&mut d.sites[i], now))
                .collect();
            Ok::<_, StateError>(ended)
        })?;
        for &i in &ended {
            log::warn!(
                "site {}: maintenance window over, maintenance off",
                self.config.sites[i].name
            );
        }
        Ok(ended)
    }

    /// Whether each site's maintenance switch is on at `now_ms`
    /// (its window considered).
    pub fn switched_on(&self, snap: &Snapshot, now_ms: u64) -> Vec<bool> {
        snap.sites
            .iter()
            .map(|s| {
                let m = &s.settings;
                gate::switched_on(m.enabled, m.from, m.until, || now_ms)
            })
            .collect()
    }

    fn publish_sites(&self, snap: &Snapshot) {
        let on = self.switched_on(snap, now_ms());
        for ((site, m), on) in snap.sites.iter().zip(&self.metrics.sites).zip(on) {
            m.maintenance_enabled.set(i64::from(on));
            let secs = |t: Option<u64>| t.map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX));
            m.window_start.set(secs(site.settings.from));
            m.window_end.set(secs(site.settings.until));
        }
    }

    fn publish_metrics(&self, snap: &Snapshot) {
        self.publish_sites(snap);
        for (b, servers) in snap.servers.iter().enumerate() {
            for (s, admin) in servers.iter().enumerate() {
                self.metrics.set_state(b, s, admin.state);
                let share = self.live[b][s].share(now_ms());
                self.metrics.servers[b][s]
                    .weight
                    .set(slowstart::effective_weight(admin.weight, share));
            }
        }
    }

    /// The selector's view of a backend's servers, in order.
    pub fn candidates_into(
        &self,
        snap: &Snapshot,
        backend: usize,
        mut push: impl FnMut(Candidate),
    ) {
        let b = &self.config.backends[backend];
        let (limited, slow) = (b.limited(), b.slowstarts());
        let now = if slow { now_ms() } else { 0 };
        for ((admin, live), c) in snap.servers[backend]
            .iter()
            .zip(&self.live[backend])
            .zip(&b.servers)
        {
            let mut cand = Candidate::new(
                admin.state,
                admin.weight,
                c.backup,
                live.up.load(Relaxed),
                live.seed,
            );
            if limited {
                cand.full = !select::below_max(live.inflight.load(Relaxed), live.max_conns);
            }
            if slow {
                cand.share = live.share(now);
            }
            push(cand);
        }
    }

    /// Whether a server of `backend` is in slow start now.
    pub fn ramping(&self, backend: usize) -> bool {
        let now = now_ms();
        self.live[backend]
            .iter()
            .any(|l| l.share(now) < slowstart::FULL)
    }

    /// Which servers the backend's queued requests may be given, from the
    /// current states and health; then any free slot goes to them.
    fn refresh_queue(&self, backend: usize) {
        let Some(q) = &self.queues[backend] else {
            return;
        };
        let mut cands = Vec::new();
        self.candidates_into(&self.snapshot(), backend, |mut c| {
            c.full = false;
            cands.push(c);
        });
        q.set_targets(select::queue_targets(&cands));
        q.evict(|s| {
            cands
                .get(s)
                .is_some_and(|c| select::sticky_target(c, false).is_ok())
        });
        q.kick(&self.live[backend]);
    }

    /// Mirror a health-check verdict (called on changes only).
    pub fn set_health(&self, backend: usize, server: usize, up: bool) {
        let live = &self.live[backend][server];
        let was = live.up.swap(up, Relaxed);
        if up && !was {
            live.usable_since_ms.store(now_ms(), Relaxed);
        }
        if let Some(bit) = up_bit(server) {
            if up {
                self.up_mask[backend].fetch_or(bit, Relaxed);
            } else {
                self.up_mask[backend].fetch_and(!bit, Relaxed);
            }
        }
        self.metrics.servers[backend][server].up.set(i64::from(up));
        let (b, s) = (
            &self.config.backends[backend],
            &self.config.backends[backend].servers[server],
        );
        if up {
            log::info!("health: {}/{} ({}) is up", b.name, s.name, s.addr);
        } else {
            log::warn!("health: {}/{} ({}) is down", b.name, s.name, s.addr);
            if let Some(sessions) = &live.sessions {
                let n = sessions.shutdown_all(live.addr);
                live.marked_down.notify_waiters();
                log::warn!(
                    "health: {}/{}: {n} requests in flight ended (shutdown_sessions)",
                    b.name,
                    s.name
                );
            }
        }
        self.refresh_queue(backend);
    }
}

/// Check, compile and render a draft into a snapshot. The same checks
/// whether the draft comes from the API or the state file.
pub fn build_snapshot(config: &Config, draft: &Draft) -> Result<Snapshot, StateError> {
    let mut sites = Vec::with_capacity(draft.sites.len());
    for (site, settings) in config.sites.iter().zip(&draft.sites) {
        check::maintenance(settings).map_err(StateError::Invalid)?;
        let paths = compile_paths(&settings.paths)
            .map_err(|e| StateError::Invalid(format!("paths: invalid regex: {e}")))?;
        let page = MaintenancePage::render(
            &site.maintenance_page,
            &site.name,
            settings.retry_after,
            settings.message.as_deref(),
            settings.until,
        )
        .map_err(|e| StateError::Internal(format!("cannot build the maintenance answer: {e}")))?;
        sites.push(SiteState {
            settings: settings.clone(),
            paths,
            page,
        });
    }
    for (b, admins) in config.backends.iter().zip(&draft.servers) {
        for (s, a) in b.servers.iter().zip(admins) {
            check::weight(i64::from(a.weight))
                .map_err(|e| StateError::Invalid(format!("{}/{}: weight {e}", b.name, s.name)))?;
        }
    }
    let all_maint = draft
        .servers
        .iter()
        .map(|s| !s.is_empty() && s.iter().all(|a| a.state == AdminState::Maint))
        .collect();
    let ready = config
        .backends
        .iter()
        .zip(&draft.servers)
        .map(|(b, admins)| {
            let servers: Vec<Candidate> = b
                .servers
                .iter()
                .zip(admins)
                .map(|(s, a)| Candidate::new(a.state, a.weight, s.backup, true, 0))
                .collect();
            ReadyTier::new(&servers)
        })
        .collect();
    Ok(Snapshot {
        sites,
        servers: draft.servers.clone(),
        all_maint,
        ready,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn runtime(dir: &Path) -> Runtime {
        let yaml = format!(
            "state_file: {}/state.json
listeners:
  - {{ name: web, listen: 127.0.0.1:0, protocol: http }}
sites:
  - {{ name: app, backend: app }}
backends:
  - name: app
    servers:
      - {{ name: a, addr: 127.0.0.1:1 }}
      - {{ name: b, addr: 127.0.0.1:2, weight: 3 }}
",
            dir.display()
        );
        let config = crate::config::parse(&yaml, &dir.join("drawbridge.yaml"))
            .unwrap_or_else(|e| panic!("config: {e:?}"));
        Runtime::new(config, 1024).unwrap_or_else(|e| panic!("runtime: {e}"))
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("drawbridge-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        dir
    }

    /// A thread that cached a snapshot sees every later admin change at
    /// once, and two runtimes on one thread never see each other's.
    #[test]
    fn cached_snapshots_follow_admin_changes() {
        let (d1, d2) = (temp_dir("one"), temp_dir("two"));
        let (rt, other) = (runtime(&d1), runtime(&d2));
        assert_eq!(rt.snapshot().servers[0][0].state, AdminState::Ready);
        assert_eq!(other.snapshot().servers[0][0].state, AdminState::Ready);
        let ready = rt.snapshot().ready[0].clone().map(|t| t.mask);
        assert_eq!(ready, Some(0b11));
        rt.update(|d| {
            d.servers[0][0].state = AdminState::Drain;
            Ok(())
        })
        .unwrap_or_else(|e: StateError| panic!("update: {e}"));
        let snap = rt.snapshot();
        assert_eq!(snap.servers[0][0].state, AdminState::Drain);
        assert_eq!(snap.ready[0].as_ref().map(|t| t.mask), Some(0b10));
        assert_eq!(other.snapshot().servers[0][0].state, AdminState::Ready);
        let _ = std::fs::remove_dir_all(d1);
        let _ = std::fs::remove_dir_all(d2);
    }

    /// A restart names what the state file brought back.
    #[test]
    fn restored_state_is_named() {
        let dir = temp_dir("restored");
        let rt = runtime(&dir);
        let draft = |rt: &Runtime| Draft::of(&rt.snapshot());
        assert!(restored(&rt.config, &draft(&rt)).is_empty());
        rt.update(|d| {
            d.sites[0].enabled = true;
            d.servers[0][1].state = AdminState::Maint;
            Ok::<_, StateError>(())
        })
        .unwrap_or_else(|e| panic!("update: {e}"));
        let config = rt.config.clone();
        drop(rt);
        let (restarted, _) = initial_state(&config).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            restored(&config, &restarted),
            [
                "maintenance ON for site(s) app",
                "server state(s) app/b maint"
            ]
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A state file with an unknown setting, of another version, or that is
    /// not a JSON object is refused rather than half read.
    #[test]
    fn loose_state_files_are_refused() {
        let dir = temp_dir("loose");
        let rt = runtime(&dir);
        let config = rt.config.clone();
        drop(rt);
        let text = std::fs::read_to_string(&config.state_file).unwrap_or_default();
        for (bad, words) in [
            (
                text.replace("\"retry_after\"", "\"mesage\": \"x\", \"retry_after\""),
                "mesage",
            ),
            (
                text.replace("\"version\": 1", "\"version\": 2"),
                "version 2",
            ),
            ("[1]".to_string(), "not a JSON object"),
        ] {
            assert_ne!(bad, text);
            std::fs::write(&config.state_file, bad).unwrap_or_else(|e| panic!("{e}"));
            let err = initial_state(&config).err().unwrap_or_default();
            assert!(err.contains(words), "{words}: {err}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A state file is held to the checks the API applies.
    #[test]
    fn state_file_values_are_checked() {
        let dir = temp_dir("checked");
        let rt = runtime(&dir);
        let config = rt.config.clone();
        drop(rt);
        let text = std::fs::read_to_string(&config.state_file).unwrap_or_default();
        let bad = text.replace("\"retry_after\": 600", "\"retry_after\": 0");
        assert_ne!(bad, text, "the state file holds retry_after: {text}");
        std::fs::write(&config.state_file, bad).unwrap_or_else(|e| panic!("{e}"));
        let err = initial_state(&config).err().unwrap_or_default();
        assert!(err.contains("retry_after: must be between 1"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The count follows the guards, including one dropped on an early
    /// return or a panic's unwinding, and a request moved to another server.
    #[test]
    fn in_flight_follows_its_guards() {
        let dir = temp_dir("inflight");
        let rt = runtime(&dir);
        let (a, b) = (&rt.live[0][0], &rt.live[0][1]);
        let first = InFlight::new(a);
        let second = InFlight::new(a);
        assert_eq!(a.inflight.load(Relaxed), 2);
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _g = InFlight::new(a);
            assert_eq!(a.inflight.load(Relaxed), 3);
            panic!("a request that fails half-way");
        }));
        assert!(unwound.is_err());
        assert_eq!(a.inflight.load(Relaxed), 2);
        let mut moved = Some(first);
        drop(moved.replace(InFlight::new(b)));
        assert_eq!((a.inflight.load(Relaxed), b.inflight.load(Relaxed)), (1, 1));
        drop((second, moved));
        assert_eq!((a.inflight.load(Relaxed), b.inflight.load(Relaxed)), (0, 0));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn up_mask_follows_health() {
        let dir = temp_dir("health");
        let rt = runtime(&dir);
        assert_eq!(rt.up_mask[0].load(Relaxed), 0b11);
        rt.set_health(0, 1, false);
        assert_eq!(rt.up_mask[0].load(Relaxed), 0b01);
        rt.set_health(0, 1, true);
        assert_eq!(rt.up_mask[0].load(Relaxed), 0b11);
        let _ = std::fs::remove_dir_all(dir);
    }
}
