//! The demo: `demo-upstream` is a tiny app that answers its name (used by
//! the demo, docker-compose and the tests), and `demo` starts two of them
//! and the proxy on `conf/demo.yaml`.

use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::services::listening::Service;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// The demo configuration, embedded so `demo` runs from anywhere.
pub const DEMO_CONFIG: &str = include_str!("../conf/demo.yaml");

/// Where the demo keeps its self-signed certificate (`conf/demo.yaml`
/// names these files).
pub const DEMO_TLS_DIR: &str = "/tmp/drawbridge-demo/tls";

/// Make the demo's self-signed certificate for `localhost` and 127.0.0.1
/// unless it is there already. Returns the certificate's path.
pub fn ensure_demo_certificate() -> Result<PathBuf, String> {
    self_signed(
        Path::new(DEMO_TLS_DIR),
        &["localhost".to_string(), "127.0.0.1".to_string()],
    )
}

/// Make a self-signed certificate for `names` as `cert.pem` and `key.pem`
/// (readable by its owner only) in `dir`, unless both are there already:
/// for the demo and for a container's first start, until real
/// certificates are mounted. Returns the certificate's path.
pub fn self_signed(dir: &Path, names: &[String]) -> Result<PathBuf, String> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.is_file() && key.is_file() {
        return Ok(cert);
    }
    if names.is_empty() {
        return Err("a self-signed certificate needs at least one name".into());
    }
    let made = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| format!("cannot make a self-signed certificate: {e}"))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    write_private(&key, made.key_pair.serialize_pem().as_bytes())?;
    std::fs::write(&cert, made.cert.pem())
        .map_err(|e| format!("cannot write {}: {e}", cert.display()))?;
    Ok(cert)
}

/// Write a file only its owner can read.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Longest delay `/slow` accepts, in milliseconds.
const MAX_SLOW_MS: u64 = 30_000;

pub struct DemoUpstream {
    name: String,
}

#[async_trait]
impl ServeHttp for DemoUpstream {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        // Consume any request body so the connection can be reused.
        while let Ok(Some(_)) = session.read_request_body().await {}
        let req = session.req_header();
        let path = req.uri.path();
        let (status, body) = match path {
            "/healthz" => (200, "ok\n".to_string()),
            "/headers" => {
                // The request target as received, then every header.
                let mut out = format!("target: {}\n", String::from_utf8_lossy(req.raw_path()));
                for (k, v) in req.headers.iter() {
                    out.push_str(&format!(
                        "{}: {}\n",
                        k.as_str(),
                        String::from_utf8_lossy(v.as_bytes())
                    ));
                }
                (200, out)
            }
            "/slow" => {
                let ms = req
                    .uri
                    .query()
                    .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("ms=")))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(1000)
                    .min(MAX_SLOW_MS);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                (200, format!("{}\n", self.name))
            }
            _ => (200, format!("{}\n", self.name)),
        };
        Response::builder()
            .status(status)
            .header("Content-Type", "text/plain; charset=utf-8")
            .header("Content-Length", body.len())
            .header("X-Upstream", self.name.as_str())
            .body(body.into_bytes())
            .unwrap_or_default()
    }
}

/// Serve one demo upstream until killed. With `exit_with`, also exit when
/// that process is gone (so `demo`'s children never outlive it).
pub fn upstream(name: &str, listen: &str, exit_with: Option<u32>) -> ! {
    if let Some(pid) = exit_with {
        std::thread::spawn(move || loop {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                std::process::exit(0);
            }
            std::thread::sleep(Duration::from_millis(500));
        });
    }
    let tag = listen.replace([':', '.', '[', ']'], "_");
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: format!("/tmp/drawbridge-upstream-{tag}.pid"),
        upgrade_sock: format!("/tmp/drawbridge-upstream-{tag}.sock"),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(Opt::default()), conf);
    server.bootstrap();
    let mut svc = Service::new(
        format!("demo upstream {name}"),
        DemoUpstream {
            name: name.to_string(),
        },
    );
    svc.add_tcp(listen);
    server.add_service(svc);
    log::info!("demo upstream {name} listening on {listen}");
    server.run_forever()
}

/// Kills the demo's upstreams when the demo ends.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The config file the demo runs on: `conf/demo.yaml` when run from the
/// repository, else the embedded copy written to a temp folder.
fn demo_config_path() -> Result<PathBuf, String> {
    let local = PathBuf::from("conf/demo.yaml");
    if local.exists() {
        return Ok(local);
    }
    let dir = std::env::temp_dir().join("drawbridge-demo");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join("demo.yaml");
    std::fs::write(&path, DEMO_CONFIG)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// Start the demo from its configuration: the last run's state file goes,
/// unless `keep` says to keep it. Returns what was done, for the log.
fn reset_state(state_file: &Path, keep: bool) -> Result<Option<String>, String> {
    if keep || !state_file.exists() {
        return Ok(None);
    }
    std::fs::remove_file(state_file)
        .map(|()| {
            Some(format!(
                "demo: starting from the configuration; the last run's state ({}) was removed \
                 (--keep-state keeps it)",
                state_file.display()
            ))
        })
        .map_err(|e| format!("cannot remove {}: {e}", state_file.display()))
}

pub fn demo(keep_state: bool) -> i32 {
    let path = match demo_config_path() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let cacert = match ensure_demo_certificate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let config = match crate::config::load(&path) {
        Ok(c) => c,
        Err(problems) => {
            problems.iter().for_each(|p| eprintln!("{p}"));
            return 1;
        }
    };
    match reset_state(&config.state_file, keep_state) {
        Ok(Some(done)) => eprintln!("{done}"),
        Ok(None) => {}
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot find my own executable: {e}");
            return 1;
        }
    };
    let mut children = Children(Vec::new());
    for server in config.backends.iter().flat_map(|b| &b.servers) {
        let child = Command::new(&exe)
            .args([
                "demo-upstream",
                "--name",
                &server.name,
                "--listen",
                &server.addr,
            ])
            .args(["--exit-with", &std::process::id().to_string()])
            .spawn();
        match child {
            Ok(c) => children.0.push(c),
            Err(e) => {
                eprintln!("error: cannot start demo upstream {}: {e}", server.name);
                return 1;
            }
        }
    }
    let listen = |tls: bool| {
        config
            .listeners
            .iter()
            .find(|l| l.tls.is_some() == tls)
            .map(|l| l.listen.clone())
            .unwrap_or_default()
    };
    let (web, websecure) = (listen(false), listen(true));
    let https_port = websecure.rsplit(':').next().unwrap_or("8443");
    let admin = config.admin.listen.clone();
    let metrics = config.metrics_listen.clone();
    println!(
        r#"
drawbridge demo: two upstream apps (app-01, app-02) behind the proxy.

  proxy     http://{web}/
            https://localhost:{https_port}/ (HTTP/2; a self-signed certificate in {tls})
  console   http://{admin}/               (the browser console)
  admin     http://{admin}/api/v1/status
  metrics   http://{metrics}/metrics
  config    {cfg}

Try it (in another terminal):
  curl -i http://{web}/                    # balanced, sets a SERVERID cookie
  curl -c jar -b jar http://{web}/        # repeat: stays on one server
  curl --cacert {cacert} https://localhost:{https_port}/ -v --http2
  drawbridge ctl status
  drawbridge ctl maintenance on app --message "Back at 14:00"
  curl -i http://{web}/                    # 503 maintenance page, Retry-After
  drawbridge ctl bypass-token app                   # a cookie that lets you through
  drawbridge ctl maintenance off app
  drawbridge ctl server app/app-01 drain            # sticky users stay, new users go to app-02
  drawbridge ctl wait-drained app/app-01 --idle 10s
  drawbridge ctl server app/app-01 ready
(`drawbridge` is target/release/drawbridge, or `cargo run --release --`.)
Ctrl-C stops everything.
"#,
        cfg = path.display(),
        tls = DEMO_TLS_DIR,
        cacert = cacert.display(),
    );
    // The upstreams get a moment to listen before the first health check.
    std::thread::sleep(Duration::from_millis(300));
    let code = crate::server::run_config(config, false, false);
    drop(children);
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_starts_from_its_configuration_unless_told() {
        let dir = std::env::temp_dir().join(format!("drawbridge-demo-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join("state.json");
        std::fs::write(&file, "{}").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reset_state(&file, true), Ok(None));
        assert!(file.exists(), "--keep-state keeps the file");
        let done = reset_state(&file, false).unwrap_or_else(|e| panic!("{e}"));
        assert!(done.is_some_and(|d| d.contains("--keep-state")));
        assert!(!file.exists(), "a plain demo starts from its configuration");
        assert_eq!(reset_state(&file, false), Ok(None));
        let _ = std::fs::remove_dir_all(dir);
    }
}
