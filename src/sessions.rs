//! `on_marked_down: shutdown_sessions` (CONTRACT section 12): the upstream
//! sockets of the requests in flight to a server, so that when health
//! checks mark it down they are shut down at once and each request ends
//! with an upstream error (the error page if nothing was sent yet, else a
//! closed connection) instead of waiting for `read_timeout`.
//!
//! A socket is remembered by its descriptor from the moment the request is
//! connected until the request ends. A descriptor may be closed and reused
//! in between (Pingora closes or pools the connection before the request's
//! end); before shutting one down its peer is compared with the server's
//! address, so a reused descriptor is left alone unless it is itself
//! connected to the server being marked down.

use nix::sys::socket::{getpeername, shutdown, Shutdown, SockaddrStorage};
use std::net::SocketAddr;
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// The open upstream sockets of one server's requests.
#[derive(Debug, Default)]
pub struct Sessions {
    next: AtomicU64,
    open: Mutex<Vec<(u64, RawFd)>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, RawFd)>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remember `fd` while the returned guard lives.
    pub fn register(self: &Arc<Self>, fd: RawFd) -> Session {
        let id = self.next.fetch_add(1, Relaxed);
        self.lock().push((id, fd));
        Session {
            sessions: self.clone(),
            id,
        }
    }

    /// Shut down every remembered socket still connected to `server`;
    /// returns how many.
    pub fn shutdown_all(&self, server: SocketAddr) -> usize {
        let fds: Vec<RawFd> = self.lock().iter().map(|(_, fd)| *fd).collect();
        fds.into_iter()
            .filter(|&fd| {
                let peer = getpeername::<SockaddrStorage>(fd).ok().and_then(|a| {
                    a.as_sockaddr_in()
                        .map(|v4| SocketAddr::from((v4.ip(), v4.port())))
                        .or_else(|| {
                            a.as_sockaddr_in6()
                                .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
                        })
                });
                peer == Some(server) && shutdown(fd, Shutdown::Both).is_ok()
            })
            .count()
    }
}

/// A remembered socket; forgotten when dropped.
#[derive(Debug)]
pub struct Session {
    sessions: Arc<Sessions>,
    id: u64,
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut open = self.sessions.lock();
        if let Some(pos) = open.iter().position(|(id, _)| *id == self.id) {
            open.swap_remove(pos);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::io::AsRawFd;

    #[test]
    fn shuts_down_sockets_to_the_server_only() {
        let server = TcpListener::bind("127.0.0.1:0").expect("bind");
        let other = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = server.local_addr().expect("addr");
        let mut to_server = TcpStream::connect(addr).expect("connect");
        let mut to_other = TcpStream::connect(other.local_addr().expect("addr")).expect("connect");
        let sessions = Arc::new(Sessions::default());
        let a = sessions.register(to_server.as_raw_fd());
        let _b = sessions.register(to_other.as_raw_fd());
        assert_eq!(sessions.shutdown_all(addr), 1);
        // Shut down: reads end at once.
        let mut buf = [0u8; 1];
        assert_eq!(to_server.read(&mut buf).ok(), Some(0));
        to_other.set_nonblocking(true).expect("nonblocking");
        assert!(to_other.read(&mut buf).is_err(), "the other socket is open");
        drop(a);
        assert_eq!(
            sessions.lock().len(),
            1,
            "a dropped guard forgets its socket"
        );
    }
}
