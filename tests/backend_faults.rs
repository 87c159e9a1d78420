//! Backends failing under load. A server killed while GETs stream through
//! drawbridge costs no GET: connect failures go to the other server, and so
//! do GETs cut before any byte of an answer (GET is idempotent), even on a
//! connection drawbridge had just opened. A server killed while POSTs stream
//! through drawbridge never gets a POST sent
//! twice: the only POSTs that fail are the ones it held when it died. A
//! server that takes a request and never answers holds only that request:
//! it gets 504 after `read_timeout`, and other clients are served meanwhile.
//!
//! `read_timeout.rs` already covers the 504 of a silent server, and that a
//! timed-out request is not sent again; what it does not cover is the rest
//! of the proxy going on meanwhile, which is what the last test here adds.

mod common;

use common::*;
use drawbridge::httpc::{self, Request};
use socket2::{Domain, Socket, Type};
use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Client threads of a load.
const CLIENTS: usize = 3;
/// No load runs longer than this, and no client sends more than
/// [`MAX_PER_CLIENT`] requests, whatever happens.
const LOAD_LIMIT: Duration = Duration::from_secs(60);
const MAX_PER_CLIENT: usize = 5_000;

/// Site `app` on backend `app`: round robin over two servers, one retry of
/// a connect failure, no health checks, so that after a kill every other
/// request is routed to the dead server and takes the retry (a health check
/// would take the server out of rotation within a few hundred ms).
fn two_servers_yaml(a: &str, b: &str) -> String {
    format!(
        "listeners:\n  - {{ name: web, listen: \"{{web}}\" }}\n\
         sites:\n  - {{ name: app, backend: app }}\n\
         backends:\n  - name: app\n    balance: round_robin\n    retries: 1\n    servers:\n      \
         - {{ name: app-01, addr: \"{a}\" }}\n      - {{ name: app-02, addr: \"{b}\" }}\n"
    )
}

/// The lines of `d`'s log that mention one of `needles`, and its errors.
fn log_about(d: &Drawbridge, needles: impl Iterator<Item = String>) -> String {
    let needles: Vec<String> = needles.collect();
    d.log_text()
        .lines()
        .filter(|l| l.contains(" ERROR ") || needles.iter().any(|n| l.contains(n.as_str())))
        .take(40)
        .collect::<Vec<_>>()
        .join("\n")
}

const CONNECT_ERRORS_APP_01: &str =
    r#"drawbridge_upstream_connect_errors_total{backend="app",server="app-01"}"#;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the client got for one request.
#[derive(Debug, Clone)]
enum Outcome {
    Answer(u16, String),
    /// No response at all (the connection was closed or reset, or the
    /// client's own limit passed).
    NoAnswer(String),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Answer(status, body) => {
                let start: String = body.chars().take(40).collect();
                write!(f, "{status} {start:?}")
            }
            Outcome::NoAnswer(e) => write!(f, "no answer: {e}"),
        }
    }
}

/// One request of a load.
#[derive(Debug, Clone)]
struct Sent {
    id: String,
    /// Whether the server was already dead when it was sent.
    after_kill: bool,
    outcome: Outcome,
}

/// [`CLIENTS`] threads each sending requests one after the other, each on
/// a new connection (so that a failure is one request's, never a stale
/// client connection's), until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    killed: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    /// Answers with status 200 so far, by body.
    by_body: Arc<Mutex<HashMap<String, usize>>>,
    threads: Vec<JoinHandle<Vec<Sent>>>,
}

impl Load {
    /// `make(id)` is the request for id `client-n`.
    fn start(web: &str, make: fn(&str) -> (String, Option<Vec<u8>>)) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let killed = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let by_body = Arc::new(Mutex::new(HashMap::new()));
        let threads = (0..CLIENTS)
            .map(|client| {
                let (stop, killed, done, by_body) =
                    (stop.clone(), killed.clone(), done.clone(), by_body.clone());
                let web = web.to_string();
                std::thread::spawn(move || {
                    let started = Instant::now();
                    let mut sent = Vec::new();
                    for n in 0..MAX_PER_CLIENT {
                        if stop.load(SeqCst) || started.elapsed() > LOAD_LIMIT {
                            break;
                        }
                        let id = format!("{client}-{n}");
                        let (path, body) = make(&id);
                        let req = match &body {
                            Some(b) => Request::new("POST", &path).body(b.clone()),
                            None => Request::new("GET", &path),
                        };
                        let after_kill = killed.load(SeqCst);
                        let outcome = match httpc::request(&web, &req, TIMEOUT) {
                            Ok(r) => {
                                let text = r.text().trim().to_string();
                                if r.status == 200 {
                                    *lock(&by_body).entry(text.clone()).or_insert(0) += 1;
                                }
                                Outcome::Answer(r.status, text)
                            }
                            Err(e) => Outcome::NoAnswer(e.to_string()),
                        };
                        sent.push(Sent {
                            id,
                            after_kill,
                            outcome,
                        });
                        done.fetch_add(1, SeqCst);
                    }
                    sent
                })
            })
            .collect();
        Load {
            stop,
            killed,
            done,
            by_body,
            threads,
        }
    }

    fn done(&self) -> usize {
        self.done.load(SeqCst)
    }

    fn answered_by(&self, body: &str) -> usize {
        lock(&self.by_body).get(body).copied().unwrap_or(0)
    }

    /// The server is dead from now on.
    fn mark_killed(&self) {
        self.killed.store(true, SeqCst);
    }

    /// Wait until `more` requests were done after now, or panic.
    fn wait_for_more(&self, more: usize, what: &str) {
        let target = self.done() + more;
        assert!(
            wait_until(Duration::from_secs(30), || self.done() >= target),
            "{what}: only {} of {target} requests done",
            self.done()
        );
    }

    fn finish(self) -> Vec<Sent> {
        self.stop.store(true, SeqCst);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().expect("a client thread"))
            .collect()
    }
}

/// GETs from [`CLIENTS`] clients while app-01 is SIGKILLed. Every GET
/// sent once app-01 is dead (and reaped) is answered 200 by app-02: half of
/// them were routed to app-01 first, and its connect failure retried.
/// So is every GET before: one in flight on app-01 as it died was cut before
/// any byte of an answer, and goes to app-02 (`error_while_proxy`).
fn gets_through_a_kill() {
    let (mut a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let d = Drawbridge::start(&two_servers_yaml(&a.addr, &b.addr));
    let load = Load::start(&d.web, |id| (format!("/get/{id}"), None));
    assert!(
        wait_until(Duration::from_secs(30), || load.answered_by("app-01") >= 50
            && load.answered_by("app-02") >= 50),
        "the load did not reach both servers: {:?}",
        lock(&load.by_body)
    );
    // SIGKILL, and reaped: dead from here on.
    a.stop();
    load.mark_killed();
    load.wait_for_more(300, "after the kill");
    let sent = load.finish();

    let failed: Vec<&Sent> = sent
        .iter()
        .filter(|s| !matches!(&s.outcome, Outcome::Answer(200, _)))
        .collect();
    let log = d.log_text();
    let shown: Vec<String> = failed
        .iter()
        .take(10)
        .map(|s| format!("{} (after the kill: {}): {}", s.id, s.after_kill, s.outcome))
        .collect();
    let why = || log_about(&d, failed.iter().map(|s| format!("/get/{} ", s.id)));
    assert!(
        failed.is_empty(),
        "{} of {} GETs failed while app-01 was killed: {shown:?}; drawbridge says:\n{}",
        failed.len(),
        sent.len(),
        why()
    );
    let cut_on_app_01 = |s: &Sent| {
        let peer = format!("Peer: addr: {},", a.addr);
        let request = format!("GET /get/{},", s.id);
        !s.after_kill
            && matches!(s.outcome, Outcome::Answer(502, _))
            && log.lines().any(|l| {
                l.contains(" ERROR ")
                    && l.contains(&request)
                    && l.contains(&peer)
                    && l.contains("bytes already read: 0")
            })
    };
    assert!(
        failed.len() <= CLIENTS && failed.iter().all(|s| cut_on_app_01(s)),
        "{} of {} GETs failed while app-01 was killed, not only GETs cut on app-01 as it \
         died (connect failures are to be retried on app-02, and a GET cut on a reused \
         connection too): {shown:?}; drawbridge says:\n{}",
        failed.len(),
        sent.len(),
        why()
    );
    let after: Vec<&Sent> = sent.iter().filter(|s| s.after_kill).collect();
    assert!(after.len() >= 250, "{} GETs after the kill", after.len());
    for s in &after {
        assert!(
            matches!(&s.outcome, Outcome::Answer(200, body) if body == "app-02"),
            "GET {} after the kill: {}",
            s.id,
            s.outcome
        );
    }
    // Half of them were routed to the dead server first: its connect
    // failures were counted, and retried.
    let connect_errors = d.metric(CONNECT_ERRORS_APP_01);
    assert!(
        connect_errors >= 1.0,
        "no connect failure to app-01 after its kill: the retry was not exercised"
    );
    eprintln!(
        "{} GETs, {} after the kill, {connect_errors} connect failures retried, \
         failed: {shown:?}",
        sent.len(),
        after.len()
    );
}

#[test]
fn a_server_killed_under_get_load_costs_no_request() {
    gets_through_a_kill();
}

/// A backend written here, standing for an application server that takes
/// POSTs: it records each POST it reads (`/post/ID`: it *reached* the
/// server) and each it answers. It can be made to hold the POSTs it reads
/// without answering (a server stuck on them), and be killed: it stops
/// listening (connections to its port are then refused) and closes every
/// connection it has, as the kernel does for a process killed by SIGKILL,
/// without answering what it holds. Answering and dying exclude each other:
/// a POST is either answered whole before the kill, or not at all.
struct PostServer {
    addr: String,
    shared: Arc<Shared>,
}

struct Shared {
    st: Mutex<St>,
    wake: Condvar,
}

#[derive(Default)]
struct St {
    received: Vec<String>,
    answered: Vec<String>,
    hold: bool,
    killed: bool,
    conns: Vec<TcpStream>,
    /// Kept after the kill: the port stays bound, not listening, so
    /// connections to it are refused and no other server can take it.
    listener: Option<Socket>,
}

impl PostServer {
    fn start() -> PostServer {
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a socket");
        // A port of our choosing and no SO_REUSEADDR: once the listener is
        // shut down, the socket keeps its port (a kernel-chosen one would
        // be released).
        let addr = (0..PORT_ATTEMPTS)
            .map(|_| free_addr())
            .find(|a| {
                let sa: SocketAddr = a.parse().expect("an address");
                sock.bind(&sa.into()).is_ok()
            })
            .expect("a free port for the POST server");
        sock.listen(128).expect("listen");
        let listener: TcpListener = sock.try_clone().expect("the listener").into();
        let shared = Arc::new(Shared {
            st: Mutex::new(St {
                listener: Some(sock),
                ..St::default()
            }),
            wake: Condvar::new(),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            // Ends when the kill shuts the listener down.
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let s = s.clone();
                std::thread::spawn(move || serve_posts(conn, &s));
            }
        });
        PostServer { addr, shared }
    }

    fn st(&self) -> MutexGuard<'_, St> {
        lock(&self.shared.st)
    }

    fn answered(&self) -> usize {
        self.st().answered.len()
    }

    /// POSTs read and not answered.
    fn held(&self) -> usize {
        let st = self.st();
        st.received.len() - st.answered.len()
    }

    fn hold(&self) {
        self.st().hold = true;
    }

    fn kill(&self) {
        let mut st = self.st();
        st.killed = true;
        if let Some(l) = &st.listener {
            let _ = l.shutdown(Shutdown::Both);
        }
        for c in st.conns.drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        self.shared.wake.notify_all();
    }
}

impl Drop for PostServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A request's method, path and body length, or `None` at the end of the
/// connection.
fn read_head(r: &mut impl BufRead) -> Option<(String, String, usize)> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut length = 0;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        if h.trim().is_empty() {
            return Some((method, path, length));
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().ok()?;
            }
        }
    }
}

fn serve_posts(conn: TcpStream, s: &Shared) {
    {
        let mut st = lock(&s.st);
        if st.killed {
            return;
        }
        st.conns.extend(conn.try_clone().ok());
    }
    // Bounded: nothing here waits on drawbridge for long.
    let _ = conn.set_read_timeout(Some(LOAD_LIMIT));
    let mut reader = BufReader::new(conn);
    while let Some((method, path, length)) = read_head(&mut reader) {
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let mut st = lock(&s.st);
        if st.killed {
            return;
        }
        if let Some(id) = path.strip_prefix("/post/").filter(|_| method == "POST") {
            st.received.push(id.to_string());
            let deadline = Instant::now() + LOAD_LIMIT;
            while st.hold && !st.killed && Instant::now() < deadline {
                st = s
                    .wake
                    .wait_timeout(st, Duration::from_secs(1))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            if st.killed {
                return;
            }
            st.answered.push(id.to_string());
        }
        // Written while the lock keeps the kill out: answered whole.
        if reader
            .get_mut()
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
    }
}

#[test]
fn a_post_that_may_have_reached_a_killed_server_is_never_sent_twice() {
    let (a, b) = (PostServer::start(), PostServer::start());
    let d = Drawbridge::start(&two_servers_yaml(&a.addr, &b.addr));
    let load = Load::start(&d.web, |id| {
        (format!("/post/{id}"), Some(b"form=1".to_vec()))
    });
    assert!(
        wait_until(Duration::from_secs(30), || a.answered() >= 20
            && b.answered() >= 20),
        "the POSTs did not reach both servers: {} and {}",
        a.answered(),
        b.answered()
    );
    // app-01 gets stuck: each client's next POST routed there stays on it,
    // sent whole and read by the server, unanswered. Then it dies.
    a.hold();
    assert!(
        wait_until(Duration::from_secs(30), || a.held() == CLIENTS),
        "{} POSTs held by app-01, expected one per client",
        a.held()
    );
    a.kill();
    load.mark_killed();
    load.wait_for_more(60, "after the kill");
    let sent = load.finish();

    let (a_st, b_st) = (a.st(), b.st());
    let mut reached: HashMap<&str, usize> = HashMap::new();
    for id in a_st.received.iter().chain(&b_st.received) {
        *reached.entry(id).or_insert(0) += 1;
    }
    let twice: Vec<(&&str, &usize)> = reached.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "POSTs that reached the servers more than once: {twice:?}"
    );

    let ok: BTreeSet<&str> = sent
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Answer(200..=299, _)))
        .map(|s| s.id.as_str())
        .collect();
    let counted: BTreeSet<&str> = a_st
        .answered
        .iter()
        .chain(&b_st.answered)
        .map(String::as_str)
        .collect();
    assert_eq!(
        a_st.answered.len() + b_st.answered.len(),
        ok.len(),
        "POSTs the servers answered vs POSTs the clients got a 2xx for"
    );
    assert_eq!(
        counted, ok,
        "the POSTs answered are the ones the clients got"
    );

    // The only failures are the POSTs app-01 held when it died: each got
    // 502 or a closed connection, and none was answered by app-02.
    let held: BTreeSet<&str> = a_st
        .received
        .iter()
        .filter(|id| !a_st.answered.contains(id))
        .map(String::as_str)
        .collect();
    assert_eq!(held.len(), CLIENTS, "{held:?}");
    let failed: Vec<&Sent> = sent
        .iter()
        .filter(|s| !matches!(s.outcome, Outcome::Answer(200..=299, _)))
        .collect();
    for s in &failed {
        assert!(
            held.contains(s.id.as_str()),
            "POST {} failed but was not in flight on the killed server: {}",
            s.id,
            s.outcome
        );
        assert!(
            matches!(
                s.outcome,
                Outcome::Answer(502 | 503, _) | Outcome::NoAnswer(_)
            ),
            "POST {}: {}",
            s.id,
            s.outcome
        );
    }
    let failed_ids: BTreeSet<&str> = failed.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        failed_ids, held,
        "every POST held by the killed server failed"
    );

    // After the kill, every other POST was routed to the dead server: its
    // connect failure was retried on app-02 (nothing had been sent).
    let after = sent.iter().filter(|s| s.after_kill).count();
    assert!(after >= 60, "{after} POSTs after the kill");
    let connect_errors = d.metric(CONNECT_ERRORS_APP_01);
    assert!(
        connect_errors >= 1.0,
        "no connect failure to app-01 after its kill: the retry was not exercised"
    );
    eprintln!(
        "{} POSTs: {} answered, {} failed ({}), {after} after the kill, \
         {connect_errors} connect failures retried",
        sent.len(),
        ok.len(),
        failed.len(),
        failed
            .iter()
            .map(|s| s.outcome.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// A server that accepts connections and reads requests but never answers;
/// it counts the requests it read.
struct Silent {
    addr: String,
    requests: Arc<AtomicUsize>,
}

impl Silent {
    fn start() -> Silent {
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        let addr = serve_each(move |conn| {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(20)));
            let mut reader = BufReader::new(conn);
            // Until drawbridge closes the connection.
            while read_head(&mut reader).is_some() {
                count.fetch_add(1, SeqCst);
            }
        });
        Silent { addr, requests }
    }

    fn requests(&self) -> usize {
        self.requests.load(SeqCst)
    }
}

#[test]
fn a_server_that_never_answers_holds_only_its_own_requests() {
    const SLOW: usize = 3;
    let silent = Silent::start();
    let a = Upstream::start("app-01");
    // One worker thread (the harness's `threads: 1`): the waiting requests
    // and everybody else share it.
    let d = Drawbridge::start(&format!(
        "listeners:\n  - {{ name: web, listen: \"{{web}}\" }}\n\
         sites:\n  - {{ name: slow, hosts: [slow.test], backend: slow }}\n  \
         - {{ name: app, backend: app }}\n\
         backends:\n  \
         - {{ name: slow, read_timeout: 1s, servers: [{{ name: silent, addr: \"{}\" }}] }}\n  \
         - {{ name: app, read_timeout: 1s, servers: [{{ name: app-01, addr: \"{}\" }}] }}\n",
        silent.addr, a.addr
    ));
    let slow: Vec<JoinHandle<_>> = (0..SLOW)
        .map(|i| {
            let web = d.web.clone();
            std::thread::spawn(move || {
                let path = format!("/stall/{i}");
                let req = Request::new("GET", &path).header("Host", "slow.test");
                // The client's own limit, far above read_timeout.
                httpc::request(&web, &req, Duration::from_secs(8))
            })
        })
        .collect();
    assert!(
        wait_until(TIMEOUT, || silent.requests() == SLOW),
        "{} of {SLOW} requests reached the silent server",
        silent.requests()
    );
    // While the three wait on the silent server, the other site answers.
    let mut answered_meanwhile = 0;
    let started = Instant::now();
    while !slow.iter().any(|t| t.is_finished()) && started.elapsed() < Duration::from_secs(20) {
        let r = httpc::request(&d.web, &Request::new("GET", "/other"), TIMEOUT)
            .unwrap_or_else(|e| panic!("a request to the healthy site: {e}"));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text().trim(), "app-01");
        if !slow.iter().any(|t| t.is_finished()) {
            answered_meanwhile += 1;
        }
    }
    assert!(
        answered_meanwhile > 0,
        "no request to the healthy site was answered while the others waited"
    );
    for (i, t) in slow.into_iter().enumerate() {
        let r = t
            .join()
            .expect("a slow client")
            .unwrap_or_else(|e| panic!("slow request {i}: no answer: {e}"));
        assert_eq!(r.status, 504, "slow request {i}: {}", r.text());
    }
    assert!(
        wait_until(TIMEOUT, || {
            let log = d.log_text();
            (0..SLOW).all(|i| log.contains(&format!("GET /stall/{i} 504 error ")))
                && log.matches("error=ReadTimedout").count() == SLOW
        }),
        "{}",
        d.log_text()
    );
    assert_eq!(
        silent.requests(),
        SLOW,
        "a timed-out request was sent again"
    );
    eprintln!("{answered_meanwhile} requests answered while {SLOW} waited on the silent server");
}
