//! Runtime state. What operators change at runtime (maintenance settings,
//! allow lists, server admin states and weights) lives in one immutable
//! [`Snapshot`] behind an `ArcSwap`: the proxy loads it once per request,
//! lock-free, and every admin change builds a new one, writes it to the
//! state file, and only then swaps it in. Live figures (health, requests in
//! flight, last sticky request) are atomics beside it.

mod file;
mod server;
mod snapshot;

use file::{end_window, generate_secret, to_file, write_state};
pub use file::{initial_state, restored};
pub use server::{InFlight, Server, ServerQueue};
use snapshot::assemble;
pub use snapshot::{
    all_maint, check_draft, Draft, DraftServer, Member, ServerAdmin, SiteState, Snapshot,
};

use crate::config::{AdminState, Config};
use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::policy::pages::{render_error, ERROR_STATUSES};
use crate::policy::route::Router;
use crate::policy::select::{self, up_bit, Candidate};
use crate::policy::{bypass, gate, slowstart};
use crate::queue::Queue;
use crate::tls::{CertSet, CertStore};
use arc_swap::ArcSwap;
use bytes::Bytes;
use std::cell::RefCell;
use std::sync::atomic::{
    AtomicU64,
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

pub struct Runtime {
    pub config: Arc<Config>,
    snapshot: ArcSwap<Snapshot>,
    /// Which runtime a thread's cached snapshot belongs to.
    id: u64,
    /// Bumped after each new snapshot is stored: a thread's cached copy is
    /// current while this has not moved.
    generation: AtomicU64,
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
    pub queues: Vec<Option<Arc<ServerQueue>>>,
    /// Serialises admin changes and state-file writes; holds the generated
    /// bypass secret so each write keeps it.
    writer: Mutex<Option<String>>,
    /// Taken to store a snapshot (whose up masks are read from the
    /// servers' flags) and by [`Runtime::set_health`] to set a flag and
    /// its bit, so that no verdict falls between the two.
    publish: Mutex<()>,
    /// Serialises [`Runtime::refresh_queue`]: the last to run read the
    /// latest snapshot and flags.
    refresh: Mutex<()>,
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
        let metrics = Metrics::new(&config).map_err(|e| format!("metrics: {e}"))?;
        let queues: Vec<Option<Arc<ServerQueue>>> = config
            .backends
            .iter()
            .map(|b| {
                b.limited()
                    .then(|| Arc::new(Queue::new(b.queue, Vec::new())))
            })
            .collect();
        let mut servers = Vec::new();
        for (b, list) in draft.servers.iter().enumerate() {
            let mut members = Vec::new();
            for ds in list {
                let q = queues[b].clone();
                let server = Server::new(&config, &metrics, q, b, ds.conf.clone(), ds.added, true)?;
                members.push(Arc::new(server));
            }
            servers.push(members);
        }
        let sites = check_draft(&config, &draft)
            .map_err(|e| format!("state file {}: {e}", path.display()))?;
        let snapshot = assemble(sites, &draft, servers);
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
            limiter,
            certs,
            id: NEXT_RUNTIME.fetch_add(1, Relaxed),
            generation: AtomicU64::new(0),
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
            snapshot: ArcSwap::from_pointee(snapshot),
            writer: Mutex::new(Some(secret)),
            publish: Mutex::new(()),
            refresh: Mutex::new(()),
            config: Arc::new(config),
        };
        rt.publish_metrics(&rt.snapshot.load());
        for b in 0..rt.queues.len() {
            rt.refresh_queue(b);
        }
        rt.publish_limits();
        rt.publish_certificates();
        for m in rt.snapshot.load().servers.iter().flatten() {
            m.server.metrics.up.set(1);
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
        self.commit(&draft, None).map_err(|e| e.to_string())?;
        drop(guard);
        self.refresh_queues();
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
        let mut draft = Draft::of(&self.snapshot.load());
        let out = edit(&mut draft)?;
        self.commit(&draft, Some(guard.as_deref()))?;
        drop(guard);
        self.refresh_queues();
        Ok(out)
    }

    /// Make `draft` the current state (the writer lock held): checked,
    /// its new servers made, written to the state file when `write` holds
    /// the secret to keep, then swapped in; servers it no longer has lose
    /// their metric series.
    fn commit(&self, draft: &Draft, write: Option<Option<&str>>) -> Result<(), StateError> {
        let current = self.snapshot.load_full();
        let sites = check_draft(&self.config, draft)?;
        let mut made = Vec::new();
        let servers = self.servers_of(&current, draft, &mut made);
        let written = match (&servers, write) {
            (Ok(_), Some(secret)) => write_state(
                &self.config.state_file,
                &to_file(&self.config, draft, secret),
            )
            .map_err(|e| {
                StateError::Storage(format!(
                    "cannot write the state file {}: {e}",
                    self.config.state_file.display()
                ))
            }),
            _ => Ok(()),
        };
        let servers = match (servers, written) {
            (Ok(servers), Ok(())) => servers,
            (Err(e), _) | (_, Err(e)) => {
                for s in made {
                    self.leave(&current, &s);
                }
                return Err(e);
            }
        };
        let publish = self.publish.lock().unwrap_or_else(|p| p.into_inner());
        let snapshot = assemble(sites, draft, servers);
        self.publish_metrics(&snapshot);
        let now = now_ms();
        for m in snapshot.servers.iter().flatten() {
            let before = current.servers[m.server.backend]
                .iter()
                .find(|x| Arc::ptr_eq(&x.server, &m.server));
            // Usable from now: a server put back to ready, or one
            // added ready (its slow start begins; a health-checked one's
            // begins again when it comes up).
            if before.is_none_or(|x| x.state != AdminState::Ready) && m.state == AdminState::Ready {
                m.server.usable_since_ms.store(now, Relaxed);
            }
        }
        let snapshot = Arc::new(snapshot);
        self.snapshot.store(snapshot.clone());
        self.generation.fetch_add(1, Release);
        // Under the lock, as set_health writes it: a verdict cannot land
        // between the read and the write.
        for s in &made {
            s.metrics.up.set(i64::from(s.up.load(Relaxed)));
        }
        drop(publish);
        for old in current.servers.iter().flatten() {
            if !snapshot.servers[old.server.backend]
                .iter()
                .any(|m| Arc::ptr_eq(&m.server, &old.server))
            {
                self.leave(&snapshot, &old.server);
            }
        }
        Ok(())
    }

    /// The servers of `draft`: the current ones it keeps (same name and
    /// definition), and new ones for the others (pushed to `made`).
    fn servers_of(
        &self,
        current: &Snapshot,
        draft: &Draft,
        made: &mut Vec<Arc<Server>>,
    ) -> Result<Vec<Vec<Arc<Server>>>, StateError> {
        let mut out = Vec::with_capacity(draft.servers.len());
        for (b, list) in draft.servers.iter().enumerate() {
            let mut members = Vec::with_capacity(list.len());
            for ds in list {
                let kept = current.servers[b]
                    .iter()
                    .find(|m| m.server.conf == ds.conf && m.server.added == ds.added);
                let server = match kept {
                    Some(m) => m.server.clone(),
                    None => {
                        // With a health check, a new server waits for it.
                        let up = self.config.backends[b].health_check.is_none();
                        let q = self.queues[b].clone();
                        let server = Server::new(
                            &self.config,
                            &self.metrics,
                            q,
                            b,
                            ds.conf.clone(),
                            ds.added,
                            up,
                        )
                        .map_err(StateError::Invalid)?;
                        let server = Arc::new(server);
                        made.push(server.clone());
                        server
                    }
                };
                members.push(server);
            }
            out.push(members);
        }
        Ok(out)
    }

    /// `server` left its backend (`now` being the state without it): its
    /// metric series go, unless a server of the same name took them over.
    fn leave(&self, now: &Snapshot, server: &Arc<Server>) {
        let b = server.backend;
        if now.find(b, server.name()).is_none() {
            self.metrics.remove_server(&self.config, b, server.name());
        }
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
        for (b, members) in snap.servers.iter().enumerate() {
            for m in members {
                let (server, metrics) = (&m.server, &m.server.metrics);
                let inflight = server.inflight.load(Relaxed);
                metrics
                    .inflight
                    .set(i64::try_from(inflight).unwrap_or(i64::MAX));
                let share = server.share(now);
                metrics
                    .weight
                    .set(slowstart::effective_weight(m.weight, share));
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
        let now = now_ms();
        for m in snap.servers.iter().flatten() {
            let metrics = &m.server.metrics;
            metrics.set_state(m.state);
            let share = m.server.share(now);
            metrics
                .weight
                .set(slowstart::effective_weight(m.weight, share));
        }
    }

    /// The selector's view of a backend's servers, in order.
    pub fn candidates_into(
        &self,
        snap: &Snapshot,
        backend: usize,
        mut push: impl FnMut(Candidate),
    ) {
        let (limited, slow) = (self.queues[backend].is_some(), snap.slow[backend]);
        let now = if slow { now_ms() } else { 0 };
        for m in &snap.servers[backend] {
            let server = &m.server;
            let mut cand = Candidate::new(
                m.state,
                m.weight,
                server.conf.backup,
                server.up.load(Relaxed),
                server.seed,
            );
            if limited {
                let inflight = server.inflight.load(Relaxed);
                cand.full = !select::below_max(inflight, server.conf.max_conns);
            }
            if slow {
                cand.share = server.share(now);
            }
            push(cand);
        }
    }

    /// Whether a server of `backend` is in slow start now.
    pub fn ramping(&self, snap: &Snapshot, backend: usize) -> bool {
        let now = now_ms();
        snap.servers[backend]
            .iter()
            .any(|m| m.server.share(now) < slowstart::FULL)
    }

    fn refresh_queues(&self) {
        for b in 0..self.queues.len() {
            self.refresh_queue(b);
        }
    }

    /// Which servers the backend's queued requests may be given, from the
    /// current states and health; then any free slot goes to them.
    fn refresh_queue(&self, backend: usize) {
        let Some(q) = &self.queues[backend] else {
            return;
        };
        let _serial = self.refresh.lock().unwrap_or_else(|p| p.into_inner());
        let snap = self.snapshot();
        let mut cands = Vec::new();
        self.candidates_into(&snap, backend, |mut c| {
            c.full = false;
            cands.push(c);
        });
        let members = &snap.servers[backend];
        let targets = select::queue_targets(&cands);
        let keys = members.iter().enumerate().filter_map(|(i, m)| {
            up_bit(i)
                .is_some_and(|bit| targets & bit != 0)
                .then_some(m.server.key)
        });
        q.set_targets(keys.collect());
        q.evict(|key| {
            let i = snap.position(backend, key);
            i.is_some_and(|i| select::sticky_target(&cands[i], false).is_ok())
        });
        q.kick(members.iter().map(|m| &m.server));
    }

    /// Mirror a health-check verdict (called on changes only).
    pub fn set_health(&self, server: &Arc<Server>, up: bool) {
        let b = server.backend;
        {
            // A snapshot being stored read the flags after this one's bit
            // is set, or before the flag is.
            let _guard = self.publish.lock().unwrap_or_else(|p| p.into_inner());
            let was = server.up.swap(up, Relaxed);
            if up && !was {
                server.usable_since_ms.store(now_ms(), Relaxed);
            }
            let snap = self.snapshot.load();
            if let Some(bit) = snap.position(b, server.key).and_then(up_bit) {
                if up {
                    snap.up_mask[b].fetch_or(bit, Relaxed);
                } else {
                    snap.up_mask[b].fetch_and(!bit, Relaxed);
                }
            }
            server.metrics.up.set(i64::from(up));
        }
        let (name, addr) = (&self.config.backends[b].name, &server.conf.addr);
        if up {
            log::info!("health: {name}/{} ({addr}) is up", server.name());
        } else {
            log::warn!("health: {name}/{} ({addr}) is down", server.name());
            if let Some(sessions) = &server.sessions {
                let n = sessions.shutdown_all(server.addr);
                server.marked_down.notify_waiters();
                log::warn!(
                    "health: {name}/{}: {n} requests in flight ended (shutdown_sessions)",
                    server.name()
                );
            }
        }
        self.refresh_queue(b);
    }
}

#[cfg(test)]
mod tests;
