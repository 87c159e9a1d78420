//! A bare round-robin Pingora HTTP proxy: the floor drawbridge is measured
//! against in `bench/run.sh`.
//!
//! It does what any Pingora proxy must do and nothing else: one listener, a
//! round-robin `LoadBalancer` over static upstreams, no health checks, no
//! cookies, no metrics, no logging per request. With `--maintenance` it answers
//! every request itself with a fixed 503 page (Retry-After, Content-Length,
//! keep-alive kept), the cheapest possible "maintenance" answer.
//!
//! Same settings as drawbridge's hot path (DESIGN.md): mimalloc (v2 line),
//! one worker thread on the no-steal runtime, L4 read buffer 0 and write
//! buffer 4 KiB on the listener, timeouts on tokio's timer.
//!
//! ```text
//! cargo build --release --example bare_pingora
//! target/release/examples/bare_pingora --listen 127.0.0.1:18100 \
//!     --upstream 127.0.0.1:18081 --upstream 127.0.0.1:18082
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use clap::Parser;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_load_balancing::{selection::RoundRobin, LoadBalancer};
use pingora_proxy::{ProxyHttp, Session};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The same page drawbridge serves, so both answers cost the same bytes.
const MAINTENANCE_PAGE: &str = include_str!("../static/maintenance.html");

#[derive(Parser, Debug)]
#[command(about = "Bare round-robin Pingora proxy (benchmark floor)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18100")]
    listen: String,
    /// Upstream address; repeat for several (round-robin).
    #[arg(long = "upstream", required = true)]
    upstreams: Vec<String>,
    /// Answer every request with a local 503 maintenance page instead of proxying.
    #[arg(long)]
    maintenance: bool,
    /// Worker threads of the proxy service.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// L4 read buffer of the listener in bytes (Pingora's default is 65536).
    #[arg(long, default_value_t = 0)]
    l4_read_buffer: usize,
    /// L4 write buffer of the listener in bytes (drawbridge's: 4096; Pingora's default is 1460).
    #[arg(long, default_value_t = 4096)]
    l4_write_buffer: usize,
    /// Use Pingora's work-stealing runtime even with one thread (drawbridge,
    /// like this proxy by default, uses it only with several threads).
    #[arg(long)]
    work_stealing: bool,
    /// Pingora pid file.
    #[arg(long, default_value = "/tmp/bench-bare-pingora.pid")]
    pid_file: String,
    /// Pingora graceful-upgrade socket.
    #[arg(long, default_value = "/tmp/bench-bare-pingora-upgrade.sock")]
    upgrade_sock: String,
}

struct Bare {
    lb: Arc<LoadBalancer<RoundRobin>>,
    maintenance: bool,
    page: Bytes,
    content_length: String,
}

impl Bare {
    async fn answer_maintenance(&self, session: &mut Session) -> Result<()> {
        let mut resp = ResponseHeader::build(503, Some(5))?;
        resp.insert_header("Content-Type", "text/html; charset=utf-8")?;
        resp.insert_header("Content-Length", self.content_length.as_str())?;
        resp.insert_header("Retry-After", "600")?;
        resp.insert_header("Cache-Control", "no-store")?;
        let head_only = session.req_header().method == http::Method::HEAD;
        session
            .write_response_header(Box::new(resp), head_only)
            .await?;
        if !head_only {
            session
                .write_response_body(Some(self.page.clone()), true)
                .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut Self::CTX) -> Result<bool> {
        if !self.maintenance {
            return Ok(false);
        }
        self.answer_maintenance(session).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let backend = self
            .lb
            .select(b"", 256)
            .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "no upstream"))?;
        Ok(Box::new(HttpPeer::new(backend, false, String::new())))
    }
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();

    let conf = ServerConf {
        threads: args.threads,
        work_stealing: args.work_stealing || args.threads > 1,
        // drawbridge's timer setting: timeouts of a second or more on tokio's
        // timer (this proxy sets none of its own).
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: args.pid_file.clone(),
        upgrade_sock: args.upgrade_sock.clone(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let lb = LoadBalancer::<RoundRobin>::try_from_iter(args.upstreams.iter().map(String::as_str))
        .unwrap_or_else(|e| {
            eprintln!("bare_pingora: bad upstream address: {e}");
            std::process::exit(2);
        });

    let page = Bytes::from_static(MAINTENANCE_PAGE.as_bytes());
    let proxy = Bare {
        lb: Arc::new(lb),
        maintenance: args.maintenance,
        content_length: page.len().to_string(),
        page,
    };

    let mut service = pingora_proxy::http_proxy_service(&server.configuration, proxy);
    service.add_listener(
        ListenerConfig::tcp(args.listen.as_str()).l4_buffer(
            L4BufferSettings::default()
                .read(args.l4_read_buffer)
                .write(args.l4_write_buffer),
        ),
    );
    service.threads = Some(args.threads);
    server.add_service(service);

    eprintln!(
        "bare_pingora: listening on {} ({} thread(s), l4 read buffer {}), {}",
        args.listen,
        args.threads,
        args.l4_read_buffer,
        if args.maintenance {
            "maintenance answers".to_string()
        } else {
            format!("round-robin over {}", args.upstreams.join(", "))
        }
    );
    server.run_forever();
}
