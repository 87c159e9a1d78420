//! One check per runtime setting, shared by the config file, the admin API
//! and the state file, so that a value one of them accepts is accepted by
//! all three, with the same message.

use super::model::{AdminState, MaintenanceSettings, Server, ServerSpec};

/// `Retry-After` bounds, in seconds.
pub const MIN_RETRY_AFTER: u64 = 1;
pub const MAX_RETRY_AFTER: u64 = 7 * 24 * 3600;
/// Most regexes in a site's `paths`.
pub const MAX_PATHS: usize = 64;
/// Longest maintenance message, in characters.
pub const MAX_MESSAGE: usize = 2000;
/// Most entries in a site's allow list.
pub const MAX_ALLOW: usize = 4096;
/// Largest server weight.
pub const MAX_WEIGHT: u32 = 256;
/// Largest `max_conns` of a server.
pub const MAX_CONNS: u64 = 1_000_000;
/// Largest `queue.max` of a backend.
pub const MAX_QUEUE: u64 = 1_000_000;

/// Client deadlines (`header_timeout`, `keepalive_timeout`,
/// `client_body_timeout`): whole seconds are what Pingora's keep-alive
/// takes, so 1 s to an hour.
pub fn client_timeout(t: std::time::Duration) -> Result<(), String> {
    if t < std::time::Duration::from_secs(1) || t > std::time::Duration::from_secs(3600) {
        return Err("must be between 1s and 1h".into());
    }
    Ok(())
}

pub fn retry_after(secs: u64) -> Result<(), String> {
    if (MIN_RETRY_AFTER..=MAX_RETRY_AFTER).contains(&secs) {
        Ok(())
    } else {
        Err(format!(
            "must be between {MIN_RETRY_AFTER} and {MAX_RETRY_AFTER} seconds"
        ))
    }
}

/// One `paths` regex; the message is the compiler's, on one line.
pub fn path(regex: &str) -> Result<(), String> {
    regex::Regex::new(regex).map(|_| ()).map_err(|e| {
        let detail = e
            .to_string()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        format!("invalid regex {regex:?}: {detail}")
    })
}

pub fn path_count(n: usize) -> Result<(), String> {
    if n > MAX_PATHS {
        return Err(format!("at most {MAX_PATHS} paths"));
    }
    Ok(())
}

pub fn message(text: &str) -> Result<(), String> {
    if text.chars().count() > MAX_MESSAGE {
        return Err(format!("longer than {MAX_MESSAGE} characters"));
    }
    Ok(())
}

pub fn allow_count(n: usize) -> Result<(), String> {
    if n > MAX_ALLOW {
        return Err(format!("at most {MAX_ALLOW} entries"));
    }
    Ok(())
}

/// A weight as given (a JSON or YAML integer).
pub fn weight(w: i64) -> Result<u32, String> {
    u32::try_from(w)
        .ok()
        .filter(|w| *w <= MAX_WEIGHT)
        .ok_or_else(|| format!("must be between 0 and {MAX_WEIGHT}"))
}

/// A name of a site, backend, server or listener (`what`).
pub fn name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} name must not be empty"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "{what} name {name:?} may only use letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// Longest name of a server added at runtime.
pub const MAX_ADDED_NAME: usize = 128;

/// An upstream address: `ip:port`, or `host:port` when `host_names` (the
/// config file's servers, resolved when the proxy starts; a server added
/// at runtime names an address).
pub fn upstream_addr(s: &str, host_names: bool) -> Result<(), String> {
    if s.parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.port() > 0)
    {
        return Ok(());
    }
    let ok = host_names
        && match s.rsplit_once(':') {
            Some((host, port)) => {
                port.parse::<u16>().is_ok_and(|p| p > 0)
                    && !host.is_empty()
                    && host.len() <= 253
                    && host.split('.').all(|l| {
                        !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    })
            }
            None => false,
        };
    if ok {
        Ok(())
    } else if host_names {
        Err(format!("invalid socket address {s:?}"))
    } else {
        Err(format!("invalid socket address {s:?}, expected ip:port"))
    }
}

/// A duration as the config file and the API write it (`500ms`, `2s`,
/// `10m`), greater than zero.
pub fn duration(s: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(s.trim()) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be greater than zero".into()),
        Err(e) => Err(format!(
            "invalid duration {s:?} ({e}); use e.g. 500ms, 2s, 10m"
        )),
    }
}

/// A server added at runtime (through the API, or kept in the state file)
/// to backend `backend`: its name, address, `max_conns` and `slowstart`
/// checked as the config file's, its sticky id derived from the names as
/// for a server of the config file. A `max_conns` needs a backend with a
/// queue (`limited`: one of its config servers has a `max_conns`).
pub fn added_server(backend: &str, spec: &ServerSpec, limited: bool) -> Result<Server, String> {
    name("server", &spec.name)?;
    if spec.name.len() > MAX_ADDED_NAME {
        return Err(format!(
            "server name: at most {MAX_ADDED_NAME} characters, not {}",
            spec.name.len()
        ));
    }
    upstream_addr(&spec.addr, false).map_err(|e| format!("addr: {e}"))?;
    let max_conns = max_conns(spec.max_conns).map_err(|e| format!("max_conns: {e}"))?;
    if max_conns > 0 && !limited {
        return Err(format!(
            "max_conns: backend {backend:?} has no queue: give a server of it a max_conns in the config file first"
        ));
    }
    let slowstart = match &spec.slowstart {
        None => std::time::Duration::ZERO,
        Some(s) => {
            let d = duration(s).map_err(|e| format!("slowstart: {e}"))?;
            slowstart(d).map_err(|e| format!("slowstart: {e}"))?;
            d
        }
    };
    Ok(Server {
        name: spec.name.clone(),
        addr: spec.addr.clone(),
        weight: 1,
        backup: spec.backup,
        state: AdminState::Ready,
        id: super::server_id(backend, &spec.name),
        max_conns,
        slowstart,
    })
}

pub fn admin_state(s: &str) -> Result<AdminState, String> {
    AdminState::parse(s)
        .ok_or_else(|| format!("unknown state {s:?}, expected ready, drain or maint"))
}

/// Every field of a site's maintenance settings; the message names the
/// field (`retry_after: must be ...`).
pub fn maintenance(m: &MaintenanceSettings) -> Result<(), String> {
    retry_after(m.retry_after).map_err(|e| format!("retry_after: {e}"))?;
    path_count(m.paths.len()).map_err(|e| format!("paths: {e}"))?;
    for p in &m.paths {
        path(p).map_err(|e| format!("paths: {e}"))?;
    }
    if let Some(text) = &m.message {
        message(text).map_err(|e| format!("message: {e}"))?;
    }
    allow_count(m.allow.len()).map_err(|e| format!("allow: {e}"))?;
    window(m.enabled, m.from, m.until)
}

/// A scheduled window: only on a switched-on maintenance, and `until`
/// after `from`. (That `until` is still to come is checked where a window
/// is set: a window that ended while drawbridge was stopped is simply
/// over.)
pub fn window(enabled: bool, from: Option<u64>, until: Option<u64>) -> Result<(), String> {
    if !enabled && (from.is_some() || until.is_some()) {
        return Err("from/until: a window needs enabled: true".into());
    }
    match (from, until) {
        (Some(f), Some(u)) if u <= f => Err(format!(
            "until: {} is not after from {}",
            super::time::format_rfc3339(u),
            super::time::format_rfc3339(f)
        )),
        _ => Ok(()),
    }
}

/// A server's `max_conns` (0: no limit).
pub fn max_conns(n: u64) -> Result<u64, String> {
    if n > MAX_CONNS {
        return Err(format!("must be between 0 and {MAX_CONNS}"));
    }
    Ok(n)
}

/// A server's `slowstart`: at most an hour.
pub fn slowstart(d: std::time::Duration) -> Result<(), String> {
    if d > std::time::Duration::from_secs(3600) {
        return Err("must be at most 1h".into());
    }
    Ok(())
}

/// A backend's `queue.max` (0: no waiting).
pub fn queue_max(n: u64) -> Result<usize, String> {
    usize::try_from(n)
        .ok()
        .filter(|_| n <= MAX_QUEUE)
        .ok_or_else(|| format!("must be between 0 and {MAX_QUEUE}"))
}

/// A backend's `queue.timeout`: 1ms to 1h.
pub fn queue_timeout(d: std::time::Duration) -> Result<(), String> {
    if d < std::time::Duration::from_millis(1) || d > std::time::Duration::from_secs(3600) {
        return Err("must be between 1ms and 1h".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> MaintenanceSettings {
        MaintenanceSettings {
            enabled: true,
            retry_after: 600,
            paths: vec!["^/checkout".into()],
            message: Some("Back at 14:00".into()),
            allow: Vec::new(),
            from: None,
            until: None,
        }
    }

    #[test]
    fn maintenance_bounds() {
        assert_eq!(maintenance(&settings()), Ok(()));
        for (edit, field) in [
            (
                (|m: &mut MaintenanceSettings| m.retry_after = 0) as fn(&mut _),
                "retry_after",
            ),
            (|m| m.retry_after = MAX_RETRY_AFTER + 1, "retry_after"),
            (|m| m.paths = vec!["(".into()], "paths"),
            (|m| m.paths = vec!["a".into(); MAX_PATHS + 1], "paths"),
            (|m| m.message = Some("x".repeat(MAX_MESSAGE + 1)), "message"),
            (
                |m| {
                    m.from = Some(100);
                    m.until = Some(100)
                },
                "until",
            ),
            (
                |m| {
                    m.enabled = false;
                    m.until = Some(100)
                },
                "from/until",
            ),
        ] {
            let mut m = settings();
            edit(&mut m);
            let err = maintenance(&m).err().unwrap_or_default();
            assert!(err.starts_with(field), "{field}: {err:?}");
        }
        let mut edge = settings();
        edge.retry_after = MAX_RETRY_AFTER;
        edge.paths = vec!["a".into(); MAX_PATHS];
        edge.message = Some("é".repeat(MAX_MESSAGE));
        edge.from = Some(100);
        edge.until = Some(101);
        assert_eq!(maintenance(&edge), Ok(()));
    }

    #[test]
    fn weights_and_states() {
        assert_eq!(weight(0), Ok(0));
        assert_eq!(weight(256), Ok(256));
        assert!(weight(257).is_err());
        assert!(weight(-1).is_err());
        assert_eq!(admin_state("drain"), Ok(AdminState::Drain));
        assert_eq!(
            admin_state("up"),
            Err("unknown state \"up\", expected ready, drain or maint".into())
        );
    }

    #[test]
    fn traffic_bounds() {
        use std::time::Duration;
        assert_eq!(max_conns(0), Ok(0));
        assert_eq!(max_conns(MAX_CONNS), Ok(MAX_CONNS));
        assert!(max_conns(MAX_CONNS + 1).is_err());
        assert!(slowstart(Duration::from_secs(3600)).is_ok());
        assert!(slowstart(Duration::from_secs(3601)).is_err());
        assert_eq!(queue_max(0), Ok(0));
        assert!(queue_max(MAX_QUEUE + 1).is_err());
        assert!(queue_timeout(Duration::from_millis(1)).is_ok());
        assert!(queue_timeout(Duration::ZERO).is_err());
        assert!(queue_timeout(Duration::from_secs(3601)).is_err());
    }

    /// An added server's traffic controls are checked as the config
    /// file's, and a `max_conns` needs a backend with a queue.
    #[test]
    fn added_server_traffic_controls() {
        use std::time::Duration;
        let spec = |max_conns, slowstart: Option<&str>| ServerSpec {
            name: "app-03".into(),
            addr: "127.0.0.1:8080".into(),
            backup: false,
            max_conns,
            slowstart: slowstart.map(str::to_string),
        };
        let s = added_server("app", &spec(5, Some("30s")), true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((s.max_conns, s.slowstart), (5, Duration::from_secs(30)));
        let s = added_server("app", &spec(0, None), false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((s.max_conns, s.slowstart), (0, Duration::ZERO));
        let err = |m, ss, limited| added_server("app", &spec(m, ss), limited).err();
        assert!(err(5, None, false).is_some_and(|e| e.contains("has no queue")));
        assert!(err(MAX_CONNS + 1, None, true).is_some_and(|e| e.starts_with("max_conns:")));
        assert!(err(0, Some("2h"), true).is_some_and(|e| e == "slowstart: must be at most 1h"));
        assert!(err(0, Some("0s"), true).is_some_and(|e| e.contains("greater than zero")));
        assert!(err(0, Some("soon"), true).is_some_and(|e| e.contains("invalid duration")));
    }
}
