//! Scheduled maintenance windows over time. The proxy reads the clock for
//! a site with a window, so its answers switch at `from` and `until` to the
//! millisecond; this service logs each window's start and, at its end,
//! switches the maintenance off in the settings and the state file
//! ([`Runtime::end_windows`]), so that `status` and a restart agree.

use crate::state::{now_ms, Runtime};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

/// How often windows are looked at.
const TICK: Duration = Duration::from_millis(200);

pub struct Scheduler {
    pub rt: Arc<Runtime>,
}

#[async_trait::async_trait]
impl BackgroundService for Scheduler {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let rt = &self.rt;
        let mut was_on = rt.switched_on(&rt.snapshot(), now_ms());
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = now_ms();
            let snap = rt.snapshot();
            let on = rt.switched_on(&snap, now);
            for (i, (site, (&before, &after))) in rt
                .config
                .sites
                .iter()
                .zip(was_on.iter().zip(&on))
                .enumerate()
            {
                let window = snap.sites[i].settings.from.is_some();
                if after && !before && window {
                    log::warn!("site {}: maintenance window began", site.name);
                }
            }
            was_on = on;
            if let Err(e) = rt.end_windows(now) {
                log::error!("cannot end a maintenance window: {e}");
            }
        }
    }
}
