//! Connection limits (CONTRACT section 10): how many client connections a
//! process may hold, whether one more is admitted, and what a request head
//! that is late gets.

/// File descriptors kept for everything but client connections: upstream
/// connections, health checks, the state file, the admin and metrics
/// listeners. A tenth of the limit, at least 64 and at most 4,096.
pub fn fd_reserve(nofile: u64) -> u64 {
    (nofile / 10).clamp(64, 4096)
}

/// The client connections a process may hold: `configured` when set (0:
/// derived), never more than the open-file limit `nofile` less the
/// [`fd_reserve`]. The second value says when `configured` was lowered.
pub fn max_connections(configured: usize, nofile: u64) -> (usize, bool) {
    let room = usize::try_from(nofile.saturating_sub(fd_reserve(nofile)))
        .unwrap_or(usize::MAX)
        .max(1);
    match configured {
        0 => (room, false),
        c if c > room => (room, true),
        c => (c, false),
    }
}

/// Why a new connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The process holds `max_connections` already.
    MaxConnections,
    /// This client holds `max_connections_per_client` already.
    PerClient,
}

impl Refusal {
    /// The `reason` label of `drawbridge_connections_rejected_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::PerClient => "max_connections_per_client",
        }
    }
}

/// Whether one more connection is admitted, given those open (`open` in
/// all, `client_open` from its client address) and the limits
/// (`per_client` 0: none; `exempt`: a trusted proxy, never limited per
/// client).
pub fn admit(
    open: usize,
    max: usize,
    client_open: usize,
    per_client: usize,
    exempt: bool,
) -> Result<(), Refusal> {
    if open >= max {
        return Err(Refusal::MaxConnections);
    }
    if per_client > 0 && !exempt && client_open >= per_client {
        return Err(Refusal::PerClient);
    }
    Ok(())
}

/// What a connection gets when its request head is not complete within
/// `header_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LateHead {
    /// Nothing of a request was sent: closed without an answer.
    Close,
    /// Part of a head was sent: 408, then closed.
    RequestTimeout,
}

pub fn late_head(bytes_of_head: bool) -> LateHead {
    if bytes_of_head {
        LateHead::RequestTimeout
    } else {
        LateHead::Close
    }
}

/// The 408 answer to a late head.
pub const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// A duration in whole seconds, rounded up (Pingora's keep-alive takes
/// seconds; 0 would mean no limit).
pub fn whole_seconds(d: std::time::Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn derived_and_capped_maximum() {
        assert_eq!(fd_reserve(1024), 102);
        assert_eq!(fd_reserve(100), 64);
        assert_eq!(fd_reserve(1 << 20), 4096);
        assert_eq!(max_connections(0, 20_000), (18_000, false));
        assert_eq!(max_connections(500, 20_000), (500, false));
        assert_eq!(max_connections(50_000, 20_000), (18_000, true));
        assert_eq!(max_connections(0, 10), (1, false));
    }

    #[test]
    fn admission() {
        assert_eq!(admit(0, 10, 0, 0, false), Ok(()));
        assert_eq!(admit(10, 10, 0, 0, false), Err(Refusal::MaxConnections));
        assert_eq!(admit(5, 10, 2, 2, false), Err(Refusal::PerClient));
        assert_eq!(admit(5, 10, 1, 2, false), Ok(()));
        assert_eq!(
            admit(5, 10, 7, 2, true),
            Ok(()),
            "trusted proxies are exempt"
        );
        assert_eq!(admit(10, 10, 0, 2, true), Err(Refusal::MaxConnections));
    }

    #[test]
    fn late_heads_and_seconds() {
        assert_eq!(late_head(false), LateHead::Close);
        assert_eq!(late_head(true), LateHead::RequestTimeout);
        assert!(REQUEST_TIMEOUT.starts_with(b"HTTP/1.1 408 "));
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(60)), 60);
        assert_eq!(whole_seconds(Duration::from_millis(10)), 1);
    }
}
