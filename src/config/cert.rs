//! Certificates of TLS listeners (CONTRACT section 9): one check, used by
//! `check`, at start and on a reload: both files readable PEM, the key
//! matching the certificate, the certificate not expired. What it yields
//! (the key pair, its DNS names, its expiry) is what a handshake serves.

use rustls::crypto::ring::default_provider;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A certificate chain and its key, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate loaded and checked.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    pub paths: CertPaths,
    /// The DNS names it carries (subject alternative names, else the
    /// subject's common name), as written.
    pub names: Vec<String>,
    /// Unix seconds after which it is no longer valid.
    pub not_after: i64,
    pub key: Arc<CertifiedKey>,
}

/// Days before expiry from which `check` warns.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {}: cannot read: {e}", path.display()))
}

/// Load and check one certificate at `now` (unix seconds). Every message
/// names the key path, the setting an operator fixes.
pub fn load(paths: &CertPaths, now: i64) -> Result<LoadedCert, String> {
    let key_path = paths.key.display();
    let cert_path = paths.cert.display();
    let cert_pem = read(&paths.cert, "certificate")?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate {cert_path}: not PEM: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err(format!(
            "certificate {cert_path}: no certificate in the file"
        ));
    };
    let key_pem = read(&paths.key, "key")?;
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| format!("key {key_path}: not PEM: {e}"))?
        .ok_or_else(|| format!("key {key_path}: no private key in the file"))?;
    let (_, x509) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("certificate {cert_path}: cannot parse: {e}"))?;
    let not_after = x509.validity().not_after.timestamp();
    if not_after < now {
        return Err(format!(
            "key {key_path}: its certificate {cert_path} expired on {}",
            date(not_after)
        ));
    }
    let mut names: Vec<String> = match x509.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names = x509
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok().map(str::to_string))
            .collect();
    }
    let key = CertifiedKey::from_der(chain, key, &default_provider())
        .map_err(|e| format!("key {key_path}: does not match its certificate {cert_path} ({e})"))?;
    Ok(LoadedCert {
        paths: paths.clone(),
        names,
        not_after,
        key: Arc::new(key),
    })
}

/// A warning when `cert` expires within [`EXPIRY_WARNING_DAYS`] of `now`.
pub fn expiry_warning(cert: &LoadedCert, now: i64) -> Option<String> {
    let days = (cert.not_after - now) / 86_400;
    (days < EXPIRY_WARNING_DAYS).then(|| {
        format!(
            "key {}: its certificate {} expires on {} (in {days} days)",
            cert.paths.key.display(),
            cert.paths.cert.display(),
            date(cert.not_after)
        )
    })
}

/// The time now, in unix seconds.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A UTC date and time, RFC 3339.
pub fn date(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0).unsigned_abs());
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls")).join(name)
    }

    fn paths(cert: &str, key: &str) -> CertPaths {
        CertPaths {
            cert: fixture(cert),
            key: fixture(key),
        }
    }

    #[test]
    fn loads_names_and_expiry() {
        let now = now_secs();
        let c = load(&paths("shop.pem", "shop.key"), now).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.names, ["shop.test", "*.shop.test"]);
        assert!(c.not_after > now + 365 * 86_400);
        assert_eq!(expiry_warning(&c, now), None);
        // Twelve days before the end: a warning naming the key.
        let soon = c.not_after - 12 * 86_400;
        let w = expiry_warning(&c, soon).unwrap_or_default();
        assert!(w.contains("shop.key") && w.contains("in 12 days"), "{w}");
    }

    #[test]
    fn refuses_expired_mismatched_and_unreadable() {
        let c = load(&paths("shop.pem", "shop.key"), 0).unwrap_or_else(|e| panic!("{e}"));
        let expired = load(&paths("shop.pem", "shop.key"), c.not_after + 1)
            .err()
            .unwrap_or_default();
        assert!(
            expired.contains("shop.key") && expired.contains("expired"),
            "{expired}"
        );
        let mismatch = load(&paths("shop.pem", "default.key"), 0)
            .err()
            .unwrap_or_default();
        assert!(
            mismatch.contains("default.key") && mismatch.contains("does not match"),
            "{mismatch}"
        );
        let missing = load(&paths("nothere.pem", "shop.key"), 0)
            .err()
            .unwrap_or_default();
        assert!(missing.contains("cannot read"), "{missing}");
        let not_pem = load(&paths("README.md", "shop.key"), 0)
            .err()
            .unwrap_or_default();
        assert!(not_pem.contains("no certificate"), "{not_pem}");
        let no_key = load(&paths("shop.pem", "shop.pem"), 0)
            .err()
            .unwrap_or_default();
        assert!(no_key.contains("no private key"), "{no_key}");
    }
}
