//! Active health checks: one background service per backend with a
//! `health_check`. Each round checks every server the backend has now
//! (servers added at runtime join the next round, deleted ones leave it),
//! with Pingora's TCP or HTTP check, all at once; `rise` passes in a row
//! mark a down server up and `fall` failures mark an up one down. Verdicts
//! are mirrored into the runtime for the selector and the metrics.
//! Selection itself is ours (see `policy::select`): Pingora's selectors
//! cannot change weights at runtime nor express drain and maint.

use crate::config::{HealthCheck, HealthKind};
use crate::policy::health::{next, Verdict};
use crate::state::{Runtime, Server};
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::{
    background_service, BackgroundService, GenBackgroundService,
};
use pingora_error::{Error, ErrorType};
use pingora_http::RequestHeader;
use pingora_load_balancing::health_check::{HealthCheck as Check, HttpHealthCheck, TcpHealthCheck};
use pingora_load_balancing::Backend;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// The health checks of one backend.
pub struct Checks {
    rt: Arc<Runtime>,
    backend: usize,
    settings: HealthCheck,
    check: Box<dyn Check + Send + Sync>,
}

impl Checks {
    /// Check one server and mirror a change of its verdict.
    async fn check(&self, server: &Arc<Server>) {
        let passed = match Backend::new(&server.addr.to_string()) {
            Ok(target) => self.check.check(&target).await.is_ok(),
            Err(_) => false,
        };
        let (row, verdict) = next(
            server.checks_in_a_row.load(Relaxed),
            passed,
            server.up.load(Relaxed),
            self.settings.rise,
            self.settings.fall,
        );
        server.checks_in_a_row.store(row, Relaxed);
        match verdict {
            Verdict::Same => {}
            Verdict::Up => self.rt.set_health(server, true),
            Verdict::Down => self.rt.set_health(server, false),
        }
    }
}

#[async_trait]
impl BackgroundService for Checks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let snap = self.rt.snapshot();
            let round = snap.servers[self.backend]
                .iter()
                .map(|m| self.check(&m.server));
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = futures_join(round) => {}
            }
        }
    }
}

/// Run the futures concurrently until all are done.
async fn futures_join<F: std::future::Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        set.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if set.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

/// The health-check services of every backend that has a `health_check`.
pub fn services(rt: &Arc<Runtime>) -> Result<Vec<GenBackgroundService<Checks>>, String> {
    let mut out = Vec::new();
    for (b, backend) in rt.config.backends.iter().enumerate() {
        let Some(hc) = &backend.health_check else {
            continue;
        };
        let check =
            check(hc).map_err(|e| format!("backend {}: health check: {e}", backend.name))?;
        let checks = Checks {
            rt: rt.clone(),
            backend: b,
            settings: hc.clone(),
            check,
        };
        out.push(background_service(
            &format!("health check {}", backend.name),
            checks,
        ));
    }
    Ok(out)
}

fn check(hc: &HealthCheck) -> pingora_error::Result<Box<dyn Check + Send + Sync>> {
    match hc.kind {
        HealthKind::Tcp => {
            let mut c = TcpHealthCheck::new();
            c.peer_template.options.connection_timeout = Some(hc.timeout);
            c.peer_template.options.total_connection_timeout = Some(hc.timeout);
            Ok(c)
        }
        HealthKind::Http => {
            let host = hc.host.as_deref().unwrap_or("localhost");
            let mut c = HttpHealthCheck::new(host, false);
            let mut req = RequestHeader::build("GET", hc.path.as_bytes(), None)?;
            req.append_header("Host", host)?;
            req.append_header("User-Agent", "drawbridge-health-check")?;
            c.req = req;
            c.peer_template.options.connection_timeout = Some(hc.timeout);
            c.peer_template.options.read_timeout = Some(hc.timeout);
            c.peer_template.options.total_connection_timeout = Some(hc.timeout);
            let expect = hc.expect_status.clone();
            c.validator = Some(Box::new(move |resp| {
                let status = resp.status.as_u16();
                if expect.contains(&status) {
                    Ok(())
                } else {
                    Error::e_explain(
                        ErrorType::CustomCode("unexpected status", status),
                        "during http health check",
                    )
                }
            }));
            Ok(Box::new(c))
        }
    }
}
