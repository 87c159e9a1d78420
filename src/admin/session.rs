//! Console sessions: a random id in an HttpOnly cookie and a random CSRF
//! token per session, kept in memory (a restart logs every console out).
//! The store is capped and its entries expire; ids and CSRF tokens are
//! compared in constant time. This is the admin path: a mutex is fine.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// How long a session lasts from login (the cookie's `Max-Age`).
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// Most sessions kept at once; a login beyond that ends the oldest one.
pub const MAX_SESSIONS: usize = 64;

struct Entry {
    id: String,
    csrf: String,
    expires: Instant,
}

/// The console's sessions.
pub struct Sessions {
    entries: Mutex<Vec<Entry>>,
    ttl: Duration,
    cap: usize,
}

impl Default for Sessions {
    fn default() -> Sessions {
        Sessions::new(SESSION_TTL, MAX_SESSIONS)
    }
}

/// 32 bytes from the operating system's generator, base64url.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A new session: its id and its CSRF token.
#[derive(Debug, Clone)]
pub struct Created {
    pub id: String,
    pub csrf: String,
}

impl Sessions {
    pub fn new(ttl: Duration, cap: usize) -> Sessions {
        Sessions {
            entries: Mutex::new(Vec::new()),
            ttl,
            cap: cap.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        // A panic while holding the lock leaves a consistent list.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start a session (at `now`), ending expired ones and, at the cap, the
    /// one that expires first.
    pub fn create(&self, now: Instant) -> Created {
        let created = Created {
            id: random_token(),
            csrf: random_token(),
        };
        let mut entries = self.lock();
        entries.retain(|e| e.expires > now);
        while entries.len() >= self.cap {
            let oldest = entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.expires)
                .map(|(i, _)| i);
            match oldest {
                Some(i) => {
                    entries.swap_remove(i);
                }
                None => break,
            }
        }
        entries.push(Entry {
            id: created.id.clone(),
            csrf: created.csrf.clone(),
            expires: now + self.ttl,
        });
        created
    }

    /// The index of the live session `id`: every entry is compared, in
    /// constant time each.
    fn find(entries: &[Entry], id: &[u8], now: Instant) -> Option<usize> {
        let mut found = None;
        for (i, e) in entries.iter().enumerate() {
            let same = bool::from(e.id.as_bytes().ct_eq(id));
            if same && e.expires > now {
                found = Some(i);
            }
        }
        found
    }

    /// The CSRF token of the live session `id`.
    pub fn csrf(&self, id: &[u8], now: Instant) -> Option<String> {
        let entries = self.lock();
        Sessions::find(&entries, id, now).map(|i| entries[i].csrf.clone())
    }

    /// When the live session `id` ends.
    pub fn expires(&self, id: &[u8], now: Instant) -> Option<Instant> {
        let entries = self.lock();
        Sessions::find(&entries, id, now).map(|i| entries[i].expires)
    }

    /// End the session `id`; whether it was live.
    pub fn remove(&self, id: &[u8], now: Instant) -> bool {
        let mut entries = self.lock();
        let found = Sessions::find(&entries, id, now);
        entries.retain(|e| e.expires > now);
        match found {
            Some(_) => {
                entries.retain(|e| !bool::from(e.id.as_bytes().ct_eq(id)));
                true
            }
            None => false,
        }
    }

    /// How many sessions are live at `now`.
    pub fn live(&self, now: Instant) -> usize {
        self.lock().iter().filter(|e| e.expires > now).count()
    }
}

/// Whether `given` is the session's CSRF token (constant time).
pub fn csrf_matches(expected: &str, given: Option<&[u8]>) -> bool {
    given
        .map(<[u8]>::trim_ascii)
        .is_some_and(|g| !g.is_empty() && bool::from(g.ct_eq(expected.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_id_until_it_expires() {
        let s = Sessions::new(Duration::from_secs(60), 4);
        let t0 = Instant::now();
        let c = s.create(t0);
        assert_eq!(c.id.len(), 43, "32 bytes, base64url");
        assert_ne!(c.id, c.csrf);
        assert_eq!(s.csrf(c.id.as_bytes(), t0).as_deref(), Some(&*c.csrf));
        assert_eq!(s.csrf(b"not-a-session", t0), None);
        assert_eq!(s.csrf(&c.id.as_bytes()[..42], t0), None);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(s.csrf(c.id.as_bytes(), later), None, "expired");
        assert_eq!(s.live(later), 0);
    }

    #[test]
    fn ids_are_random() {
        let s = Sessions::new(Duration::from_secs(60), 8);
        let t0 = Instant::now();
        let a = s.create(t0);
        let b = s.create(t0);
        assert_ne!(a.id, b.id);
        assert_ne!(a.csrf, b.csrf);
    }

    #[test]
    fn the_cap_ends_the_oldest_session() {
        let s = Sessions::new(Duration::from_secs(60), 2);
        let t0 = Instant::now();
        let first = s.create(t0);
        let second = s.create(t0 + Duration::from_secs(1));
        let third = s.create(t0 + Duration::from_secs(2));
        let now = t0 + Duration::from_secs(3);
        assert_eq!(s.live(now), 2);
        assert!(s.csrf(first.id.as_bytes(), now).is_none());
        assert!(s.csrf(second.id.as_bytes(), now).is_some());
        assert!(s.csrf(third.id.as_bytes(), now).is_some());
    }

    #[test]
    fn remove_ends_only_that_session() {
        let s = Sessions::new(Duration::from_secs(60), 4);
        let t0 = Instant::now();
        let a = s.create(t0);
        let b = s.create(t0);
        assert!(s.remove(a.id.as_bytes(), t0));
        assert!(!s.remove(a.id.as_bytes(), t0), "already gone");
        assert!(s.csrf(a.id.as_bytes(), t0).is_none());
        assert!(s.csrf(b.id.as_bytes(), t0).is_some());
    }

    #[test]
    fn csrf_must_match_exactly() {
        assert!(csrf_matches("abc", Some(b"abc")));
        assert!(!csrf_matches("abc", Some(b"abd")));
        assert!(!csrf_matches("abc", Some(b"")));
        assert!(!csrf_matches("abc", None));
        assert!(!csrf_matches("", Some(b"")));
    }
}
