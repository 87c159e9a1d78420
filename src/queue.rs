//! A backend's queue (CONTRACT section 12): requests that found every
//! server that could take them at its `max_conns` wait here, first come
//! first served, up to the backend's `queue.timeout`.
//!
//! A slot is handed over, not raced for: when a request to a limited
//! server ends, the server's count is taken again on behalf of the oldest
//! waiter that may use it and the waiter is sent the server, so a request
//! arriving meanwhile finds the server still full and queues behind.
//! Dropping a waiting future (the client went away) takes it out of the
//! queue, and gives on a slot it was sent but did not take.
//!
//! Nothing here is touched for a backend without `max_conns`; with one,
//! the queue's lock is taken only by requests that wait and by the end of
//! a request while some wait.

use crate::config::QueueSettings;
use crate::policy::select::below_max;
use std::collections::VecDeque;
use std::sync::atomic::{
    AtomicU64, AtomicUsize,
    Ordering::{Relaxed, SeqCst},
};
use std::sync::Mutex;
use tokio::sync::oneshot;

/// The per-server figures the queue needs: requests in flight and their
/// limit, and the server's key (stable while it exists, never reused).
pub trait Slots: Clone {
    fn inflight(&self) -> &AtomicU64;
    fn max_conns(&self) -> u64;
    fn key(&self) -> u64;

    /// Count one more request if the server is below its `max_conns`.
    fn try_take(&self) -> bool {
        let max = self.max_conns();
        self.inflight()
            .fetch_update(Relaxed, Relaxed, |n| below_max(n, max).then_some(n + 1))
            .is_ok()
    }
}

/// What a waiter is sent.
enum Grant<S> {
    /// A slot on this server, already counted.
    Slot(S),
    /// Its server can no longer take it ([`Queue::evict`]).
    Retry,
}

struct Waiter<S> {
    id: u64,
    /// The key of the server it waits for, or `None` for any target.
    want: Option<u64>,
    tx: oneshot::Sender<Grant<S>>,
}

struct Waiters<S> {
    next_id: u64,
    list: VecDeque<Waiter<S>>,
    /// The keys of the servers a request waiting for any server may be
    /// given, as [`crate::policy::select::queue_targets`] finds them.
    targets: Vec<u64>,
}

/// How a wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waited<S> {
    /// This server's slot is the request's (already counted in flight).
    Granted(S),
    /// The queue was full: refused at once.
    Full,
    /// Nothing came within the timeout.
    TimedOut,
    /// The server it waited for can no longer take it (down, or in
    /// `maint`): choose again.
    Retry,
}

pub struct Queue<S> {
    pub settings: QueueSettings,
    waiters: Mutex<Waiters<S>>,
    /// Requests waiting, read without the lock.
    len: AtomicUsize,
    pub timeouts: AtomicU64,
}

impl<S> std::fmt::Debug for Queue<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("settings", &self.settings)
            .field("len", &self.len)
            .finish()
    }
}

impl<S: Slots> Queue<S> {
    pub fn new(settings: QueueSettings, targets: Vec<u64>) -> Queue<S> {
        Queue {
            settings,
            waiters: Mutex::new(Waiters {
                next_id: 0,
                list: VecDeque::new(),
                targets,
            }),
            len: AtomicUsize::new(0),
            timeouts: AtomicU64::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.len.load(SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The servers (keys) a request waiting for any server may be given.
    pub fn set_targets(&self, targets: Vec<u64>) {
        self.lock().targets = targets;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiters<S>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait for a slot on the server keyed `want` (or any target server),
    /// the backend's servers being `servers`; bounded by the queue's
    /// timeout.
    pub async fn wait<'a>(
        &self,
        want: Option<u64>,
        servers: impl IntoIterator<Item = &'a S>,
    ) -> Waited<S>
    where
        S: 'a,
    {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut w = self.lock();
            if w.list.len() >= self.settings.max {
                return Waited::Full;
            }
            let id = w.next_id;
            w.next_id += 1;
            w.list.push_back(Waiter { id, want, tx });
            self.len.store(w.list.len(), SeqCst);
            id
        };
        let mut leave = Leave {
            queue: self,
            id,
            rx: Some(rx),
        };
        // A slot may have come free between the choice that found every
        // server full and the queueing: hand it on now (to the oldest).
        self.kick(servers);
        let Some(rx) = leave.rx.as_mut() else {
            return Waited::TimedOut;
        };
        match tokio::time::timeout(self.settings.timeout, rx).await {
            Ok(Ok(Grant::Retry)) => {
                leave.rx = None;
                Waited::Retry
            }
            Ok(Ok(Grant::Slot(s))) => {
                leave.rx = None;
                Waited::Granted(s)
            }
            Ok(Err(_)) | Err(_) => {
                self.timeouts.fetch_add(1, Relaxed);
                Waited::TimedOut
            }
        }
    }

    /// A request to `server` ended (its count already given back): hand
    /// the slot to the oldest waiter that may use it.
    pub fn release(&self, server: &S) {
        if self.is_empty() {
            return;
        }
        let s = server.key();
        loop {
            let tx = {
                let mut w = self.lock();
                let any = w.targets.contains(&s);
                let Some(pos) = w
                    .list
                    .iter()
                    .position(|x| x.want == Some(s) || (x.want.is_none() && any))
                else {
                    return;
                };
                if !server.try_take() {
                    return;
                }
                let waiter = w.list.remove(pos);
                self.len.store(w.list.len(), SeqCst);
                waiter.map(|x| x.tx)
            };
            match tx.map(|tx| tx.send(Grant::Slot(server.clone()))) {
                Some(Ok(())) => return,
                // The waiter went away: the slot goes to the next one.
                _ => {
                    server.inflight().fetch_sub(1, Relaxed);
                }
            }
        }
    }

    /// Send the waiters for a server that `usable` no longer accepts back
    /// to the choice (a sticky request whose server went down or into
    /// `maint` is redispatched rather than left waiting).
    pub fn evict(&self, usable: impl Fn(u64) -> bool) {
        if self.is_empty() {
            return;
        }
        let gone: Vec<oneshot::Sender<Grant<S>>> = {
            let mut w = self.lock();
            let (keep, gone) = std::mem::take(&mut w.list)
                .into_iter()
                .partition(|x| x.want.is_none_or(&usable));
            w.list = keep;
            self.len.store(w.list.len(), SeqCst);
            gone.into_iter().map(|x: Waiter<S>| x.tx).collect()
        };
        for tx in gone {
            let _ = tx.send(Grant::Retry);
        }
    }

    /// Hand every free slot to the waiters (a server came back, a state
    /// changed, or a request just queued).
    pub fn kick<'a>(&self, servers: impl IntoIterator<Item = &'a S>)
    where
        S: 'a,
    {
        for server in servers {
            if self.is_empty() {
                return;
            }
            if below_max(server.inflight().load(SeqCst), server.max_conns()) {
                self.release(server);
            }
        }
    }
}

/// Takes a waiter out of the queue however its wait ends; a slot sent to
/// it that it did not take goes to the next waiter.
struct Leave<'a, S: Slots> {
    queue: &'a Queue<S>,
    id: u64,
    rx: Option<oneshot::Receiver<Grant<S>>>,
}

impl<S: Slots> Drop for Leave<'_, S> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        // Closed first: a slot sent from now on fails to arrive and its
        // sender gives it back; one sent before is taken below.
        rx.close();
        {
            let mut w = self.queue.lock();
            if let Some(pos) = w.list.iter().position(|x| x.id == self.id) {
                w.list.remove(pos);
                self.queue.len.store(w.list.len(), SeqCst);
            }
        }
        if let Ok(Grant::Slot(server)) = rx.try_recv() {
            server.inflight().fetch_sub(1, Relaxed);
            self.queue.release(&server);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A test server: in flight, `max_conns`, key.
    #[derive(Clone)]
    struct Srv(std::sync::Arc<(AtomicU64, u64, u64)>);

    impl Slots for Srv {
        fn inflight(&self) -> &AtomicU64 {
            &self.0 .0
        }
        fn max_conns(&self) -> u64 {
            self.0 .1
        }
        fn key(&self) -> u64 {
            self.0 .2
        }
    }

    impl std::fmt::Debug for Srv {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "server {}", self.key())
        }
    }

    impl PartialEq for Srv {
        fn eq(&self, other: &Srv) -> bool {
            self.key() == other.key()
        }
    }

    /// Servers keyed 10, 11, ...: `(in flight, max_conns)` each.
    fn servers<const N: usize>(figures: [(u64, u64); N]) -> [Srv; N] {
        let mut key = 9;
        figures.map(|(n, max)| {
            key += 1;
            Srv(std::sync::Arc::new((AtomicU64::new(n), max, key)))
        })
    }

    fn queue(max: usize, timeout_ms: u64) -> Queue<Srv> {
        let settings = QueueSettings {
            max,
            timeout: Duration::from_millis(timeout_ms),
        };
        Queue::new(settings, vec![10, 11])
    }

    fn end(q: &Queue<Srv>, servers: &[Srv], s: usize) {
        servers[s].inflight().fetch_sub(1, Relaxed);
        q.release(&servers[s]);
    }

    fn granted(w: Option<Waited<Srv>>) -> Option<u64> {
        match w {
            Some(Waited::Granted(s)) => Some(s.key()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn slots_go_first_come_first_served_and_stay_counted() {
        let servers = servers([(1, 1), (1, 1)]);
        let q = queue(10, 60_000);
        let first = q.wait(None, &servers);
        let second = q.wait(Some(11), &servers);
        tokio::pin!(first, second);
        // Both queue (polled once each).
        assert!(futures_poll(&mut first).is_none());
        assert!(futures_poll(&mut second).is_none());
        assert_eq!(q.len(), 2);
        // Server 1 frees: the oldest waiter that may use it gets it.
        end(&q, &servers, 1);
        assert_eq!(granted(futures_poll(&mut first)), Some(11));
        assert_eq!(
            servers[1].inflight().load(Relaxed),
            1,
            "handed over, still counted"
        );
        // Server 0 frees: the sticky waiter for 1 does not take it.
        end(&q, &servers, 0);
        assert_eq!(servers[0].inflight().load(Relaxed), 0);
        assert!(futures_poll(&mut second).is_none());
        end(&q, &servers, 1);
        assert_eq!(granted(futures_poll(&mut second)), Some(11));
        assert_eq!(q.len(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_a_dropped_waiter_leaves() {
        let servers = servers([(1, 1)]);
        let q = queue(1, 60_000);
        {
            let w = q.wait(None, &servers);
            tokio::pin!(w);
            assert!(futures_poll(&mut w).is_none());
            assert_eq!(q.wait(None, &servers).await, Waited::Full);
        }
        assert_eq!(q.len(), 0, "the dropped waiter left");
        end(&q, &servers, 0);
        assert_eq!(
            servers[0].inflight().load(Relaxed),
            0,
            "no slot given to nobody"
        );
    }

    #[tokio::test]
    async fn a_wait_ends_at_the_timeout() {
        let servers = servers([(1, 1)]);
        let q = queue(4, 20);
        assert_eq!(q.wait(None, &servers).await, Waited::TimedOut);
        assert_eq!(q.timeouts.load(Relaxed), 1);
        assert_eq!(q.len(), 0);
    }

    #[tokio::test]
    async fn waiters_for_a_server_that_cannot_take_them_choose_again() {
        let servers = servers([(1, 1), (1, 1)]);
        let q = queue(10, 60_000);
        let (for_0, for_1, any) = (
            q.wait(Some(10), &servers),
            q.wait(Some(11), &servers),
            q.wait(None, &servers),
        );
        tokio::pin!(for_0, for_1, any);
        assert!(futures_poll(&mut for_0).is_none());
        assert!(futures_poll(&mut for_1).is_none());
        assert!(futures_poll(&mut any).is_none());
        q.evict(|s| s != 10);
        assert_eq!(futures_poll(&mut for_0), Some(Waited::Retry));
        assert!(futures_poll(&mut for_1).is_none());
        assert!(futures_poll(&mut any).is_none());
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn take_respects_the_limit() {
        let [s, unlimited] = servers([(0, 2), (5, 0)]);
        assert!(s.try_take() && s.try_take());
        assert!(!s.try_take());
        assert!(unlimited.try_take());
    }

    /// Poll a future once.
    fn futures_poll<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match std::pin::Pin::new(f).poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
