//! TLS termination (CONTRACT section 9), with rustls through Pingora: each
//! TLS listener has a set of certificates behind an `ArcSwap`, chosen per
//! handshake by SNI ([`crate::policy::sni`]); the handshake itself runs in
//! [`crate::limits::Guarded`], after the connection was admitted and
//! within `header_timeout`.

use crate::config::cert::{self, LoadedCert};
use crate::config::{TlsConfig, TlsVersion};
use crate::policy::sni::ByName;
use arc_swap::ArcSwap;
use pingora_core::listeners::tls::Acceptor;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::sync::Arc;

/// A listener's certificates, as loaded.
#[derive(Debug)]
pub struct CertSet {
    by_name: ByName<Arc<CertifiedKey>>,
    /// In configured order; the first is the default.
    pub certs: Vec<LoadedCert>,
}

impl CertSet {
    /// Load and check every certificate of `tls`; the first error wins.
    pub fn load(tls: &TlsConfig) -> Result<CertSet, String> {
        let now = cert::now_secs();
        let certs = tls
            .certs
            .iter()
            .map(|paths| cert::load(paths, now))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(default) = certs.first() else {
            return Err("a TLS listener needs a certificate".into());
        };
        let mut by_name = ByName::new(default.key.clone());
        for c in &certs {
            for name in &c.names {
                by_name.insert(name, c.key.clone());
            }
        }
        Ok(CertSet { by_name, certs })
    }
}

/// Chooses the certificate of each handshake from the current set.
#[derive(Debug)]
struct Resolver(Arc<ArcSwap<CertSet>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().by_name.pick(hello.server_name()).clone())
    }
}

/// A TLS listener: its acceptor and its certificates.
pub struct Tls {
    pub acceptor: Acceptor,
    pub certs: Arc<ArcSwap<CertSet>>,
}

/// A listener's certificates, swapped whole by a reload.
pub type CertStore = Arc<ArcSwap<CertSet>>;

impl Tls {
    /// The acceptor of a listener whose certificates are `certs`.
    pub fn new(tls: &TlsConfig, certs: CertStore) -> Result<Tls, String> {
        let versions: &[&'static rustls::SupportedProtocolVersion] = match tls.min_version {
            TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::V1_3 => &[&rustls::version::TLS13],
        };
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(versions)
                .map_err(|e| format!("TLS versions: {e}"))?
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(Resolver(certs.clone())));
        config.alpn_protocols = if tls.http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Ok(Tls {
            acceptor: Acceptor::from_server_config(Arc::new(config)),
            certs,
        })
    }
}

/// The certificates of a listener as the API lists them.
pub fn describe(listener: &str, set: &CertSet) -> Vec<serde_json::Value> {
    set.certs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            serde_json::json!({
                "listener": listener,
                "cert": c.paths.cert.display().to_string(),
                "key": c.paths.key.display().to_string(),
                "default": i == 0,
                "names": c.names,
                "not_after": cert::date(c.not_after),
            })
        })
        .collect()
}

/// Each certificate's expiry, by the DNS names it carries.
pub fn publish_expiry(listener: &str, set: &CertSet, metrics: &crate::metrics::Metrics) {
    for c in &set.certs {
        for name in &c.names {
            metrics
                .cert_expiry
                .with_label_values(&[listener, name])
                .set(c.not_after);
        }
    }
}
