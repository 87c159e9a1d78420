//! The test harness itself: a port picked for a process and taken by
//! another one before that process could bind it (tests run in parallel)
//! is noticed, and the process started again on a new port, instead of the
//! test talking to whatever holds the port.

mod common;

use common::*;
use std::net::{SocketAddr, TcpListener};

#[test]
fn a_proxy_port_another_process_listens_on_is_replaced() {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let d = Drawbridge::prepare(&two_server_yaml(&a.addr, &b.addr), &[]);
    let taken = d.web.clone();
    let squatter = TcpListener::bind(&taken).expect("take the proxy port");
    let d = d.launch();
    assert_ne!(d.web, taken);
    let config = read(&d.config);
    assert!(
        config.contains(&d.web) && !config.contains(&taken),
        "{config}"
    );
    let pid = d.proc.pid().expect("running");
    assert!(listens_on(pid, port_of(&d.web)));
    assert!(!listens_on(pid, port_of(&taken)));
    assert!(d.get("/").text().starts_with("app-0"));
    drop(squatter);
}

#[test]
fn an_admin_port_bound_without_listening_is_replaced() {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let d = Drawbridge::prepare(&two_server_yaml(&a.addr, &b.addr), &[]);
    let taken = d.admin.clone();
    // Bound, not listening (like the local end of an outgoing connection):
    // nothing to see in the listening sockets, only drawbridge's log says.
    let held =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
    let addr: SocketAddr = taken.parse().expect("an address");
    held.bind(&addr.into()).expect("take the admin port");
    let d = d.launch();
    assert_ne!(d.admin, taken);
    assert!(
        d.log_text().contains(&format!("{taken} is in use")),
        "{}",
        d.log_text()
    );
    assert_eq!(d.api("GET", "/api/v1/status", None).status, 200);
}

#[test]
fn an_upstream_on_a_taken_address_does_not_pass_for_started() {
    let squatter = TcpListener::bind("127.0.0.1:0").expect("a port");
    let taken = squatter.local_addr().expect("addr").to_string();
    let started = std::panic::catch_unwind(|| Upstream::start_on("late", &taken));
    let Err(e) = started else {
        panic!("an upstream started on {taken}, which another socket listens on");
    };
    let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains(&format!("{taken} is taken")), "{msg}");
}

#[test]
fn a_dead_address_refuses_connections_and_cannot_be_taken() {
    let dead = dead_addr();
    assert_eq!(
        std::net::TcpStream::connect(&dead.addr)
            .expect_err("nothing listens")
            .kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    assert!(
        TcpListener::bind(&dead.addr).is_err(),
        "another socket could take {}",
        dead.addr
    );
}

#[test]
fn an_address_is_replaced_only_where_it_stands_whole() {
    let text = "a: 127.0.0.1:80\nb: \"127.0.0.1:8080\"\nc: 127.0.0.1:80";
    assert_eq!(
        replace_addr(text, "127.0.0.1:80", "127.0.0.1:9"),
        "a: 127.0.0.1:9\nb: \"127.0.0.1:8080\"\nc: 127.0.0.1:9"
    );
}
