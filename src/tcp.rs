//! Layer-4 listeners (CONTRACT section 7): each new connection goes to a
//! server of the listener's backend, chosen by the same selector as HTTP
//! (no cookies at this layer: `source_hash` keeps a client on one server).
//! `drain` takes no new connections but keeps the open ones; `maint` takes
//! none except from allowed clients. In maintenance, connections from
//! clients outside `allow` are closed at once. Bytes are copied both ways
//! until both sides are done, with connect and idle timeouts.

use crate::policy::gate;
use crate::policy::select::{self, Candidate, Choice};
use crate::queue::{Slots, Waited};
use crate::state::{InFlight, Runtime};
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use smallvec::SmallVec;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct TcpProxy {
    rt: Arc<Runtime>,
    listener: usize,
    backend: usize,
}

impl TcpProxy {
    pub fn new(rt: Arc<Runtime>, listener: usize, backend: usize) -> TcpProxy {
        TcpProxy {
            rt,
            listener,
            backend,
        }
    }

    /// Pick a server not yet tried (by key); `allowed` clients may use
    /// `maint` ones. On a backend with `max_conns`, one below its limit,
    /// else a wait in the backend's queue. The connection is counted in
    /// flight from here.
    async fn choose(&self, client: IpAddr, allowed: bool, tried: &[u64]) -> Option<InFlight> {
        let rt = &self.rt;
        let b = self.backend;
        let backend = &rt.config.backends[b];
        let mut rounds = 0;
        loop {
            let snap = rt.snapshot();
            let members = &snap.servers[b];
            rounds += 1;
            if rounds > members.len() + 1 {
                return None;
            }
            let mut cands: SmallVec<[Candidate; 8]> = SmallVec::new();
            rt.candidates_into(&snap, b, |c| cands.push(c));
            let tried: SmallVec<[usize; 4]> = members
                .iter()
                .enumerate()
                .filter(|(_, m)| tried.contains(&m.server.key))
                .map(|(i, _)| i)
                .collect();
            let key = select::balance_key(backend.balance, &rt.rr[b], client);
            let Some(queue) = &rt.queues[b] else {
                return select::balance(&cands, backend.balance, key, allowed, &tried)
                    .map(|(s, _)| InFlight::new(&members[s].server));
            };
            match select::choose(&cands, None, &tried, backend.balance, || key, || allowed) {
                Choice {
                    pick: Some((s, _)), ..
                } => {
                    if members[s].server.try_take() {
                        return Some(InFlight::adopt(members[s].server.clone()));
                    }
                }
                Choice { wait: Some(_), .. } => {
                    let servers = members.iter().map(|m| &m.server);
                    return match queue.wait(None, servers).await {
                        Waited::Granted(s) => {
                            let granted = InFlight::adopt(s);
                            if rt.snapshot().position(b, granted.server().key).is_some() {
                                Some(granted)
                            } else {
                                // It left its backend meanwhile: the slot
                                // goes back (dropped) and the choice is
                                // made again.
                                continue;
                            }
                        }
                        Waited::TimedOut => {
                            rt.metrics.backends[b].queue_timeouts.inc();
                            None
                        }
                        Waited::Full | Waited::Retry => None,
                    };
                }
                Choice { .. } => return None,
            }
        }
    }
}

#[async_trait]
impl ServerApp for TcpProxy {
    async fn process_new(
        self: &Arc<Self>,
        mut client: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let rt = &self.rt;
        let listener = &rt.config.listeners[self.listener];
        let backend = &rt.config.backends[self.backend];
        let peer = client
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let allowed = gate::contains(&listener.tcp_allow, peer);
        let in_maintenance = listener.tcp_maintenance || rt.snapshot().all_maint[self.backend];
        if in_maintenance && !allowed {
            log::info!(target: "access", "{peer} tcp:{} - refused maintenance", listener.name);
            return None;
        }
        let mut tried: SmallVec<[u64; 4]> = SmallVec::new();
        let upstream = loop {
            let Some(inflight) = self.choose(peer, allowed, &tried).await else {
                log::warn!(
                    "tcp {}: no server of backend {} can take {peer}",
                    listener.name,
                    backend.name
                );
                return None;
            };
            let server = inflight.server().clone();
            let connect = TcpStream::connect(server.addr);
            match tokio::time::timeout(backend.connect_timeout, connect).await {
                Ok(Ok(stream)) => break (stream, inflight),
                Ok(Err(e)) => {
                    log::warn!("tcp {}: connect to {}: {e}", listener.name, server.name())
                }
                Err(_) => log::warn!(
                    "tcp {}: connect to {}: timed out",
                    listener.name,
                    server.name()
                ),
            }
            server.metrics.connect_errors.inc();
            tried.push(server.key);
            if tried.len() > backend.retries {
                return None;
            }
        };
        let (mut upstream, inflight) = upstream;
        let _ = upstream.set_nodelay(true);
        let live = inflight.server().clone();
        live.requests_total.fetch_add(1, Relaxed);
        live.metrics.tcp_connection(self.listener);
        let start = std::time::Instant::now();
        let result = if live.sessions.is_some() {
            // shutdown_sessions: the connection closes when health marks
            // the server down.
            tokio::select! {
                r = pump(&mut client, &mut upstream, backend.read_timeout) => r,
                _ = live.marked_down.notified() => {
                    Err(std::io::Error::other("server marked down"))
                }
            }
        } else {
            pump(&mut client, &mut upstream, backend.read_timeout).await
        };
        drop(inflight);
        let (up, down) = result.unwrap_or((0, 0));
        log::info!(
            target: "access",
            "{peer} tcp:{} - {}/{} {up}B up {down}B down {:.3}s",
            listener.name,
            backend.name,
            live.name(),
            start.elapsed().as_secs_f64()
        );
        None
    }
}

/// Copy both ways until both directions reached end of stream (each EOF is
/// passed on as a write shutdown) or nothing moved for `idle`.
async fn pump<A, B>(a: &mut A, b: &mut B, idle: Duration) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a_buf, mut b_buf) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut a_open, mut b_open) = (true, true);
    let (mut up, mut down) = (0u64, 0u64);
    while a_open || b_open {
        tokio::select! {
            r = a.read(&mut a_buf), if a_open => {
                let n = r?;
                if n == 0 {
                    a_open = false;
                    let _ = b.shutdown().await;
                } else {
                    b.write_all(&a_buf[..n]).await?;
                    up += n as u64;
                }
            }
            r = b.read(&mut b_buf), if b_open => {
                let n = r?;
                if n == 0 {
                    b_open = false;
                    let _ = a.shutdown().await;
                } else {
                    a.write_all(&b_buf[..n]).await?;
                    a.flush().await?;
                    down += n as u64;
                }
            }
            _ = tokio::time::sleep(idle) => {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle timeout"));
            }
        }
    }
    Ok((up, down))
}
