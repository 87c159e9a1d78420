//! The HTTP proxy: Pingora's `ProxyHttp` phases in the order they run.
//!
//! - `request_filter`: route to a site, find the client address, pass the
//!   maintenance gate (or answer the maintenance page), read the sticky
//!   cookie, choose a server (or answer the error page) and edit the
//!   request for it: strip our cookies, add X-Forwarded-*.
//! - `upstream_peer`: the chosen server; on a retried connect failure, the
//!   next one.
//! - `response_filter`: pin a new or redispatched client with Set-Cookie.
//! - `logging`: in-flight bookkeeping, metrics, the access log.

pub mod deadline;
pub mod gate;
pub mod headers;
pub mod pages;
pub mod route;
pub mod select;
pub mod sticky;

use crate::state::{now_ms, Runtime, Snapshot};
use async_trait::async_trait;
use bytes::Bytes;
use gate::Bypass;
use headers::{X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use http::header::{Entry, HeaderValue, CACHE_CONTROL, COOKIE, HOST, SET_COOKIE};
use pingora_core::modules::http::HttpModules;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use select::{Candidate, Tier};
use smallvec::SmallVec;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

pub struct Proxy {
    rt: Arc<Runtime>,
    /// Whether access-log lines are written (fixed at start).
    access_log: bool,
    /// Precomputed `Set-Cookie` values, per backend and server.
    set_cookies: Vec<Vec<HeaderValue>>,
}

impl Proxy {
    pub fn new(rt: Arc<Runtime>) -> Proxy {
        let set_cookies = rt
            .config
            .backends
            .iter()
            .map(|b| {
                b.servers
                    .iter()
                    .map(|s| {
                        // Cookie names and ids are checked tokens: always a
                        // valid header value.
                        let v = b
                            .sticky
                            .as_ref()
                            .map(|st| sticky::set_cookie(st, &s.id))
                            .unwrap_or_default();
                        // Kept for the life of the process, as the config
                        // is: a static value is handed to each response
                        // without touching a shared reference count.
                        let v: &'static str = Box::leak(v.into_boxed_str());
                        HeaderValue::from_str(v)
                            .map(|_| HeaderValue::from_static(v))
                            .unwrap_or_else(|_| HeaderValue::from_static(""))
                    })
                    .collect()
            })
            .collect();
        Proxy {
            rt,
            set_cookies,
            access_log: crate::logging::access_enabled(),
        }
    }
}

/// What the request's `Cookie` headers hold of ours (the sticky and the
/// bypass cookie), which the server must not see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OurCookies {
    None,
    /// Ours and nothing else: the headers go.
    Only,
    /// Ours among others: ours are cut out.
    Among,
}

/// How a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Upstream,
    Maintenance,
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
    server: Option<usize>,
    tier: Option<Tier>,
    tried: SmallVec<[usize; 4]>,
    peer_calls: usize,
    answer: Answer,
    /// The upstream read deadline (`read_timeout`), once connected.
    deadline: Option<deadline::Handle>,
    /// The server's response body ends with the connection's close.
    until_close: bool,
}

impl Drop for Ctx {
    fn drop(&mut self) {
        deadline::release(self.deadline.take());
    }
}

impl Ctx {
    fn snap(&self) -> &Snapshot {
        self.snap
            .as_deref()
            .expect("the snapshot is loaded first in request_filter")
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

    /// Choose a server for this request, or `None` when no server can answer.
    fn choose(&self, ctx: &mut Ctx) -> Option<usize> {
        if ctx.tried.is_empty() {
            if let Some(s) = self.choose_common(ctx) {
                return Some(s);
            }
        }
        self.choose_any(ctx)
    }

    /// The common cases of a first choice, decided from the snapshot and
    /// the backend's up mask alone: a cookie naming a server that is up
    /// and `ready` or in `drain`; no cookie, round-robin or random
    /// balancing, and the whole ready tier up. `None` leaves the choice to
    /// [`Proxy::choose_any`], which gives the same answer in these cases.
    fn choose_common(&self, ctx: &mut Ctx) -> Option<usize> {
        use crate::config::Balance;
        let rt = &self.rt;
        let b = ctx.backend;
        let up = rt.up_mask[b].load(Relaxed);
        let snap = ctx.snap();
        if let Some(s) = ctx.cookie_server {
            // The same rule as `choose_any`, without a bypass: a server in
            // `maint` is left to it.
            let c = Candidate {
                state: snap.servers[b][s].state,
                weight: 0,
                backup: false,
                up: select::up_bit(s).is_some_and(|bit| up & bit != 0),
                seed: 0,
            };
            select::sticky_target(&c, false).ok()?;
            ctx.tier = Some(Tier::Sticky);
            return Some(s);
        }
        let tier = snap.ready[b].as_ref().filter(|t| up & t.mask == t.mask)?;
        let key = match rt.config.backends[b].balance {
            Balance::RoundRobin => rt.rr[b].fetch_add(1, Relaxed),
            Balance::Random => rand::random(),
            Balance::SourceHash => return None,
        };
        let s = tier.pick(key);
        ctx.tier = Some(Tier::Ready);
        Some(s)
    }

    /// Any choice: the sticky server if it may take the request, else the
    /// best tier of servers not tried yet.
    fn choose_any(&self, ctx: &mut Ctx) -> Option<usize> {
        let rt = &self.rt;
        let b = ctx.backend;
        let mut cands: SmallVec<[Candidate; 8]> = SmallVec::new();
        rt.candidates_into(ctx.snap(), b, |c| cands.push(c));
        if let Some(s) = ctx.cookie_server.filter(|s| !ctx.tried.contains(s)) {
            let bypass =
                cands[s].state == crate::config::AdminState::Maint && self.bypass(ctx).is_some();
            match select::sticky_target(&cands[s], bypass) {
                Ok(()) => {
                    ctx.tier = Some(Tier::Sticky);
                    return Some(s);
                }
                Err(reason) if ctx.tried.is_empty() => {
                    let m = &rt.metrics.backends[b];
                    match reason {
                        select::Redispatch::Down => m.redispatch_down.inc(),
                        select::Redispatch::Maint => m.redispatch_maint.inc(),
                    }
                }
                Err(_) => {}
            }
        }
        let backend = &rt.config.backends[b];
        let key = match backend.balance {
            crate::config::Balance::RoundRobin => rt.rr[b].fetch_add(1, Relaxed),
            crate::config::Balance::Random => rand::random(),
            crate::config::Balance::SourceHash => select::mix(ip_key(ctx.client)),
        };
        let mut pick = select::balance(&cands, backend.balance, key, false, &ctx.tried);
        // Only when no ready server is left does a bypassing request need
        // to know it may also use servers in maint.
        if !matches!(pick, Some((_, Tier::Ready | Tier::Backup))) && self.bypass(ctx).is_some() {
            pick = select::balance(&cands, backend.balance, key, true, &ctx.tried).or(pick);
        }
        let (s, tier) = pick?;
        if tier == Tier::Drain {
            log::info!(
                "{}: no ready server left, using {} in drain as a last resort",
                backend.name,
                backend.servers[s].name
            );
        }
        ctx.tier = Some(tier);
        Some(s)
    }

    /// Account a request to a server: in flight until `logging`.
    fn assign(&self, ctx: &mut Ctx, s: usize) {
        let b = ctx.backend;
        if let Some(prev) = ctx.server.replace(s) {
            self.rt.metrics.servers[b][prev].inflight.dec();
        }
        self.rt.metrics.servers[b][s].inflight.inc();
        let live = &self.rt.live[b][s];
        live.requests_total.fetch_add(1, Relaxed);
        if ctx.tier == Some(Tier::Sticky) {
            live.last_sticky_ms.store(now_ms(), Relaxed);
        }
    }

    /// Edit the client's request into the one the server gets: our
    /// cookies removed, X-Forwarded-For/Proto/Host set. Done once on the
    /// downstream header, before Pingora copies it for each upstream
    /// attempt: the copy is then made without Pingora's header-case map,
    /// and a retry on another server does not append to X-Forwarded-For
    /// twice.
    fn forwarded_headers(
        &self,
        req: &mut RequestHeader,
        ctx: &Ctx,
        peer: Option<IpAddr>,
        ours: OurCookies,
    ) {
        let site = &self.rt.config.sites[ctx.site];
        let sticky_name = self.rt.config.backends[ctx.backend]
            .sticky
            .as_ref()
            .map(|s| s.cookie.as_str());
        headers::edit_request(req, 3, |h| {
            match ours {
                OurCookies::None => {}
                OurCookies::Only => {
                    h.remove(COOKIE);
                }
                OurCookies::Among => {
                    let names: SmallVec<[&str; 2]> = sticky_name
                        .into_iter()
                        .chain([site.bypass_cookie.as_str()])
                        .collect();
                    headers::strip_cookies(h, &names);
                }
            }
            headers::append_forwarded_for(h, peer);
            h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
            if let Some(host) = h.get(HOST).cloned() {
                h.insert(X_FORWARDED_HOST, host);
            }
        });
    }

    /// The site's error page: 503 when no server could take the request,
    /// 502 or 504 when the one that took it failed.
    async fn error_page(&self, session: &mut Session, ctx: &mut Ctx, status: u16) -> Result<()> {
        ctx.answer = Answer::ErrorPage;
        self.rt.metrics.sites[ctx.site].error_page.inc();
        let body = self.rt.error_pages[ctx.site].clone();
        pages::respond(session, status, pages::HTML, body).await
    }
}

/// Largest request body read and dropped so that a refused request keeps
/// its connection alive; a larger one closes the connection instead.
const MAX_DISCARD: usize = 64 * 1024;

/// Read and drop the body of a request answered locally, so the client
/// connection stays usable (keep-alive is kept for forms posted during
/// maintenance). Bounded in size and time.
async fn discard_small_body(session: &mut Session) {
    if session.as_downstream_mut().is_body_empty() {
        return;
    }
    let drained = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        let mut seen = 0usize;
        loop {
            match session.as_downstream_mut().read_request_body().await {
                Ok(Some(chunk)) => {
                    seen += chunk.len();
                    if seen > MAX_DISCARD {
                        return false;
                    }
                }
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    if !drained {
        session.as_downstream_mut().set_keepalive(None);
    }
}

/// A 64-bit key of a client address for source hashing.
pub fn ip_key(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => {
            let n = u128::from(v6);
            (n >> 64) as u64 ^ n as u64
        }
    }
}

fn header_bytes(
    req: &RequestHeader,
    name: http::header::HeaderName,
) -> impl DoubleEndedIterator<Item = &[u8]> {
    req.headers.get_all(name).into_iter().map(|v| v.as_bytes())
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
            tier: None,
            tried: SmallVec::new(),
            peer_calls: 0,
            answer: Answer::Upstream,
            deadline: None,
            until_close: false,
        })
    }

    /// The local answers (no site, maintenance, error page) run in futures
    /// of their own: this one, moved into a new box for every request,
    /// then holds a pointer instead of their whole state.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Box<Ctx>) -> Result<bool> {
        let rt = &self.rt;
        let req = session.req_header();
        // Host is looked up only when routing needs it.
        let host = rt.router.reads_host().then(|| {
            req.headers
                .get(HOST)
                .map(|h| h.as_bytes())
                .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()))
        });
        let Some(site_idx) = rt.router.route(host.flatten()) else {
            ctx.answer = Answer::NoSite;
            let body = Bytes::from_static(b"no site is configured for this host\n");
            Box::pin(pages::respond(
                session,
                404,
                "text/plain; charset=utf-8",
                body,
            ))
            .await?;
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
        let req = session.req_header();
        ctx.client = if rt.config.trusted_proxies.is_empty() {
            peer
        } else {
            gate::client_ip(
                peer,
                &rt.config.trusted_proxies,
                header_bytes(req, X_FORWARDED_FOR),
            )
        };
        let backend = &rt.config.backends[site.backend];
        let sticky_cookie = backend.sticky.as_ref().map(|st| st.cookie.as_str());
        let cookies = sticky::find_each(
            header_bytes(req, COOKIE),
            [Some(site.bypass_cookie.as_str()), sticky_cookie],
        );
        let [bypass_cookie, sticky_value] = cookies.values;
        let ours = match (
            bypass_cookie.is_some() || sticky_value.is_some(),
            cookies.others,
        ) {
            (false, _) => OurCookies::None,
            (true, false) => OurCookies::Only,
            (true, true) => OurCookies::Among,
        };
        ctx.bypass_cookie = bypass_cookie.map(Bytes::copy_from_slice);
        if let Some(v) = sticky_value {
            ctx.cookie_server = backend.servers.iter().position(|s| s.id.as_bytes() == v);
            if ctx.cookie_server.is_none() {
                rt.metrics.backends[site.backend].redispatch_unknown.inc();
            }
        }
        let snap = rt.snapshot();
        let st = &snap.sites[site_idx];
        let in_maintenance = gate::in_maintenance(
            st.settings.enabled,
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
                    ctx.answer = Answer::Maintenance;
                    m.maintenance_responses.inc();
                    let snap = ctx.snap.clone().expect("loaded above");
                    let page = &snap.sites[site_idx].page;
                    let accept = session
                        .req_header()
                        .headers
                        .get(http::header::ACCEPT)
                        .map(|a| a.as_bytes());
                    let (head, body) = if pages::prefers_json(accept) {
                        (page.json_head.clone(), page.json.clone())
                    } else {
                        (page.html_head.clone(), page.html.clone())
                    };
                    Box::pin(async {
                        discard_small_body(session).await;
                        pages::send(session, head, body).await
                    })
                    .await?;
                    return Ok(true);
                }
            }
        }
        match self.choose(ctx) {
            Some(s) => {
                self.assign(ctx, s);
                self.forwarded_headers(session.req_header_mut(), ctx, last_hop, ours);
                Ok(false)
            }
            None => {
                Box::pin(self.error_page(session, ctx, 503)).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Box<Ctx>,
    ) -> Result<Box<HttpPeer>> {
        ctx.peer_calls += 1;
        if ctx.peer_calls > 1 {
            // A retry after a connect failure: another server.
            if let Some(prev) = ctx.server {
                ctx.tried.push(prev);
            }
            match self.choose(ctx) {
                Some(s) => self.assign(ctx, s),
                None => {
                    return Error::e_explain(
                        ErrorType::HTTPStatus(503),
                        "no other server to retry on",
                    )
                }
            }
        }
        let Some(s) = ctx.server else {
            return Error::e_explain(ErrorType::HTTPStatus(503), "no server chosen");
        };
        let backend = &self.rt.config.backends[ctx.backend];
        let mut peer = HttpPeer::new(self.rt.live[ctx.backend][s].addr, false, String::new());
        peer.options.connection_timeout = Some(backend.connect_timeout);
        // No `read_timeout` here: `deadline` enforces it (see there).
        Ok(Box::new(peer))
    }

    /// The server connection is ready: its read deadline starts.
    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        if let Some(s) = ctx.server {
            let timeout = self.rt.config.backends[ctx.backend].read_timeout;
            deadline::arm(
                &mut ctx.deadline,
                fd,
                self.rt.live[ctx.backend][s].addr,
                timeout,
            );
        }
        Ok(())
    }

    /// A request body chunk on its way to the server: progress.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        if body.as_ref().is_some_and(|b| !b.is_empty()) {
            deadline::touch(ctx.deadline);
        }
        Ok(())
    }

    /// The response header arrived: progress, or the end of the wait when
    /// the response has no body.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        match headers::response_body(&session.req_header().method, resp) {
            headers::ResponseBody::Empty => {
                deadline::finish(ctx.deadline);
            }
            body => {
                ctx.until_close = body == headers::ResponseBody::UntilClose;
                deadline::touch(ctx.deadline);
            }
        }
        Ok(())
    }

    /// A response body chunk: progress, or the end of the wait. A body
    /// that ends with the connection's close, after the deadline fired and
    /// shut the connection down, was cut short and would otherwise look
    /// complete: an error. (Other bodies show an early close by themselves.)
    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Box<Ctx>,
    ) -> Result<Option<std::time::Duration>> {
        if end_of_stream {
            if deadline::finish(ctx.deadline) && ctx.until_close {
                return Error::e_explain(
                    ErrorType::ReadTimedout,
                    "response body cut off by read_timeout",
                );
            }
        } else {
            deadline::touch(ctx.deadline);
        }
        Ok(None)
    }

    /// Pingora's retry decision (not for a request that is not idempotent
    /// or whose body was not kept; only on a reused connection), except
    /// that a request whose read deadline fired is a read timeout and is
    /// never retried: the server may be working on it.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Box<Ctx>,
        client_reused: bool,
    ) -> Box<Error> {
        if deadline::finish(ctx.deadline) {
            let mut t = Error::because(
                ErrorType::ReadTimedout,
                format!("nothing from {} within read_timeout", peer._address),
                e,
            );
            t.set_retry(false);
            return t.into_up();
        }
        let mut e = e.more_context(format!("Peer: {peer}"));
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
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
        if let Some(s) = ctx.server {
            self.rt.metrics.servers[ctx.backend][s].connect_errors.inc();
        }
        // Nothing of the request was sent yet: safe to try another server.
        e.set_retry(ctx.peer_calls <= self.rt.config.backends[ctx.backend].retries);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Box<Ctx>,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(c) => *c,
            _ => match e.esource() {
                // The server took the request but did not answer in time
                // (read_timeout): a gateway timeout, as HAProxy's
                // `timeout server` gives.
                pingora_error::ErrorSource::Upstream => match e.etype() {
                    ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
                    _ => 502,
                },
                pingora_error::ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                _ => 500,
            },
        };
        // No server could take the request: the site's error page, never
        // Pingora's bare error.
        let can_answer = code != 0 && session.response_written().is_none() && ctx.snap.is_some();
        if can_answer && (code == 502 || code == 503 || code == 504) {
            // Connect failures on every server tried: nobody could answer.
            let status = match e.etype() {
                ErrorType::ConnectTimedout
                | ErrorType::ConnectRefused
                | ErrorType::ConnectNoRoute
                | ErrorType::ConnectError => 503,
                _ => code,
            };
            if let Err(err) = self.error_page(session, ctx, status).await {
                log::debug!("cannot send the error page: {err}");
            }
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: false,
            };
        }
        if code > 0 && session.response_written().is_none() {
            let _ = session.respond_error(code).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        let Some(s) = ctx.server else { return Ok(()) };
        if self.rt.config.backends[ctx.backend].sticky.is_none() || ctx.cookie_server == Some(s) {
            return Ok(());
        }
        let set_cookie = self.set_cookies[ctx.backend][s].clone();
        headers::edit_response(resp, 2, |h| {
            h.append(SET_COOKIE, set_cookie);
            match h.entry(CACHE_CONTROL) {
                Entry::Vacant(e) => {
                    e.insert(HeaderValue::from_static("private"));
                }
                Entry::Occupied(mut e) if !sticky::forbids_shared_cache(e.get().as_bytes()) => {
                    let kept: Vec<&str> = std::str::from_utf8(e.get().as_bytes())
                        .unwrap_or("")
                        .split(',')
                        .map(str::trim)
                        .filter(|d| !d.is_empty() && !d.eq_ignore_ascii_case("public"))
                        .collect();
                    let mut value = kept.join(", ");
                    if !value.is_empty() {
                        value.push_str(", ");
                    }
                    value.push_str("private");
                    if let Ok(v) = HeaderValue::from_str(&value) {
                        e.insert(v);
                    }
                }
                Entry::Occupied(_) => {}
            }
        });
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Box<Ctx>) {
        deadline::release(ctx.deadline.take());
        let rt = &self.rt;
        if let Some(s) = ctx.server {
            rt.metrics.servers[ctx.backend][s].inflight.dec();
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        if ctx.snap.is_none() && ctx.answer != Answer::NoSite {
            // The request never reached routing (a malformed request).
            return;
        }
        let elapsed = ctx.start.elapsed();
        let class = crate::metrics::code_class(status);
        let target = if ctx.answer == Answer::NoSite {
            None
        } else {
            let m = &rt.metrics.sites[ctx.site];
            m.duration.observe(elapsed);
            match (ctx.answer, ctx.server) {
                (Answer::Maintenance, _) => m.maintenance_requests[class].inc(),
                (Answer::ErrorPage, _) | (_, None) => m.error_requests[class].inc(),
                (Answer::Upstream, Some(s)) => m.requests[s][class].inc(),
                (Answer::NoSite, _) => {}
            }
            Some(m)
        };
        if self.access_log {
            let req = session.req_header();
            let site = target
                .map(|_| rt.config.sites[ctx.site].name.as_str())
                .unwrap_or("-");
            let backend = &rt.config.backends[ctx.backend];
            let (b, s) = match (ctx.answer, ctx.server) {
                (Answer::Maintenance, _) => ("", "maintenance"),
                (Answer::NoSite, _) => ("", "-"),
                (Answer::Upstream, Some(s)) => {
                    (backend.name.as_str(), backend.servers[s].name.as_str())
                }
                _ => ("", "error"),
            };
            let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
            // `client site METHOD /path status backend/server 1.234ms [error=...]`
            crate::logging::access(|line| {
                headers::write_ip(line, ctx.client);
                for field in [site, req.method.as_str(), req.uri.path()] {
                    line.push(b' ');
                    line.extend_from_slice(field.as_bytes());
                }
                line.push(b' ');
                crate::logging::push_decimal(line, u64::from(status));
                line.push(b' ');
                if !b.is_empty() {
                    line.extend_from_slice(b.as_bytes());
                    line.push(b'/');
                }
                line.extend_from_slice(s.as_bytes());
                line.push(b' ');
                crate::logging::push_decimal(line, micros / 1000);
                let frac = micros % 1000;
                line.extend_from_slice(&[
                    b'.',
                    b'0' + (frac / 100) as u8,
                    b'0' + (frac / 10 % 10) as u8,
                    b'0' + (frac % 10) as u8,
                ]);
                line.extend_from_slice(b"ms");
                if let Some(e) = e {
                    line.extend_from_slice(b" error=");
                    line.extend_from_slice(e.etype().as_str().as_bytes());
                }
            });
        }
    }
}
