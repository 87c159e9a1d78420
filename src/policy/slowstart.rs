//! Slow start (CONTRACT section 12): a server that becomes usable again
//! (health up after down, or `ready` after `drain`/`maint`) takes a share
//! of its weight that rises linearly from near 0 to all of it over its
//! `slowstart`.

use std::time::Duration;

/// A whole weight, in thousandths.
pub const FULL: u16 = 1000;

/// The share of its weight, in thousandths (1 to [`FULL`]), a server has
/// `since` after it became usable again, with a slow start of `slowstart`
/// (zero: none). `None` for `since`: it has been usable since the start.
pub fn share(slowstart: Duration, since: Option<Duration>) -> u16 {
    let Some(since) = since else { return FULL };
    if slowstart.is_zero() || since >= slowstart {
        return FULL;
    }
    let part = since.as_micros() * u128::from(FULL) / slowstart.as_micros();
    u16::try_from(part).unwrap_or(FULL).clamp(1, FULL)
}

/// The weight a server balances with while it has `share` of `weight`.
pub fn effective_weight(weight: u32, share: u16) -> f64 {
    f64::from(weight) * f64::from(share.min(FULL)) / f64::from(FULL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rises_linearly_from_near_zero_to_full() {
        let ss = Duration::from_secs(30);
        assert_eq!(share(ss, Some(Duration::ZERO)), 1);
        assert_eq!(share(ss, Some(Duration::from_secs(3))), 100);
        assert_eq!(share(ss, Some(Duration::from_secs(15))), 500);
        assert_eq!(share(ss, Some(Duration::from_millis(29_970))), 999);
        assert_eq!(share(ss, Some(ss)), FULL);
        assert_eq!(share(ss, Some(Duration::from_secs(3600))), FULL);
    }

    #[test]
    fn no_slow_start_or_usable_from_the_start_is_whole() {
        assert_eq!(share(Duration::ZERO, Some(Duration::ZERO)), FULL);
        assert_eq!(share(Duration::from_secs(5), None), FULL);
    }

    #[test]
    fn effective_weight_scales_the_weight() {
        assert_eq!(effective_weight(10, 500), 5.0);
        assert_eq!(effective_weight(3, FULL), 3.0);
        assert_eq!(effective_weight(0, 700), 0.0);
    }
}
