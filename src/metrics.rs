//! Every metric of CONTRACT section 6, defined and registered once. Label
//! handles are resolved at start for each site and server, so the hot path
//! only touches atomics.

use crate::config::{AdminState, Config, Protocol};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{
    Encoder, Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

const CODES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Label value of `server` for answers the proxy gives itself.
pub const SERVER_MAINTENANCE: &str = "maintenance";
pub const SERVER_ERROR: &str = "error";

/// Handles for one site.
pub struct SiteMetrics {
    pub maintenance_enabled: IntGauge,
    /// A scheduled window's start and end (Unix seconds; 0: none).
    pub window_start: IntGauge,
    pub window_end: IntGauge,
    pub maintenance_responses: IntCounter,
    pub bypass_allow: IntCounter,
    pub bypass_token: IntCounter,
    pub error_page: IntCounter,
    pub duration: Arc<Durations>,
    pub maintenance_requests: [IntCounter; 5],
    pub error_requests: [IntCounter; 5],
}

/// Upper bounds of the request-duration buckets, in nanoseconds: 0.5 ms
/// to 30 s.
const DURATION_BOUNDS_NS: [u64; 15] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

/// One site's request durations, exposed as a Prometheus histogram. Kept
/// in one block: a request adds to its bucket and to the sum, two
/// operations on two cache lines, where the client library's histogram
/// takes four synchronised operations spread over several allocations.
/// The count is the sum of the buckets; a scrape during a request may see
/// its bucket and not yet its time in the sum.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Durations {
    /// Requests by bucket (`le` inclusive), the last one past 30 s.
    buckets: [AtomicU64; DURATION_BOUNDS_NS.len() + 1],
    /// Total time, in microseconds (rounded per request): 584k years.
    sum_us: AtomicU64,
}

impl Durations {
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = DURATION_BOUNDS_NS
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(DURATION_BOUNDS_NS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us
            .fetch_add(ns.saturating_add(500) / 1000, Relaxed);
    }

    fn proto(&self) -> Histogram {
        let mut h = Histogram::default();
        let mut count = 0;
        for (bound, n) in DURATION_BOUNDS_NS.iter().zip(&self.buckets) {
            count += n.load(Relaxed);
            let mut b = Bucket::default();
            b.set_cumulative_count(count);
            b.set_upper_bound(*bound as f64 / 1e9);
            h.mut_bucket().push(b);
        }
        count += self.buckets[DURATION_BOUNDS_NS.len()].load(Relaxed);
        h.set_sample_count(count);
        h.set_sample_sum(self.sum_us.load(Relaxed) as f64 / 1e6);
        h
    }
}

/// `drawbridge_request_duration_seconds`: every site's [`Durations`].
struct DurationFamily {
    desc: Desc,
    /// Each site's labels (sorted by name, as the encoder expects) and
    /// durations.
    series: Vec<([LabelPair; 2], Arc<Durations>)>,
}

impl Collector for DurationFamily {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(MetricType::HISTOGRAM);
        for (labels, durations) in &self.series {
            let mut m = Metric::default();
            for l in labels {
                m.mut_label().push(l.clone());
            }
            m.set_histogram(durations.proto());
            family.mut_metric().push(m);
        }
        vec![family]
    }
}

/// Handles for one server, made when it joins its backend and removed
/// (with [`Metrics::remove_server`]) when it leaves.
pub struct ServerMetrics {
    pub state: [IntGauge; 3],
    pub up: IntGauge,
    /// Its effective weight: the weight, less while in slow start.
    pub weight: Gauge,
    /// Requests (or tcp connections) in flight: also the live figure the
    /// drain detection reads.
    pub inflight: IntGauge,
    pub connect_errors: IntCounter,
    /// Requests by site (the sites of its backend), then status class.
    requests: Vec<(usize, [IntCounter; 5])>,
    /// tcp connections by listener (the tcp listeners of its backend).
    tcp: Vec<(usize, IntCounter)>,
}

impl ServerMetrics {
    /// Mirror the server's admin state into its three state gauges.
    pub fn set_state(&self, st: AdminState) {
        for (gauge, s) in self.state.iter().zip(AdminState::ALL) {
            gauge.set(i64::from(s == st));
        }
    }

    /// Count a request of `site` answered with status class `class`.
    pub fn request(&self, site: usize, class: usize) {
        if let Some((_, codes)) = self.requests.iter().find(|(s, _)| *s == site) {
            codes[class].inc();
        }
    }

    /// Count a tcp connection of `listener`.
    pub fn tcp_connection(&self, listener: usize) {
        if let Some((_, c)) = self.tcp.iter().find(|(l, _)| *l == listener) {
            c.inc();
        }
    }
}

/// The families with a series per server, to make and remove them.
struct ServerFamilies {
    state: IntGaugeVec,
    up: IntGaugeVec,
    weight: GaugeVec,
    inflight: IntGaugeVec,
    connect_errors: IntCounterVec,
    requests: IntCounterVec,
    tcp_connections: IntCounterVec,
}

/// Handles for one backend.
pub struct BackendMetrics {
    pub redispatch_down: IntCounter,
    pub redispatch_maint: IntCounter,
    pub redispatch_unknown: IntCounter,
    /// Requests waiting for a server below its `max_conns`.
    pub queue_length: IntGauge,
    pub queue_timeouts: IntCounter,
}

pub struct Metrics {
    registry: Registry,
    /// Name, help and type of every family, so that a family without any
    /// series yet still shows its `# HELP` and `# TYPE` (see [`Metrics::render`]).
    families: Vec<Family>,
    pub sites: Vec<SiteMetrics>,
    pub backends: Vec<BackendMetrics>,
    per_server: ServerFamilies,
    /// Per listener: client connections open (HTTP listeners).
    pub connections: Vec<IntGauge>,
    /// `drawbridge_connections_rejected_total` by listener and reason.
    pub rejected: IntCounterVec,
    /// `drawbridge_limit` by limit name: the limits in force.
    pub limits: IntGaugeVec,
    /// `drawbridge_tls_handshakes_total` by listener and result.
    pub tls_handshakes: IntCounterVec,
    /// `drawbridge_certificate_expiry_timestamp_seconds` by listener and name.
    pub cert_expiry: IntGaugeVec,
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
}

/// The requests counters of one site, backend and server, by status class.
fn codes(requests: &IntCounterVec, labels: [&str; 3]) -> [IntCounter; 5] {
    CODES.map(|c| requests.with_label_values(&[labels[0], labels[1], labels[2], c]))
}

/// The sites whose backend is `b`, with their positions.
fn sites_of(config: &Config, b: usize) -> impl Iterator<Item = (usize, &str)> {
    let sites = config.sites.iter().enumerate();
    sites
        .filter(move |(_, s)| s.backend == b)
        .map(|(i, s)| (i, s.name.as_str()))
}

/// The tcp listeners whose backend is `b`, with their positions.
fn tcp_listeners_of(config: &Config, b: usize) -> impl Iterator<Item = (usize, &str)> {
    let listeners = config.listeners.iter().enumerate();
    listeners
        .filter(move |(_, l)| l.protocol == Protocol::Tcp && l.backend == Some(b))
        .map(|(i, l)| (i, l.name.as_str()))
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

fn float_gauge_vec(
    (r, fams): (&Registry, &mut Vec<Family>),
    name: &'static str,
    help: &'static str,
    labels: &[&str],
) -> prometheus::Result<GaugeVec> {
    let v = GaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(v.clone()))?;
    fams.push(Family {
        name,
        help,
        kind: "gauge",
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
        let durations: Vec<Arc<Durations>> = config
            .sites
            .iter()
            .map(|_| Arc::new(Durations::default()))
            .collect();
        r.register(Box::new(DurationFamily {
            desc: Desc::new(
                DURATION.to_string(),
                DURATION_HELP.to_string(),
                vec!["site".to_string(), "backend".to_string()],
                Default::default(),
            )?,
            series: config
                .sites
                .iter()
                .zip(&durations)
                .map(|(s, d)| {
                    let labels = [
                        ("backend", &config.backends[s.backend].name),
                        ("site", &s.name),
                    ];
                    let labels = labels.map(|(name, value)| {
                        let mut pair = LabelPair::default();
                        pair.set_name(name.to_string());
                        pair.set_value(value.clone());
                        pair
                    });
                    (labels, d.clone())
                })
                .collect(),
        }))?;
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
        let w_start = gauge_vec(
            (&r, &mut f),
            "drawbridge_maintenance_window_start_timestamp_seconds",
            "Start of the site's scheduled maintenance window (Unix seconds; 0: none or from now)",
            &["site"],
        )?;
        let w_end = gauge_vec(
            (&r, &mut f),
            "drawbridge_maintenance_window_end_timestamp_seconds",
            "End of the site's scheduled maintenance window (Unix seconds; 0: none)",
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
        let weight = float_gauge_vec(
            (&r, &mut f),
            "drawbridge_server_weight",
            "The server's effective balancing weight (its weight, less during slow start)",
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

        let codes = |labels: [&str; 3]| -> [IntCounter; 5] { codes(&requests, labels) };
        let sites = config
            .sites
            .iter()
            .zip(durations)
            .map(|(s, duration)| {
                let b = &config.backends[s.backend];
                SiteMetrics {
                    maintenance_enabled: m_enabled.with_label_values(&[&s.name]),
                    window_start: w_start.with_label_values(&[&s.name]),
                    window_end: w_end.with_label_values(&[&s.name]),
                    maintenance_responses: m_resp.with_label_values(&[&s.name]),
                    bypass_allow: m_bypass.with_label_values(&[&s.name, "allow"]),
                    bypass_token: m_bypass.with_label_values(&[&s.name, "token"]),
                    error_page: err_page.with_label_values(&[&s.name]),
                    duration,
                    maintenance_requests: codes([&s.name, &b.name, SERVER_MAINTENANCE]),
                    error_requests: codes([&s.name, &b.name, SERVER_ERROR]),
                }
            })
            .collect();
        let queue_length = gauge_vec(
            (&r, &mut f),
            "drawbridge_queue_length",
            "Requests waiting for a server below its max_conns, by backend",
            &["backend"],
        )?;
        let queue_timeouts = counter_vec(
            (&r, &mut f),
            "drawbridge_queue_timeouts_total",
            "Requests that waited queue.timeout for a server and got 503, by backend",
            &["backend"],
        )?;
        let backends = config
            .backends
            .iter()
            .map(|b| BackendMetrics {
                queue_length: queue_length.with_label_values(&[&b.name]),
                queue_timeouts: queue_timeouts.with_label_values(&[&b.name]),
                redispatch_down: redispatch.with_label_values(&[&b.name, "down"]),
                redispatch_maint: redispatch.with_label_values(&[&b.name, "maint"]),
                redispatch_unknown: redispatch.with_label_values(&[&b.name, "unknown"]),
            })
            .collect();
        let connections = gauge_vec(
            (&r, &mut f),
            "drawbridge_connections",
            "Client connections open, by listener",
            &["listener"],
        )?;
        let connections = config
            .listeners
            .iter()
            .map(|l| connections.with_label_values(&[&l.name]))
            .collect();
        let rejected = counter_vec(
            (&r, &mut f),
            "drawbridge_connections_rejected_total",
            "Client connections closed by a limit, by listener and reason",
            &["listener", "reason"],
        )?;
        for l in config
            .listeners
            .iter()
            .filter(|l| l.protocol == Protocol::Http)
        {
            for reason in [
                "max_connections",
                "max_connections_per_client",
                "header_timeout",
            ] {
                rejected.with_label_values(&[&l.name, reason]);
            }
        }
        let limits = gauge_vec(
            (&r, &mut f),
            "drawbridge_limit",
            "Limits in force (connections, or seconds for timeouts), by limit",
            &["limit"],
        )?;
        let tls_handshakes = counter_vec(
            (&r, &mut f),
            "drawbridge_tls_handshakes_total",
            "TLS handshakes, by listener and result (ok, error)",
            &["listener", "result"],
        )?;
        let cert_expiry = gauge_vec(
            (&r, &mut f),
            "drawbridge_certificate_expiry_timestamp_seconds",
            "When each certificate expires (unix seconds), by listener and DNS name",
            &["listener", "name"],
        )?;
        for l in config.listeners.iter().filter(|l| l.tls.is_some()) {
            for result in ["ok", "error"] {
                tls_handshakes.with_label_values(&[&l.name, result]);
            }
        }
        Ok(Metrics {
            tls_handshakes,
            cert_expiry,
            connections,
            rejected,
            limits,
            registry: r,
            families: f,
            sites,
            backends,
            per_server: ServerFamilies {
                state,
                up,
                weight,
                inflight,
                connect_errors,
                requests,
                tcp_connections,
            },
        })
    }

    /// The series of server `name` of backend `b`: made at 0 (a
    /// dashboard's rate() then shows 0 rather than nothing).
    pub fn server(&self, config: &Config, b: usize, name: &str) -> ServerMetrics {
        let f = &self.per_server;
        let backend = config.backends[b].name.as_str();
        let l = [backend, name];
        ServerMetrics {
            state: AdminState::ALL.map(|st| f.state.with_label_values(&[l[0], l[1], st.as_str()])),
            up: f.up.with_label_values(&l),
            weight: f.weight.with_label_values(&l),
            inflight: f.inflight.with_label_values(&l),
            connect_errors: f.connect_errors.with_label_values(&l),
            requests: sites_of(config, b)
                .map(|(i, site)| (i, codes(&f.requests, [site, backend, name])))
                .collect(),
            tcp: tcp_listeners_of(config, b)
                .map(|(i, listener)| {
                    (
                        i,
                        f.tcp_connections
                            .with_label_values(&[listener, backend, name]),
                    )
                })
                .collect(),
        }
    }

    /// Remove every series of server `name` of backend `b` (it left the
    /// backend).
    pub fn remove_server(&self, config: &Config, b: usize, name: &str) {
        let f = &self.per_server;
        let backend = config.backends[b].name.as_str();
        let l = [backend, name];
        for st in AdminState::ALL {
            let _ = f.state.remove_label_values(&[l[0], l[1], st.as_str()]);
        }
        let _ = f.up.remove_label_values(&l);
        let _ = f.weight.remove_label_values(&l);
        let _ = f.inflight.remove_label_values(&l);
        let _ = f.connect_errors.remove_label_values(&l);
        for (_, site) in sites_of(config, b) {
            for c in CODES {
                let _ = f.requests.remove_label_values(&[site, backend, name, c]);
            }
        }
        for (_, listener) in tcp_listeners_of(config, b) {
            let _ = f
                .tcp_connections
                .remove_label_values(&[listener, backend, name]);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Bounds are inclusive, as Prometheus' `le`; the count and the sum
    /// follow the observations.
    #[test]
    fn durations_fill_the_right_buckets() {
        let d = Durations::default();
        for ms in [0.2, 0.5, 0.5001, 3.0, 40_000.0] {
            d.observe(Duration::from_secs_f64(ms / 1000.0));
        }
        let h = d.proto();
        let cumulative: Vec<u64> = h
            .get_bucket()
            .iter()
            .map(|b| b.get_cumulative_count())
            .collect();
        assert_eq!(&cumulative[..5], &[2, 3, 3, 4, 4]);
        assert_eq!(cumulative[14], 4);
        assert_eq!(h.get_bucket()[0].get_upper_bound(), 0.0005);
        assert_eq!(h.get_bucket()[14].get_upper_bound(), 30.0);
        assert_eq!(h.get_sample_count(), 5);
        let sum = 0.0002 + 0.0005 + 0.0005001 + 0.003 + 40.0;
        assert!(
            (h.get_sample_sum() - sum).abs() < 1e-5,
            "{}",
            h.get_sample_sum()
        );
    }
}
