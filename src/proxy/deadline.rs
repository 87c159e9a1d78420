//! `read_timeout` for proxied HTTP requests, without a timer per read.
//!
//! Pingora's own `read_timeout` arms a runtime timer around every read from
//! the server (about 1.5 per request: its proxy loop drops and recreates the
//! read future when the request side finishes). Registering and cancelling
//! those timers cost about 1.5k instructions, 2% of a proxied request (and
//! 4% of its CPU in a `release` build; the PGO build hides the difference).
//! drawbridge keeps one deadline per request in a table of its worker thread
//! instead, and one sweeper task per worker thread checks the table every
//! [`TICK`].
//!
//! A request's deadline is armed when it gets its server connection and
//! pushed back on every sign of progress: the response header, each
//! response body chunk, each request body chunk forwarded. It stops counting
//! once the response is complete (or failed). When it passes, the sweeper
//! looks at the connection: if the server did send more (drawbridge is
//! waiting on a slow client, not on the server), the deadline starts over;
//! if the server closed it, the request sees that by itself; if nothing
//! came, the sweeper shuts the connection down: Pingora's pending read
//! ends, the request fails and the proxy answers `504` (or cuts a response
//! already under way), as after Pingora's read timeout. A deadline fires
//! about `read_timeout` after the last progress, at most two ticks later.
//!
//! Why acting on the socket is safe: the sweeper runs on the request's own
//! worker thread (the runtime does not move tasks between threads), so it
//! only ever runs while the request's task waits at an await point, holding
//! its connection. Every path that gives the connection back (complete
//! response, error) stops the deadline before it can yield. The sweeper
//! also checks that the socket is still connected to the request's server
//! before it shuts it down.

use smallvec::SmallVec;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How often a worker thread's deadlines are checked.
pub const TICK: Duration = Duration::from_millis(100);
const TICK_MS: u64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Free,
    /// Counting: the request waits on its server.
    Armed,
    /// Not counting: the response is complete, failed or not started.
    Held,
    /// The deadline passed and the connection was shut down.
    Fired,
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    state: State,
    fd: RawFd,
    server: SocketAddr,
    timeout_ms: u64,
    deadline_ms: u64,
}

/// A request's place in its worker thread's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle {
    table: u32,
    slot: u32,
    generation: u32,
}

/// One worker thread's deadlines. Times are milliseconds since `base`,
/// read from the clock at each tick (and when the table wakes up), so
/// marking progress costs no clock read.
#[derive(Debug)]
pub struct Table {
    id: u32,
    base: Instant,
    now_ms: u64,
    slots: Vec<Slot>,
    free: Vec<u32>,
    in_use: usize,
    sweeping: bool,
}

static NEXT_TABLE: AtomicU32 = AtomicU32::new(1);

impl Table {
    pub fn new() -> Table {
        Table {
            id: NEXT_TABLE.fetch_add(1, Ordering::Relaxed),
            base: Instant::now(),
            now_ms: 0,
            slots: Vec::new(),
            free: Vec::new(),
            in_use: 0,
            sweeping: false,
        }
    }

    fn clock_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn slot_mut(&mut self, h: Handle) -> Option<&mut Slot> {
        if h.table != self.id {
            return None;
        }
        self.slots
            .get_mut(h.slot as usize)
            .filter(|s| s.generation == h.generation && s.state != State::Free)
    }

    /// Start (or restart) the deadline of the request holding `h`, for its
    /// connection `fd` to `server`.
    pub fn arm(
        &mut self,
        h: &mut Option<Handle>,
        fd: RawFd,
        server: SocketAddr,
        timeout: Duration,
    ) {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let deadline_ms = deadline_after(self.now_ms, timeout_ms);
        if let Some(s) = h.and_then(|h| self.slot_mut(h)) {
            *s = Slot {
                generation: s.generation,
                state: State::Armed,
                fd,
                server,
                timeout_ms,
                deadline_ms,
            };
            return;
        }
        let slot = Slot {
            generation: 0,
            state: State::Armed,
            fd,
            server,
            timeout_ms,
            deadline_ms,
        };
        let index = match self.free.pop() {
            Some(i) => {
                let generation = self.slots[i as usize].generation;
                self.slots[i as usize] = Slot { generation, ..slot };
                i
            }
            None => {
                self.slots.push(slot);
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.in_use += 1;
        *h = Some(Handle {
            table: self.id,
            slot: index,
            generation: self.slots[index as usize].generation,
        });
    }

    /// Progress: the deadline starts over.
    pub fn touch(&mut self, h: Handle) {
        let now = self.now_ms;
        if let Some(s) = self.slot_mut(h).filter(|s| s.state == State::Armed) {
            s.deadline_ms = deadline_after(now, s.timeout_ms);
        }
    }

    /// The request no longer waits on its server; whether its deadline had
    /// fired (its connection was shut down).
    pub fn finish(&mut self, h: Handle) -> bool {
        let Some(s) = self.slot_mut(h) else {
            return false;
        };
        if s.state == State::Armed {
            s.state = State::Held;
        }
        s.state == State::Fired
    }

    #[cfg(test)]
    fn fired(&self, h: Handle) -> bool {
        h.table == self.id
            && self
                .slots
                .get(h.slot as usize)
                .is_some_and(|s| s.generation == h.generation && s.state == State::Fired)
    }

    /// The request is over: its slot is free for another one.
    pub fn release(&mut self, h: Handle) {
        if let Some(s) = self.slot_mut(h) {
            s.state = State::Free;
            s.generation = s.generation.wrapping_add(1);
            self.free.push(h.slot);
            self.in_use -= 1;
        }
    }

    /// Advance to `now_ms` and list the requests whose deadline passed.
    pub fn due(&mut self, now_ms: u64) -> SmallVec<[Due; 4]> {
        self.now_ms = now_ms;
        let mut out = SmallVec::new();
        for (i, s) in self.slots.iter().enumerate() {
            if s.state == State::Armed && s.deadline_ms <= now_ms {
                out.push(Due {
                    handle: Handle {
                        table: self.id,
                        slot: u32::try_from(i).unwrap_or(u32::MAX),
                        generation: s.generation,
                    },
                    fd: s.fd,
                    server: s.server,
                });
            }
        }
        out
    }

    /// Act on what the sweeper found on a due request's connection.
    pub fn settle(&mut self, h: Handle, found: Found) {
        let now = self.now_ms;
        if let Some(s) = self.slot_mut(h).filter(|s| s.state == State::Armed) {
            match found {
                Found::Silent => s.state = State::Fired,
                Found::Sending => s.deadline_ms = deadline_after(now, s.timeout_ms),
                Found::Done => s.state = State::Held,
            }
        }
    }
}

/// The deadline of a request that made progress at `now_ms`: one tick
/// more than the timeout, since `now_ms` may be up to a tick old.
fn deadline_after(now_ms: u64, timeout_ms: u64) -> u64 {
    now_ms.saturating_add(timeout_ms).saturating_add(TICK_MS)
}

/// A request whose deadline passed, and its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub handle: Handle,
    pub fd: RawFd,
    pub server: SocketAddr,
}

/// What a due request's connection shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Nothing from the server: a read timeout, the connection is shut down.
    Silent,
    /// Data from the server not yet read: drawbridge waits on its client.
    Sending,
    /// Closed by the server, failed, or no longer this request's
    /// connection: nothing to do.
    Done,
}

impl Default for Table {
    fn default() -> Table {
        Table::new()
    }
}

thread_local! {
    static TABLE: RefCell<Option<Table>> = const { RefCell::new(None) };
}

fn with<R>(f: impl FnOnce(&mut Table) -> R) -> Option<R> {
    TABLE
        .try_with(|t| {
            let mut t = t.try_borrow_mut().ok()?;
            Some(f(t.get_or_insert_with(Table::new)))
        })
        .ok()
        .flatten()
}

/// Arm the deadline of a request that just got its connection `fd` to
/// `server`; starts this thread's sweeper when it is not running.
pub fn arm(h: &mut Option<Handle>, fd: RawFd, server: SocketAddr, timeout: Duration) {
    let start = with(|t| {
        let start = !t.sweeping;
        if start {
            // The table was idle: its time is stale.
            t.now_ms = t.clock_ms();
            t.sweeping = true;
        }
        t.arm(h, fd, server, timeout);
        start
    });
    if start == Some(true) {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(sweep());
            }
            Err(e) => {
                log::warn!("read_timeout: no runtime to check deadlines on: {e}");
                with(|t| t.sweeping = false);
            }
        }
    }
}

pub fn touch(h: Option<Handle>) {
    if let Some(h) = h {
        with(|t| t.touch(h));
    }
}

/// The request no longer waits on its server; whether its deadline had
/// fired (its connection was shut down).
pub fn finish(h: Option<Handle>) -> bool {
    h.and_then(|h| with(|t| t.finish(h))).unwrap_or(false)
}

/// The request is over: its slot is free for another one.
pub fn release(h: Option<Handle>) {
    if let Some(h) = h {
        with(|t| t.release(h));
    }
}

/// This thread's sweeper: runs while the table has requests in it.
async fn sweep() {
    loop {
        tokio::time::sleep(TICK).await;
        let Some(due) = with(|t| {
            let now = t.clock_ms();
            t.due(now)
        }) else {
            return;
        };
        // No await from here to the end of the round: the requests stay
        // where they are, holding their connections.
        for d in &due {
            let found = look(d.fd, d.server);
            with(|t| t.settle(d.handle, found));
            if found == Found::Silent {
                shut_down(d.fd, d.server);
            }
        }
        let idle = with(|t| {
            let idle = t.in_use == 0;
            if idle {
                t.sweeping = false;
            }
            idle
        });
        if idle != Some(false) {
            return;
        }
    }
}

/// What the connection `fd` of a due request to `server` shows.
fn look(fd: RawFd, server: SocketAddr) -> Found {
    use nix::errno::Errno;
    use nix::sys::socket::{getpeername, recv, MsgFlags, SockaddrStorage};
    let peer = getpeername::<SockaddrStorage>(fd).ok().and_then(|a| {
        a.as_sockaddr_in()
            .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
            .or_else(|| {
                a.as_sockaddr_in6()
                    .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
            })
    });
    if peer != Some(server) {
        log::debug!("read_timeout: connection {fd} is no longer to {server}; left alone");
        return Found::Done;
    }
    let mut byte = [0u8; 1];
    match recv(fd, &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
        Err(Errno::EAGAIN) => Found::Silent,
        Ok(n) if n > 0 => Found::Sending,
        _ => Found::Done,
    }
}

fn shut_down(fd: RawFd, server: SocketAddr) {
    use nix::sys::socket::{shutdown, Shutdown};
    log::debug!("read_timeout: nothing from {server} in time, shutting its connection down");
    if let Err(e) = shutdown(fd, Shutdown::Both) {
        log::debug!("read_timeout: cannot shut down the connection to {server}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> SocketAddr {
        "127.0.0.1:8080".parse().unwrap()
    }

    /// The fds of the due requests, each settled with `found`.
    fn sweep_at(t: &mut Table, now: u64, found: Found) -> Vec<RawFd> {
        let due = t.due(now);
        for d in &due {
            t.settle(d.handle, found);
        }
        due.iter().map(|d| d.fd).collect()
    }

    #[test]
    fn due_only_after_the_timeout_without_progress() {
        let mut t = Table::new();
        let mut h = None;
        t.arm(&mut h, 7, server(), Duration::from_millis(1000));
        let h = h.unwrap();
        assert!(
            sweep_at(&mut t, 1000, Found::Silent).is_empty(),
            "never before the timeout"
        );
        t.touch(h);
        assert!(
            sweep_at(&mut t, 2000, Found::Silent).is_empty(),
            "progress at 1000 ms starts over"
        );
        assert_eq!(sweep_at(&mut t, 2100, Found::Silent), vec![7]);
        assert!(t.fired(h));
        assert!(
            sweep_at(&mut t, 5000, Found::Silent).is_empty(),
            "fires once"
        );
    }

    #[test]
    fn a_server_still_sending_restarts_the_deadline() {
        let mut t = Table::new();
        let mut h = None;
        t.arm(&mut h, 7, server(), Duration::from_millis(1000));
        assert_eq!(sweep_at(&mut t, 1100, Found::Sending), vec![7]);
        assert!(!t.fired(h.unwrap()));
        assert!(sweep_at(&mut t, 2100, Found::Silent).is_empty());
        assert_eq!(sweep_at(&mut t, 2200, Found::Silent), vec![7]);
        assert!(t.fired(h.unwrap()));
    }

    #[test]
    fn a_closed_connection_stops_the_deadline() {
        let mut t = Table::new();
        let mut h = None;
        t.arm(&mut h, 7, server(), Duration::from_millis(10));
        assert_eq!(sweep_at(&mut t, 1000, Found::Done), vec![7]);
        assert!(!t.fired(h.unwrap()));
        assert!(sweep_at(&mut t, 9000, Found::Silent).is_empty());
    }

    #[test]
    fn a_held_deadline_does_not_fire() {
        let mut t = Table::new();
        let mut h = None;
        t.arm(&mut h, 7, server(), Duration::from_millis(10));
        t.finish(h.unwrap());
        assert!(sweep_at(&mut t, 10_000, Found::Silent).is_empty());
        assert!(!t.fired(h.unwrap()));
        // A retry on another connection arms it again.
        t.arm(&mut h, 9, server(), Duration::from_millis(10));
        assert_eq!(sweep_at(&mut t, 20_000, Found::Silent), vec![9]);
    }

    #[test]
    fn released_slots_are_reused_and_old_handles_do_nothing() {
        let mut t = Table::new();
        let (mut a, mut b) = (None, None);
        t.arm(&mut a, 1, server(), Duration::from_millis(10));
        let old = a.unwrap();
        t.release(old);
        t.release(old);
        assert_eq!(t.in_use, 0);
        t.arm(&mut b, 2, server(), Duration::from_millis(10));
        assert_eq!(b.unwrap().slot, old.slot, "the slot is reused");
        // The old handle names the slot's previous request: no effect.
        t.finish(old);
        t.release(old);
        t.settle(old, Found::Done);
        assert_eq!(t.in_use, 1);
        assert_eq!(sweep_at(&mut t, 1000, Found::Silent), vec![2]);
        assert!(!t.fired(old));
        assert!(t.fired(b.unwrap()));
    }

    #[test]
    fn handles_of_another_thread_do_nothing() {
        let mut mine = Table::new();
        let mut other = Table::new();
        let mut h = None;
        other.arm(&mut h, 3, server(), Duration::from_millis(10));
        let h = h.unwrap();
        mine.finish(h);
        mine.release(h);
        mine.settle(h, Found::Silent);
        assert!(!mine.fired(h));
        assert_eq!(sweep_at(&mut other, 1000, Found::Silent), vec![3]);
    }
}
