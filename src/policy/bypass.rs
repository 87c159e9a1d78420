//! Signed maintenance-bypass tokens. A token is
//! `base64url(payload) "." base64url(mac)` where payload is
//! `v1 | expiry (unix seconds) | site` and mac is HMAC-SHA256 over a fixed
//! purpose string and the payload. Verification checks the MAC first, in
//! constant time, then version, site and expiry.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const PURPOSE: &[u8] = b"drawbridge maintenance bypass v1\0";
const VERSION: u8 = 1;

/// A bypass-token key, derived from the operator's secret so that the same
/// secret is never used directly for anything else.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    pub fn derive(secret: &[u8]) -> Key {
        let mut mac =
            <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(b"drawbridge bypass-token key");
        Key(mac.finalize().into_bytes().into())
    }

    fn mac(&self) -> HmacSha256 {
        let mut mac =
            <HmacSha256 as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(PURPOSE);
        mac
    }
}

/// Issue a token for `site` valid until `expiry` (unix seconds).
pub fn issue(key: &Key, site: &str, expiry: u64) -> String {
    let mut payload = Vec::with_capacity(9 + site.len());
    payload.push(VERSION);
    payload.extend_from_slice(&expiry.to_be_bytes());
    payload.extend_from_slice(site.as_bytes());
    let mut mac = key.mac();
    mac.update(&payload);
    let tag = mac.finalize().into_bytes();
    format!("{}.{}", B64.encode(&payload), B64.encode(tag))
}

/// Whether `token` is a valid, unexpired token for `site` at time `now`.
pub fn verify(key: &Key, site: &str, token: &[u8], now: u64) -> bool {
    let Some(dot) = token.iter().position(|&b| b == b'.') else {
        return false;
    };
    let (Ok(payload), Ok(tag)) = (B64.decode(&token[..dot]), B64.decode(&token[dot + 1..])) else {
        return false;
    };
    let mut mac = key.mac();
    mac.update(&payload);
    if mac.verify_slice(&tag).is_err() {
        return false;
    }
    if payload.len() < 9 || payload[0] != VERSION {
        return false;
    }
    let mut exp = [0u8; 8];
    exp.copy_from_slice(&payload[1..9]);
    &payload[9..] == site.as_bytes() && u64::from_be_bytes(exp) > now
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_token_verifies_for_its_site_until_expiry() {
        let k = Key::derive(b"secret");
        let t = issue(&k, "app", 1000);
        assert!(verify(&k, "app", t.as_bytes(), 999));
        assert!(!verify(&k, "app", t.as_bytes(), 1000), "expired");
        assert!(!verify(&k, "other", t.as_bytes(), 10), "other site");
        assert!(
            !verify(&Key::derive(b"other"), "app", t.as_bytes(), 10),
            "other key"
        );
    }

    #[test]
    fn tampered_or_garbage_tokens_fail() {
        let k = Key::derive(b"secret");
        let t = issue(&k, "app", 1000);
        // Re-sign nothing: change the expiry in the payload only.
        let forged_payload = B64.encode([&[1u8][..], &u64::MAX.to_be_bytes(), b"app"].concat());
        let tag = t.split_once('.').unwrap().1;
        assert!(!verify(
            &k,
            "app",
            format!("{forged_payload}.{tag}").as_bytes(),
            10
        ));
        let mut bytes = t.clone().into_bytes();
        let last = bytes.len() - 1;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        assert!(!verify(&k, "app", &bytes, 10));
        for g in [&b""[..], b".", b"off", b"a.b", b"\xff\xfe.\x00"] {
            assert!(!verify(&k, "app", g, 10));
        }
    }
}
