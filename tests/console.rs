//! The browser console on the admin listener (CONTRACT section 14): token
//! login with a session cookie, the CSRF rule on every change, logout, the
//! loopback case without a token, and the page itself in a real headless
//! Chromium (tests/console/browser.py).

mod common;

use common::*;
use drawbridge::httpc::{Request, Response};
use serde_json::Value;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const TOKEN: &str = "c0ns0le-t0ken-5e1f";

fn start(with_token: bool) -> (Drawbridge, Upstream, Upstream) {
    let (a, b) = (Upstream::start("app-01"), Upstream::start("app-02"));
    let admin = if with_token {
        "admin:\n  listen: \"{admin}\"\n  token_env: CONSOLE_TEST_TOKEN\n"
    } else {
        "admin:\n  listen: \"{admin}\"\n"
    };
    let yaml = format!("{admin}{}", two_server_yaml(&a.addr, &b.addr));
    let d = Drawbridge::start_with_env(&yaml, &[("CONSOLE_TEST_TOKEN", TOKEN)]);
    (d, a, b)
}

fn admin(d: &Drawbridge, req: Request) -> Response {
    send(&d.admin, req)
}

fn origin(d: &Drawbridge) -> String {
    format!("http://{}", d.admin)
}

fn bearer(d: &Drawbridge, path: &str) -> Value {
    json(&admin(
        d,
        Request::new("GET", path).header("Authorization", format!("Bearer {TOKEN}")),
    ))
}

fn maintenance_on(d: &Drawbridge) -> bool {
    bearer(d, "/api/v1/sites/app")["maintenance"]["enabled"] == Value::Bool(true)
}

fn login(d: &Drawbridge) -> (String, String, Response) {
    let r = admin(
        d,
        Request::new("POST", "/console/login")
            .header("Origin", origin(d))
            .header("Content-Type", "application/json")
            .body(format!(r#"{{"token":"{TOKEN}"}}"#)),
    );
    assert_eq!(r.status, 200, "login: {}", r.text());
    let id = set_cookie_value(&r, "drawbridge_console").expect("a session cookie");
    let csrf = json(&r)["csrf"].as_str().expect("a CSRF token").to_string();
    (format!("drawbridge_console={id}"), csrf, r)
}

/// A change of site app's maintenance with the session cookie.
fn put_maintenance(d: &Drawbridge, cookie: &str, extra: &[(&'static str, String)]) -> Response {
    let mut req = Request::new("PUT", "/api/v1/sites/app/maintenance")
        .header("Cookie", cookie.to_string())
        .header("Content-Type", "application/json")
        .body(r#"{"enabled":true,"message":"console"}"#);
    for (k, v) in extra {
        req = req.header(k, v.clone());
    }
    admin(d, req)
}

#[test]
fn the_page_is_served_with_its_assets_and_headers() {
    let (d, _a, _b) = start(true);
    let r = admin(&d, Request::new("GET", "/"));
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/html"));
    assert!(r.text().contains("/console/app.js"));
    let csp = r.header("content-security-policy").unwrap_or("");
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    for (path, ctype, needle) in [
        ("/console/app.js", "text/javascript", "X-Drawbridge-CSRF"),
        ("/console/style.css", "text/css", "@media"),
    ] {
        let r = admin(&d, Request::new("GET", path));
        assert_eq!(r.status, 200, "{path}");
        assert!(r.header("content-type").unwrap_or("").starts_with(ctype));
        assert!(r.text().contains(needle), "{path}");
    }
    // Without a session the page learns it must ask for the token.
    let s = json(&admin(&d, Request::new("GET", "/console/session")));
    assert_eq!(
        (s["auth"].as_str(), s["session"].as_bool()),
        (Some("token"), Some(false))
    );
}

#[test]
fn login_sets_a_strict_http_only_cookie_and_a_wrong_token_is_refused() {
    let (d, _a, _b) = start(true);
    let wrong = admin(
        &d,
        Request::new("POST", "/console/login")
            .header("Origin", origin(&d))
            .body(r#"{"token":"nope"}"#),
    );
    assert_eq!(wrong.status, 401);
    assert_eq!(json(&wrong)["error"], "wrong token");
    assert!(wrong.header("set-cookie").is_none());

    // A login posted by another site's page is refused.
    let foreign = admin(
        &d,
        Request::new("POST", "/console/login")
            .header("Origin", "http://evil.example")
            .body(format!(r#"{{"token":"{TOKEN}"}}"#)),
    );
    assert_eq!(foreign.status, 403);
    assert!(foreign.header("set-cookie").is_none());

    let (cookie, csrf, r) = login(&d);
    let set = r.header("set-cookie").expect("Set-Cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(set.contains(attr), "{set} lacks {attr}");
    }
    assert!(csrf.len() >= 32);
    let s = json(&admin(
        &d,
        Request::new("GET", "/console/session").header("Cookie", cookie.clone()),
    ));
    assert_eq!(s["session"], true);
    assert_eq!(s["csrf"].as_str(), Some(&*csrf));
    // The cookie reads the API; without it nothing does.
    let with = admin(
        &d,
        Request::new("GET", "/api/v1/status").header("Cookie", cookie.clone()),
    );
    assert_eq!(with.status, 200);
    assert_eq!(admin(&d, Request::new("GET", "/api/v1/status")).status, 401);
    let forged = admin(
        &d,
        Request::new("GET", "/api/v1/status").header("Cookie", "drawbridge_console=forged"),
    );
    assert_eq!(forged.status, 401);
}

#[test]
fn a_change_needs_the_same_origin_and_the_csrf_token() {
    let (d, _a, _b) = start(true);
    let (cookie, csrf, _) = login(&d);
    assert_eq!(d.get("/").status, 200);
    assert!(!maintenance_on(&d));

    // Another site's page, with the session cookie and even the token.
    let r = put_maintenance(
        &d,
        &cookie,
        &[
            ("Origin", "http://evil.example".into()),
            ("X-Drawbridge-CSRF", csrf.clone()),
        ],
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(json(&r)["error"]
        .as_str()
        .unwrap_or("")
        .contains("cross-site"));
    assert!(
        !maintenance_on(&d),
        "a cross-site request changed the state"
    );

    // Same origin without the CSRF header, and with a wrong one.
    for extra in [
        vec![("Origin", origin(&d))],
        vec![
            ("Origin", origin(&d)),
            ("X-Drawbridge-CSRF", "x".repeat(43)),
        ],
        vec![],
    ] {
        let r = put_maintenance(&d, &cookie, &extra);
        assert_eq!(r.status, 403, "{extra:?}: {}", r.text());
        assert!(!maintenance_on(&d), "{extra:?} changed the state");
    }
    assert_eq!(d.get("/").status, 200);

    // Same origin with the session's token: the change is made.
    let r = put_maintenance(
        &d,
        &cookie,
        &[("Origin", origin(&d)), ("X-Drawbridge-CSRF", csrf.clone())],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(maintenance_on(&d));
    assert_eq!(d.get("/").status, 503);

    // The bearer token works as before, for ctl.
    let off = admin(
        &d,
        Request::new("PUT", "/api/v1/sites/app/maintenance")
            .header("Authorization", format!("Bearer {TOKEN}"))
            .body(r#"{"enabled":false}"#),
    );
    assert_eq!(off.status, 200);
    assert!(!maintenance_on(&d));
}

#[test]
fn logout_ends_the_session_and_clears_the_cookie() {
    let (d, _a, _b) = start(true);
    let (cookie, csrf, _) = login(&d);
    let (other, _, _) = login(&d);
    let status = |c: &str| {
        admin(
            &d,
            Request::new("GET", "/api/v1/status").header("Cookie", c.to_string()),
        )
        .status
    };
    assert_eq!(status(&cookie), 200);
    // Logout is a change too: without the CSRF token it is refused.
    let r = admin(
        &d,
        Request::new("POST", "/console/logout").header("Cookie", cookie.clone()),
    );
    assert_eq!(r.status, 403);
    assert_eq!(status(&cookie), 200);
    let r = admin(
        &d,
        Request::new("POST", "/console/logout")
            .header("Cookie", cookie.clone())
            .header("Origin", origin(&d))
            .header("X-Drawbridge-CSRF", csrf.clone()),
    );
    assert_eq!(r.status, 200);
    let set = r.header("set-cookie").expect("Set-Cookie");
    assert!(
        set.starts_with("drawbridge_console=;") && set.contains("Max-Age=0"),
        "{set}"
    );
    assert_eq!(status(&cookie), 401, "the session outlived its logout");
    assert_eq!(status(&other), 200, "logout ended another session");
}

#[test]
fn without_a_token_loopback_clients_use_the_console_and_foreign_origins_are_refused() {
    let (d, _a, _b) = start(false);
    let s = json(&admin(&d, Request::new("GET", "/console/session")));
    assert_eq!(s["auth"], "loopback");
    let login = admin(
        &d,
        Request::new("POST", "/console/login").body(r#"{"token":"x"}"#),
    );
    assert_eq!(login.status, 400, "no token, no login");
    let enabled = |d: &Drawbridge| {
        json(&d.api("GET", "/api/v1/sites/app", None))["maintenance"]["enabled"] == true
    };
    let put = |origin: Option<String>| {
        let mut req = Request::new("PUT", "/api/v1/sites/app/maintenance")
            .header("Content-Type", "application/json")
            .body(r#"{"enabled":true}"#);
        if let Some(o) = origin {
            req = req.header("Origin", o);
        }
        admin(&d, req)
    };
    // A page on another site in the operator's browser posting to loopback.
    let r = put(Some("http://evil.example".into()));
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(!enabled(&d));
    assert_eq!(d.get("/").status, 200);
    // The console's own page.
    assert_eq!(put(Some(origin(&d))).status, 200);
    assert!(enabled(&d));
    assert_eq!(d.get("/").status, 503);
    // ctl sends no Origin.
    let out = d.ctl(&["maintenance", "off", "app"]);
    assert!(out.status.success(), "{}", err(&out));
    assert!(!enabled(&d));
    // A reader of the API from another peer than loopback is still refused.
    let r = get_from(
        &d.admin,
        "127.0.0.2",
        Request::new("GET", "/console/session").header("Host", "evil.example"),
    );
    assert_eq!(r.status, 401);
}

/// Chromium, its driver and Python's Selenium, or the reason the test
/// cannot run (naming the Debian packages).
fn browser_tools() -> Option<(PathBuf, PathBuf, PathBuf)> {
    let chromium = external_tool("chromium", "chromium")?;
    let driver = external_tool("chromedriver", "chromium-driver")?;
    // Debian's python3-selenium is for the system Python.
    let python = ["/usr/bin/python3"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| which("python3"))
        .expect("python3 (apt-get install -y python3)");
    let has_selenium = Command::new(&python)
        .args(["-c", "import selenium"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_selenium {
        if std::env::var("DRAWBRIDGE_SKIP_EXTERNAL").as_deref() == Ok("1") {
            eprintln!("SKIPPED: python3-selenium is not installed and DRAWBRIDGE_SKIP_EXTERNAL=1");
            return None;
        }
        panic!(
            "{} cannot import selenium: install it (`apt-get install -y chromium \
             chromium-driver python3-selenium`; CI does this in .ci/run)",
            python.display()
        );
    }
    Some((chromium, driver, python))
}

/// Where the screenshots go: `docs/` when DRAWBRIDGE_SCREENSHOTS=docs,
/// else a temporary folder.
fn screenshot_dir() -> (PathBuf, Option<tempfile::TempDir>) {
    match std::env::var("DRAWBRIDGE_SCREENSHOTS").as_deref() {
        Ok("docs") => (repo_path("docs"), None),
        _ => {
            let t = tempfile::tempdir().expect("a temp dir");
            (t.path().to_path_buf(), Some(t))
        }
    }
}

/// One at a time: two Chromiums at once only slow each other down.
static BROWSER: Mutex<()> = Mutex::new(());

/// Run `tests/console/browser.py <scenario>` against `d` with `env`;
/// panics unless it passes within 150 s. Its standard output.
fn browser(d: &Drawbridge, scenario: &str, env: &[(&str, &OsStr)]) -> Option<String> {
    let (chromium, driver, python) = browser_tools()?;
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = Command::new(python)
        .arg(repo_path("tests/console/browser.py"))
        .arg(scenario)
        .env("ADMIN_URL", origin(d))
        .env("WEB_URL", format!("http://{}", d.web))
        .env("ADMIN_TOKEN", TOKEN)
        .envs(env.iter().copied())
        .env("CHROMIUM", chromium)
        .env("CHROMEDRIVER", driver)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tests/console/browser.py");
    // Read the pipes while it runs; end it after a bounded time.
    let pipe = |p: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = p {
                let _ = p.read_to_string(&mut s);
            }
            s
        })
    };
    let stdout = pipe(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = pipe(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + Duration::from_secs(150);
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, errs) = (
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    );
    eprintln!("{out}{errs}");
    let status = status
        .unwrap_or_else(|| panic!("the browser scenario {scenario} did not finish within 150 s"));
    assert!(
        status.success(),
        "the browser scenario {scenario} failed:\n{out}\n{errs}"
    );
    Some(out)
}

#[test]
fn the_console_in_a_headless_browser() {
    let (d, _a, _b) = start(true);
    assert_eq!(
        bearer(&d, "/api/v1/backends/app/servers/app-02")["weight"],
        1
    );
    let (shots, _keep) = screenshot_dir();
    let sticky = format!(
        "SERVERID={}",
        drawbridge::config::server_id("app", "app-01")
    );
    let env = [
        ("STICKY", OsStr::new(&sticky)),
        ("SCREENSHOTS", shots.as_os_str()),
    ];
    let Some(out) = browser(&d, "console", &env) else {
        return;
    };
    assert!(out.contains("browser: scenario passed"));
    for name in ["console-desktop.png", "console-phone.png"] {
        let bytes = std::fs::read(shots.join(name)).unwrap_or_default();
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
            "{name}: no screenshot ({} bytes)",
            bytes.len()
        );
    }
    // What the page did went through the API: the state says so.
    let app01 = bearer(&d, "/api/v1/backends/app/servers/app-01");
    assert_eq!(app01["state"], "ready", "the page set app-01 back to ready");
    let app02 = bearer(&d, "/api/v1/backends/app/servers/app-02");
    assert_eq!(app02["weight"], 3, "the weight set with the keyboard");
    assert!(!maintenance_on(&d));
    assert!(d.log_text().contains("console logout"));
}

/// The names of backend app's servers in `GET /api/v1/status`.
fn status_servers(d: &Drawbridge) -> Vec<String> {
    let status = bearer(d, "/api/v1/status");
    let app = status["backends"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["name"] == "app"))
        .expect("backend app in the status");
    app["servers"]
        .as_array()
        .expect("its servers")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_server_is_added_and_deleted_in_the_browser() {
    let (d, _a, _b) = start(true);
    let new = Upstream::start("app-03");
    assert_eq!(status_servers(&d), ["app-01", "app-02"]);
    // The page adds app-03 at the upstream's address in maint, sees its
    // card, finds Delete disabled while it is ready, sets it to maint and
    // deletes it (checking the API's status after each step).
    let spec = format!("app-03={}", new.addr);
    let Some(out) = browser(&d, "servers", &[("NEW_SERVER", OsStr::new(&spec))]) else {
        return;
    };
    assert!(out.contains("browser: servers scenario passed"), "{out}");
    assert_eq!(status_servers(&d), ["app-01", "app-02"]);
    let log = d.log_text();
    assert!(
        log.contains(&format!(
            "server app/app-03 ({}) added, state maint",
            new.addr
        )),
        "{log}"
    );
    assert!(log.contains("server app/app-03 deleted"), "{log}");
    assert!(!log.contains("app-03 deleted (forced)"), "{log}");
}
