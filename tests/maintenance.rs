//! Maintenance mode end to end (CONTRACT sections 3, 4 and 5): switching it
//! with the API and `ctl`, the page itself (HTML, JSON, HEAD, keep-alive),
//! who bypasses it (allow list, X-Forwarded-For from trusted proxies only,
//! the `off` preview, signed bypass tokens), path-scoped maintenance, the
//! admin token, the state file across kill -9, and bad admin input.

mod common;

use common::*;
use drawbridge::httpc::{Conn, Request, Response};
use drawbridge::policy::bypass;
use serde_json::Value;
use std::io::{Read, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A site `app` (the default site) on two demo upstreams; `maintenance`
/// is the body of the site's `maintenance:` mapping (6-space indented
/// lines), `top` goes before `listeners:` (e.g. `trusted_proxies`).
fn config(a: &Upstream, b: &Upstream, maintenance: &str, top: &str) -> String {
    let maintenance = format!("      enabled: false\n{maintenance}");
    format!("{top}{}", app_site_yaml(&a.addr, &b.addr, &maintenance, ""))
}

fn upstreams() -> (Upstream, Upstream) {
    (Upstream::start("app-01"), Upstream::start("app-02"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn with_cookie<'a>(path: &'a str, cookie: &str) -> Request<'a> {
    Request::new("GET", path).header("Cookie", cookie.to_string())
}

/// Served by an app: 200 and one of the upstreams' names.
#[track_caller]
fn assert_app(r: &Response) {
    assert_eq!(
        r.status,
        200,
        "expected the app, got {}: {}",
        r.status,
        r.text()
    );
    let name = r.text();
    assert!(
        name.trim() == "app-01" || name.trim() == "app-02",
        "expected an upstream's name, got {name:?}"
    );
}

/// The HTML maintenance page with `retry` as Retry-After; `escaped`, when
/// given, must be on the page.
#[track_caller]
fn assert_page(r: &Response, retry: &str, escaped: Option<&str>) {
    assert_eq!(r.status, 503, "expected the maintenance page: {}", r.text());
    assert_eq!(r.header("retry-after"), Some(retry));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let ctype = r.header("content-type").unwrap_or("");
    assert!(ctype.starts_with("text/html"), "content-type {ctype}");
    let body = r.text();
    assert!(body.contains("Planned maintenance"), "{body}");
    assert!(
        !body.contains("went wrong"),
        "the maintenance page is not the error page"
    );
    if let Some(m) = escaped {
        assert!(body.contains(m), "the page lacks {m:?}:\n{body}");
    }
}

fn put_maintenance(d: &Drawbridge, body: &str) -> Response {
    let r = d.api("PUT", "/api/v1/sites/app/maintenance", Some(body));
    assert_eq!(r.status, 200, "{}", r.text());
    r
}

fn token_cookie(d: &Drawbridge, site: &str, ttl: &str) -> String {
    let r = d.api(
        "POST",
        &format!("/api/v1/sites/{site}/bypass-tokens"),
        Some(&format!(r#"{{"ttl":"{ttl}"}}"#)),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = json(&r);
    v["cookie"].as_str().expect("a cookie").to_string()
}

/// Change one character of `s` at `at` (to another base64url character).
fn flip(s: &str, at: usize) -> String {
    let mut b = s.as_bytes().to_vec();
    b[at] = if b[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).expect("ascii")
}

#[test]
fn api_and_ctl_switch_maintenance_for_the_very_next_request() {
    let (a, b) = upstreams();
    let d = Drawbridge::start(&config(&a, &b, "", ""));
    let gauge = || d.metric(r#"drawbridge_maintenance_enabled{site="app"}"#);
    assert_app(&d.get("/"));
    assert_eq!(gauge(), 0.0, "maintenance gauge before");

    let r = put_maintenance(
        &d,
        r#"{"enabled":true,"message":"<b>Back</b> at 14:00 & \"soon\""}"#,
    );
    assert_eq!(gauge(), 1.0, "maintenance gauge once the API turned it on");
    let v = json(&r);
    assert_eq!(v["maintenance"]["enabled"], true);
    assert_eq!(v["in_maintenance"], true);
    let r = d.get("/");
    assert_page(
        &r,
        "600",
        Some("&lt;b&gt;Back&lt;/b&gt; at 14:00 &amp; &quot;soon&quot;"),
    );
    assert!(
        !r.text().contains("<b>Back</b>"),
        "the message must be escaped"
    );
    assert_page(&d.get("/any/path?x=1"), "600", None);

    put_maintenance(&d, r#"{"enabled":false}"#);
    assert_eq!(gauge(), 0.0, "maintenance gauge once the API turned it off");
    assert_app(&d.get("/"));

    let o = d.ctl(&[
        "maintenance",
        "on",
        "app",
        "--retry-after",
        "120",
        "--message",
        "Deploy <v2>",
    ]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        out(&o).contains("maintenance ON") && out(&o).contains("120"),
        "{}",
        out(&o)
    );
    assert_page(&d.get("/"), "120", Some("Deploy &lt;v2&gt;"));
    assert_eq!(gauge(), 1.0, "maintenance gauge once ctl turned it on");

    let o = d.ctl(&["maintenance", "off", "app"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).contains("maintenance off"), "{}", out(&o));
    assert_app(&d.get("/"));
    assert_eq!(gauge(), 0.0, "maintenance gauge once ctl turned it off");
}

#[test]
fn allow_list_lets_operators_through_but_not_a_forged_forwarded_for() {
    let (a, b) = upstreams();
    let d = Drawbridge::start(&config(
        &a,
        &b,
        "      allow: [127.0.0.2/32]\n      retry_after: 300",
        "",
    ));
    put_maintenance(&d, r#"{"enabled":true}"#);
    assert_page(&d.get("/"), "300", None);
    assert_app(&get_from(&d.web, "127.0.0.2", Request::new("GET", "/")));

    // The operator previews what the public sees.
    let preview = with_cookie("/", "DRAWBRIDGE_BYPASS=off");
    assert_page(&get_from(&d.web, "127.0.0.2", preview), "300", None);

    // The app never sees the bypass cookie.
    let echoed = get_from(
        &d.web,
        "127.0.0.2",
        with_cookie("/headers", "a=1; DRAWBRIDGE_BYPASS=whatever; b=2"),
    )
    .text();
    assert!(echoed.contains("cookie: a=1; b=2"), "{echoed}");
    assert!(!echoed.contains("DRAWBRIDGE_BYPASS"), "{echoed}");

    // Runtime changes of the allow list, through ctl.
    let from3 = || get_from(&d.web, "127.0.0.3", Request::new("GET", "/"));
    assert_page(&from3(), "300", None);
    let o = d.ctl(&["allow", "add", "app", "127.0.0.3/32"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        out(&o).contains("127.0.0.2/32") && out(&o).contains("127.0.0.3/32"),
        "{}",
        out(&o)
    );
    assert_app(&from3());
    let o = d.ctl(&["allow", "del", "app", "127.0.0.3/32"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(!out(&o).contains("127.0.0.3"), "{}", out(&o));
    assert_page(&from3(), "300", None);
    let v = json(&d.api("GET", "/api/v1/sites/app", None));
    assert_eq!(v["allow"], serde_json::json!(["127.0.0.2/32"]));

    // Without trusted_proxies, X-Forwarded-For is the client's word only.
    let forged = Request::new("GET", "/").header("X-Forwarded-For", "127.0.0.2");
    assert_page(&d.send(forged), "300", None);
}

#[test]
fn forwarded_for_from_a_trusted_proxy_decides_the_client() {
    let (a, b) = upstreams();
    let d = Drawbridge::start(&config(
        &a,
        &b,
        "      allow: [127.0.0.2/32]",
        "trusted_proxies: [127.0.0.1/32]\n",
    ));
    put_maintenance(&d, r#"{"enabled":true}"#);
    let xff = |v: &str| Request::new("GET", "/").header("X-Forwarded-For", v.to_string());
    // The trusted peer itself is not allowed.
    assert_page(&d.get("/"), "600", None);
    assert_app(&d.send(xff("127.0.0.2")));
    // Right-most untrusted address wins: prepending does not help.
    assert_page(&d.send(xff("127.0.0.2, 198.51.100.9")), "600", None);
    // From a peer that is not trusted the header counts for nothing.
    assert_page(
        &get_from(&d.web, "127.0.0.3", xff("127.0.0.2")),
        "600",
        None,
    );
}

#[test]
fn bypass_tokens_from_the_api_pass_and_tampered_or_foreign_ones_do_not() {
    let (a, b) = upstreams();
    let yaml = format!(
        r#"listeners:
  - name: web
    listen: "{{web}}"
sites:
  - name: shop
    hosts: [shop.example.org]
    backend: app
    maintenance: {{ enabled: true }}
  - name: app
    backend: app
    maintenance: {{ enabled: true }}
backends:
  - name: app
    servers:
      - {{ name: app-01, addr: "{}" }}
      - {{ name: app-02, addr: "{}" }}
"#,
        a.addr, b.addr
    );
    let d = Drawbridge::start(&yaml);
    let shop = |cookie: &str| {
        d.send(
            Request::new("GET", "/")
                .header("Host", "shop.example.org")
                .header("Cookie", cookie.to_string()),
        )
    };
    assert_page(&d.get("/"), "600", None);
    assert_page(&shop("x=1"), "600", None);

    let r = d.api(
        "POST",
        "/api/v1/sites/app/bypass-tokens",
        Some(r#"{"ttl":"1h"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = json(&r);
    let app_cookie = v["cookie"].as_str().expect("cookie").to_string();
    let expires =
        humantime::parse_rfc3339(v["expires"].as_str().expect("expires")).expect("RFC 3339 expiry");
    let left = expires
        .duration_since(SystemTime::now())
        .expect("in the future");
    assert!(left > Duration::from_secs(3000) && left <= Duration::from_secs(3600));
    assert!(app_cookie.starts_with("DRAWBRIDGE_BYPASS="), "{app_cookie}");
    assert_app(&d.send(with_cookie("/", &app_cookie)));
    assert_app(&d.send(with_cookie("/", &format!("a=1; {app_cookie}; b=2"))));

    let o = d.ctl(&["bypass-token", "shop", "--ttl", "2h"]);
    assert!(o.status.success(), "{}", err(&o));
    let shop_cookie = out(&o).trim().to_string();
    assert!(
        shop_cookie.starts_with("DRAWBRIDGE_BYPASS="),
        "{shop_cookie}"
    );
    assert_app(&shop(&shop_cookie));

    // Each token is bound to its site.
    assert_page(&d.send(with_cookie("/", &shop_cookie)), "600", None);
    assert_page(&shop(&app_cookie), "600", None);

    // Tampered: a character of the payload, of the MAC, or a cut.
    let prefix = "DRAWBRIDGE_BYPASS=".len();
    let dot = app_cookie.find('.').expect("payload.mac");
    for bad in [
        flip(&app_cookie, prefix + 2),
        flip(&app_cookie, dot + 5),
        app_cookie[..app_cookie.len() - 3].to_string(),
        app_cookie[..dot].to_string(),
    ] {
        assert_ne!(bad, app_cookie);
        assert_page(&d.send(with_cookie("/", &bad)), "600", None);
    }
}

#[test]
fn bypass_tokens_use_the_secret_from_the_environment_and_expire() {
    let secret = "a-secret-only-this-test-knows";
    let (a, b) = upstreams();
    let d = Drawbridge::start_with_env(
        &config(
            &a,
            &b,
            "      bypass_secret_env: TEST_BYPASS_SECRET\n      bypass_cookie: LETMEIN",
            "",
        ),
        &[("TEST_BYPASS_SECRET", secret)],
    );
    put_maintenance(&d, r#"{"enabled":true}"#);
    let key = bypass::Key::derive(secret.as_bytes());
    let cookie = |t: String| format!("LETMEIN={t}");

    // Issued by the library with the environment's secret: accepted, so the
    // proxy uses that secret, not a generated one.
    let valid = bypass::issue(&key, "app", now() + 3600);
    assert_app(&d.send(with_cookie("/", &cookie(valid.clone()))));
    // The configured cookie name is the one read.
    assert_page(
        &d.send(with_cookie("/", &format!("DRAWBRIDGE_BYPASS={valid}"))),
        "600",
        None,
    );
    let expired = bypass::issue(&key, "app", now() - 5);
    assert_page(&d.send(with_cookie("/", &cookie(expired))), "600", None);
    let wrong = bypass::issue(&bypass::Key::derive(b"not the secret"), "app", now() + 3600);
    assert_page(&d.send(with_cookie("/", &cookie(wrong))), "600", None);
    let other_site = bypass::issue(&key, "shop", now() + 3600);
    assert_page(&d.send(with_cookie("/", &cookie(other_site))), "600", None);

    // The API issues with the same secret.
    let api = token_cookie(&d, "app", "1m");
    assert!(api.starts_with("LETMEIN="), "{api}");
    let token = api.trim_start_matches("LETMEIN=");
    assert!(bypass::verify(&key, "app", token.as_bytes(), now()));
    assert_app(&d.send(with_cookie("/", &api)));
}

#[test]
fn path_scoped_maintenance_closes_only_matching_paths() {
    let (a, b) = upstreams();
    let d = Drawbridge::start(&config(&a, &b, "", ""));
    put_maintenance(&d, r#"{"enabled":true,"paths":["^/checkout"]}"#);
    assert_page(&d.get("/checkout/pay"), "600", None);
    assert_page(&d.get("/checkout"), "600", None);
    assert_app(&d.get("/shop"));
    assert_app(&d.get("/shop/checkout"));
    assert_app(&d.get("/"));

    let o = d.ctl(&[
        "maintenance",
        "on",
        "app",
        "--path",
        "^/checkout",
        "--path",
        "^/cart",
    ]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).contains("^/cart"), "{}", out(&o));
    assert_page(&d.get("/cart/items"), "600", None);
    assert_page(&d.get("/checkout/pay"), "600", None);
    assert_app(&d.get("/shop"));

    // `on` without paths is the whole site again.
    let o = d.ctl(&["maintenance", "on", "app"]);
    assert!(o.status.success(), "{}", err(&o));
    assert_page(&d.get("/shop"), "600", None);
}

#[test]
fn json_head_and_keep_alive_answers() {
    let (a, b) = upstreams();
    let d = Drawbridge::start(&config(&a, &b, "", ""));
    put_maintenance(&d, r#"{"enabled":true,"message":"Back at 14:00"}"#);

    let r = d.send(Request::new("GET", "/api/cart").header("Accept", "application/json"));
    assert_eq!(r.status, 503);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("retry-after"), Some("600"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(
        json(&r),
        serde_json::json!({
            "error": "maintenance",
            "site": "app",
            "retry_after": 600,
            "message": "Back at 14:00",
        })
    );
    // A browser's Accept gets the page.
    let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    assert_page(
        &d.send(Request::new("GET", "/").header("Accept", browser)),
        "600",
        Some("Back at 14:00"),
    );

    // Many requests on one connection, HEAD and a bodiless POST among
    // them: each answered, none bleeding into the next.
    let mut c = Conn::open(&d.web, TIMEOUT).expect("connect");
    for i in 0..5 {
        let r = c.send(&Request::new("GET", "/")).expect("keep-alive GET");
        assert_page(&r, "600", Some("Back at 14:00"));
        assert_ne!(r.header("connection"), Some("close"), "request {i}");
    }
    let head = c.send(&Request::new("HEAD", "/")).expect("HEAD");
    assert_eq!(head.status, 503);
    assert_eq!(head.header("retry-after"), Some("600"));
    assert!(head
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/html")));
    assert!(head.body.is_empty());
    let post = c.send(&Request::new("POST", "/logout")).expect("POST");
    assert_eq!(post.status, 503);
    let r = c
        .send(&Request::new("GET", "/").header("Accept", "application/json"))
        .expect("after HEAD and POST");
    assert_eq!(json(&r)["error"], "maintenance");

    // A small request body is read and dropped: the page, and the
    // connection stays usable. A large one closes the connection instead.
    let mut p = Conn::open(&d.web, TIMEOUT).expect("connect");
    for _ in 0..2 {
        let post = p
            .send(&Request::new("POST", "/checkout").body(b"item=1&qty=2".to_vec()))
            .expect("POST with a body");
        assert_page(&post, "600", Some("Back at 14:00"));
        assert_ne!(post.header("connection"), Some("close"));
    }
    let big = p
        .send(&Request::new("POST", "/upload").body(vec![b'x'; 256 * 1024]))
        .expect("POST with a large body");
    assert_page(&big, "600", Some("Back at 14:00"));
    assert_eq!(big.header("connection"), Some("close"));

    // The same connection is proxied again once maintenance is off.
    put_maintenance(&d, r#"{"enabled":false}"#);
    assert_app(&c.send(&Request::new("GET", "/")).expect("after off"));
}

#[test]
fn maintenance_never_touches_upstreams_and_is_not_the_error_page() {
    let (mut a, mut b) = upstreams();
    let d = Drawbridge::start(&config(&a, &b, "", ""));
    let requests = |d: &Drawbridge| -> Vec<u64> {
        let v = json(&d.api("GET", "/api/v1/status", None));
        v["backends"][0]["servers"]
            .as_array()
            .expect("servers")
            .iter()
            .map(|s| s["requests_total"].as_u64().expect("requests_total"))
            .collect()
    };
    put_maintenance(&d, r#"{"enabled":true}"#);
    let before = requests(&d);
    for _ in 0..10 {
        assert_page(&d.get("/"), "600", None);
    }
    assert_eq!(requests(&d), before, "a maintenance answer chose a server");

    // With both upstreams gone: still the maintenance page.
    a.stop();
    b.stop();
    for _ in 0..3 {
        assert_page(&d.get("/"), "600", None);
    }
    assert!(
        wait_until(Duration::from_secs(5), || d
            .api("GET", "/api/v1/status", None)
            .text()
            .matches("\"down\"")
            .count()
            == 2),
        "health checks did not notice"
    );
    assert_page(&d.get("/"), "600", None);

    // Off: now the error page, which is never the maintenance page.
    put_maintenance(&d, r#"{"enabled":false}"#);
    let r = d.get("/");
    assert_eq!(r.status, 503);
    assert!(
        r.header("retry-after").is_none(),
        "error page with Retry-After"
    );
    let body = r.text();
    assert!(body.contains("went wrong"), "{body}");
    assert!(!body.contains("Planned maintenance"), "{body}");
}

#[test]
fn the_admin_api_requires_the_configured_token() {
    let token = "t0ken-for-tests";
    let (a, b) = upstreams();
    let yaml = format!(
        "admin:\n  listen: \"{{admin}}\"\n  token_env: TEST_ADMIN_TOKEN\n{}",
        config(&a, &b, "", "")
    );
    let d = Drawbridge::start_with_env(&yaml, &[("TEST_ADMIN_TOKEN", token)]);
    let call = |method: &str, path: &str, auth: Option<String>, body: Option<&str>| {
        let mut req = Request::new(method, path);
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.as_bytes().to_vec());
        }
        send(&d.admin, req)
    };
    let refused = [
        None,
        Some("Bearer wrong".to_string()),
        Some(format!("Bearer {token}x")),
        Some(format!("Basic {token}")),
        Some(token.to_string()),
    ];
    for auth in refused {
        let r = call("GET", "/api/v1/status", auth.clone(), None);
        assert_eq!(r.status, 401, "{auth:?}");
        assert!(json(&r)["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    // Never from the query string.
    let r = call("GET", &format!("/api/v1/status?token={token}"), None, None);
    assert_eq!(r.status, 401);
    let r = call(
        "PUT",
        "/api/v1/sites/app/maintenance",
        Some("Bearer nope".into()),
        Some(r#"{"enabled":true}"#),
    );
    assert_eq!(r.status, 401);
    assert_app(&d.get("/"));

    let r = call(
        "GET",
        "/api/v1/status",
        Some(format!("Bearer {token}")),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["sites"][0]["name"], "app");
    let r = call("GET", "/healthz", None, None);
    assert_eq!(r.status, 200);
    assert_eq!(r.text().trim(), "ok");

    let o = d.ctl(&["status"]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(err(&o).contains("token"), "{}", err(&o));
    let o = d.ctl(&["--token", token, "maintenance", "on", "app"]);
    assert!(o.status.success(), "{}", err(&o));
    assert_page(&d.get("/"), "600", None);
    let o = d.ctl(&["--token", token, "status"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).contains("maintenance ON"), "{}", out(&o));
}

#[test]
fn state_survives_kill9_and_the_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let (a, b) = upstreams();
    let d = Drawbridge::start(&config(&a, &b, "", ""));
    put_maintenance(
        &d,
        r#"{"enabled":true,"retry_after":900,"message":"Back at 14:00"}"#,
    );
    let r = d.api(
        "POST",
        "/api/v1/sites/app/allow",
        Some(r#"{"cidr":"127.0.0.5/32"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let cookie = token_cookie(&d, "app", "1h");
    let mode = |d: &Drawbridge| {
        std::fs::metadata(d.state_file())
            .expect("the state file exists")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&d), 0o600);
    let on_disk: Value =
        serde_json::from_str(&read(&d.state_file())).expect("the state file is JSON");
    assert_eq!(on_disk["sites"]["app"]["enabled"], true);

    let d = d.kill9_and_restart();
    let check = |d: &Drawbridge| {
        assert_page(&d.get("/"), "900", Some("Back at 14:00"));
        assert_app(&get_from(&d.web, "127.0.0.5", Request::new("GET", "/")));
        // The generated bypass secret was kept: old tokens still work.
        assert_app(&d.send(with_cookie("/", &cookie)));
        let v = json(&d.api("GET", "/api/v1/sites/app", None));
        assert_eq!(v["maintenance"]["enabled"], true);
        assert_eq!(v["maintenance"]["message"], "Back at 14:00");
        assert_eq!(v["maintenance"]["retry_after"], 900);
        assert_eq!(v["allow"], serde_json::json!(["127.0.0.5/32"]));
    };
    check(&d);
    assert_eq!(mode(&d), 0o600);
    // And once more, after a change made by the restarted process.
    put_maintenance(&d, r#"{"enabled":true}"#);
    let d = d.kill9_and_restart();
    check(&d);
}

#[test]
fn an_unreadable_state_file_stops_the_start() {
    let (a, b) = upstreams();
    for garbage in [
        "{ this is not json",
        r#"{"version":1,"sites":{"app":{"enabled":"yes"}}}"#,
    ] {
        let d = Drawbridge::prepare(&config(&a, &b, "", ""), &[]);
        std::fs::write(d.state_file(), garbage).expect("write the state file");
        let o = d.run_to_exit();
        assert_ne!(o.status.code(), Some(0), "started on {garbage:?}");
        let text = format!("{}{}", out(&o), err(&o));
        let path = d.state_file().display().to_string();
        assert!(text.contains(&path), "the message must name {path}: {text}");
        assert!(text.contains("state file"), "{text}");
        assert_eq!(
            read(&d.state_file()),
            garbage,
            "the operator's file was replaced"
        );
        assert!(
            std::net::TcpStream::connect(&d.web).is_err(),
            "something serves on the proxy port"
        );
    }
}

/// Send `len` bytes of body with Content-Length; the status if the server
/// answered, `None` if it closed the connection first.
fn huge_body(admin: &str, len: usize) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(admin).expect("connect");
    s.set_write_timeout(Some(TIMEOUT)).expect("timeout");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let head = format!(
        "PUT /api/v1/sites/app/maintenance HTTP/1.1\r\nHost: {admin}\r\n\
         Content-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).ok()?;
    let mut body = br#"{"enabled":false,"message":""#.to_vec();
    body.resize(len, b'x');
    // The server may answer and close before reading it all.
    for chunk in body.chunks(64 * 1024) {
        if s.write_all(chunk).is_err() {
            break;
        }
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok())
}

#[test]
fn bad_admin_input_is_refused_and_changes_nothing() {
    let (a, b) = upstreams();
    let d = Drawbridge::start(&config(&a, &b, "      allow: [127.0.0.2/32]", ""));
    put_maintenance(&d, r#"{"enabled":true,"message":"keep me"}"#);
    let state = read(&d.state_file());
    let site = json(&d.api("GET", "/api/v1/sites/app", None));
    let unchanged = |what: &str| {
        assert_eq!(
            read(&d.state_file()),
            state,
            "{what} changed the state file"
        );
        assert_eq!(
            json(&d.api("GET", "/api/v1/sites/app", None)),
            site,
            "{what} changed the site"
        );
        assert_page(&d.get("/"), "600", Some("keep me"));
    };
    let m = "/api/v1/sites/app/maintenance";
    let allow = "/api/v1/sites/app/allow";
    let tokens = "/api/v1/sites/app/bypass-tokens";
    let cases: &[(&str, &str, Option<&str>, u16)] = &[
        ("PUT", m, Some(r#"{"enabled":tru"#), 400),
        ("PUT", m, Some(""), 400),
        ("PUT", m, Some("[]"), 400),
        ("PUT", m, Some(r#"{"enabled":"yes"}"#), 400),
        (
            "PUT",
            m,
            Some(r#"{"enabled":false,"retry_after":"10m"}"#),
            400,
        ),
        ("PUT", m, Some(r#"{"enabled":false,"message":7}"#), 400),
        ("PUT", m, Some(r#"{"retry_after":60}"#), 400),
        ("PUT", m, Some(r#"{"enabled":false,"colour":"red"}"#), 400),
        ("PUT", m, Some(r#"{"enabled":false,"retry_after":0}"#), 400),
        ("PUT", m, Some(r#"{"enabled":false,"retry_after":-5}"#), 400),
        (
            "PUT",
            m,
            Some(r#"{"enabled":false,"paths":["(unclosed"]}"#),
            400,
        ),
        ("PUT", m, Some(r#"{"enabled":false,"paths":"^/x"}"#), 400),
        (
            "PUT",
            "/api/v1/sites/nosuch/maintenance",
            Some(r#"{"enabled":false}"#),
            404,
        ),
        ("GET", "/api/v1/sites/nosuch", None, 404),
        (
            "PUT",
            "/api/v1/maintenance",
            Some(r#"{"enabled":"no"}"#),
            400,
        ),
        ("POST", allow, Some(r#"{"cidr":"10.0.0.300/8"}"#), 400),
        ("POST", allow, Some(r#"{"cidr":"not-a-cidr"}"#), 400),
        ("POST", allow, Some(r#"{"cidr":"10.0.0.0/33"}"#), 400),
        ("POST", allow, Some(r#"{"cidr":["10.0.0.0/8"]}"#), 400),
        ("DELETE", allow, Some(r#"{"cidr":"not-a-cidr"}"#), 400),
        ("DELETE", allow, Some(r#"{"cidr":"192.0.2.0/24"}"#), 404),
        (
            "POST",
            "/api/v1/sites/nosuch/allow",
            Some(r#"{"cidr":"10.0.0.0/8"}"#),
            404,
        ),
        ("POST", tokens, Some(r#"{"ttl":"0s"}"#), 400),
        ("POST", tokens, Some(r#"{"ttl":"3650days"}"#), 400),
        ("POST", tokens, Some(r#"{"ttl":"soon"}"#), 400),
        ("POST", tokens, Some(r#"{"ttl":"1h","site":"shop"}"#), 400),
        (
            "POST",
            "/api/v1/sites/nosuch/bypass-tokens",
            Some(r#"{"ttl":"1h"}"#),
            404,
        ),
        ("GET", m, None, 405),
        ("POST", m, Some(r#"{"enabled":false}"#), 405),
        ("DELETE", "/api/v1/status", None, 405),
        (
            "PUT",
            "/api/v1/sites/app",
            Some(r#"{"enabled":false}"#),
            405,
        ),
        ("GET", "/api/v1/nothing-here", None, 404),
    ];
    for &(method, path, body, want) in cases {
        let r = d.api(method, path, body);
        let what = format!("{method} {path} {body:?}");
        assert_eq!(r.status, want, "{what}: {}", r.text());
        let v = json(&r);
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: no error message: {v}"
        );
        unchanged(&what);
    }

    // 10 MB: refused, or the connection closed; nothing changed and the
    // server still answers.
    let status = huge_body(&d.admin, 10 * 1024 * 1024);
    assert!(
        status.is_none_or(|s| s == 413 || s == 400),
        "a 10 MB body got {status:?}"
    );
    unchanged("a 10 MB body");
    assert_eq!(d.api("GET", "/api/v1/status", None).status, 200);
}

#[test]
fn ctl_status_json_and_errors() {
    let (a, b) = upstreams();
    let d = Drawbridge::start(&config(&a, &b, "      allow: [127.0.0.2/32]", ""));
    let o = d.ctl(&["status"]);
    assert!(o.status.success(), "{}", err(&o));
    let text = out(&o);
    for want in [
        "site app",
        "127.0.0.2/32",
        "app/app-01",
        "app/app-02",
        a.addr.as_str(),
        b.addr.as_str(),
        "state ready",
    ] {
        assert!(text.contains(want), "ctl status lacks {want:?}:\n{text}");
    }

    let o = d.ctl(&["--json", "status"]);
    assert!(o.status.success(), "{}", err(&o));
    let v: Value = serde_json::from_str(&out(&o)).expect("ctl --json prints JSON");
    assert_eq!(v["sites"][0]["name"], "app");
    assert_eq!(v["sites"][0]["in_maintenance"], false);
    assert_eq!(v["backends"][0]["servers"][1]["name"], "app-02");

    let o = d.ctl(&["--json", "maintenance", "on", "app", "--message", "hi"]);
    assert!(o.status.success(), "{}", err(&o));
    let v: Value = serde_json::from_str(&out(&o)).expect("JSON");
    assert_eq!(v["maintenance"]["message"], "hi");

    let o = d.ctl(&["maintenance", "on", "nosuch"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("unknown site \"nosuch\""), "{}", err(&o));
    let o = d.ctl(&["allow", "add", "app", "not-a-cidr"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("invalid CIDR"), "{}", err(&o));
    let o = d.ctl(&["bypass-token", "app", "--ttl", "1s"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("ttl"), "{}", err(&o));

    let nobody = dead_addr();
    let mut cmd = std::process::Command::new(BIN);
    cmd.args([
        "ctl",
        "--admin",
        &format!("http://{}", nobody.addr),
        "status",
    ]);
    let o = run_bounded(cmd);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("cannot reach"), "{}", err(&o));
}
