//! `drawbridge run --upgrade` under load: ten handovers in a row while
//! clients keep sending requests on keep-alive connections, and what a
//! kept-alive client gets once the old process is in its grace period.
//!
//! What Pingora 0.9.1 does to the old process (pingora-core
//! `server/mod.rs`, `services/listening.rs`, pingora-proxy `lib.rs`): on
//! SIGQUIT it sends its listening sockets to the new process and keeps
//! accepting and serving, keep-alive included, for 5 s (`CLOSE_TIMEOUT`);
//! then it broadcasts the shutdown: the accept loops stop, and the service's
//! `cleanup` (drawbridge's `limits::Guarded` passes it on) calls
//! `HttpProxy::http_cleanup`, which wakes every connection waiting for its
//! next request (`await_shutdown` in `handle_new_request`) and closes it
//! without a word; a connection busy with a request is closed the same way
//! once it has answered. Only a request read between the broadcast and that
//! close is answered with `Connection: close` (`process_new_http`). Then
//! `grace_period_seconds`, then the runtimes stop with
//! `graceful_shutdown_timeout_seconds`.
//!
//! Pingora's HTTP cleanup at the shutdown broadcast would close every idle
//! keep-alive connection at once, and a request reaching one at that
//! instant would be reset unanswered; drawbridge leaves it out, so the next
//! request on such a connection is answered with `Connection: close`.

mod common;

use common::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A response's status, whether it closes the connection, and its body.
#[derive(Debug)]
struct Answer {
    status: u16,
    close: bool,
    body: Vec<u8>,
}

/// Why a request got no answer.
#[derive(Debug)]
enum Failed {
    /// The request could not be written: the server had reset the
    /// connection before it was sent.
    NotSent(std::io::Error),
    /// Written whole on a connection that was open, and no (whole) answer.
    Cut(std::io::Error),
}

/// A client's keep-alive connection that can tell, before each request,
/// whether the server has closed it in the meantime: a clean close between
/// requests is the server's right, a request sent on an open connection
/// and left without an answer is not. (`drawbridge::httpc::Conn` cannot
/// tell the two apart: it does not show its socket.)
struct KeepAlive {
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    fn open(addr: &str) -> std::io::Result<KeepAlive> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(KeepAlive {
            reader: BufReader::new(stream),
        })
    }

    /// Whether the server has closed (or reset) the connection: the end of
    /// the stream is waiting to be read, and nothing else.
    fn closed_by_server(&self) -> bool {
        if !self.reader.buffer().is_empty() {
            return false;
        }
        let s = self.reader.get_ref();
        if s.set_nonblocking(true).is_err() {
            return true;
        }
        let peeked = s.peek(&mut [0u8; 1]);
        let _ = s.set_nonblocking(false);
        match peeked {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != ErrorKind::WouldBlock,
        }
    }

    fn get(&mut self, path: &str) -> Result<Answer, Failed> {
        let head = format!("GET {path} HTTP/1.1\r\nHost: app\r\n\r\n");
        let stream = self.reader.get_mut();
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.flush())
            .map_err(Failed::NotSent)?;
        read_answer(&mut self.reader).map_err(Failed::Cut)
    }
}

fn bad(msg: String) -> std::io::Error {
    std::io::Error::new(ErrorKind::InvalidData, msg)
}

/// One response, framed by `Content-Length` or chunked.
fn read_answer(r: &mut impl BufRead) -> std::io::Result<Answer> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            ErrorKind::UnexpectedEof,
            "closed before a response",
        ));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let (mut length, mut chunked, mut close) = (None, false, false);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "closed in a response header",
            ));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
        match k.as_str() {
            "content-length" => length = v.parse::<usize>().ok(),
            "transfer-encoding" => chunked = v.contains("chunked"),
            "connection" => close = v.split(',').any(|t| t.trim() == "close"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else {
        return Err(bad("a response without a length".into()));
    }
    Ok(Answer {
        status,
        close,
        body,
    })
}

/// A `drawbridge run --upgrade` on `d`'s config, its output in `log`; it
/// waits on the upgrade socket for the listeners (checked before return).
fn start_upgrade(d: &Drawbridge, log: &PathBuf) -> Proc {
    let out = std::fs::File::create(log).expect("a log file");
    let child = Command::new(BIN)
        .args(["run", "--upgrade", "-c"])
        .arg(&d.config)
        .env("RUST_LOG", "info")
        .env_remove("DRAWBRIDGE_ADMIN_TOKEN")
        .stdout(out.try_clone().expect("the log"))
        .stderr(out)
        .spawn()
        .expect("start the new process");
    let mut new = Proc(Some(child));
    let pid = new.pid().expect("running");
    let sock = d.dir.path().join("upgrade.sock");
    let waiting = wait_until(TIMEOUT, || listens_on_unix(pid, &sock) || new.exited());
    assert!(
        waiting && listens_on_unix(pid, &sock),
        "the new process does not wait on {}; its log:\n{}",
        sock.display(),
        read(log)
    );
    new
}

fn signal(p: &Proc, sig: libc::c_int) {
    let pid = i32::try_from(p.pid().expect("a running process")).expect("a pid");
    // SAFETY: kill(2) on a child of this test.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill {pid}");
}

/// Each process of the test, in order, with its log.
struct Generation {
    proc: Proc,
    log: PathBuf,
}

const ROUNDS: usize = 10;
const CLIENTS: usize = 3;
/// Between two requests of a client: about 50 requests a second each.
const PACE: Duration = Duration::from_millis(20);
/// No client runs longer than this, whatever happens.
const LOAD_LIMIT: Duration = Duration::from_secs(240);

/// A request written whole on a connection that was open, left without
/// an answer.
#[derive(Debug)]
struct Cut {
    path: String,
    error: String,
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    /// Paths answered 2xx.
    ok: Vec<String>,
    /// Requests answered with a status other than 2xx.
    not_2xx: Vec<String>,
    cuts: Vec<Cut>,
    /// Connects that failed: the listening socket is never without a
    /// process, so none may.
    refused: Vec<String>,
    /// Connections the server closed between requests.
    closed_idle: usize,
    /// Answers with `Connection: close`.
    told_to_close: usize,
    /// Requests that could not be written (reset before they were sent).
    not_sent: Vec<String>,
}

fn client(web: String, me: usize, round: Arc<AtomicUsize>, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    let mut conn: Option<KeepAlive> = None;
    let started = Instant::now();
    let mut seq = 0;
    while !stop.load(SeqCst) && started.elapsed() < LOAD_LIMIT {
        if conn.as_ref().is_some_and(|c| c.closed_by_server()) {
            conn = None;
            seen.closed_idle += 1;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match KeepAlive::open(&web) {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    seen.refused.push(format!("connect: {e}"));
                    std::thread::sleep(PACE);
                    continue;
                }
            },
        };
        let r = round.load(SeqCst);
        let path = format!("/r{r}/c{me}/{seq}");
        seq += 1;
        match c.get(&path) {
            Ok(a) => {
                if (200..300).contains(&a.status) {
                    seen.ok.push(path);
                } else {
                    let body = String::from_utf8_lossy(&a.body);
                    let start: String = body.chars().take(60).collect();
                    seen.not_2xx.push(format!("{path}: {} {start:?}", a.status));
                }
                if a.close {
                    seen.told_to_close += 1;
                    conn = None;
                }
            }
            Err(Failed::NotSent(e)) => {
                seen.not_sent.push(format!("{path}: {e}"));
                conn = None;
            }
            Err(Failed::Cut(e)) => {
                seen.cuts.push(Cut {
                    path,
                    error: format!("{} in round {r} of client {me}", e),
                });
                conn = None;
            }
        }
        std::thread::sleep(PACE);
    }
    seen
}

/// The paths of the access-log lines in `log`, with their status.
fn access_paths(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(" access] ").nth(1)?.split(' ').collect();
            // client site METHOD path status backend/server duration protocol
            Some((f.get(3)?.to_string(), f.get(4)?.to_string()))
        })
        .collect()
}

/// [`ROUNDS`] handovers in a row under the load of [`CLIENTS`] keep-alive
/// clients. Checked: no connect refused, every answer 2xx, every answer in
/// the access log of exactly one process, and in each round both the old
/// and the new process served requests, and no request sent on an open
/// connection was cut.
fn handovers_under_load() {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let mut d = Drawbridge::start(&two_server_yaml(&a.addr, &b.addr));
    let web_port = port_of(&d.web);
    let mut gens = vec![Generation {
        proc: std::mem::replace(&mut d.proc, Proc(None)),
        log: d.log.clone(),
    }];
    let round = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|me| {
            let (web, round, stop) = (d.web.clone(), round.clone(), stop.clone());
            std::thread::spawn(move || client(web, me, round, stop))
        })
        .collect();

    let started = Instant::now();
    for k in 0..ROUNDS {
        round.store(k, SeqCst);
        let log = d.dir.path().join(format!("gen{}.log", k + 1));
        let new = start_upgrade(&d, &log);
        let new_pid = new.pid().expect("running");
        let old = gens.last_mut().expect("the running process");
        signal(&old.proc, libc::SIGQUIT);
        // The old one serves on for its close timeout and grace period,
        // then exits; the new one holds the listener by then.
        let handed_over = wait_until(Duration::from_secs(30), || old.proc.exited());
        assert!(
            handed_over,
            "round {k}: the old process did not exit within 30 s; its log:\n{}",
            read(&old.log)
        );
        assert!(
            listens_on(new_pid, web_port),
            "round {k}: the new process does not listen on {}; its log:\n{}",
            d.web,
            read(&log)
        );
        gens.push(Generation { proc: new, log });
    }
    round.store(ROUNDS, SeqCst);
    let handovers = started.elapsed();
    stop.store(true, SeqCst);
    let seen: Vec<Seen> = clients
        .into_iter()
        .map(|c| c.join().expect("a client thread"))
        .collect();

    let refused: Vec<&String> = seen.iter().flat_map(|s| &s.refused).collect();
    let not_2xx: Vec<&String> = seen.iter().flat_map(|s| &s.not_2xx).collect();
    let cuts: Vec<&Cut> = seen.iter().flat_map(|s| &s.cuts).collect();
    let ok: Vec<&String> = seen.iter().flat_map(|s| &s.ok).collect();
    assert!(refused.is_empty(), "connects failed: {refused:?}");
    assert!(
        not_2xx.is_empty(),
        "{} answers other than 2xx: {:?}",
        not_2xx.len(),
        &not_2xx[..not_2xx.len().min(10)]
    );
    // Which process served each request: its access log. Every request
    // answered is in exactly one log (the old processes' last lines are
    // written before they exit).
    let logged = || {
        let mut by: HashMap<String, Vec<usize>> = HashMap::new();
        for (g, gen) in gens.iter().enumerate() {
            for (path, status) in access_paths(&read(&gen.log)) {
                if path.starts_with("/r") {
                    by.entry(path).or_default().push(g);
                }
                assert!(status.starts_with('2'), "{}: {status}", gen.log.display());
            }
        }
        by
    };
    // The last process is still running: its lines come within 100 ms.
    let mut by = logged();
    wait_until(TIMEOUT, || {
        by = logged();
        ok.iter().all(|p| by.contains_key(p.as_str()))
    });
    let missing: Vec<&&String> = ok.iter().filter(|p| !by.contains_key(p.as_str())).collect();
    assert!(
        missing.is_empty(),
        "{} answered requests are in no access log: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let twice: Vec<(&String, &Vec<usize>)> = by.iter().filter(|(_, g)| g.len() > 1).collect();
    assert!(twice.is_empty(), "logged more than once: {twice:?}");
    assert_eq!(
        by.len(),
        ok.len(),
        "access-log lines for requests no client got an answer for"
    );
    let shown: Vec<String> = cuts
        .iter()
        .map(|c| {
            let logged = by.contains_key(&c.path);
            format!("{} ({}; in an access log: {logged})", c.path, c.error)
        })
        .collect();
    assert!(
        cuts.is_empty(),
        "{} requests sent on an open connection got no answer: {shown:?}",
        cuts.len()
    );

    // In each round both the old and the new process served requests.
    let mut report = Vec::new();
    for k in 0..ROUNDS {
        let tag = format!("/r{k}/");
        let count = |g: usize| {
            by.iter()
                .filter(|(p, gs)| p.starts_with(&tag) && gs[0] == g)
                .count()
        };
        let (old, new) = (count(k), count(k + 1));
        report.push(format!("{old}+{new}"));
        assert!(
            old > 0 && new > 0,
            "round {k}: the old process served {old} requests, the new one {new}"
        );
    }
    let sum = |f: fn(&Seen) -> usize| seen.iter().map(f).sum::<usize>();
    eprintln!(
        "{ROUNDS} handovers in {handovers:?}: {} requests answered 2xx (old+new per round: {}); \
         connections closed by the server between requests: {}, answers with \
         Connection: close: {}, requests not sent (reset before): {:?}, requests cut: {:?}",
        ok.len(),
        report.join(" "),
        sum(|s| s.closed_idle),
        sum(|s| s.told_to_close),
        seen.iter().flat_map(|s| &s.not_sent).collect::<Vec<_>>(),
        cuts.iter()
            .map(|c| format!("{}: {}", c.path, c.error))
            .collect::<Vec<_>>(),
    );
}

#[test]
fn ten_handovers_under_keep_alive_load_cut_no_request() {
    handovers_under_load();
}

/// A keep-alive client with one request answered, on a drawbridge whose
/// grace period outlasts the test.
fn kept_alive_client() -> (Upstream, Drawbridge, KeepAlive) {
    let a = Upstream::start("app-01");
    let d = Drawbridge::prepare(
        &format!(
            "listeners:\n  - {{ name: web, listen: \"{{web}}\" }}\nsites:\n  - {{ name: app, backend: app }}\n\
             backends:\n  - {{ name: app, servers: [{{ name: s, addr: \"{}\" }}] }}\n",
            a.addr
        ),
        &[],
    );
    let conf = read(&d.config).replace("grace_period_seconds: 1", "grace_period_seconds: 60");
    std::fs::write(&d.config, conf).expect("write config");
    let d = d.launch();
    let mut c = KeepAlive::open(&d.web).expect("connect");
    let first = c.get("/first").expect("the first answer");
    assert_eq!(first.status, 200);
    assert!(!first.close, "the first answer closes the connection");
    (a, d, c)
}

/// Whether the process that wrote `log` is in its grace period, done with
/// the proxy service's accept loop and its `cleanup` (Pingora logs that the
/// service exited once `start_service` returns, after `cleanup`): from then
/// on, the outcome of a request on a kept-alive connection no longer
/// depends on how fast the test sends it.
fn in_grace_period(log: &str) -> bool {
    log.contains("grace period 60s starts") && log.contains("service 'drawbridge proxy' exited")
}

/// The next request on `c`, sent during the grace period of the process
/// that answered the first: a whole answer that closes the connection.
fn assert_told_to_close(c: &mut KeepAlive, when: &str) {
    let closed = c.closed_by_server();
    match c.get("/second") {
        Ok(a) => {
            assert_eq!(a.status, 200, "{when}");
            assert!(a.close, "{when}: answered without Connection: close");
        }
        Err(e) => panic!(
            "{when}: the next request on a kept-alive connection got no answer ({e:?}); the \
             server had closed the idle connection before it was sent: {closed}"
        ),
    }
}

#[test]
fn the_next_request_on_a_kept_alive_connection_during_sigterm_grace_gets_connection_close() {
    let (_a, d, mut c) = kept_alive_client();
    signal(&d.proc, libc::SIGTERM);
    assert!(
        wait_until(TIMEOUT, || in_grace_period(&d.log_text())),
        "{}",
        d.log_text()
    );
    assert_told_to_close(&mut c, "during the grace period of SIGTERM");
}

#[test]
fn the_next_request_on_a_kept_alive_connection_to_the_old_process_gets_connection_close() {
    let (_a, d, mut c) = kept_alive_client();
    let log = d.dir.path().join("new.log");
    let new = start_upgrade(&d, &log);
    signal(&d.proc, libc::SIGQUIT);
    // The old process hands its listeners over, serves 5 s more, then
    // broadcasts its shutdown and starts its grace period.
    let new_pid = new.pid().expect("running");
    assert!(
        wait_until(Duration::from_secs(20), || in_grace_period(&d.log_text())
            && listens_on(new_pid, port_of(&d.web))),
        "{}",
        d.log_text()
    );
    assert_told_to_close(&mut c, "during the old process's grace period");
}
