//! Active health checks, run by Pingora's load-balancing crate: one
//! background service per backend with a `health_check`, whose verdicts
//! (after `rise`/`fall` consecutive results) are mirrored into the runtime
//! for the selector and the metrics. Selection itself is ours (see
//! `proxy::select`): Pingora's selectors cannot change weights at runtime
//! nor express drain and maint.

use crate::config::{HealthCheck, HealthKind};
use crate::state::Runtime;
use async_trait::async_trait;
use pingora_core::services::background::{background_service, GenBackgroundService};
use pingora_error::{Error, ErrorType};
use pingora_http::RequestHeader;
use pingora_load_balancing::health_check::{HealthObserve, HttpHealthCheck, TcpHealthCheck};
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::{Backend, LoadBalancer};
use std::net::SocketAddr;
use std::sync::Arc;

/// Mirrors health changes of one backend's servers into the runtime.
struct Observer {
    rt: Arc<Runtime>,
    backend: usize,
}

#[async_trait]
impl HealthObserve for Observer {
    async fn observe(&self, target: &Backend, healthy: bool) {
        let Some(addr) = target.addr.as_inet().copied() else {
            return;
        };
        for (i, live) in self.rt.live[self.backend].iter().enumerate() {
            if live.addr == addr {
                self.rt.set_health(self.backend, i, healthy);
            }
        }
    }
}

/// The health-check services of every backend that has a `health_check`.
pub fn services(
    rt: &Arc<Runtime>,
) -> Result<Vec<GenBackgroundService<LoadBalancer<RoundRobin>>>, String> {
    let mut out = Vec::new();
    for (b, backend) in rt.config.backends.iter().enumerate() {
        let Some(hc) = &backend.health_check else {
            continue;
        };
        let addrs: Vec<SocketAddr> = rt.live[b].iter().map(|l| l.addr).collect();
        let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(addrs.iter().map(|a| a.to_string()))
            .map_err(|e| format!("backend {}: health check: {e}", backend.name))?;
        let observer = Box::new(Observer {
            rt: rt.clone(),
            backend: b,
        });
        lb.set_health_check(
            check(hc, observer)
                .map_err(|e| format!("backend {}: health check: {e}", backend.name))?,
        );
        lb.health_check_frequency = Some(hc.interval);
        lb.parallel_health_check = true;
        out.push(background_service(
            &format!("health check {}", backend.name),
            lb,
        ));
    }
    Ok(out)
}

fn check(
    hc: &HealthCheck,
    observer: Box<Observer>,
) -> pingora_error::Result<Box<dyn pingora_load_balancing::health_check::HealthCheck + Send + Sync>>
{
    match hc.kind {
        HealthKind::Tcp => {
            let mut c = TcpHealthCheck::new();
            c.consecutive_success = hc.rise;
            c.consecutive_failure = hc.fall;
            c.peer_template.options.connection_timeout = Some(hc.timeout);
            c.health_changed_callback = Some(observer);
            Ok(c)
        }
        HealthKind::Http => {
            let host = hc.host.as_deref().unwrap_or("localhost");
            let mut c = HttpHealthCheck::new(host, false);
            let mut req = RequestHeader::build("GET", hc.path.as_bytes(), None)?;
            req.append_header("Host", host)?;
            req.append_header("User-Agent", "drawbridge-health-check")?;
            c.req = req;
            c.consecutive_success = hc.rise;
            c.consecutive_failure = hc.fall;
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
            c.health_changed_callback = Some(observer);
            Ok(Box::new(c))
        }
    }
}
