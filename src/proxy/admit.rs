//! Admission to a server with a `max_conns` (a slot below the limit, or a
//! wait in the backend's queue), and the choice of a server of a site's
//! maintenance backend (CONTRACT section 12).

use super::{answer, Ctx, Proxy};
use crate::config::Balance;
use crate::policy::select::{self, Candidate, Tier, Wait};
use crate::queue::{Slots, Waited};
use crate::state::InFlight;
use pingora_error::Result;
use pingora_proxy::Session;
use smallvec::SmallVec;
use std::sync::atomic::Ordering::Relaxed;

impl Proxy {
    /// A server for a request to a backend with `max_conns`: one below
    /// its limit, else a wait in the backend's queue. `Ok(None)`: the
    /// request was answered (503 with the error page).
    pub(super) async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<Option<usize>> {
        let rt = &self.rt;
        let b = ctx.backend;
        // A server found below its limit may fill before its slot is
        // taken: choose again, a bounded number of times.
        for _ in 0..=ctx.snap().servers[b].len() {
            let choice = self.choose_full(ctx);
            if let Some((s, tier)) = choice.pick {
                if ctx.snap().servers[b][s].server.try_take() {
                    ctx.tier = Some(tier);
                    self.assign(ctx, s, true);
                    return Ok(Some(s));
                }
                continue;
            }
            let (Some(wait), Some(queue)) = (choice.wait, &rt.queues[b]) else {
                break;
            };
            let members = &ctx.snap().servers[b];
            let want = match wait {
                Wait::Server(s) => Some(members[s].server.key),
                Wait::Any => None,
            };
            let servers = members.iter().map(|m| &m.server);
            let retry_after = queue.settings.timeout.as_secs().max(1);
            match queue.wait(want, servers).await {
                Waited::Granted(server) => {
                    ctx.tier = Some(if want.is_some() {
                        Tier::Sticky
                    } else {
                        Tier::Ready
                    });
                    // Servers may have joined or left while it waited:
                    // the slot is used only on a server of the backend
                    // as it is now.
                    ctx.reload_snap(rt);
                    match ctx.snap().position(b, server.key) {
                        Some(s) => {
                            self.assign(ctx, s, true);
                            return Ok(Some(s));
                        }
                        // It left meanwhile: the slot goes back.
                        None => drop(InFlight::adopt(server)),
                    }
                    continue;
                }
                // Its sticky server can no longer take it: choose again,
                // with the states as they are now.
                Waited::Retry => {
                    ctx.reload_snap(rt);
                    continue;
                }
                Waited::TimedOut => rt.metrics.backends[b].queue_timeouts.inc(),
                Waited::Full => {}
            }
            answer::error_page(rt, session, ctx, 503, Some(retry_after)).await?;
            return Ok(None);
        }
        answer::error_page(rt, session, ctx, 503, None).await?;
        Ok(None)
    }

    /// A server of the site's maintenance backend `mb` for a request held
    /// by maintenance: round robin over its usable servers, no stickiness,
    /// one below its `max_conns` (never waiting). With whether its slot
    /// is already taken; `None`: the local page answers.
    pub(super) fn maintenance_server(&self, ctx: &Ctx, mb: usize) -> Option<(usize, bool)> {
        let rt = &self.rt;
        let mut cands: SmallVec<[Candidate; 8]> = SmallVec::new();
        rt.candidates_into(ctx.snap(), mb, |c| cands.push(c));
        let key = rt.rr[mb].fetch_add(1, Relaxed);
        let (s, _) = select::balance(&cands, Balance::RoundRobin, key, false, &[])?;
        if rt.queues[mb].is_none() {
            return Some((s, false));
        }
        let server = &ctx.snap().servers[mb][s].server;
        server.try_take().then_some((s, true))
    }
}
