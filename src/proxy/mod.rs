//! The HTTP proxy: Pingora's `ProxyHttp` phases in the order they run.
//!
//! - `request_filter`: the client limits take over from the head deadline
//!   ([`crate::limits`]), route to a site, find the client address, pass the
//!   maintenance gate (or answer the maintenance page, [`answer`]), read
//!   our cookies and edit the request ([`request`]), choose a server (or
//!   answer the error page).
//! - `upstream_peer`: the chosen server, with its timeouts; on a retried
//!   connect failure, the next one.
//! - `fail_to_proxy`: the status a failure answers, and the error page.
//! - `response_filter`: pin a new or redispatched client with Set-Cookie.
//! - `logging`: in flight released, metrics and the access log ([`account`]).
//!
//! Every decision is a function of [`crate::policy`]; this module holds the
//! request's context and the order of the phases.

mod account;
mod admit;
pub mod answer;
pub mod headers;
mod pin;
mod request;

use crate::policy::errors::{failure, Failure};
use crate::policy::gate::{self, Bypass};
use crate::policy::select::{self, Candidate, Choice, Redispatch, Tier};
use crate::policy::sticky;
use crate::queue::Slots;
use crate::state::{now_ms, InFlight, Runtime, Snapshot};
use async_trait::async_trait;
use bytes::Bytes;
use headers::X_FORWARDED_FOR;
use http::header::HOST;
use pingora_core::modules::http::HttpModules;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use smallvec::SmallVec;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

pub struct Proxy {
    rt: Arc<Runtime>,
    /// Whether access-log lines are written (fixed at start).
    access_log: bool,
}

impl Proxy {
    pub fn new(rt: Arc<Runtime>) -> Proxy {
        Proxy {
            rt,
            access_log: crate::logging::access_enabled(),
        }
    }
}

/// How a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Upstream,
    Maintenance,
    /// `force_https`'s 308.
    Redirect,
    ErrorPage,
    NoSite,
}

pub struct Ctx {
    start: Instant,
    snap: Option<Arc<Snapshot>>,
    site: usize,
    backend: usize,
    /// The client: the peer, or the address trusted proxies forwarded.
    client: IpAddr,
    /// The server the sticky cookie names, if it is one of this backend's.
    cookie_server: Option<usize>,
    /// Whether the request bypasses maintenance; computed when needed.
    bypass: Option<Option<Bypass>>,
    bypass_cookie: Option<Bytes>,
    /// The chosen server's position in the snapshot's backend.
    server: Option<usize>,
    /// Counts the request in flight to `server` until the context goes;
    /// also the request's way to the server itself.
    inflight: Option<InFlight>,
    tier: Option<Tier>,
    tried: SmallVec<[usize; 4]>,
    peer_calls: usize,
    answer: Answer,
    /// The request came over TLS.
    tls: bool,
    /// Proxied to the site's maintenance backend: no stickiness.
    maintenance_backend: bool,
    /// Its upstream socket, remembered for `shutdown_sessions`.
    upstream: Option<crate::sessions::Session>,
}

impl Ctx {
    fn snap(&self) -> &Snapshot {
        self.snap
            .as_deref()
            .expect("the snapshot is loaded first in request_filter")
    }

    /// The server the request is assigned to.
    fn target(&self) -> Option<&Arc<crate::state::Server>> {
        self.inflight.as_ref().map(|i| i.server())
    }

    /// Take the current snapshot (servers may have joined or left since):
    /// the cookie's server is found again by its key.
    fn reload_snap(&mut self, rt: &Runtime) {
        let snap = rt.snapshot();
        if let (Some(s), Some(old)) = (self.cookie_server, self.snap.as_deref()) {
            let key = old.servers[self.backend][s].server.key;
            self.cookie_server = snap.position(self.backend, key);
        }
        self.snap = Some(snap);
    }
}

impl Proxy {
    fn bypass(&self, ctx: &mut Ctx) -> Option<Bypass> {
        if let Some(b) = ctx.bypass {
            return b;
        }
        let site = &self.rt.config.sites[ctx.site];
        let b = gate::bypass(
            ctx.client,
            &ctx.snap().sites[ctx.site].settings.allow,
            ctx.bypass_cookie.as_deref(),
            &self.rt.keys[ctx.site],
            &site.name,
            || now_ms() / 1000,
        );
        ctx.bypass = Some(b);
        b
    }

    /// Choose a server for this request ([`select::choose_fast`] on a first
    /// attempt, else [`select::choose`]), or `None` when no server can
    /// answer; records the tier and counts a redispatch.
    fn choose(&self, ctx: &mut Ctx) -> Option<usize> {
        let rt = &self.rt;
        let b = ctx.backend;
        let balance = rt.config.backends[b].balance;
        if ctx.tried.is_empty() && !(ctx.snap().slow[b] && rt.ramping(ctx.snap(), b)) {
            let snap = ctx.snap();
            let cookie = ctx.cookie_server.map(|s| (s, snap.servers[b][s].state));
            let key = || select::balance_key(balance, &rt.rr[b], ctx.client);
            let up = snap.up_mask[b].load(Relaxed);
            if let Some((s, tier)) =
                select::choose_fast(cookie, snap.ready[b].as_ref(), up, balance, key)
            {
                ctx.tier = Some(tier);
                return Some(s);
            }
        }
        let choice = self.choose_full(ctx);
        ctx.tier = choice.pick.map(|p| p.1);
        choice.pick.map(|p| p.0)
    }

    /// [`select::choose`] over the backend's servers as they are now
    /// (full ones and slow starts included); counts a redispatch.
    pub(super) fn choose_full(&self, ctx: &mut Ctx) -> Choice {
        let rt = &self.rt;
        let b = ctx.backend;
        let balance = rt.config.backends[b].balance;
        let mut cands: SmallVec<[Candidate; 8]> = SmallVec::new();
        rt.candidates_into(ctx.snap(), b, |c| cands.push(c));
        let (cookie, tried, client) = (ctx.cookie_server, ctx.tried.clone(), ctx.client);
        let choice = select::choose(
            &cands,
            cookie,
            &tried,
            balance,
            || select::balance_key(balance, &rt.rr[b], client),
            || self.bypass(ctx).is_some(),
        );
        match choice.redispatch {
            Some(Redispatch::Down) => rt.metrics.backends[b].redispatch_down.inc(),
            Some(Redispatch::Maint) => rt.metrics.backends[b].redispatch_maint.inc(),
            None => {}
        }
        if let Some((s, Tier::Drain)) = choice.pick {
            log::info!(
                "{}: no ready server left, using {} in drain as a last resort",
                rt.config.backends[b].name,
                ctx.snap().servers[b][s].server.name()
            );
        }
        choice
    }

    /// Account a request to a server: in flight while the context holds
    /// it (`taken`: its slot is already counted).
    pub(super) fn assign(&self, ctx: &mut Ctx, s: usize, taken: bool) {
        let inflight = {
            let live = &ctx.snap().servers[ctx.backend][s].server;
            if taken {
                InFlight::adopt(live.clone())
            } else {
                InFlight::new(live)
            }
        };
        // A retry's previous server is released before the new guard is
        // kept.
        ctx.inflight = None;
        let live = ctx.inflight.insert(inflight).server();
        ctx.server = Some(s);
        live.requests_total.fetch_add(1, Relaxed);
        if ctx.tier == Some(Tier::Sticky) {
            let now = now_ms();
            live.last_sticky_ms.store(now, Relaxed);
            live.sticky_clients.record(ctx.client, now);
        }
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    /// Boxed: Pingora moves its request futures, and they hold the context;
    /// a pointer moves cheaper than the whole context.
    type CTX = Box<Ctx>;

    /// No downstream modules: Pingora's default adds a response
    /// compression module (disabled, yet run on every request); drawbridge
    /// does not compress.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> Box<Ctx> {
        Box::new(Ctx {
            start: Instant::now(),
            snap: None,
            site: 0,
            backend: 0,
            client: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            cookie_server: None,
            bypass: None,
            bypass_cookie: None,
            server: None,
            inflight: None,
            tier: None,
            tried: SmallVec::new(),
            peer_calls: 0,
            answer: Answer::Upstream,
            tls: false,
            maintenance_backend: false,
            upstream: None,
        })
    }

    /// Route, find the client, pass the maintenance gate, choose a server.
    /// The local answers (no site, maintenance, error page) run in futures
    /// of their own: this one, moved into a new box for every request,
    /// then holds a pointer instead of their whole state.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Box<Ctx>) -> Result<bool> {
        let rt = &self.rt;
        crate::limits::request_started(session, &rt.limiter.limits);
        let req = session.req_header();
        // Host is looked up only when routing needs it.
        let host = rt.router.reads_host().then(|| {
            req.headers
                .get(HOST)
                .map(|h| h.as_bytes())
                // HTTP/2's :authority.
                .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()))
                .or_else(|| {
                    // Pingora keeps an HTTP/1 absolute-form target whole:
                    // its authority names the host, as Pingora's Host
                    // upstream will.
                    crate::policy::route::target_authority(req.raw_path())
                })
        });
        let Some(site_idx) = rt.router.route(host.flatten()) else {
            ctx.answer = Answer::NoSite;
            let body = Bytes::from_static(b"no site is configured for this host\n");
            let page = answer::respond(session, 404, "text/plain; charset=utf-8", body);
            Box::pin(page).await?;
            return Ok(true);
        };
        let site = &rt.config.sites[site_idx];
        ctx.site = site_idx;
        ctx.backend = site.backend;
        // The socket peer: the last hop, appended to X-Forwarded-For.
        let last_hop = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let peer = last_hop.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        ctx.client = if rt.config.trusted_proxies.is_empty() {
            peer
        } else {
            gate::client_ip(
                peer,
                &rt.config.trusted_proxies,
                request::header_bytes(req, X_FORWARDED_FOR),
            )
        };
        if site.force_https && !ctx.tls {
            let host = req.headers.get(HOST).map(|h| h.as_bytes());
            let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
            if let Some(location) =
                crate::policy::route::https_redirect(host, site.https_port, target)
            {
                ctx.answer = Answer::Redirect;
                Box::pin(answer::redirect(session, location)).await?;
                return Ok(true);
            }
        }
        let snap = rt.snapshot();
        let ours = request::read_cookies(rt, &snap, req, ctx);
        let st = &snap.sites[site_idx];
        let m = &st.settings;
        let in_maintenance = gate::in_maintenance(
            gate::switched_on(m.enabled, m.from, m.until, now_ms),
            st.paths.as_ref(),
            req.uri.path(),
            snap.all_maint[site.backend],
        );
        ctx.snap = Some(snap);
        if in_maintenance {
            let m = &rt.metrics.sites[site_idx];
            match self.bypass(ctx) {
                Some(Bypass::Allow) => m.bypass_allow.inc(),
                Some(Bypass::Token) => m.bypass_token.inc(),
                None => {
                    if let Some(mb) = site.maintenance_backend {
                        if let Some((s, taken)) = self.maintenance_server(ctx, mb) {
                            let req = session.req_header_mut();
                            request::forwarded_headers(rt, req, ctx, last_hop, ours);
                            ctx.backend = mb;
                            ctx.cookie_server = None;
                            ctx.maintenance_backend = true;
                            ctx.answer = Answer::Maintenance;
                            rt.metrics.sites[site_idx].maintenance_responses.inc();
                            self.assign(ctx, s, taken);
                            return Ok(false);
                        }
                    }
                    Box::pin(answer::maintenance_page(rt, session, ctx)).await?;
                    return Ok(true);
                }
            }
        }
        if rt.queues[ctx.backend].is_some() {
            if Box::pin(self.admit(session, ctx)).await?.is_none() {
                return Ok(true);
            }
        } else if let Some(s) = self.choose(ctx) {
            self.assign(ctx, s, false);
        } else {
            Box::pin(answer::error_page(rt, session, ctx, 503, None)).await?;
            return Ok(true);
        }
        request::forwarded_headers(&self.rt, session.req_header_mut(), ctx, last_hop, ours);
        Ok(false)
    }

    /// The chosen server; on a retried connect failure, the next one.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Box<Ctx>,
    ) -> Result<Box<HttpPeer>> {
        ctx.peer_calls += 1;
        if ctx.peer_calls > 1 {
            if let Some(prev) = ctx.server {
                ctx.tried.push(prev);
            }
            // A retry never waits: a server below its limit, or none.
            let limited = self.rt.queues[ctx.backend].is_some();
            let pick = if limited {
                self.choose_full(ctx)
                    .pick
                    .filter(|(s, _)| ctx.snap().servers[ctx.backend][*s].server.try_take())
                    .map(|(s, tier)| {
                        ctx.tier = Some(tier);
                        s
                    })
            } else {
                self.choose(ctx)
            };
            match pick {
                Some(s) => self.assign(ctx, s, limited),
                None => {
                    return Error::e_explain(
                        ErrorType::HTTPStatus(503),
                        "no other server to retry on",
                    )
                }
            }
        }
        let Some(server) = ctx.target() else {
            return Error::e_explain(ErrorType::HTTPStatus(503), "no server chosen");
        };
        let backend = &self.rt.config.backends[ctx.backend];
        let mut peer = HttpPeer::new(server.addr, false, String::new());
        peer.options.connection_timeout = Some(backend.connect_timeout);
        // The longest silence of the server while drawbridge waits on it.
        peer.options.read_timeout = Some(backend.read_timeout);
        Ok(Box::new(peer))
    }

    /// Whether a failed request goes to another server: never one that is
    /// not idempotent, whose body was not kept, or that timed out reading
    /// (the server may be working on it); an idempotent one when nothing of
    /// the response was read yet.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Box<Ctx>,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if e.etype() == &ErrorType::ReadTimedout
            || !session.req_header().method.is_idempotent()
            || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else if matches!(e.retry, pingora_error::RetryType::ReusedOnly) {
            // Pingora marks an error this way only before any of the
            // response was read: an idempotent request may go to another
            // server even from a fresh connection (a server that died
            // after accepting it), within the backend's retries.
            let retries = self.rt.config.backends[ctx.backend].retries;
            e.set_retry(ctx.peer_calls <= retries);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Box<Ctx>,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(server) = ctx.target() {
            server.metrics.connect_errors.inc();
        }
        // Nothing of the request was sent yet: safe to try another server.
        e.set_retry(ctx.peer_calls <= self.rt.config.backends[ctx.backend].retries);
        e
    }

    /// The error page when no server could answer, never Pingora's bare
    /// error; the status as [`failure`] decides it.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Box<Ctx>,
    ) -> FailToProxy {
        let unanswered = session.response_written().is_none();
        let fail = failure(e.etype(), &e.esource);
        if ctx.maintenance_backend && unanswered && fail != Failure::Silent {
            // The maintenance backend could not answer: the local page.
            if let Err(err) = answer::maintenance_fallback(&self.rt, session, ctx).await {
                log::debug!("cannot send the maintenance page: {err}");
            }
            return FailToProxy {
                error_code: 503,
                can_reuse_downstream: false,
            };
        }
        let error_code = match fail {
            Failure::ErrorPage(status) if unanswered && ctx.snap.is_some() => {
                if let Err(err) = answer::error_page(&self.rt, session, ctx, status, None).await {
                    log::debug!("cannot send the error page: {err}");
                }
                status
            }
            Failure::ErrorPage(code) | Failure::Bare(code) => {
                if unanswered {
                    let _ = session.respond_error(code).await;
                }
                code
            }
            Failure::Silent => 0,
        };
        FailToProxy {
            error_code,
            can_reuse_downstream: false,
        }
    }

    /// Pin a new or redispatched client with Set-Cookie, keeping shared
    /// caches from storing the answer.
    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        let site = &self.rt.config.sites[ctx.site];
        if ctx.tls {
            if let Some(hsts) = &site.hsts {
                resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone())?;
            }
        }
        if let Some(s) = ctx.server.filter(|_| !ctx.maintenance_backend) {
            if ctx.cookie_server != Some(s) {
                if let Some(value) = ctx.target().and_then(|u| u.pin(ctx.tls)) {
                    pin::pin(resp, value.clone());
                }
            }
        }
        Ok(())
    }

    /// With `shutdown_sessions`, remember the request's upstream socket
    /// until it ends.
    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        let sessions = ctx.target().and_then(|u| u.sessions.clone());
        if let Some(sessions) = sessions {
            ctx.upstream = None;
            ctx.upstream = Some(sessions.register(fd));
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Box<Ctx>) {
        ctx.upstream = None;
        // Accounted with its server, then the server's count is released.
        account::account(&self.rt, self.access_log, session, e, ctx);
        ctx.inflight = None;
    }
}
