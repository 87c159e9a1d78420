//! Fuzz harnesses: one function per untrusted input, shared by the
//! cargo-fuzz targets in `fuzz/` and by the corpus replay in
//! `tests/fuzz_corpus.rs`, so that an input behaves the same under the
//! fuzzer and in `cargo test`. Each harness checks properties of what it
//! calls, not only that nothing panics: a violated property is a panic
//! naming it. See `fuzz/README.md` for the input format of each target.

use crate::admin::AdminApp;
use crate::config::{self, AdminState, Config, MaintenanceSettings};
use crate::policy::{bypass, gate, sticky};
use crate::state::{self, Draft, Runtime, ServerAdmin, StateError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

// ---------------------------------------------------------------- sticky

/// `Cookie` headers and the cookie names drawbridge looks for.
///
/// Input: the first line holds up to three names separated by `,`; every
/// further line is one `Cookie` header value.
///
/// Properties: [`sticky::strip`] never leaves a piece named as one to
/// drop, keeps every other piece in order, and leaves a header without
/// ours untouched; [`sticky::find_each`] finds exactly the cookies `strip`
/// calls ours, with the first value of each, and says whether anything
/// else is there as `strip` would keep it.
pub fn sticky_cookie(data: &[u8]) {
    let mut lines = data.split(|&b| b == b'\n');
    let Ok(first) = std::str::from_utf8(lines.next().unwrap_or_default()) else {
        return;
    };
    let headers: Vec<&[u8]> = lines.collect();
    let given: Vec<&str> = first.split(',').take(3).collect();
    let mut names: [Option<&str>; 3] = [None; 3];
    for (slot, name) in names.iter_mut().zip(&given) {
        *slot = Some(name);
    }
    let ours = |piece: &[u8], drop: &[&str]| {
        cookie_name(piece).is_some_and(|n| drop.iter().any(|d| d.as_bytes() == n))
    };

    for h in &headers {
        let pieces: Vec<&[u8]> = cookie_pieces(h).collect();
        let kept: Vec<&[u8]> = pieces
            .iter()
            .copied()
            .filter(|p| !ours(p, &given))
            .collect();
        match sticky::strip(h, &given) {
            None => assert!(
                pieces.iter().all(|p| !ours(p, &given)),
                "strip left {h:?} untouched, yet it holds one of {given:?}"
            ),
            Some(out) => {
                assert!(
                    kept.len() < pieces.len(),
                    "strip changed {h:?}, which holds none of {given:?}"
                );
                let left: Vec<&[u8]> = cookie_pieces(&out).collect();
                assert!(
                    left.iter().all(|p| !ours(p, &given)),
                    "strip of {h:?} left one of {given:?}: {out:?}"
                );
                assert_eq!(left, kept, "strip of {h:?} did not keep every other piece");
                assert_eq!(out, kept.join(&b"; "[..]), "strip of {h:?}: layout");
                assert_eq!(sticky::strip(&out, &given), None, "strip of {out:?} again");
            }
        }
    }

    let found = sticky::find_each(headers.iter().copied(), names);
    for (value, name) in found.values.iter().zip(names) {
        let Some(name) = name else {
            assert_eq!(*value, None, "a name not looked for was found");
            continue;
        };
        let in_strip = headers.iter().any(|h| sticky::strip(h, &[name]).is_some());
        assert_eq!(
            value.is_some(),
            in_strip,
            "find_each and strip disagree on whether {name:?} is in {headers:?}"
        );
        let first = headers
            .iter()
            .flat_map(|h| cookie_pieces(h))
            .find(|p| cookie_name(p) == Some(name.as_bytes()))
            .and_then(cookie_value);
        assert_eq!(*value, first, "first value of {name:?} in {headers:?}");
    }
    let others = headers.iter().any(|h| match sticky::strip(h, &given) {
        None => cookie_pieces(h).next().is_some(),
        Some(out) => !out.is_empty(),
    });
    assert_eq!(
        found.others, others,
        "find_each and strip disagree on whether {headers:?} holds other pieces than {given:?}"
    );
}

/// The non-empty pieces of a `Cookie` value, trimmed: the reference
/// reading, written from the format rather than from `sticky`.
fn cookie_pieces(h: &[u8]) -> impl Iterator<Item = &[u8]> {
    h.split(|&b| b == b';')
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty())
}

/// A piece's name: what comes before its first `=`, trimmed.
fn cookie_name(piece: &[u8]) -> Option<&[u8]> {
    let eq = piece.iter().position(|&b| b == b'=')?;
    Some(piece[..eq].trim_ascii())
}

/// A piece's value: after the first `=`, trimmed, without surrounding quotes.
fn cookie_value(piece: &[u8]) -> Option<&[u8]> {
    let eq = piece.iter().position(|&b| b == b'=')?;
    let v = piece[eq + 1..].trim_ascii();
    Some(match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    })
}

// --------------------------------------------------------- forwarded-for

/// The client address from `X-Forwarded-For` behind trusted proxies.
///
/// Input: line one is the socket peer (10.0.0.1 when it is not an
/// address), line two the trusted CIDRs separated by `,` (invalid ones
/// skipped), every further line one `X-Forwarded-For` value.
///
/// Properties: [`gate::client_ip`] answers the peer or an address that
/// appears in a header, the peer whenever the peer is not trusted; several
/// headers mean what the same values joined by `,` in one header mean; the
/// answer is the right-most hop not trusted, or the left-most hop of an
/// all-trusted chain, read from the right and stopping at the first hop
/// that is not an address (then the hop after it, or the peer).
pub fn forwarded_for(data: &[u8]) {
    let mut lines = data.split(|&b| b == b'\n');
    let peer = lines
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
        .and_then(|s| s.trim().parse::<IpAddr>().ok())
        .unwrap_or(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    let trusted: Vec<ipnet::IpNet> = lines
        .next()
        .unwrap_or_default()
        .split(|&b| b == b',')
        .filter_map(|c| std::str::from_utf8(c).ok().and_then(config::parse_cidr))
        .collect();
    let headers: Vec<&[u8]> = lines.collect();

    let got = gate::client_ip(peer, &trusted, headers.iter().copied());
    let hop = |h: &[u8]| {
        std::str::from_utf8(h)
            .ok()
            .and_then(|s| s.trim().parse::<IpAddr>().ok())
    };
    // Every hop, left to right, as if the headers were one.
    let hops: Vec<Option<IpAddr>> = headers
        .iter()
        .flat_map(|h| h.split(|&b| b == b','))
        .map(hop)
        .collect();
    assert!(
        got == peer || hops.contains(&Some(got)),
        "client_ip gave {got}, neither the peer {peer} nor in {headers:?}"
    );
    if !gate::contains(&trusted, peer) {
        assert_eq!(got, peer, "X-Forwarded-For believed from an untrusted peer");
    }
    let joined = headers.join(&b","[..]);
    assert_eq!(
        gate::client_ip(peer, &trusted, std::iter::once(&joined[..])),
        got,
        "{headers:?} read apart and joined differ"
    );
    let expected = if !gate::contains(&trusted, peer) {
        peer
    } else {
        // The first hop from the right that ends the chain we believe.
        let end = hops
            .iter()
            .rposition(|h| h.is_none_or(|ip| !gate::contains(&trusted, ip)));
        match end {
            Some(i) => match hops[i] {
                Some(ip) => ip,
                None => hops.get(i + 1).copied().flatten().unwrap_or(peer),
            },
            None => hops.first().copied().flatten().unwrap_or(peer),
        }
    };
    assert_eq!(got, expected, "client_ip({peer}, {trusted:?}, {headers:?})");
}

// ---------------------------------------------------------------- bypass

/// Maintenance-bypass tokens.
///
/// Input: bytes 0..8 an expiry and 8..16 a time "now" (big-endian Unix
/// seconds), 16..18 a position and 18 a byte for a one-byte change (missing
/// bytes are zero); then up to three lines: the secret, the site, and a
/// token to verify as given.
///
/// Properties: a token from [`bypass::issue`] carries the site and expiry
/// it was issued for, verifies for that site and key exactly while
/// unexpired, and never for another site or key; with any one byte
/// changed, removed or inserted it never verifies; a token given as input
/// that verifies is, byte for byte, the token `issue` makes for the site
/// and expiry it carries.
pub fn bypass_token(data: &[u8]) {
    let mut fixed = [0u8; 19];
    let n = data.len().min(fixed.len());
    fixed[..n].copy_from_slice(&data[..n]);
    let be = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
    let (expiry, now) = (be(&fixed[0..8]), be(&fixed[8..16]));
    let pos = usize::from(u16::from_be_bytes([fixed[16], fixed[17]]));
    let byte = fixed[18];
    let mut rest = data[n..].splitn(3, |&b| b == b'\n');
    let secret = rest.next().unwrap_or_default();
    let site = String::from_utf8_lossy(rest.next().unwrap_or_default()).into_owned();
    let given = rest.next();
    let key = bypass::Key::derive(secret);

    if let Some(given) = given {
        if bypass::verify(&key, &site, given, now) {
            let (exp, carried) = token_payload(given)
                .unwrap_or_else(|| panic!("{given:?} verified but does not decode"));
            assert_eq!(
                carried,
                site.as_bytes(),
                "{given:?} verified for another site"
            );
            assert!(
                exp > now,
                "{given:?} verified after its expiry {exp} (now {now})"
            );
            assert_eq!(
                given,
                bypass::issue(&key, &site, exp).as_bytes(),
                "a second spelling of a valid token verified"
            );
        }
    }

    let token = bypass::issue(&key, &site, expiry);
    let t = token.as_bytes();
    assert_eq!(
        token_payload(t),
        Some((expiry, site.as_bytes().to_vec())),
        "{token:?} does not carry its site and expiry"
    );
    assert_eq!(
        bypass::verify(&key, &site, t, now),
        expiry > now,
        "{token:?} at {now}"
    );
    assert_eq!(
        bypass::verify(&key, &site, t, 0),
        expiry > 0,
        "{token:?} at 0"
    );
    let other_site = format!("{site}x");
    assert!(
        !bypass::verify(&key, &other_site, t, 0),
        "{token:?} for another site"
    );
    let other_key = bypass::Key::derive(&[secret, b"x"].concat());
    assert!(
        !bypass::verify(&other_key, &site, t, 0),
        "{token:?} with another key"
    );

    let p = pos % t.len();
    let mut changed = t.to_vec();
    changed[p] = if byte == t[p] {
        byte.wrapping_add(1)
    } else {
        byte
    };
    let mut removed = t.to_vec();
    removed.remove(p);
    let mut inserted = t.to_vec();
    inserted.insert(p, byte);
    for (what, forged) in [
        ("changed", changed),
        ("removed", removed),
        ("inserted", inserted),
    ] {
        assert!(
            !bypass::verify(&key, &site, &forged, 0),
            "{token:?} with byte {p} {what} verifies: {forged:?}"
        );
    }
}

/// The expiry and site a token's payload carries, read from the format.
fn token_payload(token: &[u8]) -> Option<(u64, Vec<u8>)> {
    let dot = token.iter().position(|&b| b == b'.')?;
    let payload = B64.decode(&token[..dot]).ok()?;
    B64.decode(&token[dot + 1..]).ok()?;
    match payload.as_slice() {
        [1, rest @ ..] if rest.len() >= 8 => {
            let exp = u64::from_be_bytes(rest[..8].try_into().ok()?);
            Some((exp, rest[8..].to_vec()))
        }
        _ => None,
    }
}

// ----------------------------------------------------------------- admin

/// Admin API requests with JSON bodies, through the admin service itself
/// ([`AdminApp`], the same code that serves the admin listener) over an
/// in-memory connection, against a runtime whose state file lives in a
/// temporary folder. Each input starts from the same state.
///
/// Input: up to four requests separated by NUL bytes; each is a line
/// `METHOD TARGET` (target: path and query) and then the body. The
/// harness adds `Host`, the bearer token and `Content-Length`; a request
/// the HTTP parser refuses is skipped.
///
/// Properties: every request is answered, within 10 s, with a status in
/// 200..=599 and a JSON body (`{"error": ...}` for 4xx and 5xx), except
/// `/healthz`, answered `200 ok`, and the console's page and assets; a `GET`
/// or an answer other than 2xx changes nothing; after every answer, the
/// state file holds exactly the state in force.
pub fn admin_body(data: &[u8]) {
    let fixture = AdminFixture::get();
    let fx = lock(fixture);
    let rt = &fx.rt;
    if in_force(rt) != fx.initial {
        let initial = fx.initial.clone();
        rt.update(|d| {
            *d = initial;
            Ok::<_, StateError>(())
        })
        .unwrap_or_else(|e| panic!("admin fixture: reset: {e}"));
    }
    for request in data.split(|&b| b == 0).take(4) {
        let (head, body) = match request.iter().position(|&b| b == b'\n') {
            Some(i) => (&request[..i], &request[i + 1..]),
            None => (request, &b""[..]),
        };
        let head = head.strip_suffix(b"\r").unwrap_or(head);
        let (method, target) = match head.iter().position(|&b| b == b' ') {
            Some(i) => (&head[..i], &head[i + 1..]),
            None => (head, &b"/"[..]),
        };
        let mut raw = Vec::with_capacity(request.len() + 128);
        raw.extend_from_slice(method);
        raw.push(b' ');
        raw.extend_from_slice(target);
        raw.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ");
        raw.extend_from_slice(ADMIN_TOKEN.as_bytes());
        raw.extend_from_slice(format!("\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes());
        raw.extend_from_slice(body);

        let before = in_force(rt);
        let answer = fx.exec.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), answer(&fx.app, raw)).await
        });
        let Ok(answer) = answer else {
            panic!("no answer within 10 s to {request:?}");
        };
        let Some(Answer {
            status,
            is_get,
            health,
            page,
            body,
        }) = answer
        else {
            continue;
        };
        assert!(
            (200..=599).contains(&status),
            "status {status} for {request:?}"
        );
        if health {
            // The liveness probe: plain text, not the API.
            assert_eq!((status, &body[..]), (200, &b"ok\n"[..]), "/healthz");
            continue;
        }
        // The console's page and assets are served as they are; every
        // other answer is JSON.
        if !(page && status == 200) {
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
                panic!("status {status} for {request:?}: the body is not JSON ({e})")
            });
            if status >= 400 {
                assert!(
                    json["error"].is_string(),
                    "status {status} for {request:?} without an error message: {json}"
                );
            }
        }
        let after = in_force(rt);
        if is_get || !(200..300).contains(&status) {
            assert!(
                after == before,
                "status {status} for {request:?} changed the state"
            );
        }
        let (draft, _) = state::initial_state(&rt.config)
            .unwrap_or_else(|e| panic!("after {request:?}: the state file: {e}"));
        assert!(
            draft == after,
            "after {request:?} ({status}), the state file differs from the state in force"
        );
    }
}

/// The bearer token of the admin fixture.
const ADMIN_TOKEN: &str = "fuzz-admin-token";

/// What the admin service answered to one request.
struct Answer {
    status: u16,
    /// The request was a `GET`.
    is_get: bool,
    /// The request was for the liveness probe, `/healthz`.
    health: bool,
    /// The request was for the console's page or one of its assets.
    page: bool,
    body: Vec<u8>,
}

/// Parse one request and have the admin service answer it; `None` when the
/// HTTP parser refuses it.
async fn answer(app: &AdminApp, raw: Vec<u8>) -> Option<Answer> {
    let mut session = ServerSession::new_http1(Box::new(std::io::Cursor::new(raw)));
    if !matches!(session.read_request().await, Ok(true)) {
        return None;
    }
    let req = session.req_header();
    let is_get = req.method == http::Method::GET;
    let health = req.uri.path() == "/healthz";
    let page = crate::admin::console::is_page(req.uri.path());
    let response = app.response(&mut session).await;
    Some(Answer {
        status: response.status().as_u16(),
        is_get,
        health,
        page,
        body: response.into_body(),
    })
}

type InForce = Draft;

/// What the runtime applies now: its editable state.
fn in_force(rt: &Runtime) -> InForce {
    Draft::of(&rt.snapshot())
}

struct AdminFixture {
    rt: Arc<Runtime>,
    app: AdminApp,
    exec: tokio::runtime::Runtime,
    initial: InForce,
}

impl AdminFixture {
    fn get() -> &'static Mutex<AdminFixture> {
        static FIXTURE: OnceLock<Mutex<AdminFixture>> = OnceLock::new();
        FIXTURE.get_or_init(|| {
            let dir = fixture_dir("admin");
            write_fixture_file(&dir.join("token"), ADMIN_TOKEN);
            let yaml = format!(
                "state_file: {}/state.json
admin: {{ listen: 127.0.0.1:9090, token_file: token }}
{SITES_AND_BACKENDS}",
                dir.display()
            );
            let config = fixture_config(&yaml, &dir);
            let rt = Arc::new(
                Runtime::new(config, 1024)
                    .unwrap_or_else(|e| panic!("admin fixture: runtime: {e}")),
            );
            let exec = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("admin fixture: tokio: {e}"));
            Mutex::new(AdminFixture {
                initial: in_force(&rt),
                app: AdminApp::new(rt.clone()),
                rt,
                exec,
            })
        })
    }
}

/// The sites and backends of the admin and state-file fixtures: two sites,
/// two backends, a server in drain, an allow list.
const SITES_AND_BACKENDS: &str = "listeners:
  - { name: web, listen: 127.0.0.1:0, protocol: http }
sites:
  - name: app
    hosts: [app.example]
    backend: app
    maintenance: { allow: [192.0.2.0/24], paths: [\"^/checkout\"] }
  - { name: shop, backend: shop }
backends:
  - name: app
    sticky: { cookie: SERVERID }
    servers:
      - { name: a, addr: 127.0.0.1:1 }
      - { name: b, addr: 127.0.0.1:2, weight: 3 }
  - name: shop
    servers:
      - { name: c, addr: 127.0.0.1:3, state: drain }
";

// ------------------------------------------------------------ state file

/// The state file read at start.
///
/// Input: the file's bytes, read by [`state::initial_state`] for a fixed
/// config of two sites and two backends.
///
/// Properties: a refused file is refused by [`Runtime::new`] too, with a
/// message naming the file; an accepted file gives each site and server the
/// file's value where the file names it and the config's otherwise, keeps
/// its bypass secret, and starts a runtime, after whose rewrite of the file
/// the next start reads the same state and secret back.
pub fn state_file(data: &[u8]) {
    let fixture = StateFixture::get();
    let fx = lock(fixture);
    let config = &fx.config;
    let path = &config.state_file;
    std::fs::write(path, data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (draft, secret) = match state::initial_state(config) {
        Err(e) => {
            assert!(
                e.contains(&path.display().to_string()),
                "the error does not name the file: {e}"
            );
            assert!(
                Runtime::new(config.clone(), 1024).is_err(),
                "initial_state refused the file and Runtime::new took it"
            );
            return;
        }
        Ok(ok) => ok,
    };
    // The file as its format reads, without the checks: what each name
    // should get.
    let file: FileView = serde_json::from_slice(data)
        .unwrap_or_else(|e| panic!("accepted, yet not a state file: {e}"));
    assert_eq!(draft.sites.len(), config.sites.len(), "sites in the draft");
    for (site, settings) in config.sites.iter().zip(&draft.sites) {
        let expected = file.sites.get(&site.name).unwrap_or(&site.maintenance);
        assert_eq!(settings, expected, "site {}", site.name);
    }
    assert_eq!(
        draft.servers.len(),
        config.backends.len(),
        "backends in the draft"
    );
    for (b, list) in config.backends.iter().zip(&draft.servers) {
        // The config's servers but those deleted, then those added.
        // A deletion names the server as it was: one the config defines
        // otherwise stays; a backend left empty keeps the config's.
        let removed = file.removed.get(&b.name);
        let mut names: Vec<&str> = b.servers.iter().map(|s| s.name.as_str()).collect();
        for spec in removed.into_iter().flatten() {
            let same = b
                .servers
                .iter()
                .any(|c| c.name == spec.name && c.addr == spec.addr && c.backup == spec.backup);
            if same {
                names.retain(|n| *n != spec.name);
            }
        }
        for spec in file.added.get(&b.name).into_iter().flatten() {
            if !names.contains(&spec.name.as_str()) {
                names.push(&spec.name);
            }
        }
        if names.is_empty() {
            names = b.servers.iter().map(|s| s.name.as_str()).collect();
        }
        let got: Vec<&str> = list.iter().map(|s| s.conf.name.as_str()).collect();
        assert_eq!(got, names, "servers of {}", b.name);
        for s in list {
            let initial = match b.servers.iter().find(|c| c.name == s.conf.name) {
                Some(c) => ServerAdmin {
                    state: c.state,
                    weight: c.weight,
                },
                None => ServerAdmin {
                    state: AdminState::Maint,
                    weight: 1,
                },
            };
            let expected = file
                .servers
                .get(&b.name)
                .and_then(|servers| servers.get(&s.conf.name))
                .copied()
                .unwrap_or(initial);
            assert_eq!(s.admin, expected, "server {}/{}", b.name, s.conf.name);
        }
    }
    assert_eq!(secret, file.bypass_secret, "the bypass secret");

    let rt = Runtime::new(config.clone(), 1024)
        .unwrap_or_else(|e| panic!("initial_state took the file and Runtime::new refused: {e}"));
    drop(rt);
    let (again, secret_again) = state::initial_state(config)
        .unwrap_or_else(|e| panic!("the file a runtime wrote is refused: {e}"));
    assert!(
        again.sites == draft.sites && again.servers == draft.servers,
        "a restart changed the state"
    );
    assert!(secret_again.is_some(), "the runtime wrote no bypass secret");
    if secret.is_some() {
        assert_eq!(secret_again, secret, "a restart changed the bypass secret");
    }
}

/// The state file's fields, in its order (serde also reads a JSON array
/// as a struct), read without `deny_unknown_fields`.
#[derive(serde::Deserialize)]
struct FileView {
    #[allow(dead_code)]
    version: u32,
    #[serde(default)]
    bypass_secret: Option<String>,
    #[serde(default)]
    sites: std::collections::BTreeMap<String, MaintenanceSettings>,
    #[serde(default)]
    servers: std::collections::BTreeMap<String, std::collections::BTreeMap<String, ServerAdmin>>,
    #[serde(default)]
    added: std::collections::BTreeMap<String, Vec<config::ServerSpec>>,
    #[serde(default)]
    removed: std::collections::BTreeMap<String, Vec<config::ServerSpec>>,
}

struct StateFixture {
    config: Config,
}

impl StateFixture {
    fn get() -> &'static Mutex<StateFixture> {
        static FIXTURE: OnceLock<Mutex<StateFixture>> = OnceLock::new();
        FIXTURE.get_or_init(|| {
            let dir = fixture_dir("state");
            let yaml = format!(
                "state_file: {}/state.json\n{SITES_AND_BACKENDS}",
                dir.display()
            );
            Mutex::new(StateFixture {
                config: fixture_config(&yaml, &dir),
            })
        })
    }
}

// ---------------------------------------------------------------- config

/// The configuration loader.
///
/// Input: YAML text, parsed as `drawbridge.yaml` in a temporary folder
/// that holds the files `page.html`, `error.html` and `token`. Inputs that
/// are not UTF-8, that have a mapping key which is not a plain string, or
/// that name a file (`page`, `error_page`, `token_file`, and a TLS `cert`
/// or `key`, which the loader reads where TLS is supported) other than a
/// plain name in that folder are skipped: reading a file such as `/dev/zero`
/// would stall the fuzzer, not find a fault of the loader.
///
/// Properties: [`config::parse`] never panics; each problem it reports
/// names the file; a config it accepts parses again to the same config,
/// also written back out as YAML, and holds the invariants the rest of
/// drawbridge indexes by (a listener, backend indices in range, unique
/// names, server ids); its initial maintenance settings pass the runtime's
/// checks ([`state::build_snapshot`]).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(root) = serde_yaml::from_str::<serde_yaml::Value>(text) else {
        // Still parsed: the loader must report the YAML error.
        expect_refused(text);
        return;
    };
    if !safe_file_references(&root) {
        return;
    }
    let dir = ConfigFixture::dir();
    let path = dir.join("drawbridge.yaml");
    let config = match config::parse(text, &path) {
        Err(problems) => {
            check_problems(&problems, &path);
            return;
        }
        Ok(c) => c,
    };
    let again = config::parse(text, &path)
        .unwrap_or_else(|p| panic!("accepted once, refused the second time: {p:?}"));
    assert_eq!(
        format!("{again:?}"),
        format!("{config:?}"),
        "parsed twice, two configs"
    );
    if let Ok(rewritten) = serde_yaml::to_string(&root) {
        let re = config::parse(&rewritten, &path)
            .unwrap_or_else(|p| panic!("accepted, refused once written back: {p:?}\n{rewritten}"));
        assert_eq!(
            format!("{re:?}"),
            format!("{config:?}"),
            "written back as YAML, another config:\n{rewritten}"
        );
    }
    check_model(&config);
}

fn expect_refused(text: &str) {
    let path = ConfigFixture::dir().join("drawbridge.yaml");
    match config::parse(text, &path) {
        Ok(_) => panic!("the YAML parser refused the text, the loader took it"),
        Err(problems) => check_problems(&problems, &path),
    }
}

fn check_problems(problems: &[String], path: &Path) {
    assert!(!problems.is_empty(), "refused without a problem");
    let file = path.display().to_string();
    for p in problems {
        assert!(
            p.starts_with(&file),
            "a problem that does not name the file: {p:?}"
        );
    }
}

/// The invariants of an accepted config that the rest of drawbridge relies on.
fn check_model(config: &Config) {
    assert!(!config.listeners.is_empty(), "accepted without a listener");
    let unique = |names: Vec<&str>, what: &str| {
        let set: std::collections::HashSet<&str> = names.iter().copied().collect();
        assert_eq!(set.len(), names.len(), "duplicate {what} names: {names:?}");
    };
    unique(
        config.sites.iter().map(|s| s.name.as_str()).collect(),
        "site",
    );
    unique(
        config.backends.iter().map(|b| b.name.as_str()).collect(),
        "backend",
    );
    unique(
        config.listeners.iter().map(|l| l.name.as_str()).collect(),
        "listener",
    );
    for site in &config.sites {
        assert!(
            site.backend < config.backends.len(),
            "site {} points past the backends",
            site.name
        );
        assert!(
            config::is_cookie_name(&site.bypass_cookie),
            "site {}: bypass cookie {:?}",
            site.name,
            site.bypass_cookie
        );
        if let Err(e) = config::check::maintenance(&site.maintenance) {
            panic!(
                "site {}: the loader took what the runtime refuses: {e}",
                site.name
            );
        }
    }
    for l in &config.listeners {
        assert!(
            l.backend.is_none_or(|b| b < config.backends.len()),
            "listener {} points past the backends",
            l.name
        );
    }
    for b in &config.backends {
        assert!(!b.servers.is_empty(), "backend {} without servers", b.name);
        unique(
            b.servers.iter().map(|s| s.name.as_str()).collect(),
            "server",
        );
        for s in &b.servers {
            assert_eq!(
                s.id,
                config::server_id(&b.name, &s.name),
                "id of {}",
                s.name
            );
            assert!(
                config::check::weight(i64::from(s.weight)).is_ok(),
                "{}/{}: weight {}",
                b.name,
                s.name,
                s.weight
            );
        }
    }
    let draft = Draft::from_config(config);
    state::check_draft(config, &draft)
        .unwrap_or_else(|e| panic!("the loader took what the runtime refuses: {e}"));
    for (b, list) in draft.servers.iter().enumerate() {
        let every = config.backends[b]
            .servers
            .iter()
            .all(|s| s.state == AdminState::Maint);
        let all = state::all_maint(list.iter().map(|s| s.admin.state));
        assert_eq!(all, every, "all_maint of {}", config.backends[b].name);
    }
}

/// Whether every mapping key is a plain string and every file the config
/// names is a plain name inside the fixture's folder.
fn safe_file_references(v: &serde_yaml::Value) -> bool {
    use serde_yaml::Value;
    match v {
        Value::Sequence(items) => items.iter().all(safe_file_references),
        Value::Tagged(t) => safe_file_references(&t.value),
        Value::Mapping(m) => m.iter().all(|(k, v)| match k {
            Value::String(k)
                if matches!(
                    k.as_str(),
                    "page" | "error_page" | "token_file" | "cert" | "key"
                ) =>
            {
                match v {
                    Value::Null => true,
                    Value::String(name) => {
                        !name.is_empty()
                            && name
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                    }
                    _ => false,
                }
            }
            Value::String(_) => safe_file_references(v),
            _ => false,
        }),
        _ => true,
    }
}

struct ConfigFixture;

impl ConfigFixture {
    fn dir() -> &'static Path {
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        DIR.get_or_init(|| {
            let dir = fixture_dir("config");
            write_fixture_file(
                &dir.join("page.html"),
                "<h1>{{site}}</h1><p>{{message}}</p><p>{{retry_after}}</p>",
            );
            write_fixture_file(&dir.join("error.html"), "<h1>{{site}} is unavailable</h1>");
            write_fixture_file(&dir.join("token"), "fuzz-token\n");
            dir
        })
    }
}

// ---------------------------------------------------------------- shared

/// A fresh folder for one fixture of this process. Fixtures live as long
/// as the process, so the folders of processes now gone are removed here.
fn fixture_dir(name: &str) -> PathBuf {
    let tmp = std::env::temp_dir();
    let prefix = format!("drawbridge-fuzz-{name}-");
    if Path::new("/proc/self").exists() {
        for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let file_name = entry.file_name();
            let pid = file_name.to_str().and_then(|n| n.strip_prefix(&prefix));
            let gone = pid
                .is_some_and(|p| p.parse::<u32>().is_ok() && !Path::new("/proc").join(p).exists());
            if gone {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = tmp.join(format!("{prefix}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

fn write_fixture_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn fixture_config(yaml: &str, dir: &Path) -> Config {
    config::parse(yaml, &dir.join("drawbridge.yaml"))
        .unwrap_or_else(|p| panic!("fixture config: {p:?}"))
}

/// A fixture's lock; one that a failed input poisoned is taken as it is,
/// since every input starts by putting the fixture back in order.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
