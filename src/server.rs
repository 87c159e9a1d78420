//! Assembling and running the Pingora server: the proxy service on every
//! http listener, the admin and metrics services, and the health checks.

use crate::admin::AdminApp;
use crate::config::{self, Config, Protocol};
use crate::proxy::Proxy;
use crate::state::Runtime;
use crate::tcp::TcpProxy;
use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::services::listening::Service;
use std::path::Path;
use std::sync::Arc;

/// `GET /metrics` in the Prometheus text format.
pub struct MetricsApp {
    rt: Arc<Runtime>,
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let (status, ctype, body) = if session.req_header().uri.path() == "/metrics" {
            (200, "text/plain; version=0.0.4", self.rt.render_metrics())
        } else {
            (404, "text/plain", b"see /metrics\n".to_vec())
        };
        Response::builder()
            .status(status)
            .header("Content-Type", ctype)
            .header("Content-Length", body.len())
            .body(body)
            .unwrap_or_default()
    }
}

/// Per-connection buffers of the client-side listeners. No read buffer: an
/// idle keep-alive client then costs a few KB instead of 64 KiB. A 4 KiB
/// write buffer (Pingora's default is one segment, 1460 bytes) lets a
/// response header and a page-sized body leave in one send instead of two.
fn listener_buffers() -> L4BufferSettings {
    L4BufferSettings::default().read(0).write(4096)
}

/// `drawbridge check`: 0 and a summary, or 1 and every problem.
pub fn check(path: &Path) -> i32 {
    match config::load(path) {
        Ok(c) => match crate::state::initial_state(&c) {
            // `run` would refuse a state file it cannot apply: so does `check`.
            Ok(_) => {
                c.warnings.iter().for_each(|w| eprintln!("warning: {w}"));
                println!("{}", c.summary());
                0
            }
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                1
            }
        },
        Err(problems) => {
            problems.iter().for_each(|p| eprintln!("{p}"));
            1
        }
    }
}

/// `drawbridge run`: never returns while serving.
pub fn run(path: &Path, upgrade: bool, daemon: bool) -> i32 {
    match config::load(path) {
        Ok(c) => run_config(c, upgrade, daemon),
        Err(problems) => {
            problems.iter().for_each(|p| eprintln!("{p}"));
            1
        }
    }
}

/// Write this process's pid to `path` (temp file, rename), or log why not.
fn write_pid_file(path: &str) {
    let tmp = format!("{path}.{}", std::process::id());
    let done = std::fs::write(&tmp, format!("{}\n", std::process::id()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = done {
        log::warn!("cannot write the pid file {path}: {e} (`drawbridge reload` needs it)");
    }
}

pub fn run_config(config: Config, upgrade: bool, daemon: bool) -> i32 {
    let settings = config.server.clone();
    let listeners = config.listeners.clone();
    let admin_listen = config.admin.listen.clone();
    let metrics_listen = config.metrics_listen.clone();
    config.warnings.iter().for_each(|w| log::warn!("{w}"));
    if upgrade {
        // Found out now, while the running process still has its sockets.
        if let Err(e) = crate::reload::can_bind(&config) {
            eprintln!("error: {e}");
            return 1;
        }
    }
    let nofile = crate::limits::raise_nofile();
    let rt = match Runtime::new(config, nofile) {
        Ok(rt) => Arc::new(rt),
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let health = match crate::health::services(&rt) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let conf = ServerConf {
        threads: settings.threads,
        // One worker thread runs its connections to the end without the
        // multi-threaded scheduler's cross-thread wake-ups; several steal
        // work from each other (as the bare Pingora proxy of bench/ does).
        work_stealing: settings.threads > 1,
        // Pingora's timeouts of a second or more (keep-alive, health checks,
        // the local answers' body discard) use tokio's timer, armed only when the wrapped I/O has to wait and
        // removed when it completes. Pingora's own 10 ms wheel (its default
        // below 900 s) keeps every timer until its deadline, even once
        // cancelled, and runs a clock thread.
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        grace_period_seconds: Some(settings.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(settings.graceful_shutdown_timeout_seconds),
        upgrade_sock: settings.upgrade_sock,
        pid_file: settings.pid_file,
        daemon,
        ..Default::default()
    };
    let opt = Opt {
        upgrade,
        daemon,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();
    if !daemon {
        // In the background Pingora writes it; in the foreground it is ours,
        // for `reload` to find the running process.
        write_pid_file(&server.configuration.pid_file);
    }
    if upgrade {
        // Changes the old process made since this one read the state file.
        if let Err(e) = rt.reread_state() {
            log::error!("after the handover: {e}; serving the state read at start");
        }
    }
    crate::reload::record_upgrade_sock(
        &server.configuration.pid_file,
        &server.configuration.upgrade_sock,
    );

    let http: Vec<(usize, &config::Listener)> = listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| l.protocol == Protocol::Http)
        .collect();
    let mut app = pingora_proxy::http_proxy(&server.configuration, Proxy::new(rt.clone()));
    // An HTTP/2 connection with no stream open is closed after
    // keepalive_timeout, as an idle HTTP/1.1 keep-alive connection is.
    let mut options = pingora_core::apps::HttpServerOptions::default();
    options.h2_idle_timeout = Some(rt.config.limits.keepalive_timeout);
    app.server_options = Some(options);
    let guarded = match crate::limits::Guarded::new(
        Arc::new(app),
        rt.limiter.clone(),
        &http,
        &rt.certs,
        &rt.metrics,
    ) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let mut proxy = Service::new("drawbridge proxy".to_string(), guarded);
    for l in listeners.iter().filter(|l| l.protocol == Protocol::Http) {
        proxy.add_listener(ListenerConfig::tcp(l.listen.clone()).l4_buffer(listener_buffers()));
        let scheme = if l.tls.is_some() { "https" } else { "http" };
        log::info!("listener {} on {scheme}://{}", l.name, l.listen);
    }
    server.add_service(proxy);

    for (i, l) in listeners.iter().enumerate() {
        let (Protocol::Tcp, Some(backend)) = (l.protocol, l.backend) else {
            continue;
        };
        let mut svc = Service::new(
            format!("drawbridge tcp {}", l.name),
            TcpProxy::new(rt.clone(), i, backend),
        );
        svc.add_listener(ListenerConfig::tcp(l.listen.clone()).l4_buffer(listener_buffers()));
        server.add_service(svc);
        log::info!("listener {} on tcp://{}", l.name, l.listen);
    }

    let mut admin = Service::new("drawbridge admin".to_string(), AdminApp::new(rt.clone()));
    admin.add_tcp(&admin_listen);
    admin.threads = Some(1);
    server.add_service(admin);
    log::info!(
        "admin API on http://{admin_listen} ({})",
        if rt.config.admin.token.is_some() {
            "bearer token required"
        } else {
            "loopback clients only"
        }
    );

    let mut metrics = Service::new(
        "drawbridge metrics".to_string(),
        MetricsApp { rt: rt.clone() },
    );
    metrics.add_tcp(&metrics_listen);
    metrics.threads = Some(1);
    server.add_service(metrics);
    log::info!("metrics on http://{metrics_listen}/metrics");

    for mut h in health {
        h.threads = Some(1);
        server.add_service(h);
    }
    let mut handover = pingora_core::services::background::background_service(
        "drawbridge handover watch",
        crate::reload::HandoverWatch,
    );
    handover.threads = Some(1);
    server.add_service(handover);
    let mut scheduler = pingora_core::services::background::background_service(
        "drawbridge maintenance windows",
        crate::schedule::Scheduler { rt: rt.clone() },
    );
    scheduler.threads = Some(1);
    server.add_service(scheduler);
    let mut flusher = pingora_core::services::background::background_service(
        "drawbridge access log",
        crate::logging::Flusher,
    );
    flusher.threads = Some(1);
    server.add_service(flusher);
    server.run_forever()
}
