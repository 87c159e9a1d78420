//! Client limits (CONTRACT section 10) against the real binary: slow and
//! idle clients are closed on time, one client cannot take every
//! connection, and normal clients are served meanwhile.

mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn config(up: &Upstream, limits: &str) -> String {
    format!(
        "limits:\n{limits}\nlisteners:\n  - {{ name: web, listen: \"{{web}}\" }}\n\
         sites:\n  - {{ name: app, backend: app }}\n\
         backends:\n  - name: app\n    servers:\n      - {{ name: a, addr: \"{}\" }}\n",
        up.addr
    )
}

fn rejected(d: &Drawbridge, reason: &str) -> f64 {
    d.metric(&format!(
        "drawbridge_connections_rejected_total{{listener=\"web\",reason=\"{reason}\"}}"
    ))
}

/// A client socket from `local` (e.g. 127.0.0.2), reads bounded by 10 s.
fn connect_from(addr: &str, local: &str) -> TcpStream {
    let to: SocketAddr = addr.parse().expect("a socket address");
    let ip: IpAddr = local.parse().expect("a local ip");
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
    s.bind(&SocketAddr::new(ip, 0).into()).expect("bind");
    s.connect_timeout(&to.into(), Duration::from_secs(5))
        .expect("connect");
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    s
}

/// Everything the peer sends until it closes (or 10 s pass).
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("the connection was not closed: {e}; got {out:?}"),
        }
    }
}

/// Whether the peer has answered or closed, without waiting or taking
/// what it sent.
fn answered_or_closed(s: &TcpStream) -> bool {
    let _ = s.set_nonblocking(true);
    let mut buf = [0u8; 1];
    let r = !matches!(s.peek(&mut buf), Err(e) if e.kind() == ErrorKind::WouldBlock);
    let _ = s.set_nonblocking(false);
    r
}

/// 1,000 clients that trickle header lines are answered 408 and closed once
/// header_timeout has passed since they connected, while normal clients are
/// all served; a connection that sends nothing is closed without an answer.
#[test]
fn trickling_heads_get_408_and_normal_clients_are_served() {
    let up = Upstream::start("app-01");
    let d = Drawbridge::start(&config(&up, "  header_timeout: 2s"));
    let before = rejected(&d, "header_timeout");
    let silent = connect_from(&d.web, "127.0.0.1");
    let start = Instant::now();
    let mut slow: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut s = connect_from(&d.web, "127.0.0.2");
            s.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n")
                .expect("first line");
            s
        })
        .collect();
    let mut served = 0;
    let mut alive = vec![true; slow.len()];
    // One header line per slow client every 250 ms, for as long as the
    // connection stays open; a normal request in between.
    while alive.iter().any(|a| *a) && start.elapsed() < Duration::from_secs(20) {
        for (s, a) in slow.iter_mut().zip(alive.iter_mut()).filter(|(_, a)| **a) {
            if answered_or_closed(s) || s.write_all(b"X-Slow: yes\r\n").is_err() {
                *a = false;
            }
        }
        let r = d.get("/");
        assert_eq!(r.status, 200, "a normal client during the attack");
        served += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    let elapsed = start.elapsed();
    assert!(
        alive.iter().all(|a| !a),
        "{} slow clients still open after {elapsed:?}",
        alive.iter().filter(|a| **a).count()
    );
    assert!(served > 0);
    let mut answered_408 = 0;
    for s in slow.iter_mut() {
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 64];
        if matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"HTTP/1.1 408 ")) {
            answered_408 += 1;
        }
    }
    // The 408 may be lost to a reset when the client's unread lines are
    // discarded; most are read.
    assert!(answered_408 > 0, "no slow client read its 408");
    let mut silent = silent;
    assert_eq!(
        read_to_close(&mut silent),
        b"",
        "nothing sent: closed quietly"
    );
    // Each late connection counted once: the 1,000 and the silent one.
    let after = rejected(&d, "header_timeout");
    assert_eq!(after - before, 1001.0);
    assert!(d.get("/").status == 200);
}

/// An idle keep-alive client is closed after keepalive_timeout, not before
/// it is idle: one that keeps sending requests keeps its connection.
#[test]
fn idle_keepalive_clients_are_closed_after_keepalive_timeout() {
    let up = Upstream::start("app-01");
    let d = Drawbridge::start(&config(&up, "  keepalive_timeout: 1s"));
    let mut busy = drawbridge::httpc::Conn::open(&d.web, Duration::from_secs(5)).expect("conn");
    let mut idle = connect_from(&d.web, "127.0.0.1");
    idle.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        .expect("request");
    let mut head = [0u8; 12];
    idle.read_exact(&mut head).expect("an answer");
    assert_eq!(&head, b"HTTP/1.1 200");
    // A request every 300 ms for 2.5 s on one connection: never idle for 1 s.
    for _ in 0..8 {
        let r = busy
            .send(&drawbridge::httpc::Request::new("GET", "/"))
            .expect("the busy connection stays open");
        assert_eq!(r.status, 200);
        std::thread::sleep(Duration::from_millis(300));
    }
    let rest = read_to_close(&mut idle);
    assert!(
        !String::from_utf8_lossy(&rest).contains("HTTP/1.1 "),
        "nothing more after the answer"
    );
}

/// A client that stops sending its request body gets 408 after
/// client_body_timeout.
#[test]
fn a_client_silent_in_its_body_gets_408() {
    let up = Upstream::start("app-01");
    let d = Drawbridge::start(&config(&up, "  client_body_timeout: 1s"));
    let mut s = connect_from(&d.web, "127.0.0.1");
    s.write_all(b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\nabc")
        .expect("request");
    let answer = String::from_utf8_lossy(&read_to_close(&mut s)).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(d.get("/").status == 200);
}

/// One client address cannot hold more than max_connections_per_client:
/// the next is closed at once, other clients are served, trusted proxies
/// are exempt; and max_connections bounds them all.
#[test]
fn per_client_and_total_connection_limits() {
    let up = Upstream::start("app-01");
    let yaml = config(
        &up,
        "  max_connections: 30\n  max_connections_per_client: 5\n  header_timeout: 30s",
    )
    .replace("listeners:", "trusted_proxies: [127.0.0.3/32]\nlisteners:");
    let d = Drawbridge::start(&yaml);
    let (client_before, total_before) = (
        rejected(&d, "max_connections_per_client"),
        rejected(&d, "max_connections"),
    );
    let mut held: Vec<TcpStream> = (0..5).map(|_| connect_from(&d.web, "127.0.0.2")).collect();
    // The server has counted the five once the status says so.
    let open = || {
        json(&d.api("GET", "/api/v1/status", None))["limits"]["connections"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(wait_until(Duration::from_secs(5), || open() == 5), "5 open");
    let mut sixth = connect_from(&d.web, "127.0.0.2");
    assert_eq!(
        read_to_close(&mut sixth),
        b"",
        "the sixth is closed at once"
    );
    assert_eq!(
        rejected(&d, "max_connections_per_client") - client_before,
        1.0
    );
    // Another client is served, and so is a trusted proxy past five.
    assert_eq!(d.get("/").status, 200);
    let mut proxies: Vec<TcpStream> = (0..10).map(|_| connect_from(&d.web, "127.0.0.3")).collect();
    let last = proxies.last_mut().expect("ten");
    last.write_all(b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
        .expect("request");
    let answer = read_to_close(last);
    assert!(
        answer.starts_with(b"HTTP/1.1 200 "),
        "a trusted proxy is exempt"
    );
    // 5 + 10 (one closed) held; fill up to 30 from other addresses.
    let mut others: Vec<TcpStream> = Vec::new();
    for i in 0..40u8 {
        if open() >= 30 {
            break;
        }
        others.push(connect_from(&d.web, &format!("127.0.1.{}", i + 1)));
        let n = others.len() + 14;
        assert!(wait_until(Duration::from_secs(5), || open() as usize >= n.min(30)));
    }
    assert_eq!(open(), 30);
    let mut over = connect_from(&d.web, "127.0.2.1");
    assert_eq!(
        read_to_close(&mut over),
        b"",
        "over max_connections: closed"
    );
    assert_eq!(rejected(&d, "max_connections") - total_before, 1.0);
    // Freed slots are used again.
    held.clear();
    assert!(wait_until(Duration::from_secs(5), || open() <= 25));
    assert_eq!(d.get("/").status, 200);
}

/// `bench/abuse.py`: `conns` half-open connections from 127.0.0.2 held for
/// `seconds`, with a normal client and the admin API probed each second;
/// the results of each probe (`200`, `TimeoutError`, ...), client first.
fn abuse(d: &Drawbridge, conns: usize, seconds: u64) -> Vec<[String; 2]> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/abuse.py");
    let mut cmd = std::process::Command::new("python3");
    cmd.args([script, "--target", &d.web, "--admin", &d.admin])
        .args([
            "--conns",
            &conns.to_string(),
            "--seconds",
            &seconds.to_string(),
        ]);
    let o = run_bounded(cmd);
    let text = out(&o);
    eprintln!("{text}");
    text.lines()
        .skip_while(|l| !l.starts_with("t(s)"))
        .skip(1)
        .take_while(|l| !l.starts_with("attacker"))
        .map(|l| {
            let r: Vec<&str> = l
                .split_whitespace()
                .skip(1)
                .filter(|f| !f.ends_with("ms"))
                .collect();
            [r.first(), r.get(1)].map(|f| f.copied().unwrap_or("").to_string())
        })
        .collect()
}

/// Whether the slow part of the suite runs (`.ci/run` sets it).
fn slow_tests() -> bool {
    let on = std::env::var("DRAWBRIDGE_SLOW_TESTS").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("skipped: set DRAWBRIDGE_SLOW_TESTS=1 to run");
    }
    on
}

/// 20,000 half-open connections from one address: with
/// max_connections_per_client, a normal client and the admin API are
/// answered all along; without it, the admin API still answers and the
/// service comes back by itself once the attackers' heads time out.
#[test]
fn twenty_thousand_half_open_connections() {
    if !slow_tests() {
        return;
    }
    let up = Upstream::start("app-01");
    let limited = Drawbridge::start(&config(&up, "  max_connections_per_client: 100"));
    let probes = abuse(&limited, 20_000, 12);
    assert!(probes.len() >= 8, "{probes:?}");
    // The admin API all along; the normal client once the attackers'
    // connections are made (the one worker thread accepts 20,000 first).
    assert!(probes.iter().all(|[_, a]| a == "200"), "admin: {probes:?}");
    assert!(
        probes[3..].iter().all(|[c, _]| c == "200"),
        "the normal client: {probes:?}"
    );
    assert!(rejected(&limited, "max_connections_per_client") >= 19_000.0);
    drop(limited);

    let open = Drawbridge::start(&config(&up, "  header_timeout: 3s"));
    let probes = abuse(&open, 20_000, 14);
    assert!(probes.len() >= 10, "{probes:?}");
    assert!(probes.iter().all(|[_, a]| a == "200"), "admin: {probes:?}");
    let tail = &probes[probes.len() - 4..];
    assert!(
        tail.iter().all(|[c, _]| c == "200"),
        "service back by itself: {probes:?}"
    );
    assert!(rejected(&open, "header_timeout") >= 15_000.0);
}
