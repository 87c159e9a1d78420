//! Configuration: the file format (`file`), the checked model (`model`) and
//! the validation between them. `load` reads a YAML file and returns either
//! the model or every problem found, each naming the file and the key path.

pub mod cert;
pub mod check;
mod file;
pub mod model;
pub mod time;
mod traffic;

pub use model::*;

use file::*;
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde_yaml::Value;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Defaults of CONTRACT section 2.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9091";
pub const DEFAULT_STATE_FILE: &str = "var/drawbridge-state.json";
pub const DEFAULT_TOKEN_ENV: &str = "DRAWBRIDGE_ADMIN_TOKEN";
pub const DEFAULT_BYPASS_COOKIE: &str = "DRAWBRIDGE_BYPASS";
pub const DEFAULT_RETRY_AFTER: u64 = 600;
/// The pages served when a site names none of its own.
pub const DEFAULT_MAINTENANCE_PAGE: &str = include_str!("../../static/maintenance.html");
pub const DEFAULT_ERROR_PAGE: &str = include_str!("../../static/error.html");
const TOP_KEYS: [&str; 9] = [
    "server",
    "limits",
    "admin",
    "metrics",
    "state_file",
    "trusted_proxies",
    "listeners",
    "sites",
    "backends",
];

/// Read and validate a configuration file.
pub fn load(path: &Path) -> Result<Config, Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
    parse(&text, path)
}

/// Validate configuration text; `path` names the file in messages and is the
/// base for relative file references.
pub fn parse(text: &str, path: &Path) -> Result<Config, Vec<String>> {
    let mut v = Validator {
        file: path.display().to_string(),
        base: path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    let config = v.document(text, path);
    match config {
        Some(mut c) if v.problems.is_empty() => {
            c.warnings = v.warnings;
            Ok(c)
        }
        _ => Err(v.problems),
    }
}

struct Validator {
    file: String,
    base: PathBuf,
    problems: Vec<String>,
    warnings: Vec<String>,
}

impl Validator {
    fn problem(&mut self, key: &str, msg: impl std::fmt::Display) {
        self.problems.push(format!("{}: {key}: {msg}", self.file));
    }

    /// Deserialize one node, reporting each type or unknown-key error at its
    /// full key path. After an error the offending key is removed and the
    /// node tried again, so one typo does not hide the problems after it.
    fn node<T: DeserializeOwned>(&mut self, value: &Value, key: &str) -> Option<T> {
        let mut value = value.clone();
        let mut removed: Vec<String> = Vec::new();
        for _ in 0..32 {
            let err = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
                Ok(t) => return Some(t),
                Err(e) => e,
            };
            let segments: Vec<serde_path_to_error::Segment> = err.path().iter().cloned().collect();
            let inner = err.path().to_string();
            let msg = err.into_inner().to_string();
            let full = match inner.as_str() {
                "" | "." => key.to_string(),
                i if i.starts_with('[') => format!("{key}{i}"),
                i => format!("{key}.{i}"),
            };
            // A required key we removed ourselves was already reported.
            if !removed
                .iter()
                .any(|r| msg.contains(&format!("missing field `{r}`")))
            {
                self.problem(&full, msg);
            }
            match remove_at(&mut value, &segments) {
                Some(k) => removed.push(k),
                None => return None,
            }
        }
        None
    }

    /// Deserialize a list node element by element, so that one bad element
    /// does not hide problems in the others.
    fn list<T: DeserializeOwned>(&mut self, value: Option<&Value>, key: &str) -> Vec<Option<T>> {
        match value {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Sequence(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| self.node(item, &format!("{key}[{i}]")))
                .collect(),
            Some(_) => {
                self.problem(key, "expected a list");
                Vec::new()
            }
        }
    }

    fn document(&mut self, text: &str, path: &Path) -> Option<Config> {
        let root: Value = match serde_yaml::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                self.problems.push(format!("{}: {e}", self.file));
                return None;
            }
        };
        let map = match &root {
            Value::Mapping(m) => m.clone(),
            Value::Null => Default::default(),
            _ => {
                self.problems
                    .push(format!("{}: the document must be a mapping", self.file));
                return None;
            }
        };
        for k in map.keys() {
            let name = k.as_str().unwrap_or("?");
            if !TOP_KEYS.contains(&name) {
                self.problem(
                    name,
                    format!("unknown key, expected one of {}", TOP_KEYS.join(", ")),
                );
            }
        }
        let get = |k: &str| map.get(Value::String(k.to_string()));
        let server_file: ServerFile = match get("server") {
            Some(v) if !v.is_null() => self.node(v, "server").unwrap_or_default(),
            _ => ServerFile::default(),
        };
        let limits_file: LimitsFile = match get("limits") {
            Some(v) if !v.is_null() => self.node(v, "limits").unwrap_or_default(),
            _ => LimitsFile::default(),
        };
        let admin_file: AdminFile = match get("admin") {
            Some(v) if !v.is_null() => self.node(v, "admin").unwrap_or_default(),
            _ => AdminFile::default(),
        };
        let metrics_file: MetricsFile = match get("metrics") {
            Some(v) if !v.is_null() => self.node(v, "metrics").unwrap_or_default(),
            _ => MetricsFile::default(),
        };
        let state_file: Option<String> = match get("state_file") {
            Some(v) if !v.is_null() => self.node(v, "state_file"),
            _ => None,
        };
        let trusted: Vec<Option<String>> = self.list(get("trusted_proxies"), "trusted_proxies");
        let listeners: Vec<Option<ListenerFile>> = self.list(get("listeners"), "listeners");
        let sites: Vec<Option<SiteFile>> = self.list(get("sites"), "sites");
        let backends: Vec<Option<BackendFile>> = self.list(get("backends"), "backends");

        let server = self.server(server_file);
        let admin = self.admin(admin_file);
        let limits = self.limits(limits_file);
        let metrics_listen = metrics_file
            .listen
            .unwrap_or_else(|| DEFAULT_METRICS_LISTEN.to_string());
        self.socket_addr(&metrics_listen, "metrics.listen");
        let trusted_proxies = trusted
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                c.as_deref()
                    .and_then(|c| self.cidr(c, &format!("trusted_proxies[{i}]")))
            })
            .collect();
        let state_file = self.resolve(state_file.as_deref().unwrap_or(DEFAULT_STATE_FILE));

        let backends = self.backends(&backends);
        let backend_names: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
        let sites = self.sites(&sites, &backend_names);
        let listeners = self.listeners(&listeners, &backend_names);
        if listeners.is_empty() && self.problems.is_empty() {
            self.problem("listeners", "at least one listener is needed");
        }
        if listeners.iter().any(|l| l.protocol == Protocol::Http) && sites.is_empty() {
            self.problem("sites", "an http listener needs at least one site");
        }
        self.distinct_addresses(&admin.listen, &metrics_listen, &listeners);
        Some(Config {
            path: path.to_path_buf(),
            server,
            admin,
            metrics_listen,
            state_file,
            trusted_proxies,
            limits,
            listeners,
            warnings: Vec::new(),
            sites,
            backends,
        })
    }

    fn distinct_addresses(&mut self, admin: &str, metrics: &str, listeners: &[Listener]) {
        let mut seen: Vec<(&str, String)> = vec![
            (admin, "admin.listen".into()),
            (metrics, "metrics.listen".into()),
        ];
        if admin == metrics {
            self.problem("metrics.listen", format!("{metrics} is also admin.listen"));
        }
        for (i, l) in listeners.iter().enumerate() {
            let key = format!("listeners[{i}].listen");
            if let Some((_, other)) = seen.iter().find(|(a, _)| *a == l.listen) {
                let msg = format!("{} is also {other}", l.listen);
                self.problem(&key, msg);
            }
            seen.push((&l.listen, key));
        }
    }

    fn resolve(&self, file: &str) -> PathBuf {
        let p = Path::new(file);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn server(&mut self, f: ServerFile) -> ServerSettings {
        let threads = f.threads.unwrap_or(1);
        if threads == 0 || threads > 256 {
            self.problem("server.threads", "must be between 1 and 256");
        }
        ServerSettings {
            threads,
            grace_period_seconds: f.grace_period_seconds.unwrap_or(10),
            graceful_shutdown_timeout_seconds: f.graceful_shutdown_timeout_seconds.unwrap_or(5),
            upgrade_sock: f
                .upgrade_sock
                .unwrap_or_else(|| "/tmp/drawbridge_upgrade.sock".into()),
            pid_file: f.pid_file.unwrap_or_else(|| "/tmp/drawbridge.pid".into()),
        }
    }

    /// A TLS listener's settings, with every certificate loaded and
    /// checked ([`cert::load`]).
    fn tls(&mut self, f: &TlsFile, protocol: Protocol, key: &str) -> Option<TlsConfig> {
        if protocol != Protocol::Http {
            self.problem(key, "TLS is terminated on http listeners only");
            return None;
        }
        let min_version = match f.min_version.as_deref().unwrap_or("1.2") {
            "1.2" => TlsVersion::V1_2,
            "1.3" => TlsVersion::V1_3,
            other => {
                self.problem(
                    &format!("{key}.min_version"),
                    format!("unknown TLS version {other:?}, expected \"1.2\" or \"1.3\""),
                );
                TlsVersion::V1_2
            }
        };
        let now = cert::now_secs();
        let pairs = std::iter::once((&f.cert, &f.key, key.to_string())).chain(
            f.certs
                .iter()
                .enumerate()
                .map(|(i, c)| (&c.cert, &c.key, format!("{key}.certs[{i}]"))),
        );
        let mut certs = Vec::new();
        for (cert, k, ckey) in pairs {
            let paths = cert::CertPaths {
                cert: self.resolve(cert),
                key: self.resolve(k),
            };
            match cert::load(&paths, now) {
                Ok(loaded) => {
                    if let Some(w) = cert::expiry_warning(&loaded, now) {
                        self.warnings.push(format!("{}: {ckey}: {w}", self.file));
                    }
                    certs.push(paths);
                }
                Err(e) => self.problem(&ckey, e),
            }
        }
        Some(TlsConfig {
            certs,
            http2: f.http2.unwrap_or(true),
            min_version,
        })
    }

    fn limits(&mut self, f: LimitsFile) -> Limits {
        let d = Limits::default();
        let mut timeout = |value: Option<&str>, default: Duration, key: &str| {
            let t = self.duration(value, default, key);
            if let Err(e) = check::client_timeout(t) {
                self.problem(key, e);
            }
            t
        };
        let limits = Limits {
            max_connections: f.max_connections.unwrap_or(d.max_connections),
            max_connections_per_client: f
                .max_connections_per_client
                .unwrap_or(d.max_connections_per_client),
            header_timeout: timeout(
                f.header_timeout.as_deref(),
                d.header_timeout,
                "limits.header_timeout",
            ),
            keepalive_timeout: timeout(
                f.keepalive_timeout.as_deref(),
                d.keepalive_timeout,
                "limits.keepalive_timeout",
            ),
            client_body_timeout: timeout(
                f.client_body_timeout.as_deref(),
                d.client_body_timeout,
                "limits.client_body_timeout",
            ),
        };
        if limits.max_connections > 0 && limits.max_connections_per_client > limits.max_connections
        {
            self.problem(
                "limits.max_connections_per_client",
                "must not exceed limits.max_connections",
            );
        }
        limits
    }

    fn admin(&mut self, f: AdminFile) -> AdminSettings {
        let listen = f.listen.unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.to_string());
        let addr = self.socket_addr(&listen, "admin.listen");
        let token = match (&f.token_file, &f.token_env) {
            (Some(_), Some(_)) => {
                self.problem("admin.token_file", "set token_file or token_env, not both");
                None
            }
            (Some(file), None) => {
                let p = self.resolve(file);
                match std::fs::read_to_string(&p) {
                    Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
                    Ok(_) => {
                        self.problem("admin.token_file", format!("{} is empty", p.display()));
                        None
                    }
                    Err(e) => {
                        self.problem(
                            "admin.token_file",
                            format!("cannot read {}: {e}", p.display()),
                        );
                        None
                    }
                }
            }
            (None, env) => std::env::var(env.as_deref().unwrap_or(DEFAULT_TOKEN_ENV))
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
        };
        if let Some(a) = addr {
            if token.is_none() && !a.ip().is_loopback() {
                self.problem(
                    "admin.listen",
                    format!("{listen} is not a loopback address: it needs a token (token_env or token_file)"),
                );
            }
        }
        AdminSettings { listen, token }
    }

    fn socket_addr(&mut self, s: &str, key: &str) -> Option<SocketAddr> {
        match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(key, format!("invalid socket address {s:?}"));
                None
            }
        }
    }

    /// An upstream address: `ip:port`, or `host:port` resolved at start.
    fn upstream_addr(&mut self, s: &str, key: &str) {
        if let Err(e) = check::upstream_addr(s, true) {
            self.problem(key, e);
        }
    }

    fn cidr(&mut self, s: &str, key: &str) -> Option<IpNet> {
        match parse_cidr(s) {
            Some(n) => Some(n),
            None => {
                self.problem(key, format!("invalid CIDR {s:?}"));
                None
            }
        }
    }

    fn duration(&mut self, s: Option<&str>, default: Duration, key: &str) -> Duration {
        let Some(s) = s else { return default };
        check::duration(s).unwrap_or_else(|e| {
            self.problem(key, e);
            default
        })
    }

    fn page(&mut self, file: &str, key: &str) -> Option<String> {
        let p = self.resolve(file);
        match std::fs::read_to_string(&p) {
            Ok(t) => Some(t),
            Err(e) => {
                self.problem(key, format!("cannot read {}: {e}", p.display()));
                None
            }
        }
    }

    fn unique(&mut self, names: &mut HashSet<String>, name: &str, key: &str, what: &str) {
        if let Err(e) = check::name(what, name) {
            self.problem(key, e);
        } else if !names.insert(name.to_string()) {
            self.problem(key, format!("duplicate {what} name {name:?}"));
        }
    }

    fn backends(&mut self, files: &[Option<BackendFile>]) -> Vec<Backend> {
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let Some(f) = f else { continue };
            let key = format!("backends[{i}]");
            self.unique(&mut names, &f.name, &format!("{key}.name"), "backend");
            let balance = match f.balance.as_deref().unwrap_or("round_robin") {
                "round_robin" => Balance::RoundRobin,
                "random" => Balance::Random,
                "source_hash" => Balance::SourceHash,
                other => {
                    self.problem(
                        &format!("{key}.balance"),
                        format!("unknown balance {other:?}, expected round_robin, random or source_hash"),
                    );
                    Balance::RoundRobin
                }
            };
            let sticky = f
                .sticky
                .as_ref()
                .map(|s| self.sticky(s, &format!("{key}.sticky")));
            let health_check = f
                .health_check
                .as_ref()
                .map(|h| self.health(h, &format!("{key}.health_check")));
            let connect_timeout = self.duration(
                f.connect_timeout.as_deref(),
                Duration::from_secs(2),
                &format!("{key}.connect_timeout"),
            );
            let read_timeout = self.duration(
                f.read_timeout.as_deref(),
                Duration::from_secs(30),
                &format!("{key}.read_timeout"),
            );
            let retries = f.retries.unwrap_or(1);
            if retries > 16 {
                self.problem(&format!("{key}.retries"), "must be at most 16");
            }
            if f.servers.is_empty() {
                self.problem(
                    &format!("{key}.servers"),
                    "a backend needs at least one server",
                );
            }
            let (queue, on_marked_down) = self.backend_traffic(f, &key);
            let mut server_names = HashSet::new();
            let servers = f
                .servers
                .iter()
                .enumerate()
                .map(|(j, s)| {
                    let skey = format!("{key}.servers[{j}]");
                    self.unique(
                        &mut server_names,
                        &s.name,
                        &format!("{skey}.name"),
                        "server",
                    );
                    self.upstream_addr(&s.addr, &format!("{skey}.addr"));
                    let weight = check::weight(s.weight.unwrap_or(1).into()).unwrap_or_else(|e| {
                        self.problem(&format!("{skey}.weight"), e);
                        1
                    });
                    let state = match s.state.as_deref() {
                        None => AdminState::Ready,
                        Some(st) => check::admin_state(st).unwrap_or_else(|e| {
                            self.problem(&format!("{skey}.state"), e);
                            AdminState::Ready
                        }),
                    };
                    let (max_conns, slowstart) = self.server_traffic(s, &skey);
                    Server {
                        max_conns,
                        slowstart,
                        id: server_id(&f.name, &s.name),
                        name: s.name.clone(),
                        addr: s.addr.clone(),
                        weight,
                        backup: s.backup,
                        state,
                    }
                })
                .collect();
            out.push(Backend {
                name: f.name.clone(),
                balance,
                sticky,
                health_check,
                connect_timeout,
                read_timeout,
                retries,
                queue,
                on_marked_down,
                servers,
            });
        }
        out
    }

    fn sticky(&mut self, s: &StickyFile, key: &str) -> Sticky {
        if !is_cookie_name(&s.cookie) {
            self.problem(
                &format!("{key}.cookie"),
                format!("invalid cookie name {:?}", s.cookie),
            );
        }
        let same_site = match s.same_site.as_deref() {
            None => Some("Lax".to_string()),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "lax" => Some("Lax".into()),
                "strict" => Some("Strict".into()),
                "none" => {
                    if !matches!(s.secure, Some(SecureFile::Bool(true))) {
                        self.problem(
                            &format!("{key}.same_site"),
                            "None needs secure: true (browsers reject it otherwise)",
                        );
                    }
                    Some("None".into())
                }
                _ => {
                    self.problem(
                        &format!("{key}.same_site"),
                        format!("unknown value {v:?}, expected Lax, Strict or None"),
                    );
                    None
                }
            },
        };
        Sticky {
            cookie: s.cookie.clone(),
            http_only: s.http_only.unwrap_or(true),
            secure: match &s.secure {
                None => Secure::Auto,
                Some(SecureFile::Bool(true)) => Secure::Always,
                Some(SecureFile::Bool(false)) => Secure::Never,
                Some(SecureFile::Word(w)) if w == "auto" => Secure::Auto,
                Some(SecureFile::Word(w)) => {
                    self.problem(
                        &format!("{key}.secure"),
                        format!("unknown value {w:?}, expected true, false or auto"),
                    );
                    Secure::Auto
                }
            },
            same_site,
            max_age: s.max_age,
        }
    }

    fn health(&mut self, h: &HealthCheckFile, key: &str) -> HealthCheck {
        let kind = match h.kind.as_deref().unwrap_or("http") {
            "http" => HealthKind::Http,
            "tcp" => HealthKind::Tcp,
            other => {
                self.problem(
                    &format!("{key}.kind"),
                    format!("unknown kind {other:?}, expected http or tcp"),
                );
                HealthKind::Http
            }
        };
        let path = h.path.clone().unwrap_or_else(|| "/healthz".into());
        if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.problem(&format!("{key}.path"), format!("invalid path {path:?}"));
        }
        let expect_status = h.expect_status.clone().unwrap_or_else(|| vec![200]);
        if expect_status.is_empty() || expect_status.iter().any(|s| !(100..=599).contains(s)) {
            self.problem(
                &format!("{key}.expect_status"),
                "must list HTTP status codes between 100 and 599",
            );
        }
        let interval = self.duration(
            h.interval.as_deref(),
            Duration::from_secs(2),
            &format!("{key}.interval"),
        );
        let timeout = self.duration(
            h.timeout.as_deref(),
            Duration::from_secs(1),
            &format!("{key}.timeout"),
        );
        let rise = h.rise.unwrap_or(2);
        let fall = h.fall.unwrap_or(3);
        for (v, k) in [(rise, "rise"), (fall, "fall")] {
            if v == 0 || v > 100 {
                self.problem(&format!("{key}.{k}"), "must be between 1 and 100");
            }
        }
        HealthCheck {
            kind,
            path,
            host: h.host.clone(),
            expect_status,
            interval,
            timeout,
            rise,
            fall,
        }
    }

    fn sites(&mut self, files: &[Option<SiteFile>], backends: &[&str]) -> Vec<Site> {
        let mut names = HashSet::new();
        let mut hosts_seen: HashSet<String> = HashSet::new();
        let mut defaults = 0;
        let mut out = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let Some(f) = f else { continue };
            let key = format!("sites[{i}]");
            self.unique(&mut names, &f.name, &format!("{key}.name"), "site");
            let backend = match backends.iter().position(|b| *b == f.backend) {
                Some(b) => b,
                None => {
                    self.problem(
                        &format!("{key}.backend"),
                        format!("unknown backend {:?}", f.backend),
                    );
                    0
                }
            };
            if f.hosts.is_empty() {
                defaults += 1;
                if defaults > 1 {
                    self.problem(
                        &format!("{key}.hosts"),
                        "only one site may omit hosts (the default site)",
                    );
                }
            }
            let mut hosts = Vec::new();
            for (j, h) in f.hosts.iter().enumerate() {
                let hk = format!("{key}.hosts[{j}]");
                let h = h.trim().to_ascii_lowercase();
                let bare = h.strip_prefix("*.").unwrap_or(&h);
                if bare.is_empty()
                    || !bare.split('.').all(|l| {
                        !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    })
                {
                    self.problem(&hk, format!("invalid host name {h:?}"));
                } else if !hosts_seen.insert(h.clone()) {
                    self.problem(&hk, format!("host {h:?} is already used by another site"));
                }
                hosts.push(h);
            }
            let error_page = f
                .error_page
                .as_deref()
                .map(|p| self.page(p, &format!("{key}.error_page")))
                .unwrap_or_else(|| Some(DEFAULT_ERROR_PAGE.to_string()))
                .unwrap_or_default();
            let m = &f.maintenance;
            let mkey = format!("{key}.maintenance");
            let maintenance_page = m
                .page
                .as_deref()
                .map(|p| self.page(p, &format!("{mkey}.page")))
                .unwrap_or_else(|| Some(DEFAULT_MAINTENANCE_PAGE.to_string()))
                .unwrap_or_default();
            let retry_after = m.retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
            if let Err(e) = check::retry_after(retry_after) {
                self.problem(&format!("{mkey}.retry_after"), e);
            }
            if let Err(e) = check::path_count(m.paths.len()) {
                self.problem(&format!("{mkey}.paths"), e);
            }
            for (j, p) in m.paths.iter().enumerate() {
                if let Err(e) = check::path(p) {
                    self.problem(&format!("{mkey}.paths[{j}]"), e);
                }
            }
            if let Err(e) = check::allow_count(m.allow.len()) {
                self.problem(&format!("{mkey}.allow"), e);
            }
            let allow = m
                .allow
                .iter()
                .enumerate()
                .filter_map(|(j, c)| self.cidr(c, &format!("{mkey}.allow[{j}]")))
                .collect();
            let bypass_cookie = m
                .bypass_cookie
                .clone()
                .unwrap_or_else(|| DEFAULT_BYPASS_COOKIE.into());
            if !is_cookie_name(&bypass_cookie) {
                self.problem(
                    &format!("{mkey}.bypass_cookie"),
                    format!("invalid cookie name {bypass_cookie:?}"),
                );
            }
            let maintenance_backend = self.maintenance_backend(
                m.backend.as_deref(),
                backend,
                backends,
                &format!("{mkey}.backend"),
            );
            out.push(Site {
                maintenance_backend,
                name: f.name.clone(),
                hosts,
                backend,
                error_page: error_page.into(),
                maintenance_page,
                maintenance: MaintenanceSettings {
                    enabled: m.enabled,
                    retry_after,
                    paths: m.paths.clone(),
                    message: None,
                    allow,
                    from: None,
                    until: None,
                },
                bypass_cookie,
                bypass_secret_env: m.bypass_secret_env.clone(),
                force_https: f.force_https,
                https_port: f.https_port.unwrap_or(443),
                hsts: f.hsts.as_deref().and_then(|h| {
                    http::HeaderValue::from_str(h)
                        .map_err(|_| self.problem(&format!("{key}.hsts"), "not a header value"))
                        .ok()
                }),
            });
        }
        out
    }

    fn listeners(&mut self, files: &[Option<ListenerFile>], backends: &[&str]) -> Vec<Listener> {
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let Some(f) = f else { continue };
            let key = format!("listeners[{i}]");
            self.unique(&mut names, &f.name, &format!("{key}.name"), "listener");
            self.socket_addr(&f.listen, &format!("{key}.listen"));
            let protocol = match f.protocol.as_deref().unwrap_or("http") {
                "http" => Protocol::Http,
                "tcp" => Protocol::Tcp,
                other => {
                    self.problem(
                        &format!("{key}.protocol"),
                        format!("unknown protocol {other:?}, expected http or tcp"),
                    );
                    Protocol::Http
                }
            };
            let tls = f
                .tls
                .as_ref()
                .and_then(|t| self.tls(t, protocol, &format!("{key}.tls")));
            let backend = match (&f.backend, protocol) {
                (Some(b), Protocol::Tcp) => match backends.iter().position(|n| n == b) {
                    Some(i) => Some(i),
                    None => {
                        self.problem(&format!("{key}.backend"), format!("unknown backend {b:?}"));
                        None
                    }
                },
                (None, Protocol::Tcp) => {
                    self.problem(&format!("{key}.backend"), "a tcp listener needs a backend");
                    None
                }
                (Some(_), Protocol::Http) => {
                    self.problem(
                        &format!("{key}.backend"),
                        "http listeners route by site: set the backend on the site",
                    );
                    None
                }
                (None, Protocol::Http) => None,
            };
            if protocol == Protocol::Http && f.maintenance.is_some() {
                self.problem(
                    &format!("{key}.maintenance"),
                    "http listeners take maintenance from their sites",
                );
            }
            let tm = f.maintenance.as_ref();
            let tcp_allow = tm
                .map(|m| {
                    m.allow
                        .iter()
                        .enumerate()
                        .filter_map(|(j, c)| self.cidr(c, &format!("{key}.maintenance.allow[{j}]")))
                        .collect()
                })
                .unwrap_or_default();
            out.push(Listener {
                name: f.name.clone(),
                listen: f.listen.clone(),
                protocol,
                backend,
                tcp_maintenance: tm.is_some_and(|m| m.enabled),
                tcp_allow,
                tls,
            });
        }
        out
    }
}

/// Remove the key a deserialization error points at; its name, or `None`
/// when the path does not end at a mapping key.
fn remove_at(value: &mut Value, path: &[serde_path_to_error::Segment]) -> Option<String> {
    use serde_path_to_error::Segment;
    let (last, parents) = path.split_last()?;
    let mut node = value;
    for seg in parents {
        node = match seg {
            Segment::Seq { index } => node.as_sequence_mut()?.get_mut(*index)?,
            Segment::Map { key } => node.as_mapping_mut()?.get_mut(key.as_str())?,
            _ => return None,
        };
    }
    match last {
        Segment::Map { key } => node
            .as_mapping_mut()?
            .remove(key.as_str())
            .map(|_| key.clone()),
        Segment::Seq { index } if *index < node.as_sequence()?.len() => {
            node.as_sequence_mut()?.remove(*index);
            Some(format!("[{index}]"))
        }
        _ => None,
    }
}

/// Parse a CIDR, or a bare address meaning a single host.
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
}

/// RFC 6265 token characters.
pub fn is_cookie_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The opaque sticky-cookie id of a server: a hash of backend and server
/// names, never the address, identical on every instance with the same
/// config.
pub fn server_id(backend: &str, server: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"drawbridge-sticky\0");
    h.update(backend.as_bytes());
    h.update(b"\0");
    h.update(server.as_bytes());
    let digest = h.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}
