//! Spike: Pingora 0.9.1 terminating TLS with OpenSSL, the certificate chosen
//! per handshake by SNI in `TlsAccept::certificate_callback` from an
//! `ArcSwap` of loaded certificates, reloaded in process on SIGHUP.
//!
//! A one-thread round-robin HTTP proxy and nothing else, built to be measured
//! beside drawbridge (rustls) by `bench/tls.sh`; same hot-path settings as
//! drawbridge (mimalloc, no-steal runtime, L4 read buffer 0 / write 4 KiB,
//! timeouts on tokio's timer).
//!
//! ```text
//! tls-spike-openssl LISTEN CERT_DIR UPSTREAM UPSTREAM
//! ```
//!
//! CERT_DIR holds `NAME.pem` (certificate, then its chain) with `NAME.key`;
//! `default.pem` is served when the SNI matches no certificate's DNS names
//! (exact match only). `kill -HUP` re-reads the directory and swaps the set;
//! a set that fails to load is reported and the previous one kept.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig, TlsAccept, ALPN};
use pingora_core::protocols::tls::TlsRef;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::tls::ext;
use pingora_core::tls::pkey::{PKey, Private};
use pingora_core::tls::ssl::NameType;
use pingora_core::tls::x509::X509;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::Result;
use pingora_proxy::{ProxyHttp, Session};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One certificate with its chain and key.
struct Cert {
    leaf: X509,
    chain: Vec<X509>,
    key: PKey<Private>,
}

/// The loaded set: certificates by exact DNS name, and the default.
struct CertSet {
    by_name: HashMap<String, Arc<Cert>>,
    default: Arc<Cert>,
}

fn load_cert(pem: &Path, key: &Path) -> std::result::Result<Cert, String> {
    let pem_bytes = std::fs::read(pem).map_err(|e| format!("{}: {e}", pem.display()))?;
    let key_bytes = std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let mut certs = X509::stack_from_pem(&pem_bytes)
        .map_err(|e| format!("{}: not a PEM certificate: {e}", pem.display()))?
        .into_iter();
    let leaf = certs
        .next()
        .ok_or_else(|| format!("{}: no certificate", pem.display()))?;
    let key = PKey::private_key_from_pem(&key_bytes)
        .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?;
    let matches = leaf
        .public_key()
        .map(|p| p.public_eq(&key))
        .unwrap_or(false);
    if !matches {
        return Err(format!(
            "{}: key does not match the certificate",
            pem.display()
        ));
    }
    Ok(Cert {
        leaf,
        chain: certs.collect(),
        key,
    })
}

/// Reads every `NAME.pem` with a `NAME.key` beside it in `dir`.
fn load_dir(dir: &Path) -> std::result::Result<CertSet, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut by_name = HashMap::new();
    let mut default = None;
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pem") {
            continue;
        }
        let key = path.with_extension("key");
        if !key.exists() {
            continue;
        }
        let cert = Arc::new(load_cert(&path, &key)?);
        for name in cert.leaf.subject_alt_names().into_iter().flatten() {
            if let Some(dns) = name.dnsname() {
                by_name.insert(dns.to_ascii_lowercase(), cert.clone());
            }
        }
        if path.file_stem().and_then(|s| s.to_str()) == Some("default") {
            default = Some(cert);
        }
    }
    let default =
        default.ok_or_else(|| format!("{}: no default.pem/default.key", dir.display()))?;
    Ok(CertSet { by_name, default })
}

/// Chooses the certificate of each handshake by its SNI.
struct SniCallback {
    certs: Arc<ArcSwap<CertSet>>,
}

#[async_trait]
impl TlsAccept for SniCallback {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let set = self.certs.load();
        let cert = ssl
            .servername(NameType::HOST_NAME)
            .and_then(|sni| set.by_name.get(&sni.to_ascii_lowercase()))
            .unwrap_or(&set.default)
            .clone();
        // A failure here leaves the handshake without a certificate: it fails
        // (the client sees an alert), the process goes on.
        let mut ok = ext::ssl_use_certificate(ssl, &cert.leaf).is_ok()
            && ext::ssl_use_private_key(ssl, &cert.key).is_ok();
        for c in &cert.chain {
            ok = ok && ext::ssl_add_chain_cert(ssl, c).is_ok();
        }
        if !ok {
            eprintln!("tls-spike-openssl: could not set the certificate of a handshake");
        }
    }
}

/// Round robin over the upstreams, nothing else.
struct RoundRobin {
    upstreams: Vec<String>,
    next: AtomicUsize,
}

#[async_trait]
impl ProxyHttp for RoundRobin {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.upstreams.len();
        Ok(Box::new(HttpPeer::new(
            self.upstreams[i].as_str(),
            false,
            String::new(),
        )))
    }
}

/// Re-reads the certificate directory on each SIGHUP, on a thread of its own.
fn spawn_reloader(dir: String, certs: Arc<ArcSwap<CertSet>>) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("cert-reload".into())
        .spawn(move || {
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let mut hup = match signal(SignalKind::hangup()) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("tls-spike-openssl: no SIGHUP handler: {e}");
                        return;
                    }
                };
                while hup.recv().await.is_some() {
                    match load_dir(Path::new(&dir)) {
                        Ok(set) => {
                            let n = set.by_name.len();
                            certs.store(Arc::new(set));
                            eprintln!("tls-spike-openssl: reloaded {dir} ({n} names)");
                        }
                        Err(e) => {
                            eprintln!("tls-spike-openssl: reload failed, kept the old set: {e}")
                        }
                    }
                }
            })
        })?;
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, dir, up1, up2] = args.as_slice() else {
        eprintln!("usage: tls-spike-openssl LISTEN CERT_DIR UPSTREAM UPSTREAM");
        std::process::exit(2);
    };
    let certs = match load_dir(Path::new(dir)) {
        Ok(set) => Arc::new(ArcSwap::from_pointee(set)),
        Err(e) => {
            eprintln!("tls-spike-openssl: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = spawn_reloader(dir.clone(), certs.clone()) {
        eprintln!("tls-spike-openssl: reload thread: {e}");
        std::process::exit(1);
    }

    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: format!("/tmp/tls-spike-openssl-{}.pid", std::process::id()),
        upgrade_sock: format!("/tmp/tls-spike-openssl-{}.sock", std::process::id()),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut tls = match TlsSettings::with_callbacks(Box::new(SniCallback { certs })) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tls-spike-openssl: {e}");
            std::process::exit(1);
        }
    };
    tls.set_alpn(ALPN::H2H1);

    let proxy = RoundRobin {
        upstreams: vec![up1.clone(), up2.clone()],
        next: AtomicUsize::new(0),
    };
    let mut service = pingora_proxy::http_proxy_service(&server.configuration, proxy);
    service.add_listener(
        ListenerConfig::tcp(listen.as_str())
            .tls(tls)
            .l4_buffer(L4BufferSettings::default().read(0).write(4096)),
    );
    service.threads = Some(1);
    server.add_service(service);
    eprintln!("tls-spike-openssl: https://{listen} -> {up1}, {up2}");
    server.run_forever();
}
