//! The configuration file as written by operators: plain serde structs that
//! mirror the YAML one to one. Nothing here is checked beyond its YAML type;
//! `validate` turns it into the internal model and reports every problem.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerFile {
    pub threads: Option<usize>,
    pub grace_period_seconds: Option<u64>,
    pub graceful_shutdown_timeout_seconds: Option<u64>,
    pub upgrade_sock: Option<String>,
    pub pid_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsFile {
    pub max_connections: Option<usize>,
    pub max_connections_per_client: Option<usize>,
    pub header_timeout: Option<String>,
    pub keepalive_timeout: Option<String>,
    pub client_body_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminFile {
    pub listen: Option<String>,
    pub token_env: Option<String>,
    pub token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsFile {
    pub listen: Option<String>,
}

/// Parsed so a TLS listener is reported clearly; not served yet.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct TlsFile {
    pub cert: String,
    pub key: String,
    #[serde(default)]
    pub certs: Vec<CertFile>,
    pub http2: Option<bool>,
    pub min_version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFile {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpMaintenanceFile {
    pub enabled: bool,
    pub allow: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    pub name: String,
    pub listen: String,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub tls: Option<TlsFile>,
    #[serde(default)]
    pub backend: Option<String>,
    #[serde(default)]
    pub maintenance: Option<TcpMaintenanceFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceFile {
    pub enabled: bool,
    pub page: Option<String>,
    pub retry_after: Option<u64>,
    pub paths: Vec<String>,
    pub allow: Vec<String>,
    pub bypass_cookie: Option<String>,
    pub bypass_secret_env: Option<String>,
    pub backend: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteFile {
    pub name: String,
    #[serde(default)]
    pub hosts: Vec<String>,
    pub backend: String,
    #[serde(default)]
    pub error_page: Option<String>,
    #[serde(default)]
    pub maintenance: MaintenanceFile,
    #[serde(default)]
    pub force_https: bool,
    #[serde(default)]
    pub https_port: Option<u16>,
    #[serde(default)]
    pub hsts: Option<String>,
}

/// `secure: true | false | auto`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SecureFile {
    Bool(bool),
    Word(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickyFile {
    pub cookie: String,
    #[serde(default)]
    pub http_only: Option<bool>,
    #[serde(default)]
    pub secure: Option<SecureFile>,
    #[serde(default)]
    pub same_site: Option<String>,
    #[serde(default)]
    pub max_age: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckFile {
    pub kind: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub expect_status: Option<Vec<u16>>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub rise: Option<usize>,
    pub fall: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerEntryFile {
    pub name: String,
    pub addr: String,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub backup: bool,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub max_conns: Option<u64>,
    #[serde(default)]
    pub slowstart: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendFile {
    pub name: String,
    #[serde(default)]
    pub balance: Option<String>,
    #[serde(default)]
    pub sticky: Option<StickyFile>,
    #[serde(default)]
    pub health_check: Option<HealthCheckFile>,
    #[serde(default)]
    pub connect_timeout: Option<String>,
    #[serde(default)]
    pub read_timeout: Option<String>,
    #[serde(default)]
    pub retries: Option<usize>,
    #[serde(default)]
    pub queue: Option<QueueFile>,
    #[serde(default)]
    pub on_marked_down: Option<String>,
    pub servers: Vec<ServerEntryFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueFile {
    pub max: Option<u64>,
    pub timeout: Option<String>,
}
