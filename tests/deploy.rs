//! The deployment files (CONTRACT section 8): the shipped configs pass
//! `drawbridge check`, everything the Dockerfile copies and docker-compose.yml
//! mounts exists, the image and the compose stack give the container config
//! the layout it expects (its pages at `../static/`), the names and ports
//! agree across the files, and docker-compose accepts the file.

mod common;

use common::*;
use serde_yaml::Value;
use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

/// `drawbridge check -c REL` from the repository root, with `env` set and
/// the admin token variable otherwise removed.
fn check(rel: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["check", "-c", rel])
        .env_remove("DRAWBRIDGE_ADMIN_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_bounded(cmd);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_check_ok(rel: &str, env: &[(&str, &str)]) {
    assert!(
        repo_path(rel).is_file(),
        "{rel} is missing from the repository"
    );
    let (ok, stdout, stderr) = check(rel, env);
    assert!(ok, "drawbridge check -c {rel} failed:\n{stderr}{stdout}");
    assert!(
        stdout.starts_with("ok: ") && stdout.lines().count() == 1,
        "drawbridge check -c {rel}: expected one `ok: ...` line, got {stdout:?}"
    );
}

#[test]
fn the_container_config_passes_check() {
    // Its admin API listens on 0.0.0.0 (so docker can publish it), which
    // needs a token: `check`, like `run`, reads it from token_env. The
    // compose stack sets it in the container; here we set it for the check.
    let (_dir, config) = in_layout("docker.yaml");
    assert_check_ok(
        &config.to_string_lossy(),
        &[("DRAWBRIDGE_ADMIN_TOKEN", "deploy-test-token")],
    );
}

/// `conf/NAME` checked in the layout it is served from: conf/ and static/
/// side by side, and tls/ with a certificate pair as `drawbridge
/// self-signed-cert tls` (or the image build) makes it.
fn in_layout(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    for sub in ["conf", "static"] {
        std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
    }
    let config = dir.path().join("conf").join(name);
    std::fs::copy(repo_path(&format!("conf/{name}")), &config).expect("copy the config");
    for page in std::fs::read_dir(repo_path("static")).expect("static/") {
        let page = page.expect("entry").path();
        if page.is_file() {
            let file = page.file_name().unwrap_or_default();
            std::fs::copy(&page, dir.path().join("static").join(file)).expect("copy a page");
        }
    }
    let mut make = Command::new(BIN);
    make.arg("self-signed-cert").arg(dir.path().join("tls"));
    assert!(run_bounded(make).status.success());
    (dir, config)
}

#[test]
fn the_container_config_is_refused_without_its_token() {
    let (ok, _, stderr) = check("conf/docker.yaml", &[]);
    assert!(
        !ok,
        "a non-loopback admin API without a token must be refused"
    );
    assert!(
        stderr.contains("conf/docker.yaml: admin.listen:"),
        "the problem should name the file and key: {stderr}"
    );
}

#[test]
fn the_demo_config_passes_check() {
    // `demo` makes its certificate before it loads the config.
    drawbridge::demo::ensure_demo_certificate().expect("demo certificate");
    assert_check_ok("conf/demo.yaml", &[]);
}

#[test]
fn the_default_config_passes_check() {
    // `drawbridge run` without -c serves conf/drawbridge.yaml; its HTTPS
    // listener's files are made once (or are certbot's).
    let (_dir, config) = in_layout("drawbridge.yaml");
    assert_check_ok(&config.to_string_lossy(), &[]);
}

#[test]
fn the_build_and_benchmark_configs_pass_check() {
    // The image build trains the optimised binary on deploy/pgo/train.yaml;
    // the benchmark runs bench/drawbridge.yaml.
    assert_check_ok("deploy/pgo/train.yaml", &[]);
    assert_check_ok("bench/drawbridge.yaml", &[]);
}

// ------------------------------------------------------------- Dockerfile

/// One `COPY`/`ADD` of the Dockerfile.
#[derive(Debug)]
struct Copy {
    /// `--from=STAGE`: copied from a build stage, not the context.
    from_stage: bool,
    sources: Vec<String>,
    dest: String,
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile_instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if t.starts_with('#') {
            continue; // a comment inside a continued instruction
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                cur.push_str(part);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                out.push(std::mem::take(&mut cur));
            }
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

/// The words of an instruction's arguments, JSON (exec) form or plain.
fn instruction_args(rest: &str) -> Vec<String> {
    let rest = rest.trim();
    if rest.starts_with('[') {
        serde_json::from_str::<Vec<String>>(rest)
            .unwrap_or_else(|e| panic!("bad JSON form {rest:?}: {e}"))
    } else {
        rest.split_whitespace().map(str::to_string).collect()
    }
}

/// The files the image build makes with `drawbridge self-signed-cert DIR`
/// (DIR/cert.pem and DIR/key.pem), in the image.
fn generated_in_image() -> Vec<PathBuf> {
    dockerfile_instructions(&read(&repo_path("Dockerfile")))
        .iter()
        .filter_map(|ins| ins.strip_prefix("RUN "))
        .filter_map(|rest| {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "self-signed-cert")?;
            words.get(at + 1).map(PathBuf::from)
        })
        .flat_map(|dir| [dir.join("cert.pem"), dir.join("key.pem")])
        .collect()
}

/// The repository scripts (`*.sh`) the Dockerfile's `RUN` instructions call.
fn dockerfile_scripts() -> Vec<String> {
    dockerfile_instructions(&read(&repo_path("Dockerfile")))
        .iter()
        .filter_map(|ins| ins.strip_prefix("RUN "))
        .flat_map(|rest| rest.split(|c: char| c.is_whitespace() || c == ';'))
        .filter(|w| w.ends_with(".sh") && !w.starts_with('/') && !w.starts_with('$'))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_script_the_image_build_runs_is_in_the_repository_and_executable() {
    use std::os::unix::fs::PermissionsExt;
    let scripts = dockerfile_scripts();
    assert!(
        scripts.iter().any(|s| s == "deploy/pgo/build.sh"),
        "the image is built through deploy/pgo/build.sh (PGO): {scripts:?}"
    );
    let ignored = dockerignore();
    for s in scripts {
        let meta = std::fs::metadata(repo_path(&s))
            .unwrap_or_else(|e| panic!("the Dockerfile runs {s}: {e}"));
        assert!(
            meta.permissions().mode() & 0o111 != 0,
            "the Dockerfile runs {s}, which is not executable"
        );
        assert!(
            !ignored.iter().any(|pat| s.starts_with(pat.as_str())),
            "the Dockerfile runs {s}, but .dockerignore excludes it"
        );
    }
}

fn dockerfile() -> (Vec<Copy>, Vec<String>, Vec<String>) {
    let text = read(&repo_path("Dockerfile"));
    assert!(!text.is_empty(), "Dockerfile is missing or empty");
    let mut copies = Vec::new();
    let (mut entrypoint, mut cmd) = (Vec::new(), Vec::new());
    for ins in dockerfile_instructions(&text) {
        let (word, rest) = ins.split_once(char::is_whitespace).unwrap_or((&ins, ""));
        match word.to_ascii_uppercase().as_str() {
            "COPY" | "ADD" => {
                let mut from_stage = false;
                let mut rest = rest.trim();
                while let Some(opt) = rest.strip_prefix("--") {
                    let (o, r) = opt.split_once(char::is_whitespace).unwrap_or((opt, ""));
                    from_stage |= o.starts_with("from=");
                    rest = r.trim_start();
                }
                let mut args = instruction_args(rest);
                assert!(
                    args.len() >= 2,
                    "{word} needs a source and a destination: {ins}"
                );
                let dest = args.pop().unwrap_or_default();
                copies.push(Copy {
                    from_stage,
                    sources: args,
                    dest,
                });
            }
            "ENTRYPOINT" => entrypoint = instruction_args(rest),
            "CMD" => cmd = instruction_args(rest),
            _ => {}
        }
    }
    (copies, entrypoint, cmd)
}

/// `a/b/../c` => `a/c`, lexically.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The repository file that `image_path` comes from, given (repo source,
/// absolute destination) pairs of copies or bind mounts; `None` when no
/// pair provides it.
fn provided_by(pairs: &[(PathBuf, PathBuf)], image_path: &Path) -> Option<PathBuf> {
    // The most specific destination wins (a file mounted into a mounted folder).
    pairs
        .iter()
        .filter_map(|(src, dest)| {
            image_path
                .strip_prefix(dest)
                .ok()
                .map(|rest| (dest.components().count(), src.join(rest)))
        })
        .max_by_key(|(depth, _)| *depth)
        .map(|(_, p)| p)
}

/// The files the container config references (pages, certs, token file).
fn referenced_files(config_rel: &str) -> Vec<String> {
    let doc: Value = serde_yaml::from_str(&read(&repo_path(config_rel)))
        .unwrap_or_else(|e| panic!("{config_rel}: {e}"));
    let mut out = Vec::new();
    for site in doc["sites"].as_sequence().into_iter().flatten() {
        out.extend(site["error_page"].as_str().map(str::to_string));
        out.extend(site["maintenance"]["page"].as_str().map(str::to_string));
    }
    for l in doc["listeners"].as_sequence().into_iter().flatten() {
        out.extend(l["tls"]["cert"].as_str().map(str::to_string));
        out.extend(l["tls"]["key"].as_str().map(str::to_string));
    }
    out.extend(doc["admin"]["token_file"].as_str().map(str::to_string));
    out
}

/// In the image (or the compose container), the config at `config_in_image`
/// comes from `conf/docker.yaml` and every file it references resolves,
/// relative to its folder, to a repository file that is copied or mounted.
fn assert_layout(what: &str, pairs: &[(PathBuf, PathBuf)], config_in_image: &Path) {
    let src = provided_by(pairs, config_in_image)
        .unwrap_or_else(|| panic!("{what}: nothing provides {}", config_in_image.display()));
    assert_eq!(
        normalize(&src),
        PathBuf::from("conf/docker.yaml"),
        "{what}: {} should be conf/docker.yaml",
        config_in_image.display()
    );
    let folder = config_in_image.parent().unwrap_or(Path::new("/"));
    let refs = referenced_files("conf/docker.yaml");
    assert!(!refs.is_empty(), "conf/docker.yaml references no pages");
    let generated = generated_in_image();
    for r in refs {
        let in_image = normalize(&folder.join(&r));
        if generated.contains(&in_image) {
            continue;
        }
        let from = provided_by(pairs, &in_image).unwrap_or_else(|| {
            panic!(
                "{what}: conf/docker.yaml references {r}, i.e. {} in the container, \
                 which nothing copies or mounts",
                in_image.display()
            )
        });
        assert!(
            repo_path(&from.to_string_lossy()).is_file(),
            "{what}: {} (for {r}) does not exist in the repository",
            from.display()
        );
    }
}

fn dockerignore() -> Vec<String> {
    read(&repo_path(".dockerignore"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .map(|l| l.trim_end_matches('/').to_string())
        .collect()
}

#[test]
fn every_file_the_dockerfile_copies_exists_and_the_image_layout_works() {
    let (copies, entrypoint, cmd) = dockerfile();
    assert!(!copies.is_empty(), "the Dockerfile copies nothing");
    let ignored = dockerignore();
    let mut pairs = Vec::new();
    for c in copies.iter().filter(|c| !c.from_stage) {
        for s in &c.sources {
            assert!(
                !s.contains("://") && !s.contains('*'),
                "keep COPY sources plain paths: {s}"
            );
            let p = repo_path(s);
            assert!(
                p.exists(),
                "the Dockerfile copies {s}, which is not in the repository"
            );
            let rel = normalize(Path::new(s)).to_string_lossy().into_owned();
            for pat in ignored.iter().filter(|p| !p.contains('*')) {
                assert!(
                    !(rel == *pat || rel.starts_with(&format!("{pat}/"))),
                    "the Dockerfile copies {s}, but .dockerignore excludes it ({pat})"
                );
            }
            if c.dest.starts_with('/') {
                let dest = if c.dest.ends_with('/') || c.sources.len() > 1 {
                    let name = Path::new(s).file_name().unwrap_or_default();
                    Path::new(&c.dest).join(if p.is_dir() {
                        Path::new("")
                    } else {
                        Path::new(name)
                    })
                } else {
                    PathBuf::from(&c.dest)
                };
                pairs.push((normalize(Path::new(s)), normalize(&dest)));
            }
        }
    }
    // The image's default command serves the config it copies, and that
    // config finds its pages.
    let args: Vec<String> = entrypoint.iter().chain(&cmd).cloned().collect();
    assert_eq!(
        args.first().map(String::as_str),
        Some("drawbridge"),
        "ENTRYPOINT/CMD: {args:?}"
    );
    let config = args
        .windows(2)
        .find(|w| w[0] == "-c" || w[0] == "--config")
        .map(|w| w[1].clone())
        .unwrap_or_else(|| panic!("the image's command names no config (-c): {args:?}"));
    assert_layout("Dockerfile", &pairs, Path::new(&config));
}

fn compose() -> Value {
    serde_yaml::from_str(&read(&repo_path("docker-compose.yml")))
        .unwrap_or_else(|e| panic!("docker-compose.yml: {e}"))
}

/// `(service, host path, container path)` of every bind mount.
fn bind_mounts(doc: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let services = doc["services"].as_mapping().expect("services");
    let named: BTreeSet<String> = doc["volumes"]
        .as_mapping()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for (name, svc) in services {
        let name = name.as_str().unwrap_or_default().to_string();
        for v in svc["volumes"].as_sequence().into_iter().flatten() {
            let (host, target) = match v {
                Value::String(s) => {
                    let mut parts = s.split(':');
                    let host = parts.next().unwrap_or_default().to_string();
                    let target = parts.next().unwrap_or_default().to_string();
                    (host, target)
                }
                Value::Mapping(_) => (
                    v["source"].as_str().unwrap_or_default().to_string(),
                    v["target"].as_str().unwrap_or_default().to_string(),
                ),
                _ => panic!("{name}: unexpected volume entry {v:?}"),
            };
            if host.starts_with('.') || host.starts_with('/') || host.starts_with('~') {
                out.push((name.clone(), host, target));
            } else {
                assert!(
                    named.contains(&host),
                    "{name}: volume {host:?} is not declared under top-level volumes"
                );
            }
        }
    }
    out
}

#[test]
fn every_path_docker_compose_mounts_exists_and_the_container_layout_works() {
    let doc = compose();
    let mounts = bind_mounts(&doc);
    assert!(!mounts.is_empty(), "docker-compose.yml mounts nothing");
    for (svc, host, _) in &mounts {
        assert!(
            !host.starts_with('/') && !host.starts_with('~'),
            "{svc}: mount {host} is outside the repository"
        );
        assert!(
            repo_path(host).exists(),
            "{svc}: docker-compose.yml mounts {host}, which is not in the repository"
        );
    }
    for (name, svc) in doc["services"].as_mapping().expect("services") {
        let ctx = match &svc["build"] {
            Value::String(s) => Some(s.clone()),
            Value::Mapping(_) => svc["build"]["context"].as_str().map(str::to_string),
            _ => None,
        };
        if let Some(ctx) = ctx {
            let file = svc["build"]["dockerfile"].as_str().unwrap_or("Dockerfile");
            assert!(
                repo_path(&ctx).join(file).is_file(),
                "{name:?}: build context {ctx} has no {file}"
            );
        }
    }
    // The drawbridge service serves conf/docker.yaml with its pages: from
    // the image, or from the mounts that replace the image's copies.
    let (copies, entrypoint, cmd) = dockerfile();
    let mut pairs: Vec<(PathBuf, PathBuf)> = copies
        .iter()
        .filter(|c| !c.from_stage && c.dest.starts_with('/'))
        .flat_map(|c| {
            c.sources
                .iter()
                .map(|s| (normalize(Path::new(s)), normalize(Path::new(&c.dest))))
        })
        .collect();
    for (svc, host, target) in &mounts {
        if svc == "drawbridge" {
            pairs.push((normalize(Path::new(host)), normalize(Path::new(target))));
        }
    }
    let args: Vec<String> = match doc["services"]["drawbridge"]["command"].as_sequence() {
        Some(c) => c
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect(),
        None => entrypoint.iter().skip(1).chain(&cmd).cloned().collect(),
    };
    let config = args
        .windows(2)
        .find(|w| w[0] == "-c" || w[0] == "--config")
        .map(|w| w[1].clone())
        .unwrap_or_else(|| panic!("the drawbridge service names no config: {args:?}"));
    assert_layout("docker-compose.yml", &pairs, Path::new(&config));
}

/// The port of `host:port`.
fn port(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

#[test]
fn compose_prometheus_and_the_container_config_agree() {
    let doc = compose();
    let conf: Value =
        serde_yaml::from_str(&read(&repo_path("conf/docker.yaml"))).expect("conf/docker.yaml");
    let services = doc["services"].as_mapping().expect("services");
    // Each upstream of the config is a compose service listening on that port.
    for b in conf["backends"].as_sequence().into_iter().flatten() {
        for s in b["servers"].as_sequence().into_iter().flatten() {
            let addr = s["addr"].as_str().expect("server addr");
            let (host, p) = addr.rsplit_once(':').expect("host:port");
            let svc = services
                .get(host)
                .unwrap_or_else(|| panic!("upstream {addr}: no compose service {host:?}"));
            let cmd: Vec<&str> = svc["command"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str())
                .collect();
            let listen = cmd
                .windows(2)
                .find(|w| w[0] == "--listen")
                .map(|w| w[1])
                .unwrap_or_else(|| panic!("service {host}: no --listen in {cmd:?}"));
            assert_eq!(
                port(listen).to_string(),
                p,
                "service {host} listens on {listen}"
            );
        }
    }
    // Prometheus scrapes the drawbridge service on the config's metrics port.
    let metrics_port = port(conf["metrics"]["listen"].as_str().expect("metrics.listen"));
    let prom: Value = serde_yaml::from_str(&read(&repo_path("deploy/prometheus/prometheus.yml")))
        .expect("deploy/prometheus/prometheus.yml");
    let targets: Vec<String> = prom["scrape_configs"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|j| j["static_configs"].as_sequence().into_iter().flatten())
        .flat_map(|s| s["targets"].as_sequence().into_iter().flatten())
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect();
    assert!(
        targets.contains(&format!("drawbridge:{metrics_port}")),
        "prometheus.yml should scrape drawbridge:{metrics_port}, has {targets:?}"
    );
    // Grafana's dashboard uses the provisioned datasource.
    let ds: Value = serde_yaml::from_str(&read(&repo_path(
        "deploy/grafana/provisioning/datasources/prometheus.yml",
    )))
    .expect("datasource provisioning");
    let uids: BTreeSet<String> = ds["datasources"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|d| d["uid"].as_str().map(str::to_string))
        .collect();
    let dash: serde_json::Value = serde_json::from_str(&read(&repo_path(
        "deploy/grafana/dashboards/drawbridge.json",
    )))
    .expect("the dashboard is JSON");
    let mut used = BTreeSet::new();
    collect_datasource_uids(&dash, &mut used);
    used.remove("-- Grafana --");
    assert!(!used.is_empty(), "the dashboard names no datasource");
    assert!(
        used.is_subset(&uids),
        "the dashboard uses datasources {used:?}, provisioned: {uids:?}"
    );
}

fn collect_datasource_uids(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(uid) = m.get("datasource").and_then(|d| d.get("uid")) {
                out.extend(uid.as_str().map(str::to_string));
            }
            m.values().for_each(|x| collect_datasource_uids(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_datasource_uids(x, out)),
        _ => {}
    }
}

#[test]
fn docker_compose_accepts_the_file() {
    let Some(tool) = external_tool("docker-compose", "docker-compose") else {
        return;
    };
    let mut cmd = Command::new(tool);
    // The compose file refuses to start without an admin token.
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DRAWBRIDGE_ADMIN_TOKEN", "deploy-test-token")
        .args(["-f", "docker-compose.yml", "config", "-q"]);
    let out = run_bounded(cmd);
    assert!(
        out.status.success(),
        "docker-compose -f docker-compose.yml config -q failed:\n{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}
