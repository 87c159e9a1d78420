//! Servers added to and deleted from a backend at runtime (CONTRACT
//! section 11): the change goes through `Runtime::update` like any other,
//! so it is checked, kept in the state file and only then in force.

use super::api::{find, server_json, unknown_server};
use super::{ApiError, ApiResult};
use crate::config::{check, AdminState, ServerSpec};
use crate::state::{DraftServer, Runtime, ServerAdmin};
use serde::Deserialize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// `POST /api/v1/backends/{b}/servers`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddBody {
    name: String,
    addr: String,
    weight: Option<i64>,
    /// `ready`, `drain` or `maint` (the default: it takes traffic once
    /// the operator says so).
    state: Option<String>,
    #[serde(default)]
    backup: bool,
    /// Most requests in flight (0: no limit); needs a backend with a
    /// queue.
    #[serde(default)]
    max_conns: u64,
    /// A duration (`30s`): its weight grows from 0 over it once usable.
    slowstart: Option<String>,
}

/// Add a server to backend `b`: 201 with the server, 409 if the name is
/// taken.
pub fn add(rt: &Runtime, b: usize, body: AddBody) -> ApiResult {
    let backend = &rt.config.backends[b].name;
    let weight = match body.weight {
        Some(w) => check::weight(w).map_err(|e| ApiError::bad(format!("weight {e}")))?,
        None => 1,
    };
    let state = match body.state.as_deref() {
        Some(s) => check::admin_state(s).map_err(ApiError::bad)?,
        None => AdminState::Maint,
    };
    let spec = ServerSpec {
        name: body.name,
        addr: body.addr,
        backup: body.backup,
        max_conns: body.max_conns,
        slowstart: body.slowstart,
    };
    let limited = rt.queues[b].is_some();
    let conf = check::added_server(backend, &spec, limited).map_err(ApiError::bad)?;
    rt.update(|d| {
        if d.find(b, &spec.name).is_some() {
            return Err(ApiError::new(
                409,
                format!("backend {backend:?} has a server {:?} already", spec.name),
            ));
        }
        d.servers[b].push(DraftServer {
            conf: Arc::new(conf),
            admin: ServerAdmin { state, weight },
            added: true,
        });
        Ok(())
    })?;
    log::warn!(
        "admin: server {backend}/{} ({}) added, state {}, weight {weight}",
        spec.name,
        spec.addr,
        state.as_str()
    );
    let snap = rt.snapshot();
    Ok((
        201,
        server_json(rt, &snap, b, find(rt, &snap, b, &spec.name)?),
    ))
}

/// Delete server `name` of backend `b`: 409 unless it is in `maint` with
/// nothing in flight, or `force`. Its sticky cookie is unknown from then
/// on: its clients are balanced and pinned again.
pub fn delete(rt: &Runtime, b: usize, name: &str, force: bool) -> ApiResult {
    let backend = &rt.config.backends[b].name;
    let gone = rt.update(|d| {
        let s = d.find(b, name).ok_or_else(|| unknown_server(rt, b, name))?;
        // The writer's lock is held: this snapshot is the one being
        // edited, in the draft's order.
        let snap = rt.snapshot();
        let m = &snap.servers[b][s];
        let (state, inflight) = (m.state, m.server.inflight.load(Relaxed));
        if !force && (state != AdminState::Maint || inflight > 0) {
            return Err(ApiError::new(
                409,
                format!(
                    "server {backend}/{name} is {} with {inflight} in flight: \
                     set it to maint and wait until nothing is in flight, or force",
                    state.as_str()
                ),
            ));
        }
        let json = server_json(rt, &snap, b, s);
        d.servers[b].remove(s);
        Ok::<_, ApiError>(json)
    })?;
    log::warn!(
        "admin: server {backend}/{name} deleted{}",
        if force { " (forced)" } else { "" }
    );
    Ok((200, serde_json::json!({ "deleted": gone })))
}
