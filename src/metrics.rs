//! Every metric of CONTRACT section 6, defined and registered once. Label
//! handles are resolved at start for each site and server, so the hot path
//! only touches atomics.

use crate::config::{AdminState, Config, Protocol};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::io::Write;

const CODES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Label value of `server` for answers the proxy gives itself.
pub const SERVER_MAINTENANCE: &str = "maintenance";
pub const SERVER_ERROR: &str = "error";

/// Handles for one site.
pub struct SiteMetrics {
    pub maintenance_enabled: IntGauge,
    pub maintenance_responses: IntCounter,
    pub bypass_allow: IntCounter,
    pub bypass_token: IntCounter,
    pub error_page: IntCounter,
    pub duration: Histogram,
    /// Requests by server of the site's backend, then status class.
    pub requests: Vec<[IntCounter; 5]>,
    pub maintenance_requests: [IntCounter; 5],
    pub error_requests: [IntCounter; 5],
}

/// Handles for one server.
pub struct ServerMetrics {
    pub state: [IntGauge; 3],
    pub up: IntGauge,
    pub weight: IntGauge,
    /// Requests (or tcp connections) in flight: also the live figure the
    /// drain detection reads.
    pub inflight: IntGauge,
    pub connect_errors: IntCounter,
}

/// Handles for one backend.
pub struct BackendMetrics {
    pub redispatch_down: IntCounter,
    pub redispatch_maint: IntCounter,
    pub redispatch_unknown: IntCounter,
}

pub struct Metrics {
    registry: Registry,
    /// Name, help and type of every family, so that a family without any
    /// series yet still shows its `# HELP` and `# TYPE` (see [`Metrics::render`]).
    families: Vec<Family>,
    pub sites: Vec<SiteMetrics>,
    pub backends: Vec<BackendMetrics>,
    pub servers: Vec<Vec<ServerMetrics>>,
    pub tcp_connections: IntCounterVec,
    /// `drawbridge_tcp_connections_total` handles by listener (empty for http
    /// listeners), then server of the listener's backend.
    pub tcp: Vec<Vec<IntCounter>>,
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
}

/// Index of the status class of `status` in [`CODES`].
pub fn code_class(status: u16) -> usize {
    (usize::from(status / 100)).clamp(1, 5) - 1
}

fn counter_vec(
    (r, fams): (&Registry, &mut Vec<Family>),
    name: &'static str,
    help: &'static str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let v = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(v.clone()))?;
    fams.push(Family {
        name,
        help,
        kind: "counter",
    });
    Ok(v)
}

fn gauge_vec(
    (r, fams): (&Registry, &mut Vec<Family>),
    name: &'static str,
    help: &'static str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let v = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(v.clone()))?;
    fams.push(Family {
        name,
        help,
        kind: "gauge",
    });
    Ok(v)
}

impl Metrics {
    pub fn new(config: &Config) -> prometheus::Result<Metrics> {
        let r = Registry::new();
        let mut f = Vec::new();
        let requests = counter_vec(
            (&r, &mut f),
            "drawbridge_requests_total",
            "HTTP requests answered, by site, backend, server and status class",
            &["site", "backend", "server", "code"],
        )?;
        const DURATION: &str = "drawbridge_request_duration_seconds";
        const DURATION_HELP: &str = "Time from request header to the end of the response";
        let duration = HistogramVec::new(
            HistogramOpts::new(DURATION, DURATION_HELP).buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["site", "backend"],
        )?;
        r.register(Box::new(duration.clone()))?;
        f.push(Family {
            name: DURATION,
            help: DURATION_HELP,
            kind: "histogram",
        });
        let m_enabled = gauge_vec(
            (&r, &mut f),
            "drawbridge_maintenance_enabled",
            "1 while the site's maintenance is on",
            &["site"],
        )?;
        let m_resp = counter_vec(
            (&r, &mut f),
            "drawbridge_maintenance_responses_total",
            "Maintenance pages served",
            &["site"],
        )?;
        let m_bypass = counter_vec(
            (&r, &mut f),
            "drawbridge_maintenance_bypass_total",
            "Requests let through a site in maintenance",
            &["site", "reason"],
        )?;
        let err_page = counter_vec(
            (&r, &mut f),
            "drawbridge_error_page_responses_total",
            "Error pages served",
            &["site"],
        )?;
        let state = gauge_vec(
            (&r, &mut f),
            "drawbridge_server_state",
            "1 for the server's current admin state, 0 for the others",
            &["backend", "server", "state"],
        )?;
        let up = gauge_vec(
            (&r, &mut f),
            "drawbridge_server_up",
            "1 while the server passes its health check",
            &["backend", "server"],
        )?;
        let weight = gauge_vec(
            (&r, &mut f),
            "drawbridge_server_weight",
            "The server's balancing weight",
            &["backend", "server"],
        )?;
        let inflight = gauge_vec(
            (&r, &mut f),
            "drawbridge_server_inflight",
            "Requests (or tcp connections) in flight to the server",
            &["backend", "server"],
        )?;
        let redispatch = counter_vec(
            (&r, &mut f),
            "drawbridge_sticky_redispatch_total",
            "Sticky requests sent to another server than their cookie named",
            &["backend", "reason"],
        )?;
        let connect_errors = counter_vec(
            (&r, &mut f),
            "drawbridge_upstream_connect_errors_total",
            "Failed connections to upstream servers",
            &["backend", "server"],
        )?;
        let tcp_connections = counter_vec(
            (&r, &mut f),
            "drawbridge_tcp_connections_total",
            "Layer-4 connections proxied",
            &["listener", "backend", "server"],
        )?;

        let codes = |labels: [&str; 3]| -> [IntCounter; 5] {
            CODES.map(|c| requests.with_label_values(&[labels[0], labels[1], labels[2], c]))
        };
        let sites = config
            .sites
            .iter()
            .map(|s| {
                let b = &config.backends[s.backend];
                SiteMetrics {
                    maintenance_enabled: m_enabled.with_label_values(&[&s.name]),
                    maintenance_responses: m_resp.with_label_values(&[&s.name]),
                    bypass_allow: m_bypass.with_label_values(&[&s.name, "allow"]),
                    bypass_token: m_bypass.with_label_values(&[&s.name, "token"]),
                    error_page: err_page.with_label_values(&[&s.name]),
                    duration: duration.with_label_values(&[&s.name, &b.name]),
                    requests: b
                        .servers
                        .iter()
                        .map(|sv| codes([&s.name, &b.name, &sv.name]))
                        .collect(),
                    maintenance_requests: codes([&s.name, &b.name, SERVER_MAINTENANCE]),
                    error_requests: codes([&s.name, &b.name, SERVER_ERROR]),
                }
            })
            .collect();
        let backends = config
            .backends
            .iter()
            .map(|b| BackendMetrics {
                redispatch_down: redispatch.with_label_values(&[&b.name, "down"]),
                redispatch_maint: redispatch.with_label_values(&[&b.name, "maint"]),
                redispatch_unknown: redispatch.with_label_values(&[&b.name, "unknown"]),
            })
            .collect();
        let servers = config
            .backends
            .iter()
            .map(|b| {
                b.servers
                    .iter()
                    .map(|s| {
                        let l = [b.name.as_str(), s.name.as_str()];
                        ServerMetrics {
                            state: AdminState::ALL
                                .map(|st| state.with_label_values(&[l[0], l[1], st.as_str()])),
                            up: up.with_label_values(&l),
                            weight: weight.with_label_values(&l),
                            inflight: inflight.with_label_values(&l),
                            connect_errors: connect_errors.with_label_values(&l),
                        }
                    })
                    .collect()
            })
            .collect();
        // Series of tcp listeners exist from the start, at 0, like the
        // others: a dashboard's rate() then shows 0 rather than nothing.
        let tcp = config
            .listeners
            .iter()
            .map(|l| match l.backend {
                Some(b) if l.protocol == Protocol::Tcp => {
                    let b = &config.backends[b];
                    b.servers
                        .iter()
                        .map(|s| tcp_connections.with_label_values(&[&l.name, &b.name, &s.name]))
                        .collect()
                }
                _ => Vec::new(),
            })
            .collect();
        Ok(Metrics {
            registry: r,
            families: f,
            sites,
            backends,
            servers,
            tcp_connections,
            tcp,
        })
    }

    /// Mirror a server's admin state into its three state gauges.
    pub fn set_state(&self, backend: usize, server: usize, st: AdminState) {
        for (gauge, s) in self.servers[backend][server]
            .state
            .iter()
            .zip(AdminState::ALL)
        {
            gauge.set(i64::from(s == st));
        }
    }

    /// The Prometheus text exposition of every metric. A family without
    /// series (e.g. `drawbridge_tcp_connections_total` when no tcp listener is
    /// configured) is still announced by its `# HELP` and `# TYPE` lines,
    /// which the encoder alone would leave out.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        let gathered = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&gathered, &mut buf) {
            log::error!("cannot encode metrics: {e}");
        }
        for fam in &self.families {
            if !gathered.iter().any(|g| g.get_name() == fam.name) {
                let _ = writeln!(buf, "# HELP {} {}", fam.name, fam.help);
                let _ = writeln!(buf, "# TYPE {} {}", fam.name, fam.kind);
            }
        }
        buf
    }
}
