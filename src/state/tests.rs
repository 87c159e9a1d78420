//! The runtime state's unit tests: snapshots, the state file, in-flight
//! counts, health, servers joining and leaving.

use super::*;
use std::path::{Path, PathBuf};

fn runtime(dir: &Path) -> Runtime {
    let yaml = format!(
        "state_file: {}/state.json
listeners:
  - {{ name: web, listen: 127.0.0.1:0, protocol: http }}
sites:
  - {{ name: app, backend: app }}
backends:
  - name: app
    sticky: {{ cookie: SERVERID }}
    servers:
      - {{ name: a, addr: 127.0.0.1:1 }}
      - {{ name: b, addr: 127.0.0.1:2, weight: 3 }}
",
        dir.display()
    );
    let config = crate::config::parse(&yaml, &dir.join("drawbridge.yaml"))
        .unwrap_or_else(|e| panic!("config: {e:?}"));
    Runtime::new(config, 1024).unwrap_or_else(|e| panic!("runtime: {e}"))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("drawbridge-state-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// A thread that cached a snapshot sees every later admin change at
/// once, and two runtimes on one thread never see each other's.
#[test]
fn cached_snapshots_follow_admin_changes() {
    let (d1, d2) = (temp_dir("one"), temp_dir("two"));
    let (rt, other) = (runtime(&d1), runtime(&d2));
    assert_eq!(rt.snapshot().servers[0][0].state, AdminState::Ready);
    assert_eq!(other.snapshot().servers[0][0].state, AdminState::Ready);
    let ready = rt.snapshot().ready[0].clone().map(|t| t.mask);
    assert_eq!(ready, Some(0b11));
    rt.update(|d| {
        d.servers[0][0].admin.state = AdminState::Drain;
        Ok(())
    })
    .unwrap_or_else(|e: StateError| panic!("update: {e}"));
    let snap = rt.snapshot();
    assert_eq!(snap.servers[0][0].state, AdminState::Drain);
    assert_eq!(snap.ready[0].as_ref().map(|t| t.mask), Some(0b10));
    assert_eq!(other.snapshot().servers[0][0].state, AdminState::Ready);
    let _ = std::fs::remove_dir_all(d1);
    let _ = std::fs::remove_dir_all(d2);
}

/// A restart names what the state file brought back.
#[test]
fn restored_state_is_named() {
    let dir = temp_dir("restored");
    let rt = runtime(&dir);
    let draft = |rt: &Runtime| Draft::of(&rt.snapshot());
    assert!(restored(&rt.config, &draft(&rt)).is_empty());
    rt.update(|d| {
        d.sites[0].enabled = true;
        d.servers[0][1].admin.state = AdminState::Maint;
        Ok::<_, StateError>(())
    })
    .unwrap_or_else(|e| panic!("update: {e}"));
    let config = rt.config.clone();
    drop(rt);
    let (restarted, _) = initial_state(&config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        restored(&config, &restarted),
        [
            "maintenance ON for site(s) app",
            "server state(s) app/b maint"
        ]
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A state file with an unknown setting, of another version, or that is
/// not a JSON object is refused rather than half read.
#[test]
fn loose_state_files_are_refused() {
    let dir = temp_dir("loose");
    let rt = runtime(&dir);
    let config = rt.config.clone();
    drop(rt);
    let text = std::fs::read_to_string(&config.state_file).unwrap_or_default();
    for (bad, words) in [
        (
            text.replace("\"retry_after\"", "\"mesage\": \"x\", \"retry_after\""),
            "mesage",
        ),
        (
            text.replace("\"version\": 1", "\"version\": 2"),
            "version 2",
        ),
        ("[1]".to_string(), "not a JSON object"),
    ] {
        assert_ne!(bad, text);
        std::fs::write(&config.state_file, bad).unwrap_or_else(|e| panic!("{e}"));
        let err = initial_state(&config).err().unwrap_or_default();
        assert!(err.contains(words), "{words}: {err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A state file is held to the checks the API applies.
#[test]
fn state_file_values_are_checked() {
    let dir = temp_dir("checked");
    let rt = runtime(&dir);
    let config = rt.config.clone();
    drop(rt);
    let text = std::fs::read_to_string(&config.state_file).unwrap_or_default();
    let bad = text.replace("\"retry_after\": 600", "\"retry_after\": 0");
    assert_ne!(bad, text, "the state file holds retry_after: {text}");
    std::fs::write(&config.state_file, bad).unwrap_or_else(|e| panic!("{e}"));
    let err = initial_state(&config).err().unwrap_or_default();
    assert!(err.contains("retry_after: must be between 1"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The count follows the guards, including one dropped on an early
/// return or a panic's unwinding, and a request moved to another server.
#[test]
fn in_flight_follows_its_guards() {
    let dir = temp_dir("inflight");
    let rt = runtime(&dir);
    let snap = rt.snapshot();
    let (a, b) = (&snap.servers[0][0].server, &snap.servers[0][1].server);
    let first = InFlight::new(a);
    let second = InFlight::new(a);
    assert_eq!(a.inflight.load(Relaxed), 2);
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _g = InFlight::new(a);
        assert_eq!(a.inflight.load(Relaxed), 3);
        panic!("a request that fails half-way");
    }));
    assert!(unwound.is_err());
    assert_eq!(a.inflight.load(Relaxed), 2);
    let mut moved = Some(first);
    drop(moved.replace(InFlight::new(b)));
    assert_eq!((a.inflight.load(Relaxed), b.inflight.load(Relaxed)), (1, 1));
    drop((second, moved));
    assert_eq!((a.inflight.load(Relaxed), b.inflight.load(Relaxed)), (0, 0));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn up_mask_follows_health() {
    let dir = temp_dir("health");
    let rt = runtime(&dir);
    let mask = |rt: &Runtime| rt.snapshot().up_mask[0].load(Relaxed);
    let b = rt.snapshot().servers[0][1].server.clone();
    assert_eq!(mask(&rt), 0b11);
    rt.set_health(&b, false);
    assert_eq!(mask(&rt), 0b01);
    rt.set_health(&b, true);
    assert_eq!(mask(&rt), 0b11);
    let _ = std::fs::remove_dir_all(dir);
}

/// A server added at runtime, as the API adds it.
fn added(name: &str, addr: &str, state: AdminState) -> DraftServer {
    let spec = crate::config::ServerSpec {
        name: name.into(),
        addr: addr.into(),
        backup: false,
        max_conns: 0,
        slowstart: None,
    };
    let conf =
        crate::config::check::added_server("app", &spec, false).unwrap_or_else(|e| panic!("{e}"));
    DraftServer {
        conf: Arc::new(conf),
        admin: ServerAdmin { state, weight: 1 },
        added: true,
    }
}

fn names(rt: &Runtime) -> Vec<String> {
    let snap = rt.snapshot();
    snap.servers[0]
        .iter()
        .map(|m| m.server.name().to_string())
        .collect()
}

fn metrics_text(rt: &Runtime) -> String {
    String::from_utf8_lossy(&rt.render_metrics()).into_owned()
}

/// A server joins: in the snapshot with its own sticky id and cookie,
/// its series in the metrics, kept in the state file; a config server
/// leaves: its series go, the servers after it keep their identity and
/// up bits, and a restart brings back both changes.
#[test]
fn servers_join_and_leave_and_a_restart_keeps_it() {
    let dir = temp_dir("members");
    let rt = runtime(&dir);
    let series = r#"drawbridge_server_up{backend="app",server="c"}"#;
    assert!(!metrics_text(&rt).contains(series));
    rt.update(|d| {
        d.servers[0].push(added("c", "127.0.0.1:3", AdminState::Ready));
        Ok::<_, StateError>(())
    })
    .unwrap_or_else(|e| panic!("add: {e}"));
    assert_eq!(names(&rt), ["a", "b", "c"]);
    let snap = rt.snapshot();
    let c = snap.servers[0][2].server.clone();
    assert_eq!(c.conf.id, crate::config::server_id("app", "c"));
    let pin = c.pin(false).map(|v| v.to_str().unwrap_or("").to_string());
    assert!(
        pin.as_deref()
            .is_some_and(|p| p.starts_with(&format!("SERVERID={};", c.conf.id))),
        "{pin:?}"
    );
    assert_eq!(snap.up_mask[0].load(Relaxed), 0b111);
    assert_eq!(snap.ready[0].as_ref().map(|t| t.mask), Some(0b111));
    assert!(metrics_text(&rt).contains(&format!("{series} 1")));
    let a = snap.servers[0][0].server.clone();
    drop(snap);

    rt.update(|d| {
        let b = d.find(0, "b").unwrap_or_else(|| panic!("no b"));
        d.servers[0].remove(b);
        Ok::<_, StateError>(())
    })
    .unwrap_or_else(|e| panic!("delete: {e}"));
    assert_eq!(names(&rt), ["a", "c"]);
    let snap = rt.snapshot();
    assert!(Arc::ptr_eq(&snap.servers[0][0].server, &a), "a kept");
    assert!(Arc::ptr_eq(&snap.servers[0][1].server, &c), "c kept");
    assert_eq!(snap.up_mask[0].load(Relaxed), 0b11);
    let text = metrics_text(&rt);
    assert!(!text.contains(r#"server="b""#), "b's series went:\n{text}");
    assert!(text.contains(series));
    drop(snap);

    let config = rt.config.clone();
    drop(rt);
    let (draft, _) = initial_state(&config).unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<(&str, &str, bool)> = draft.servers[0]
        .iter()
        .map(|s| (s.conf.name.as_str(), s.conf.addr.as_str(), s.added))
        .collect();
    assert_eq!(
        got,
        [("a", "127.0.0.1:1", false), ("c", "127.0.0.1:3", true)]
    );
    assert_eq!(
        restored(&config, &draft),
        [
            "server(s) added app/c 127.0.0.1:3",
            "server(s) deleted app/b"
        ]
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// An added server that cannot be kept (the state file cannot be
/// written) is not added, and leaves no series behind; a backend keeps
/// at least one server.
#[test]
fn a_refused_change_of_servers_changes_nothing() {
    let dir = temp_dir("refused");
    // A runtime whose state file's folder is replaced by a file.
    let state_dir = dir.join("state-dir-gone");
    let config = crate::config::parse(
        &format!(
            "state_file: {}/state.json
listeners:
  - {{ name: web, listen: 127.0.0.1:0, protocol: http }}
sites:
  - {{ name: app, backend: app }}
backends:
  - name: app
    servers:
      - {{ name: a, addr: 127.0.0.1:1 }}
",
            state_dir.display()
        ),
        &dir.join("drawbridge.yaml"),
    )
    .unwrap_or_else(|e| panic!("config: {e:?}"));
    let rt = Runtime::new(config, 1024).unwrap_or_else(|e| panic!("runtime: {e}"));
    std::fs::remove_dir_all(&state_dir).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&state_dir, "a file").unwrap_or_else(|e| panic!("{e}"));
    let err = rt
        .update(|d| {
            d.servers[0].push(added("c", "127.0.0.1:3", AdminState::Ready));
            Ok::<_, StateError>(())
        })
        .err();
    assert!(matches!(err, Some(StateError::Storage(_))), "{err:?}");
    assert_eq!(names(&rt), ["a"]);
    assert!(!metrics_text(&rt).contains(r#"server="c""#));
    std::fs::remove_file(&state_dir).unwrap_or_else(|e| panic!("{e}"));
    let err = rt
        .update(|d| {
            d.servers[0].clear();
            Ok::<_, StateError>(())
        })
        .err();
    assert!(
        matches!(&err, Some(StateError::Invalid(m)) if m.contains("at least one server")),
        "{err:?}"
    );
    assert_eq!(names(&rt), ["a"]);
    let _ = std::fs::remove_dir_all(dir);
}

/// The servers a restart on `config` starts with: (name, addr, added).
fn restarted(config: &Config) -> Vec<(String, String, bool)> {
    let (draft, _) = initial_state(config).unwrap_or_else(|e| panic!("{e}"));
    draft.servers[0]
        .iter()
        .map(|s| (s.conf.name.clone(), s.conf.addr.clone(), s.added))
        .collect()
}

/// A config server deleted then added again through the API (at another
/// address) is the API's after a restart; a deletion is of the server as
/// it was: once the config defines that name otherwise, the config's
/// stays.
#[test]
fn a_deleted_server_added_again_or_redefined_is_kept() {
    let dir = temp_dir("readded");
    let rt = runtime(&dir);
    rt.update(|d| {
        let b = d.find(0, "b").unwrap_or_else(|| panic!("no b"));
        d.servers[0].remove(b);
        d.servers[0].push(added("b", "127.0.0.1:9", AdminState::Ready));
        Ok::<_, StateError>(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let config = (*rt.config).clone();
    drop(rt);
    let text = std::fs::read_to_string(&config.state_file).unwrap_or_default();
    assert_eq!(
        restarted(&config),
        [
            ("a".into(), "127.0.0.1:1".into(), false),
            ("b".into(), "127.0.0.1:9".into(), true)
        ],
        "{text}"
    );

    // Only deleted now, then the config's b moves to another address.
    let rt = Runtime::new(config.clone(), 1024).unwrap_or_else(|e| panic!("{e}"));
    rt.update(|d| {
        d.servers[0].retain(|s| s.conf.name != "b");
        Ok::<_, StateError>(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    drop(rt);
    let names: Vec<String> = restarted(&config).into_iter().map(|s| s.0).collect();
    assert_eq!(names, ["a"]);
    let mut moved = config.clone();
    moved.backends[0].servers[1].addr = "127.0.0.1:7".into();
    assert_eq!(
        restarted(&moved),
        [
            ("a".into(), "127.0.0.1:1".into(), false),
            ("b".into(), "127.0.0.1:7".into(), false)
        ]
    );
    // A config left with only the deleted server keeps it.
    let mut only_b = config.clone();
    only_b.backends[0].servers.remove(0);
    let names: Vec<String> = restarted(&only_b).into_iter().map(|s| s.0).collect();
    assert_eq!(names, ["b"]);
    let _ = std::fs::remove_dir_all(dir);
}

/// Every config server replaced by servers added through the API (a
/// blue/green deploy of the whole backend): a restart has only the new
/// ones, none of the config's comes back.
#[test]
fn a_backend_whose_servers_were_all_replaced_stays_replaced() {
    let dir = temp_dir("replaced");
    let rt = runtime(&dir);
    for (name, addr) in [("c", "127.0.0.1:3"), ("d", "127.0.0.1:4")] {
        rt.update(|d| {
            d.servers[0].push(added(name, addr, AdminState::Ready));
            Ok::<_, StateError>(())
        })
        .unwrap_or_else(|e| panic!("add {name}: {e}"));
    }
    for name in ["a", "b"] {
        rt.update(|d| {
            d.servers[0].retain(|s| s.conf.name != name);
            Ok::<_, StateError>(())
        })
        .unwrap_or_else(|e| panic!("delete {name}: {e}"));
    }
    assert_eq!(names(&rt), ["c", "d"]);
    let config = (*rt.config).clone();
    drop(rt);
    let names: Vec<String> = restarted(&config).into_iter().map(|s| s.0).collect();
    assert_eq!(names, ["c", "d"]);
    let _ = std::fs::remove_dir_all(dir);
}
