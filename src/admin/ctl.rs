//! `drawbridge ctl`: a thin client of the admin API. Each subcommand calls
//! one endpoint and prints a readable result (`--json` prints the body).
//! Exit codes: 0 success, 1 API or connection error, 2 wait-drained timeout.

use crate::httpc::{self, Request, Response};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::io::Write;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Admin API base URL [env: DRAWBRIDGE_ADMIN_URL, default http://127.0.0.1:9090]
    #[arg(long, global = true)]
    pub admin: Option<String>,
    /// Bearer token [env: DRAWBRIDGE_ADMIN_TOKEN]
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// Print the raw JSON answer
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Sites, backends and servers at a glance
    Status,
    /// Switch a site's maintenance page on or off
    Maintenance {
        #[command(subcommand)]
        action: MaintenanceAction,
    },
    /// `BACKEND/SERVER STATE`: set a server's admin state (ready, drain or
    /// maint); `maint --drain` is the rolling step: drain, wait until
    /// drained, then maint (exit 2 at the timeout, the server left in
    /// drain). `add BACKEND/SERVER ADDR`: add a server (in maint unless
    /// --state). `del BACKEND/SERVER`: delete a server in maint with
    /// nothing in flight (or --force)
    #[command(
        override_usage = "drawbridge ctl server BACKEND/SERVER ready|drain|maint [--drain]\n       \
        drawbridge ctl server add BACKEND/SERVER ADDR [--weight N] [--state ready|drain|maint] [--backup]\n       \
        drawbridge ctl server del BACKEND/SERVER [--force]"
    )]
    Server {
        #[arg(num_args = 2..=3, required = true, value_name = "WORDS")]
        words: Vec<String>,
        /// With `maint`: drain first and wait until no user is left
        #[arg(long)]
        drain: bool,
        /// With --drain: give up after this long (exit 2)
        #[arg(long, default_value = "10m", requires = "drain")]
        timeout: String,
        /// With --drain: how long without sticky requests counts as drained
        #[arg(long, default_value = "60s", requires = "drain")]
        idle: String,
        /// With add: its weight (default 1)
        #[arg(long, allow_negative_numbers = true)]
        weight: Option<i64>,
        /// With add: its state (default maint)
        #[arg(long = "state", value_name = "STATE")]
        initial: Option<String>,
        /// With add: a backup server
        #[arg(long)]
        backup: bool,
        /// With add: most requests in flight (the backend needs a queue)
        #[arg(long)]
        max_conns: Option<u64>,
        /// With add: its weight grows from 0 over this long (e.g. 30s)
        #[arg(long)]
        slowstart: Option<String>,
        /// With del: delete it even if not in maint or with requests in flight
        #[arg(long)]
        force: bool,
    },
    /// Set a server's weight (0..=256)
    Weight {
        target: String,
        /// Negative values reach the API, which answers with the range
        #[arg(allow_negative_numbers = true)]
        weight: i64,
    },
    /// Wait until a server in drain or maint has no more users
    WaitDrained {
        target: String,
        /// Give up after this long (exit 2)
        #[arg(long, default_value = "10m")]
        timeout: String,
        /// How long without sticky requests counts as drained
        #[arg(long, default_value = "60s")]
        idle: String,
    },
    /// Add or remove a CIDR from a site's maintenance allow list
    Allow {
        #[arg(value_parser = ["add", "del"])]
        action: String,
        site: String,
        cidr: String,
    },
    /// Issue a signed cookie that lets its holder through a site's maintenance
    BypassToken {
        site: String,
        #[arg(long, default_value = "8h")]
        ttl: String,
    },
    /// List the TLS listeners' certificates, or `reload` them from their files
    Certs {
        #[arg(value_parser = ["reload"])]
        action: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum MaintenanceAction {
    On {
        site: String,
        /// Seconds sent as Retry-After
        #[arg(long)]
        retry_after: Option<u64>,
        /// Only paths matching this regex (repeatable); none = whole site
        #[arg(long = "path")]
        paths: Vec<String>,
        /// Shown on the maintenance page
        #[arg(long)]
        message: Option<String>,
        /// Start of a scheduled window: RFC 3339 or +DURATION (e.g. +30m)
        #[arg(long)]
        from: Option<String>,
        /// End of the window, when maintenance switches itself off
        #[arg(long)]
        until: Option<String>,
    },
    Off {
        site: String,
    },
}

struct Client {
    base: String,
    token: Option<String>,
}

impl Client {
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<Response, String> {
        let mut req = Request::new(method, path).header("Accept", "application/json");
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        // A process handing over to a new one refuses requests: try again
        // (a new connection reaches the new process) for a while.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = httpc::request(&self.base, &req, timeout)
                .map_err(|e| format!("cannot reach the admin API at {}: {e}", self.base))?;
            let handing_over =
                r.status == 503 && api_error(&r) == crate::reload::HANDING_OVER_ERROR;
            if !handing_over || Instant::now() >= deadline {
                return Ok(r);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn api_error(r: &Response) -> String {
    r.json()
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| r.text())
}

fn split_target(t: &str) -> Result<(&str, &str), String> {
    t.split_once('/')
        .filter(|(b, s)| !b.is_empty() && !s.is_empty())
        .ok_or_else(|| format!("expected BACKEND/SERVER, got {t:?}"))
}

fn secs(s: &str, what: &str) -> Result<u64, String> {
    humantime::parse_duration(s)
        .map(|d| d.as_secs())
        .or_else(|_| s.parse::<u64>())
        .map_err(|_| format!("{what}: invalid duration {s:?} (e.g. 90s, 10m)"))
}

/// Run a ctl command; returns the process exit code.
pub fn run(args: CtlArgs) -> i32 {
    let client = Client {
        base: args
            .admin
            .clone()
            .or_else(|| {
                std::env::var("DRAWBRIDGE_ADMIN_URL")
                    .ok()
                    .filter(|v| !v.is_empty())
            })
            .unwrap_or_else(|| "http://127.0.0.1:9090".into()),
        token: args.token.clone().or_else(|| {
            std::env::var("DRAWBRIDGE_ADMIN_TOKEN")
                .ok()
                .filter(|v| !v.is_empty())
        }),
    };
    match execute(&client, &args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

const CALL: Duration = Duration::from_secs(10);

fn execute(c: &Client, args: &CtlArgs) -> Result<i32, String> {
    let (method, path, body) = match &args.cmd {
        CtlCommand::WaitDrained {
            target,
            timeout,
            idle,
        } => {
            let timeout = secs(timeout, "--timeout")?;
            let (code, v) = wait_drained(c, target, timeout, secs(idle, "--idle")?)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else if code == 0 {
                println!("{target} is drained: safe to stop");
            } else {
                println!("{target} is not drained after {timeout}s");
            }
            return Ok(code);
        }
        CtlCommand::Status => ("GET", "/api/v1/status".to_string(), None),
        CtlCommand::Certs { action: None } => ("GET", "/api/v1/certificates".to_string(), None),
        CtlCommand::Certs { action: Some(_) } => {
            ("POST", "/api/v1/certificates/reload".to_string(), None)
        }
        CtlCommand::Maintenance {
            action:
                MaintenanceAction::On {
                    site,
                    retry_after,
                    paths,
                    message,
                    from,
                    until,
                },
        } => {
            let now = crate::state::now_ms() / 1000;
            let when = |t: &Option<String>, flag: &str| -> Result<Value, String> {
                t.as_deref()
                    .map(|t| {
                        crate::config::time::parse_when(t, now)
                            .map(|secs| json!(crate::config::time::format_rfc3339(secs)))
                            .map_err(|e| format!("{flag}: {e}"))
                    })
                    .unwrap_or(Ok(Value::Null))
            };
            let mut b = json!({
                "enabled": true,
                "paths": paths,
                "message": message,
                "from": when(from, "--from")?,
                "until": when(until, "--until")?,
            });
            if let Some(r) = retry_after {
                b["retry_after"] = json!(r);
            }
            ("PUT", format!("/api/v1/sites/{site}/maintenance"), Some(b))
        }
        CtlCommand::Maintenance {
            action: MaintenanceAction::Off { site },
        } => (
            "PUT",
            format!("/api/v1/sites/{site}/maintenance"),
            Some(json!({"enabled": false})),
        ),
        CtlCommand::Server {
            words,
            drain,
            timeout,
            idle,
            weight,
            initial,
            backup,
            max_conns,
            slowstart,
            force,
        } => {
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            let add_flags = weight.is_some()
                || initial.is_some()
                || *backup
                || max_conns.is_some()
                || slowstart.is_some();
            match words.as_slice() {
                ["add", target, addr] if !*drain && !*force => {
                    let (b, s) = split_target(target)?;
                    let mut body = json!({"name": s, "addr": addr, "backup": backup});
                    if let Some(w) = weight {
                        body["weight"] = json!(w);
                    }
                    if let Some(st) = initial {
                        body["state"] = json!(st);
                    }
                    if let Some(m) = max_conns {
                        body["max_conns"] = json!(m);
                    }
                    if let Some(d) = slowstart {
                        body["slowstart"] = json!(d);
                    }
                    ("POST", format!("/api/v1/backends/{b}/servers"), Some(body))
                }
                ["del", target] if !*drain && !add_flags => {
                    let (b, s) = split_target(target)?;
                    let query = if *force { "?force=true" } else { "" };
                    (
                        "DELETE",
                        format!("/api/v1/backends/{b}/servers/{s}{query}"),
                        None,
                    )
                }
                [target, state] if !add_flags && !*force => {
                    if *drain {
                        if *state != "maint" {
                            return Err(format!("--drain goes with maint, not {state:?}"));
                        }
                        return rolling_step(
                            c,
                            args.json,
                            target,
                            secs(timeout, "--timeout")?,
                            secs(idle, "--idle")?,
                        );
                    }
                    let (b, s) = split_target(target)?;
                    (
                        "PUT",
                        format!("/api/v1/backends/{b}/servers/{s}/state"),
                        Some(json!({"state": state})),
                    )
                }
                _ => {
                    return Err(
                        "usage: ctl server BACKEND/SERVER ready|drain|maint [--drain] | \
                         ctl server add BACKEND/SERVER ADDR [--weight N] [--state S] [--backup] | \
                         ctl server del BACKEND/SERVER [--force]"
                            .into(),
                    )
                }
            }
        }
        CtlCommand::Weight { target, weight } => {
            let (b, s) = split_target(target)?;
            (
                "PUT",
                format!("/api/v1/backends/{b}/servers/{s}/weight"),
                Some(json!({"weight": weight})),
            )
        }
        CtlCommand::Allow { action, site, cidr } => {
            let m = if action == "add" { "POST" } else { "DELETE" };
            (
                m,
                format!("/api/v1/sites/{site}/allow"),
                Some(json!({"cidr": cidr})),
            )
        }
        CtlCommand::BypassToken { site, ttl } => (
            "POST",
            format!("/api/v1/sites/{site}/bypass-tokens"),
            Some(json!({"ttl": ttl})),
        ),
    };
    let r = c.call(method, &path, body, CALL)?;
    if r.status >= 400 {
        return Err(api_error(&r));
    }
    let v = r.json()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(0);
    }
    match &args.cmd {
        CtlCommand::Status => print_status(&v),
        CtlCommand::Maintenance { .. } => println!("{}", site_line(&v)),
        CtlCommand::Server { words, .. } if words.first().is_some_and(|w| w == "del") => {
            println!("{} deleted", server_line(&v["deleted"]))
        }
        CtlCommand::Server { words, .. } if words.first().is_some_and(|w| w == "add") => {
            println!("{} added", server_line(&v))
        }
        CtlCommand::Server { .. } | CtlCommand::Weight { .. } => println!("{}", server_line(&v)),
        CtlCommand::Allow { .. } => {
            let list = strings(&v["allow"]);
            println!(
                "site {} allow list: {}",
                v["site"].as_str().unwrap_or("?"),
                if list.is_empty() {
                    "(empty: nobody)".into()
                } else {
                    list.join(", ")
                }
            );
        }
        CtlCommand::BypassToken { .. } => {
            println!("{}", v["cookie"].as_str().unwrap_or(""));
            eprintln!(
                "valid until {}; set it as a cookie, e.g.",
                v["expires"].as_str().unwrap_or("?")
            );
            eprintln!(
                "  curl -b '{}' http://your-site/",
                v["cookie"].as_str().unwrap_or("")
            );
        }
        CtlCommand::Certs { .. } => {
            for c in v["certificates"].as_array().into_iter().flatten() {
                println!(
                    "{:<12} {:<40} {:<28} until {}{}",
                    c["listener"].as_str().unwrap_or("?"),
                    c["cert"].as_str().unwrap_or("?"),
                    strings(&c["names"]).join(","),
                    c["not_after"].as_str().unwrap_or("?"),
                    if c["default"].as_bool() == Some(true) {
                        " (default)"
                    } else {
                        ""
                    }
                );
            }
        }
        CtlCommand::WaitDrained { .. } => {}
    }
    Ok(0)
}

fn site_line(v: &Value) -> String {
    let m = &v["maintenance"];
    let mut line = format!(
        "site {}: maintenance {}",
        v["name"].as_str().unwrap_or("?"),
        if m["enabled"].as_bool() == Some(true) {
            "ON"
        } else {
            "off"
        }
    );
    if m["enabled"].as_bool() == Some(true) {
        line.push_str(&format!(", Retry-After {}s", m["retry_after"]));
        if let Some(paths) = m["paths"].as_array().filter(|p| !p.is_empty()) {
            let p: Vec<&str> = paths.iter().filter_map(Value::as_str).collect();
            line.push_str(&format!(", paths {}", p.join(" ")));
        }
        if let Some(msg) = m["message"].as_str() {
            line.push_str(&format!(", message {msg:?}"));
        }
        if m["from"].is_string() || m["until"].is_string() {
            line.push_str(&format!(
                ", window {} to {}{}",
                m["from"].as_str().unwrap_or("now"),
                m["until"].as_str().unwrap_or("switched off"),
                if v["in_maintenance"].as_bool() == Some(true) {
                    ""
                } else {
                    " (scheduled)"
                }
            ));
        }
    }
    if v["in_maintenance"].as_bool() == Some(true) && m["enabled"].as_bool() != Some(true) {
        line.push_str(" (in maintenance: every server is in maint)");
    }
    line
}

fn server_line(v: &Value) -> String {
    let mut line = format!(
        "{}/{} {}: state {}, health {}, weight {}, in flight {}, requests {}, last sticky {} (~{} clients in 60s)",
        v["backend"].as_str().unwrap_or("?"),
        v["name"].as_str().unwrap_or("?"),
        v["addr"].as_str().unwrap_or("?"),
        v["state"].as_str().unwrap_or("?"),
        v["health"].as_str().unwrap_or("?"),
        v["weight"],
        v["inflight"],
        v["requests_total"],
        v["sticky_last_seen"].as_str().unwrap_or("never"),
        v["clients"],
    );
    if let Some(max) = v["max_conns"].as_u64().filter(|m| *m > 0) {
        line.push_str(&format!(", max_conns {max}"));
    }
    let (weight, effective) = (v["weight"].as_f64(), v["effective_weight"].as_f64());
    if let (Some(w), Some(e)) = (weight, effective) {
        if e < w {
            line.push_str(&format!(" (slow start: effective weight {e:.2})"));
        }
    }
    line
}

/// The strings of a JSON array (none for anything else).
fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn print_status(v: &Value) {
    println!("SITES");
    for s in v["sites"].as_array().into_iter().flatten() {
        let allow = strings(&s["allow"]);
        println!(
            "  {}  (allow: {})",
            site_line(s),
            if allow.is_empty() {
                "none".into()
            } else {
                allow.join(", ")
            }
        );
    }
    println!("BACKENDS");
    for b in v["backends"].as_array().into_iter().flatten() {
        let q = &b["queue"];
        if q.is_object() {
            println!(
                "  {} queue: {} waiting (max {}, timeout {}), {} timed out",
                b["name"].as_str().unwrap_or("?"),
                q["length"],
                q["max"],
                q["timeout"].as_str().unwrap_or("?"),
                q["timeouts_total"]
            );
        }
        for s in b["servers"].as_array().into_iter().flatten() {
            println!("  {}", server_line(s));
        }
    }
}

/// The rolling step: drain, wait until drained, maint. 0 once in maint, 2
/// at the timeout (left in drain).
fn rolling_step(
    c: &Client,
    json_out: bool,
    target: &str,
    timeout: u64,
    idle: u64,
) -> Result<i32, String> {
    let (b, s) = split_target(target)?;
    let path = format!("/api/v1/backends/{b}/servers/{s}/state");
    let set = |state: &str| -> Result<Value, String> {
        let r = c.call("PUT", &path, Some(json!({ "state": state })), CALL)?;
        if r.status >= 400 {
            return Err(api_error(&r));
        }
        r.json()
    };
    let r = c.call(
        "GET",
        &format!("/api/v1/backends/{b}/servers/{s}"),
        None,
        CALL,
    )?;
    if r.status >= 400 {
        return Err(api_error(&r));
    }
    if r.json()?["state"].as_str() != Some("maint") {
        eprintln!("{}", server_line(&set("drain")?));
        let (code, v) = wait_drained(c, target, timeout, idle)?;
        if code != 0 {
            if json_out {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                println!("{target} is not drained after {timeout}s: left in drain");
            }
            return Ok(code);
        }
        eprintln!("{target} is drained: setting it to maint");
    }
    let v = set("maint")?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!("{}", server_line(&v));
    }
    Ok(0)
}

/// Wait until drained, with a progress line on stderr: 0 and the last
/// answer once drained, 2 and the last answer at the timeout.
fn wait_drained(c: &Client, target: &str, timeout: u64, idle: u64) -> Result<(i32, Value), String> {
    let (b, s) = split_target(target)?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(timeout);
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    loop {
        // Rounded up: a poll of 0 s answers at once, which would turn the
        // last second into a busy loop of requests and progress lines.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            .div_ceil(1000)
            .min(2) as u64;
        let path = format!("/api/v1/backends/{b}/servers/{s}/drained?timeout={left}&idle={idle}");
        let r = c.call("GET", &path, None, Duration::from_secs(left + 10))?;
        if r.status != 200 && r.status != 408 {
            return Err(api_error(&r));
        }
        let v = r.json()?;
        let since = v["seconds_since_sticky"]
            .as_u64()
            .map(|s| format!("{s}s ago"))
            .unwrap_or_else(|| "never".into());
        let line = format!(
            "{target}: {} | in flight {} | last sticky request {since} | ~{} clients in the last {idle}s | waited {}s",
            v["state"].as_str().unwrap_or("?"),
            v["inflight"],
            v["clients"],
            start.elapsed().as_secs()
        );
        if tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
        let _ = std::io::stderr().flush();
        let done = if r.status == 200 {
            Some(0)
        } else if Instant::now() >= deadline {
            Some(2)
        } else {
            None
        };
        if let Some(code) = done {
            if tty {
                eprintln!();
            }
            return Ok((code, v));
        }
    }
}
