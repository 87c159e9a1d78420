//! When a server in drain is safe to stop (CONTRACT section 4): out of
//! rotation, nothing in flight, and no sticky user seen for `idle` seconds.

use crate::config::AdminState;

/// The drain verdict. `since_sticky` is how many seconds ago the last
/// request came to the server by its cookie (`None`: never).
pub fn drained(state: AdminState, inflight: u64, since_sticky: Option<u64>, idle: u64) -> bool {
    state != AdminState::Ready && inflight == 0 && since_sticky.is_none_or(|s| s >= idle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use AdminState::*;

    #[test]
    fn verdicts() {
        assert!(drained(Drain, 0, None, 60));
        assert!(drained(Maint, 0, Some(60), 60));
        assert!(
            !drained(Ready, 0, None, 60),
            "a ready server is in rotation"
        );
        assert!(!drained(Drain, 1, None, 60), "a request in flight");
        assert!(
            !drained(Drain, 0, Some(59), 60),
            "a sticky user seen recently"
        );
        assert!(drained(Drain, 0, Some(0), 0));
    }
}
