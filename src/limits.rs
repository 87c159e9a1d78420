//! Client limits where connections arrive (CONTRACT section 10):
//! `max_connections` and `max_connections_per_client` decide whether a new
//! connection is served at all, and `header_timeout` bounds the time to the
//! end of each request head. The decisions are [`crate::policy::limits`];
//! this module holds the counts and the connection wrapper.
//!
//! Where each limit lives, in Pingora 0.9.1 terms:
//! - the connection counts: [`Guarded`], a `ServerApp` around the HTTP
//!   proxy, which sees each connection before Pingora reads from it;
//! - `header_timeout`: [`LimitedStream`], a wrapper of the client's stream
//!   that the proxy tells when a head has been read (`request_filter`) and
//!   when the request is over (`logging`): Pingora's own read timeout
//!   restarts with every byte, so it cannot bound a whole head;
//! - `keepalive_timeout` and `client_body_timeout`: Pingora's per-session
//!   keep-alive and read timeouts, set for each request
//!   ([`request_started`]); without this, Pingora keeps an HTTP/1.1 client
//!   idle for as long as it likes (or as its `Keep-Alive` header asks);
//!   an HTTP/2 connection with no stream open: Pingora's `h2_idle_timeout`
//!   (set in [`crate::server`]).
//!
//! Pingora accepts every connection it can: one over `max_connections` is
//! closed at once rather than left in the kernel's backlog (that would take
//! a limit in Pingora's accept loop).

use crate::config::{Config, Limits};
use crate::policy::limits::{self as policy, LateHead, Refusal};
use async_trait::async_trait;
use ipnet::IpNet;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType, ALPN,
};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::Session;
use prometheus::{IntCounter, IntGauge};
use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

const SHARDS: usize = 64;

/// The connection counts of one process, shared by its HTTP listeners.
#[derive(Debug)]
pub struct Limiter {
    pub limits: Limits,
    /// `limits.max_connections` as resolved at start.
    pub max_connections: usize,
    /// The open-file limit it was derived from.
    pub nofile: u64,
    open: AtomicUsize,
    /// Connections per client address, in shards so that clients rarely
    /// wait on each other (taken once when a connection opens and once
    /// when it closes, and only with a per-client limit).
    per_client: Box<[Mutex<HashMap<IpAddr, usize>>]>,
    trusted: Vec<IpNet>,
}

impl Limiter {
    pub fn new(config: &Config, nofile: u64) -> Limiter {
        let (max_connections, lowered) =
            policy::max_connections(config.limits.max_connections, nofile);
        if lowered {
            log::warn!(
                "limits.max_connections {} is more than the open-file limit {nofile} allows: {max_connections}",
                config.limits.max_connections
            );
        }
        Limiter {
            limits: config.limits.clone(),
            max_connections,
            nofile,
            open: AtomicUsize::new(0),
            per_client: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            trusted: config.trusted_proxies.clone(),
        }
    }

    /// Client connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Relaxed)
    }

    fn shard(&self, ip: IpAddr) -> &Mutex<HashMap<IpAddr, usize>> {
        let key = crate::policy::select::mix(crate::policy::select::ip_key(ip));
        &self.per_client[(key % SHARDS as u64) as usize]
    }

    /// Count a new connection from `client`, or say why it is refused.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Slot, Refusal> {
        let per_client = self.limits.max_connections_per_client;
        let exempt = crate::policy::gate::contains(&self.trusted, client);
        let counted = per_client > 0 && !exempt;
        let mut shard =
            counted.then(|| self.shard(client).lock().unwrap_or_else(|p| p.into_inner()));
        let client_open = shard
            .as_ref()
            .and_then(|m| m.get(&client).copied())
            .unwrap_or(0);
        let open = self.open.fetch_add(1, Relaxed);
        if let Err(r) = policy::admit(open, self.max_connections, client_open, per_client, exempt) {
            self.open.fetch_sub(1, Relaxed);
            return Err(r);
        }
        if let Some(m) = shard.as_mut() {
            *m.entry(client).or_insert(0) += 1;
        }
        Ok(Slot {
            limiter: self.clone(),
            client: counted.then_some(client),
        })
    }
}

/// An admitted connection, counted until dropped.
#[derive(Debug)]
pub struct Slot {
    limiter: Arc<Limiter>,
    /// The client, when counted per client.
    client: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limiter.open.fetch_sub(1, Relaxed);
        if let Some(ip) = self.client {
            let mut m = self
                .limiter
                .shard(ip)
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(n) = m.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&ip);
                }
            }
        }
    }
}

/// Where a connection is in its request cycle.
const HEAD: u8 = 0;
const REQUEST: u8 = 1;
const IDLE: u8 = 2;

/// A client's stream, with the deadline of its request heads.
#[derive(Debug)]
pub struct LimitedStream {
    inner: Stream,
    /// `HEAD` (from the connection's start, or the first byte after a
    /// request), `REQUEST` (head read: Pingora's timeouts apply), `IDLE`
    /// (between requests: Pingora's keep-alive applies).
    phase: AtomicU8,
    head_started: Instant,
    /// Whether any byte of the current head was read.
    head_bytes: bool,
    header_timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    late: IntCounter,
    _slot: Slot,
}

impl LimitedStream {
    /// The limited stream under a request's session, if it has one.
    fn of(session: &Session) -> Option<&LimitedStream> {
        session
            .as_downstream()
            .stream()
            .and_then(|s| s.as_any().downcast_ref::<LimitedStream>())
    }
}

/// The request's head has been read: Pingora's keep-alive and body read
/// timeouts take over, as the limits set them.
pub fn request_started(session: &mut Session, limits: &Limits) {
    if let Some(s) = LimitedStream::of(session) {
        s.phase.store(REQUEST, Relaxed);
    }
    let downstream = session.as_downstream_mut();
    // Pingora sets no limit for an HTTP/1.1 client (or the client's own);
    // none is left on (`None`) when the connection is to close anyway.
    if downstream.get_keepalive().is_some() {
        downstream.set_keepalive(Some(policy::whole_seconds(limits.keepalive_timeout)));
    }
    downstream.set_read_timeout(Some(limits.client_body_timeout));
}

/// The request is over: the next byte starts a new head.
pub fn request_finished(session: &Session) {
    if let Some(s) = LimitedStream::of(session) {
        s.phase.store(IDLE, Relaxed);
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let phase = this.phase.load(Relaxed);
        if phase == REQUEST {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    if phase == IDLE {
                        this.phase.store(HEAD, Relaxed);
                        this.head_started = Instant::now();
                    }
                    this.head_bytes = true;
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending if phase == IDLE => return Poll::Pending,
            Poll::Pending => {}
        }
        let deadline = this.head_started + this.header_timeout;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if std::future::Future::poll(timer.as_mut(), cx).is_pending() {
            return Poll::Pending;
        }
        this.late.inc();
        match policy::late_head(this.head_bytes) {
            // End of stream: Pingora closes quietly.
            LateHead::Close => Poll::Ready(Ok(())),
            LateHead::RequestTimeout => {
                // Best effort: a 408 fits in the socket's buffer.
                let _ = Pin::new(&mut this.inner).poll_write(cx, policy::REQUEST_TIMEOUT);
                let _ = Pin::new(&mut this.inner).poll_flush(cx);
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "request head not complete within header_timeout (408 sent)",
                )))
            }
        }
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for LimitedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for LimitedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for LimitedStream {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for LimitedStream {
    fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for LimitedStream {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: pingora_core::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for LimitedStream {
    fn get_socket_digest(&self) -> Option<Arc<pingora_core::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: pingora_core::protocols::SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for LimitedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// One HTTP listener's figures, and its TLS if it terminates TLS.
struct ListenerFigures {
    name: String,
    addr: Option<std::net::SocketAddr>,
    connections: IntGauge,
    refused: [IntCounter; 2],
    late: IntCounter,
    tls: Option<(crate::tls::Tls, [IntCounter; 2])>,
}

/// The HTTP listeners' connections: counted, limited, and handed to the
/// proxy in a [`LimitedStream`].
pub struct Guarded<A> {
    app: Arc<A>,
    limiter: Arc<Limiter>,
    listeners: Vec<ListenerFigures>,
}

impl<A> Guarded<A> {
    /// `listeners`: each HTTP listener the service serves, with its index
    /// in the config (which also indexes `certs`, the TLS listeners'
    /// certificates). Fails when a TLS acceptor cannot be built.
    pub fn new(
        app: Arc<A>,
        limiter: Arc<Limiter>,
        listeners: &[(usize, &crate::config::Listener)],
        certs: &[Option<crate::tls::CertStore>],
        metrics: &crate::metrics::Metrics,
    ) -> Result<Guarded<A>, String> {
        let mut figures = Vec::new();
        for &(index, l) in listeners {
            let name = l.name.as_str();
            let rejected = |reason: &str| metrics.rejected.with_label_values(&[name, reason]);
            let tls = match (&l.tls, certs.get(index).and_then(Option::as_ref)) {
                (Some(t), Some(certs)) => {
                    let tls = crate::tls::Tls::new(t, certs.clone())
                        .map_err(|e| format!("listener {name}: {e}"))?;
                    let handshakes =
                        |result: &str| metrics.tls_handshakes.with_label_values(&[name, result]);
                    Some((tls, [handshakes("ok"), handshakes("error")]))
                }
                _ => None,
            };
            figures.push(ListenerFigures {
                name: name.to_string(),
                addr: l.listen.parse().ok(),
                connections: metrics.connections[index].clone(),
                refused: [
                    rejected(Refusal::MaxConnections.as_str()),
                    rejected(Refusal::PerClient.as_str()),
                ],
                late: rejected("header_timeout"),
                tls,
            });
        }
        Ok(Guarded {
            app,
            limiter,
            listeners: figures,
        })
    }

    /// The listener a connection came in on, by its local address.
    fn listener(&self, local: Option<std::net::SocketAddr>) -> Option<&ListenerFigures> {
        let found = local.and_then(|local| {
            self.listeners.iter().find(|l| {
                l.addr.is_some_and(|a| {
                    a == local || (a.ip().is_unspecified() && a.port() == local.port())
                })
            })
        });
        found.or(self.listeners.first())
    }
}

/// Counts a connection in its listener's gauge while it lives.
struct Open(IntGauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if stream.as_any().is::<LimitedStream>() {
            // A stream handed back for reuse: counted already.
            return self.app.process_new(stream, shutdown).await;
        }
        let digest = stream.get_socket_digest();
        let client = digest
            .as_ref()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let local = digest.and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
        let Some(listener) = self.listener(local) else {
            return self.app.process_new(stream, shutdown).await;
        };
        let slot = match self.limiter.admit(client) {
            Ok(slot) => slot,
            Err(reason) => {
                let counter = match reason {
                    Refusal::MaxConnections => &listener.refused[0],
                    Refusal::PerClient => &listener.refused[1],
                };
                counter.inc();
                log::debug!(
                    "listener {}: connection from {client} closed: {}",
                    listener.name,
                    reason.as_str()
                );
                return None;
            }
        };
        listener.connections.inc();
        let _open = Open(listener.connections.clone());
        let stream = match &listener.tls {
            None => stream,
            Some((tls, [ok, failed])) => {
                match handshake(tls, stream, self.limiter.limits.header_timeout).await {
                    Ok(s) => {
                        ok.inc();
                        s
                    }
                    Err(e) => {
                        failed.inc();
                        log::debug!(
                            "listener {}: TLS handshake with {client}: {e}",
                            listener.name
                        );
                        return None;
                    }
                }
            }
        };
        let h2 = stream.selected_alpn_proto() == Some(ALPN::H2);
        let limited = LimitedStream {
            inner: stream,
            // HTTP/2 frames its own requests: no head deadline of ours.
            phase: AtomicU8::new(if h2 { REQUEST } else { HEAD }),
            head_started: Instant::now(),
            head_bytes: false,
            header_timeout: self.limiter.limits.header_timeout,
            timer: None,
            late: listener.late.clone(),
            _slot: slot,
        };
        self.app.process_new(Box::new(limited), shutdown).await
    }

    /// Nothing: Pingora's HTTP cleanup would close every idle keep-alive
    /// connection at once when a graceful shutdown or handover begins, and
    /// a request its client sends at that instant would be cut unanswered.
    /// Left alone, each next request is answered with `Connection: close`
    /// during the grace period, and connections still idle are closed when
    /// the process exits.
    async fn cleanup(&self) {}
}

/// The TLS handshake of an admitted connection, within `deadline`.
async fn handshake(
    tls: &crate::tls::Tls,
    stream: Stream,
    deadline: Duration,
) -> Result<Stream, String> {
    use pingora_core::protocols::l4::stream::Stream as L4Stream;
    let l4 = stream
        .into_any()
        .downcast::<L4Stream>()
        .map_err(|_| "not a plain TCP stream".to_string())?;
    match tokio::time::timeout(deadline, tls.acceptor.tls_handshake(*l4)).await {
        Ok(Ok(s)) => Ok(Box::new(s)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("not complete within {deadline:?}")),
    }
}

/// Raise the soft open-file limit to the hard one; returns the soft limit
/// in force after.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                log::info!("open files: soft limit raised from {soft} to the hard limit {hard}");
                hard
            }
            Err(e) => {
                log::warn!("open files: cannot raise the soft limit {soft} to {hard}: {e}");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            log::warn!("open files: cannot read the limit ({e}); assuming 1024");
            1024
        }
    }
}
