//! The admin endpoints: each parses its body, applies one change through
//! `Runtime::update`, and answers the resource as JSON.

use super::{ApiError, ApiResult};
use crate::config::{check, parse_cidr, AdminState};
use crate::policy::bypass;
use crate::state::{now_ms, Runtime, Snapshot};
use http::Method;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, UNIX_EPOCH};

const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const MAX_WAIT_SECS: u64 = 24 * 3600;

pub async fn route(
    rt: &Runtime,
    method: &Method,
    path: &str,
    query: &str,
    body: &[u8],
) -> ApiResult {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let m = method.clone();
    match parts.as_slice() {
        ["api", "v1", "status"] => only(&m, &[Method::GET]).map(|_| (200, status(rt))),
        ["api", "v1", "certificates"] => {
            only(&m, &[Method::GET])?;
            Ok((200, json!({ "certificates": rt.certificates() })))
        }
        ["api", "v1", "certificates", "reload"] => {
            only(&m, &[Method::POST])?;
            rt.reload_certificates()?;
            Ok((200, json!({ "certificates": rt.certificates() })))
        }
        ["api", "v1", "maintenance"] => {
            only(&m, &[Method::PUT])?;
            maintenance_all(rt, parse(body)?)
        }
        ["api", "v1", "sites", site] => {
            only(&m, &[Method::GET])?;
            let i = site_index(rt, site)?;
            Ok((200, site_json(rt, &rt.snapshot(), i)))
        }
        ["api", "v1", "sites", site, "maintenance"] => {
            only(&m, &[Method::PUT])?;
            let i = site_index(rt, site)?;
            maintenance(rt, i, parse(body)?)
        }
        ["api", "v1", "sites", site, "allow"] => {
            only(&m, &[Method::POST, Method::DELETE])?;
            let i = site_index(rt, site)?;
            allow(rt, i, m == Method::POST, parse(body)?)
        }
        ["api", "v1", "sites", site, "bypass-tokens"] => {
            only(&m, &[Method::POST])?;
            let i = site_index(rt, site)?;
            bypass_token(
                rt,
                i,
                if body.is_empty() {
                    TokenBody::default()
                } else {
                    parse(body)?
                },
            )
        }
        ["api", "v1", "backends", b, "servers"] => {
            only(&m, &[Method::POST])?;
            let b = backend_index(rt, b)?;
            super::servers::add(rt, b, parse(body)?)
        }
        ["api", "v1", "backends", b, "servers", s] => {
            only(&m, &[Method::GET, Method::DELETE])?;
            let b = backend_index(rt, b)?;
            if m == Method::DELETE {
                let force = query_flag(query, "force")?;
                return super::servers::delete(rt, b, s, force);
            }
            let snap = rt.snapshot();
            Ok((200, server_json(rt, &snap, b, find(rt, &snap, b, s)?)))
        }
        ["api", "v1", "backends", b, "servers", s, "state"] => {
            only(&m, &[Method::PUT])?;
            let b = backend_index(rt, b)?;
            set_state(rt, b, s, parse(body)?)
        }
        ["api", "v1", "backends", b, "servers", s, "weight"] => {
            only(&m, &[Method::PUT])?;
            let b = backend_index(rt, b)?;
            set_weight(rt, b, s, parse(body)?)
        }
        ["api", "v1", "backends", b, "servers", s, "drained"] => {
            only(&m, &[Method::GET])?;
            let b = backend_index(rt, b)?;
            find(rt, &rt.snapshot(), b, s)?;
            drained(rt, b, s, query).await
        }
        _ => Err(ApiError::not_found(format!("no such endpoint {path}"))),
    }
}

fn only(m: &Method, allowed: &[Method]) -> Result<(), ApiError> {
    if allowed.contains(m) {
        Ok(())
    } else {
        let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
        Err(ApiError::new(
            405,
            format!("method {m} not allowed here, use {}", names.join(" or ")),
        ))
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad("a JSON body is required"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
}

fn site_index(rt: &Runtime, name: &str) -> Result<usize, ApiError> {
    rt.config
        .site_index(name)
        .ok_or_else(|| ApiError::not_found(format!("unknown site {name:?}")))
}

fn backend_index(rt: &Runtime, backend: &str) -> Result<usize, ApiError> {
    rt.config
        .backend_index(backend)
        .ok_or_else(|| ApiError::not_found(format!("unknown backend {backend:?}")))
}

/// The position of server `name` of backend `b` in `snap`.
pub(super) fn find(rt: &Runtime, snap: &Snapshot, b: usize, name: &str) -> Result<usize, ApiError> {
    snap.find(b, name)
        .ok_or_else(|| unknown_server(rt, b, name))
}

pub(super) fn unknown_server(rt: &Runtime, b: usize, name: &str) -> ApiError {
    let backend = &rt.config.backends[b].name;
    ApiError::not_found(format!("unknown server {name:?} in backend {backend:?}"))
}

/// Change server `name` of backend `b` in a draft.
fn edit_server(
    rt: &Runtime,
    b: usize,
    name: &str,
    edit: impl FnOnce(&mut crate::state::DraftServer),
) -> Result<(), ApiError> {
    rt.update(|d| {
        let s = d.find(b, name).ok_or_else(|| unknown_server(rt, b, name))?;
        edit(&mut d.servers[b][s]);
        Ok::<_, ApiError>(())
    })
}

fn rfc3339_ms(ms: u64) -> Value {
    if ms == 0 {
        Value::Null
    } else {
        let t = UNIX_EPOCH + Duration::from_millis(ms);
        Value::String(humantime::format_rfc3339_seconds(t).to_string())
    }
}

fn site_json(rt: &Runtime, snap: &Snapshot, i: usize) -> Value {
    let site = &rt.config.sites[i];
    let st = &snap.sites[i];
    let m = &st.settings;
    let switched_on = crate::policy::gate::switched_on(m.enabled, m.from, m.until, now_ms);
    json!({
        "name": site.name,
        "hosts": site.hosts,
        "backend": rt.config.backends[site.backend].name,
        "maintenance": {
            "enabled": st.settings.enabled,
            "retry_after": st.settings.retry_after,
            "paths": st.settings.paths,
            "message": st.settings.message,
            "from": st.settings.from.map(crate::config::time::format_rfc3339),
            "until": st.settings.until.map(crate::config::time::format_rfc3339),
        },
        "allow": st.settings.allow.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "in_maintenance": switched_on || snap.all_maint[site.backend],
    })
}

pub(super) fn server_json(rt: &Runtime, snap: &Snapshot, b: usize, s: usize) -> Value {
    let m = &snap.servers[b][s];
    let (live, admin) = (&m.server, m);
    let conf = &live.conf;
    json!({
        "backend": rt.config.backends[b].name,
        "name": conf.name,
        "addr": conf.addr,
        "state": admin.state.as_str(),
        "health": if live.up.load(Relaxed) { "up" } else { "down" },
        "weight": admin.weight,
        "effective_weight": crate::policy::slowstart::effective_weight(
            admin.weight,
            live.share(crate::state::now_ms()),
        ),
        "max_conns": conf.max_conns,
        "slowstart": (!conf.slowstart.is_zero())
            .then(|| humantime::format_duration(conf.slowstart).to_string()),
        "backup": conf.backup,
        "inflight": live.inflight.load(Relaxed),
        "sticky_last_seen": rfc3339_ms(live.last_sticky_ms.load(Relaxed)),
        "clients": live.sticky_clients.estimate(now_ms(), DEFAULT_IDLE),
        "requests_total": live.requests_total.load(Relaxed),
        "added": live.added,
    })
}

pub fn status(rt: &Runtime) -> Value {
    let snap = rt.snapshot();
    let sites: Vec<Value> = (0..rt.config.sites.len())
        .map(|i| site_json(rt, &snap, i))
        .collect();
    let backends: Vec<Value> = rt
        .config
        .backends
        .iter()
        .enumerate()
        .map(|(b, backend)| {
            let queue = rt.queues[b].as_ref().map(|q| {
                json!({
                    "length": q.len(),
                    "max": q.settings.max,
                    "timeout": humantime::format_duration(q.settings.timeout).to_string(),
                    "timeouts_total": q.timeouts.load(Relaxed),
                })
            });
            json!({
                "name": backend.name,
                "queue": queue,
                "servers": (0..snap.servers[b].len()).map(|s| server_json(rt, &snap, b, s)).collect::<Vec<_>>(),
            })
        })
        .collect();
    let limiter = &rt.limiter;
    let l = &limiter.limits;
    let limits = json!({
        "max_connections": limiter.max_connections,
        "max_connections_per_client": l.max_connections_per_client,
        "header_timeout": humantime::format_duration(l.header_timeout).to_string(),
        "keepalive_timeout": humantime::format_duration(l.keepalive_timeout).to_string(),
        "client_body_timeout": humantime::format_duration(l.client_body_timeout).to_string(),
        "open_files": limiter.nofile,
        "connections": limiter.open(),
    });
    json!({"sites": sites, "backends": backends, "limits": limits})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintenanceBody {
    enabled: bool,
    retry_after: Option<u64>,
    paths: Option<Vec<String>>,
    /// Absent: unchanged; `null` or `""`: cleared.
    #[serde(default, deserialize_with = "present")]
    message: Option<Option<String>>,
    /// A scheduled window, RFC 3339. Absent: unchanged; `null` or `""`:
    /// cleared. Switching maintenance off clears both.
    #[serde(default, deserialize_with = "present")]
    from: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    until: Option<Option<String>>,
}

/// A window's bound as given: absent (unchanged), cleared, or a time.
fn window_bound(
    field: &str,
    given: &Option<Option<String>>,
) -> Result<Option<Option<u64>>, ApiError> {
    match given {
        None => Ok(None),
        Some(None) => Ok(Some(None)),
        Some(Some(t)) if t.is_empty() => Ok(Some(None)),
        Some(Some(t)) => crate::config::time::parse_rfc3339(t)
            .map(|secs| Some(Some(secs)))
            .map_err(|e| ApiError::bad(format!("{field}: {e}"))),
    }
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

impl MaintenanceBody {
    /// The settings are checked when the change is applied
    /// ([`crate::config::check::maintenance`]).
    fn apply(&self, s: &mut crate::config::MaintenanceSettings) -> Result<(), ApiError> {
        let from = window_bound("from", &self.from)?;
        let until = window_bound("until", &self.until)?;
        if let Some(Some(u)) = until {
            if u <= now_ms() / 1000 {
                return Err(ApiError::bad(format!(
                    "until: {} is in the past",
                    crate::config::time::format_rfc3339(u)
                )));
            }
        }
        s.enabled = self.enabled;
        if let Some(f) = from {
            s.from = f;
        }
        if let Some(u) = until {
            s.until = u;
        }
        if !self.enabled {
            s.from = None;
            s.until = None;
        }
        if let Some(r) = self.retry_after {
            s.retry_after = r;
        }
        if let Some(p) = &self.paths {
            s.paths = p.clone();
        }
        if let Some(m) = &self.message {
            s.message = m.clone().filter(|m| !m.is_empty());
        }
        Ok(())
    }
}

fn log_maintenance(rt: &Runtime, i: usize, b: &MaintenanceBody) {
    log::warn!(
        "admin: site {} maintenance {}",
        rt.config.sites[i].name,
        match (b.enabled, &b.from, &b.until) {
            (false, ..) => "off".to_string(),
            (true, None, None) => "ON".to_string(),
            (true, from, until) => format!(
                "ON from {} until {}",
                from.clone().flatten().unwrap_or_else(|| "now".into()),
                until
                    .clone()
                    .flatten()
                    .unwrap_or_else(|| "switched off".into())
            ),
        }
    );
}

fn maintenance(rt: &Runtime, i: usize, body: MaintenanceBody) -> ApiResult {
    rt.update(|d| body.apply(&mut d.sites[i]))?;
    log_maintenance(rt, i, &body);
    Ok((200, site_json(rt, &rt.snapshot(), i)))
}

fn maintenance_all(rt: &Runtime, body: MaintenanceBody) -> ApiResult {
    rt.update(|d| d.sites.iter_mut().try_for_each(|s| body.apply(s)))?;
    let snap = rt.snapshot();
    for i in 0..rt.config.sites.len() {
        log_maintenance(rt, i, &body);
    }
    let sites: Vec<Value> = (0..rt.config.sites.len())
        .map(|i| site_json(rt, &snap, i))
        .collect();
    Ok((200, json!({ "sites": sites })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowBody {
    cidr: String,
}

fn allow(rt: &Runtime, i: usize, add: bool, body: AllowBody) -> ApiResult {
    let net = parse_cidr(&body.cidr)
        .ok_or_else(|| ApiError::bad(format!("invalid CIDR {:?}", body.cidr)))?;
    rt.update(|d| {
        let list = &mut d.sites[i].allow;
        if add {
            if !list.contains(&net) {
                list.push(net);
            }
            Ok(())
        } else {
            let before = list.len();
            list.retain(|n| *n != net);
            if list.len() == before {
                Err(ApiError::not_found(format!(
                    "{net} is not in the allow list"
                )))
            } else {
                Ok(())
            }
        }
    })?;
    log::warn!(
        "admin: site {} allow {} {net}",
        rt.config.sites[i].name,
        if add { "add" } else { "del" }
    );
    let allow: Vec<String> = rt.snapshot().sites[i]
        .settings
        .allow
        .iter()
        .map(|n| n.to_string())
        .collect();
    Ok((
        200,
        json!({ "site": rt.config.sites[i].name, "allow": allow }),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    ttl: Option<String>,
}

fn bypass_token(rt: &Runtime, i: usize, body: TokenBody) -> ApiResult {
    let ttl = match body.ttl.as_deref() {
        None => Duration::from_secs(8 * 3600),
        Some(t) => humantime::parse_duration(t)
            .map_err(|e| ApiError::bad(format!("invalid ttl {t:?}: {e}")))?,
    };
    if ttl < Duration::from_secs(60) || ttl > MAX_TTL {
        return Err(ApiError::bad("ttl must be between 1m and 30days"));
    }
    let site = &rt.config.sites[i];
    let expiry = now_ms() / 1000 + ttl.as_secs();
    let token = bypass::issue(&rt.keys[i], &site.name, expiry);
    log::warn!(
        "admin: site {} bypass token issued, valid for {}",
        site.name,
        humantime::format_duration(ttl)
    );
    let expires =
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(expiry)).to_string();
    Ok((
        200,
        json!({
            "site": site.name,
            "cookie": format!("{}={token}", site.bypass_cookie),
            "cookie_name": site.bypass_cookie,
            "token": token,
            "expires": expires,
        }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateBody {
    state: String,
}

fn set_state(rt: &Runtime, b: usize, name: &str, body: StateBody) -> ApiResult {
    let state = check::admin_state(&body.state).map_err(ApiError::bad)?;
    edit_server(rt, b, name, |s| s.admin.state = state)?;
    log::warn!(
        "admin: server {}/{name} state {}",
        rt.config.backends[b].name,
        state.as_str()
    );
    let snap = rt.snapshot();
    Ok((200, server_json(rt, &snap, b, find(rt, &snap, b, name)?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    weight: i64,
}

fn set_weight(rt: &Runtime, b: usize, name: &str, body: WeightBody) -> ApiResult {
    let weight = check::weight(body.weight).map_err(|e| ApiError::bad(format!("weight {e}")))?;
    edit_server(rt, b, name, |s| s.admin.weight = weight)?;
    log::warn!(
        "admin: server {}/{name} weight {weight}",
        rt.config.backends[b].name
    );
    let snap = rt.snapshot();
    Ok((200, server_json(rt, &snap, b, find(rt, &snap, b, name)?)))
}

/// The drain verdict's default `idle`, and the window of the `clients`
/// estimate in a server's status.
const DEFAULT_IDLE: u64 = 60;

/// A `key=true|false` in the query (absent: false).
fn query_flag(query: &str, key: &str) -> Result<bool, ApiError> {
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some((k, v)) if k == key => {
                return match v {
                    "true" | "1" => Ok(true),
                    "false" | "0" => Ok(false),
                    _ => Err(ApiError::bad(format!(
                        "{key}: expected true or false, not {v:?}"
                    ))),
                };
            }
            None if pair == key => return Ok(true),
            _ => {}
        }
    }
    Ok(false)
}

fn query_secs(query: &str, key: &str, default: u64) -> Result<u64, ApiError> {
    for pair in query.split('&') {
        if let Some((k, v)) = pair.split_once('=') {
            if k == key {
                let secs = v
                    .parse::<u64>()
                    .ok()
                    .or_else(|| humantime::parse_duration(v).ok().map(|d| d.as_secs()))
                    .ok_or_else(|| {
                        ApiError::bad(format!("{key}: invalid number of seconds {v:?}"))
                    })?;
                if secs > MAX_WAIT_SECS {
                    return Err(ApiError::bad(format!(
                        "{key} must be at most {MAX_WAIT_SECS} seconds"
                    )));
                }
                return Ok(secs);
            }
        }
    }
    Ok(default)
}

/// The drain verdict: in drain or maint, nothing in flight, and no request
/// routed here by its cookie for `idle`.
fn drain_status(rt: &Runtime, b: usize, name: &str, idle: u64) -> Result<(bool, Value), ApiError> {
    let snap = rt.snapshot();
    let s = find(rt, &snap, b, name)?;
    let server = &snap.servers[b][s].server;
    let inflight = server.inflight.load(Relaxed);
    let last = server.last_sticky_ms.load(Relaxed);
    let since = if last == 0 {
        None
    } else {
        Some(now_ms().saturating_sub(last) / 1000)
    };
    let drained = crate::policy::drain::drained(snap.servers[b][s].state, inflight, since, idle);
    let mut v = server_json(rt, &snap, b, s);
    v["drained"] = Value::Bool(drained);
    v["idle"] = json!(idle);
    v["seconds_since_sticky"] = json!(since);
    v["clients"] = json!(server.sticky_clients.estimate(now_ms(), idle));
    Ok((drained, v))
}

/// Whether server `name` of backend `b` is `ready` now.
fn is_ready(rt: &Runtime, b: usize, name: &str) -> Result<bool, ApiError> {
    let snap = rt.snapshot();
    let s = find(rt, &snap, b, name)?;
    Ok(snap.servers[b][s].state == AdminState::Ready)
}

async fn drained(rt: &Runtime, b: usize, name: &str, query: &str) -> ApiResult {
    let timeout = query_secs(query, "timeout", 600)?;
    let idle = query_secs(query, "idle", DEFAULT_IDLE)?;
    if is_ready(rt, b, name)? {
        return Err(ApiError::new(
            409,
            format!(
                "server {}/{name} is ready: set it to drain or maint first",
                rt.config.backends[b].name
            ),
        ));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    loop {
        let (done, v) = drain_status(rt, b, name, idle)?;
        if done {
            return Ok((200, v));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok((408, v));
        }
        if is_ready(rt, b, name)? {
            return Err(ApiError::new(
                409,
                "the server was set back to ready while waiting",
            ));
        }
        tokio::time::sleep(Duration::from_millis(200).min(deadline - tokio::time::Instant::now()))
            .await;
    }
}
