//! The validated internal model. Everything here has been parsed and checked
//! once at start: addresses, CIDRs, regexes, durations and pages. Nothing
//! downstream re-parses configuration text.

use bytes::Bytes;
use ipnet::IpNet;
use regex::RegexSet;
use std::path::PathBuf;
use std::time::Duration;

/// Admin state of a server, set by operators (config, API, state file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Takes new and sticky users.
    Ready,
    /// Keeps its sticky users, takes no new ones.
    Drain,
    /// Takes nobody, except requests that bypass maintenance.
    Maint,
}

impl AdminState {
    pub const ALL: [AdminState; 3] = [AdminState::Ready, AdminState::Drain, AdminState::Maint];

    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }

    pub fn parse(s: &str) -> Option<AdminState> {
        AdminState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    Random,
    SourceHash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Tcp,
}

/// Limits on clients (CONTRACT section 10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Client connections over all HTTP listeners; 0: derived at start from
    /// the open-file limit, less a reserve.
    pub max_connections: usize,
    /// Per client address (socket peer); 0: no limit.
    pub max_connections_per_client: usize,
    /// The whole request head must arrive within this.
    pub header_timeout: Duration,
    /// An idle keep-alive client connection is closed after this.
    pub keepalive_timeout: Duration,
    /// The client's longest silence while sending a request body.
    pub client_body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 0,
            max_connections_per_client: 0,
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            client_body_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub threads: usize,
    pub grace_period_seconds: u64,
    pub graceful_shutdown_timeout_seconds: u64,
    pub upgrade_sock: String,
    pub pid_file: String,
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: String,
    /// The bearer token; `None` means only loopback clients are served.
    pub token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub listen: String,
    pub protocol: Protocol,
    /// For tcp listeners: the backend connections go to.
    pub backend: Option<usize>,
    /// For tcp listeners: initial maintenance and allow list.
    pub tcp_maintenance: bool,
    pub tcp_allow: Vec<IpNet>,
    /// For http listeners: TLS termination.
    pub tls: Option<TlsConfig>,
}

/// A TLS listener's settings (CONTRACT section 9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The default certificate first, then those chosen by SNI.
    pub certs: Vec<super::cert::CertPaths>,
    /// Offer HTTP/2 by ALPN.
    pub http2: bool,
    pub min_version: TlsVersion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

/// The maintenance settings an operator can change at runtime. The config
/// gives their initial values; the state file overrides them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceSettings {
    pub enabled: bool,
    pub retry_after: u64,
    /// Regexes on the path; empty means the whole site.
    pub paths: Vec<String>,
    pub message: Option<String>,
    pub allow: Vec<IpNet>,
    /// A scheduled window (Unix seconds): while `enabled`, maintenance is
    /// on from `from` (none: at once) until `until` (none: until switched
    /// off), and switches itself off at `until`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::time::opt_rfc3339"
    )]
    pub from: Option<u64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::time::opt_rfc3339"
    )]
    pub until: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Site {
    pub name: String,
    /// Lower-case host names; `*.` prefixes are wildcards.
    pub hosts: Vec<String>,
    pub backend: usize,
    pub error_page: Bytes,
    pub maintenance_page: String,
    pub maintenance: MaintenanceSettings,
    pub bypass_cookie: String,
    pub bypass_secret_env: Option<String>,
    /// A request on a plain listener gets 308 to https://.
    pub force_https: bool,
    /// The port in that redirect (left out of the URL when 443).
    pub https_port: u16,
    /// `Strict-Transport-Security` sent on answers over TLS.
    pub hsts: Option<http::HeaderValue>,
    /// A backend that answers in maintenance instead of the local page.
    pub maintenance_backend: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Sticky {
    pub cookie: String,
    pub http_only: bool,
    pub secure: Secure,
    pub same_site: Option<String>,
    pub max_age: Option<u64>,
}

/// When the sticky cookie carries `Secure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secure {
    Always,
    Never,
    /// On answers to requests that came over TLS.
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthKind {
    Http,
    Tcp,
}

#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub kind: HealthKind,
    pub path: String,
    pub host: Option<String>,
    pub expect_status: Vec<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: usize,
    pub fall: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub name: String,
    /// `ip:port` or `host:port`; host names are resolved when the proxy starts.
    pub addr: String,
    pub weight: u32,
    pub backup: bool,
    pub state: AdminState,
    /// Opaque sticky-cookie id, stable across instances with the same config.
    pub id: String,
    /// Most requests (tcp: connections) in flight to it; 0 => no limit.
    pub max_conns: u64,
    /// How long its effective weight takes to reach its weight after it
    /// becomes usable again; zero => at once.
    pub slowstart: Duration,
}

/// A server added at runtime, as the API takes it and the state file
/// keeps it (its state and weight are kept with the others').
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    pub name: String,
    pub addr: String,
    #[serde(default)]
    pub backup: bool,
    /// 0: no limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_conns: u64,
    /// A duration (`30s`); none: no slow start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slowstart: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Where requests wait for a server below its `max_conns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    /// Most requests waiting; 0 => a request finding every server full is
    /// refused at once.
    pub max: usize,
    /// Longest wait.
    pub timeout: Duration,
}

/// What health marking a server down does to what is open to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMarkedDown {
    /// Nothing: open requests and connections finish or time out.
    None,
    /// Requests in flight are ended and tcp connections closed.
    ShutdownSessions,
}

#[derive(Debug, Clone)]
pub struct Backend {
    pub name: String,
    pub balance: Balance,
    pub sticky: Option<Sticky>,
    pub health_check: Option<HealthCheck>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub retries: usize,
    pub queue: QueueSettings,
    pub on_marked_down: OnMarkedDown,
    pub servers: Vec<Server>,
}

impl Backend {
    /// Whether a server of it has a `max_conns`.
    pub fn limited(&self) -> bool {
        self.servers.iter().any(|s| s.max_conns > 0)
    }
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub server: ServerSettings,
    pub admin: AdminSettings,
    pub metrics_listen: String,
    pub state_file: PathBuf,
    pub trusted_proxies: Vec<IpNet>,
    pub limits: Limits,
    pub listeners: Vec<Listener>,
    /// What `check` warns about without refusing (certificates expiring
    /// soon).
    pub warnings: Vec<String>,
    pub sites: Vec<Site>,
    pub backends: Vec<Backend>,
}

impl Config {
    pub fn site_index(&self, name: &str) -> Option<usize> {
        self.sites.iter().position(|s| s.name == name)
    }

    pub fn backend_index(&self, name: &str) -> Option<usize> {
        self.backends.iter().position(|b| b.name == name)
    }

    pub fn server_count(&self) -> usize {
        self.backends.iter().map(|b| b.servers.len()).sum()
    }

    /// One-line summary printed by `check`.
    pub fn summary(&self) -> String {
        format!(
            "ok: {} sites, {} backends, {} servers",
            self.sites.len(),
            self.backends.len(),
            self.server_count()
        )
    }
}

/// Compile the path regexes of a maintenance setting. Validation has already
/// proven that they compile, so an error here is reported, not unwrapped.
pub fn compile_paths(paths: &[String]) -> Result<Option<RegexSet>, regex::Error> {
    if paths.is_empty() {
        Ok(None)
    } else {
        RegexSet::new(paths).map(Some)
    }
}
