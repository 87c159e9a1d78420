//! Runtime state. What operators change at runtime (maintenance settings,
//! allow lists, server admin states and weights) lives in one immutable
//! [`Snapshot`] behind an `ArcSwap`: the proxy loads it once per request,
//! lock-free, and every admin change builds a new one, writes it to the
//! state file, and only then swaps it in. Live figures (health, requests in
//! flight, last sticky request) are atomics beside it.

use crate::admin::ApiError;
use crate::bypass;
use crate::config::{compile_paths, AdminState, Config, MaintenanceSettings};
use crate::metrics::Metrics;
use crate::proxy::pages::{render_error, MaintenancePage};
use crate::proxy::route::Router;
use crate::proxy::select::{mix, Candidate};
use arc_swap::ArcSwap;
use bytes::Bytes;
use regex::RegexSet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

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
}

/// The editable part of a snapshot, handed to admin changes.
#[derive(Debug, Clone)]
pub struct Draft {
    pub sites: Vec<MaintenanceSettings>,
    pub servers: Vec<Vec<ServerAdmin>>,
}

/// Live per-server figures, updated by the proxy and health checks.
#[derive(Debug)]
pub struct ServerLive {
    pub up: AtomicBool,
    /// Unix milliseconds of the last request routed here by its cookie; 0 = never.
    pub last_sticky_ms: AtomicU64,
    pub requests_total: AtomicU64,
    pub seed: u64,
    pub addr: SocketAddr,
}

/// The state file's format.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bypass_secret: Option<String>,
    #[serde(default)]
    sites: BTreeMap<String, MaintenanceSettings>,
    #[serde(default)]
    servers: BTreeMap<String, BTreeMap<String, ServerAdmin>>,
}

pub struct Runtime {
    pub config: Arc<Config>,
    snapshot: ArcSwap<Snapshot>,
    pub live: Vec<Vec<ServerLive>>,
    /// Round-robin counters, one per backend.
    pub rr: Vec<AtomicU64>,
    /// Bypass-token key per site.
    pub keys: Vec<bypass::Key>,
    pub error_pages: Vec<Bytes>,
    pub router: Router,
    pub metrics: Metrics,
    /// Serialises admin changes and state-file writes; holds the generated
    /// bypass secret so each write keeps it.
    writer: Mutex<Option<String>>,
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
    pub fn new(config: Config) -> Result<Runtime, String> {
        let path = config.state_file.clone();
        let file = read_state(&path)?;
        let mut draft = Draft {
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
        };
        for (name, settings) in file.sites {
            match config.site_index(&name) {
                Some(i) => draft.sites[i] = settings,
                None => log::warn!(
                    "state file {}: site {name:?} is gone from the config, dropped",
                    path.display()
                ),
            }
        }
        for (bname, servers) in file.servers {
            let Some(b) = config.backend_index(&bname) else {
                log::warn!(
                    "state file {}: backend {bname:?} is gone from the config, dropped",
                    path.display()
                );
                continue;
            };
            for (sname, admin) in servers {
                match config.backends[b]
                    .servers
                    .iter()
                    .position(|s| s.name == sname)
                {
                    Some(s) => draft.servers[b][s] = admin,
                    None => log::warn!(
                        "state file {}: server {bname}/{sname} is gone from the config, dropped",
                        path.display()
                    ),
                }
            }
        }
        let secret = file.bypass_secret.unwrap_or_else(generate_secret);
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
        for b in &config.backends {
            let mut servers = Vec::new();
            for s in &b.servers {
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
                servers.push(ServerLive {
                    up: AtomicBool::new(true),
                    last_sticky_ms: AtomicU64::new(0),
                    requests_total: AtomicU64::new(0),
                    seed: mix(u64::from_str_radix(&s.id, 16).unwrap_or(0)),
                    addr,
                });
            }
            live.push(servers);
        }
        let metrics = Metrics::new(&config).map_err(|e| format!("metrics: {e}"))?;
        let snapshot = build_snapshot(&config, &draft)
            .map_err(|e| format!("state file {}: {}", path.display(), e.message))?;
        let rt = Runtime {
            rr: config.backends.iter().map(|_| AtomicU64::new(0)).collect(),
            keys,
            error_pages: config
                .sites
                .iter()
                .map(|s| render_error(&String::from_utf8_lossy(&s.error_page), &s.name))
                .collect(),
            router: Router::new(&config.sites),
            metrics,
            live,
            snapshot: ArcSwap::from_pointee(snapshot),
            writer: Mutex::new(Some(secret)),
            config: Arc::new(config),
        };
        rt.publish_metrics(&rt.snapshot.load());
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

    /// The current snapshot; cheap, lock-free.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Apply an admin change: edit a draft of the current state, check it,
    /// write it to the state file, then make it the state the next request
    /// sees. Nothing changes when any step fails.
    pub fn update<T>(
        &self,
        edit: impl FnOnce(&mut Draft) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.snapshot.load();
        let mut draft = Draft {
            sites: current.sites.iter().map(|s| s.settings.clone()).collect(),
            servers: current.servers.clone(),
        };
        let out = edit(&mut draft)?;
        let snapshot = build_snapshot(&self.config, &draft)?;
        write_state(
            &self.config.state_file,
            &to_file(&self.config, &draft, guard.as_deref()),
        )
        .map_err(|e| ApiError::new(500, format!("cannot write the state file: {e}")))?;
        self.publish_metrics(&snapshot);
        self.snapshot.store(Arc::new(snapshot));
        drop(guard);
        Ok(out)
    }

    fn persist(&self, draft: &Draft) -> std::io::Result<()> {
        let guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        write_state(
            &self.config.state_file,
            &to_file(&self.config, draft, guard.as_deref()),
        )
    }

    fn publish_metrics(&self, snap: &Snapshot) {
        for (site, m) in snap.sites.iter().zip(&self.metrics.sites) {
            m.maintenance_enabled.set(i64::from(site.settings.enabled));
        }
        for (b, servers) in snap.servers.iter().enumerate() {
            for (s, admin) in servers.iter().enumerate() {
                self.metrics.set_state(b, s, admin.state);
                self.metrics.servers[b][s]
                    .weight
                    .set(i64::from(admin.weight));
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
        let conf = &self.config.backends[backend].servers;
        for ((admin, live), c) in snap.servers[backend]
            .iter()
            .zip(&self.live[backend])
            .zip(conf)
        {
            push(Candidate {
                state: admin.state,
                weight: admin.weight,
                backup: c.backup,
                up: live.up.load(Relaxed),
                seed: live.seed,
            });
        }
    }

    /// Mirror a health-check verdict (called on changes only).
    pub fn set_health(&self, backend: usize, server: usize, up: bool) {
        self.live[backend][server].up.store(up, Relaxed);
        self.metrics.servers[backend][server].up.set(i64::from(up));
        let (b, s) = (
            &self.config.backends[backend],
            &self.config.backends[backend].servers[server],
        );
        if up {
            log::info!("health: {}/{} ({}) is up", b.name, s.name, s.addr);
        } else {
            log::warn!("health: {}/{} ({}) is down", b.name, s.name, s.addr);
        }
    }
}

/// Compile and render a draft into a snapshot; a bad value is a 400.
pub fn build_snapshot(config: &Config, draft: &Draft) -> Result<Snapshot, ApiError> {
    let mut sites = Vec::with_capacity(draft.sites.len());
    for (site, settings) in config.sites.iter().zip(&draft.sites) {
        let paths = compile_paths(&settings.paths)
            .map_err(|e| ApiError::new(400, format!("paths: invalid regex: {e}")))?;
        let page = MaintenancePage::render(
            &site.maintenance_page,
            &site.name,
            settings.retry_after,
            settings.message.as_deref(),
        );
        sites.push(SiteState {
            settings: settings.clone(),
            paths,
            page,
        });
    }
    let all_maint = draft
        .servers
        .iter()
        .map(|s| !s.is_empty() && s.iter().all(|a| a.state == AdminState::Maint))
        .collect();
    Ok(Snapshot {
        sites,
        servers: draft.servers.clone(),
        all_maint,
    })
}

fn to_file(config: &Config, draft: &Draft, secret: Option<&str>) -> StateFile {
    StateFile {
        version: 1,
        bypass_secret: secret.map(str::to_string),
        sites: config
            .sites
            .iter()
            .zip(&draft.sites)
            .map(|(s, m)| (s.name.clone(), m.clone()))
            .collect(),
        servers: config
            .backends
            .iter()
            .zip(&draft.servers)
            .map(|(b, admins)| {
                let servers = b
                    .servers
                    .iter()
                    .zip(admins)
                    .map(|(s, a)| (s.name.clone(), *a))
                    .collect();
                (b.name.clone(), servers)
            })
            .collect(),
    }
}

fn generate_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_state(path: &Path) -> Result<StateFile, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "state file {}: cannot parse ({e}); refusing to start rather than lose operators' decisions: \
                 fix or remove the file",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StateFile::default()),
        Err(e) => Err(format!("state file {}: cannot read: {e}", path.display())),
    }
}

/// Write atomically: a temp file in the same folder, fsync, rename, then
/// fsync the folder so the rename itself survives a crash.
fn write_state(path: &Path, state: &StateFile) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let body = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    // A temp file left by a crash keeps its old mode: set it explicitly.
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    f.write_all(&body)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(&dir)?.sync_all()
}
