//! The snapshot: what operators decided (sites' maintenance settings,
//! each backend's servers with their admin state and weight), checked,
//! compiled and rendered, replaced whole on each change; and the draft an
//! admin change edits.

use super::{Server, StateError};
use crate::config::{self, check, compile_paths, AdminState, Config, MaintenanceSettings};
use crate::policy::pages::MaintenancePage;
use crate::policy::select::{up_bit, Candidate, ReadyTier};
use regex::RegexSet;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

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

/// A server of a backend as a snapshot has it: its admin state and
/// weight, and the server.
#[derive(Debug, Clone)]
pub struct Member {
    pub state: AdminState,
    pub weight: u32,
    pub server: Arc<Server>,
}

impl Member {
    pub fn admin(&self) -> ServerAdmin {
        ServerAdmin {
            state: self.state,
            weight: self.weight,
        }
    }
}

/// Everything an admin change can touch, replaced whole on each change.
#[derive(Debug)]
pub struct Snapshot {
    pub sites: Vec<SiteState>,
    /// Per backend: its servers, in order (the config's, then those added
    /// at runtime). A request keeps the snapshot it loaded, so positions
    /// are stable for it; anything that outlives a request knows a server
    /// by its `Arc` or [`Server::key`].
    pub servers: Vec<Vec<Member>>,
    /// Per backend: every server is in `maint`, which puts its sites in
    /// maintenance.
    pub all_maint: Vec<bool>,
    /// Per backend: its ready tier, for balancing while it is all up.
    pub ready: Vec<Option<ReadyTier>>,
    /// Per backend: the up bits ([`up_bit`]) of its first 64 servers, as
    /// their `up` flags have them, read in one load when balancing; kept
    /// by [`Runtime::set_health`].
    pub up_mask: Vec<AtomicU64>,
    /// Per backend: a server of it has a `slowstart` (the config's or one
    /// added at runtime), so shares are computed when balancing.
    pub slow: Vec<bool>,
}

impl Snapshot {
    /// The position of server `name` of backend `b`.
    pub fn find(&self, b: usize, name: &str) -> Option<usize> {
        self.servers[b].iter().position(|m| m.server.name() == name)
    }

    /// The position of the server keyed `key` in backend `b`.
    pub fn position(&self, b: usize, key: u64) -> Option<usize> {
        self.servers[b].iter().position(|m| m.server.key == key)
    }
}

/// A server in a draft: what it is and its admin state.
#[derive(Debug, Clone, PartialEq)]
pub struct DraftServer {
    pub conf: Arc<config::Server>,
    pub admin: ServerAdmin,
    /// Added at runtime (kept in the state file), not from the config.
    pub added: bool,
}

/// The editable part of a snapshot, handed to admin changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    pub sites: Vec<MaintenanceSettings>,
    pub servers: Vec<Vec<DraftServer>>,
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
                        .map(|s| DraftServer {
                            admin: ServerAdmin {
                                state: s.state,
                                weight: s.weight,
                            },
                            conf: Arc::new(s.clone()),
                            added: false,
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
            servers: snap
                .servers
                .iter()
                .map(|b| {
                    b.iter()
                        .map(|m| DraftServer {
                            conf: m.server.conf.clone(),
                            admin: m.admin(),
                            added: m.server.added,
                        })
                        .collect()
                })
                .collect(),
        }
    }

    /// The position of server `name` of backend `b`.
    pub fn find(&self, b: usize, name: &str) -> Option<usize> {
        self.servers[b].iter().position(|s| s.conf.name == name)
    }
}

/// Whether a backend's servers put its sites in maintenance: it has some
/// and every one is in `maint`.
pub fn all_maint(states: impl ExactSizeIterator<Item = AdminState>) -> bool {
    let mut states = states;
    states.len() > 0 && states.all(|s| s == AdminState::Maint)
}

/// Check a draft and compile and render its sites: the same checks
/// whether the draft comes from the API or the state file.
pub fn check_draft(config: &Config, draft: &Draft) -> Result<Vec<SiteState>, StateError> {
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
    for (b, servers) in config.backends.iter().zip(&draft.servers) {
        if servers.is_empty() {
            return Err(StateError::Invalid(format!(
                "backend {}: a backend needs at least one server",
                b.name
            )));
        }
        for (i, s) in servers.iter().enumerate() {
            check::weight(i64::from(s.admin.weight)).map_err(|e| {
                StateError::Invalid(format!("{}/{}: weight {e}", b.name, s.conf.name))
            })?;
            if servers[..i].iter().any(|o| o.conf.name == s.conf.name) {
                return Err(StateError::Invalid(format!(
                    "{}/{}: duplicate server name",
                    b.name, s.conf.name
                )));
            }
        }
    }
    Ok(sites)
}

/// The snapshot of a checked draft, its servers being `servers`.
pub(super) fn assemble(
    sites: Vec<SiteState>,
    draft: &Draft,
    servers: Vec<Vec<Arc<Server>>>,
) -> Snapshot {
    let servers: Vec<Vec<Member>> = draft
        .servers
        .iter()
        .zip(servers)
        .map(|(list, made)| {
            list.iter()
                .zip(made)
                .map(|(ds, server)| Member {
                    state: ds.admin.state,
                    weight: ds.admin.weight,
                    server,
                })
                .collect()
        })
        .collect();
    let all_maint = servers
        .iter()
        .map(|b| all_maint(b.iter().map(|m| m.state)))
        .collect();
    let ready = servers
        .iter()
        .map(|b| {
            let cands: Vec<Candidate> = b
                .iter()
                .map(|m| Candidate::new(m.state, m.weight, m.server.conf.backup, true, 0))
                .collect();
            ReadyTier::new(&cands)
        })
        .collect();
    let slow = servers
        .iter()
        .map(|b| b.iter().any(|m| !m.server.conf.slowstart.is_zero()))
        .collect();
    let up_mask = servers
        .iter()
        .map(|b| {
            let up = b
                .iter()
                .enumerate()
                .filter(|(_, m)| m.server.up.load(Relaxed));
            AtomicU64::new(up.filter_map(|(i, _)| up_bit(i)).fold(0, |m, b| m | b))
        })
        .collect();
    Snapshot {
        sites,
        servers,
        all_maint,
        ready,
        up_mask,
        slow,
    }
}
