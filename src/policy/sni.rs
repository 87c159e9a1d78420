//! Which certificate a TLS handshake gets (CONTRACT section 9): the one
//! carrying the client's SNI name exactly, else one with a `*.` wildcard
//! covering it (one label), else the listener's default.

use std::collections::HashMap;

/// Certificates by the DNS names they carry.
#[derive(Debug, Clone)]
pub struct ByName<T> {
    /// Lower-case names, without a trailing dot.
    exact: HashMap<String, T>,
    /// `*.example.org` kept as `example.org`.
    wildcard: HashMap<String, T>,
    default: T,
}

impl<T: Clone> ByName<T> {
    pub fn new(default: T) -> ByName<T> {
        ByName {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default,
        }
    }

    /// Add `value` under the DNS `name` a certificate carries; the first
    /// certificate naming a name keeps it.
    pub fn insert(&mut self, name: &str, value: T) {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match name.strip_prefix("*.") {
            Some(parent) if !parent.is_empty() => {
                self.wildcard.entry(parent.to_string()).or_insert(value);
            }
            _ if !name.is_empty() => {
                self.exact.entry(name).or_insert(value);
            }
            _ => {}
        }
    }

    /// The certificate for a handshake's SNI name (`None`: none sent).
    pub fn pick(&self, sni: Option<&str>) -> &T {
        let Some(name) = sni else {
            return &self.default;
        };
        let mut buf = [0u8; 256];
        let Some(name) = lower(name.trim_end_matches('.'), &mut buf) else {
            return &self.default;
        };
        if let Some(v) = self.exact.get(name) {
            return v;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }
}

/// `name` in lower case, in `buf` (no allocation per handshake).
fn lower<'a>(name: &str, buf: &'a mut [u8; 256]) -> Option<&'a str> {
    let out = buf.get_mut(..name.len())?;
    for (o, b) in out.iter_mut().zip(name.bytes()) {
        *o = b.to_ascii_lowercase();
    }
    std::str::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_then_wildcard_then_default() {
        let mut m = ByName::new("default");
        m.insert("shop.example.org", "shop");
        m.insert("*.example.org", "wild");
        m.insert("Example.ORG.", "apex");
        m.insert("*.example.org", "second wildcard loses");
        assert_eq!(*m.pick(Some("shop.example.org")), "shop");
        assert_eq!(*m.pick(Some("SHOP.Example.org.")), "shop");
        assert_eq!(*m.pick(Some("blog.example.org")), "wild");
        assert_eq!(*m.pick(Some("example.org")), "apex");
        // A wildcard covers one label only.
        assert_eq!(*m.pick(Some("a.b.example.org")), "default");
        assert_eq!(*m.pick(Some("other.test")), "default");
        assert_eq!(*m.pick(None), "default");
        assert_eq!(*m.pick(Some(&"x".repeat(300))), "default");
    }
}
