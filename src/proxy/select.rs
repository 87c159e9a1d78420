//! Server choice (CONTRACT section 3, step 4): honour the sticky cookie when
//! its server can take the request, otherwise balance over the best tier of
//! servers. Pure: the caller passes each server's admin state, weight, backup
//! flag and health, and a key (round-robin counter, client hash or random).

use crate::config::{AdminState, Balance};

/// What the selector needs to know about one server.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub state: AdminState,
    pub weight: u32,
    pub backup: bool,
    pub up: bool,
    /// A stable per-server seed for source hashing (from the server id).
    pub seed: u64,
}

/// Why a server was picked, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// The sticky cookie's server.
    Sticky,
    /// A healthy `ready` server.
    Ready,
    /// A healthy `ready` backup server: no regular one was left.
    Backup,
    /// A healthy `drain` server: the last resort.
    Drain,
    /// A healthy `maint` server, for a request that bypasses maintenance.
    Maint,
}

/// Why a sticky cookie could not be honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redispatch {
    Down,
    Maint,
}

impl Redispatch {
    pub fn as_str(self) -> &'static str {
        match self {
            Redispatch::Down => "down",
            Redispatch::Maint => "maint",
        }
    }
}

/// Whether the sticky server `c` may take a request; `bypass` is whether
/// the request bypasses maintenance (operators test a server in `maint`).
pub fn sticky_target(c: &Candidate, bypass: bool) -> Result<(), Redispatch> {
    if !c.up {
        return Err(Redispatch::Down);
    }
    match c.state {
        AdminState::Ready | AdminState::Drain => Ok(()),
        AdminState::Maint if bypass => Ok(()),
        AdminState::Maint => Err(Redispatch::Maint),
    }
}

fn in_tier(c: &Candidate, tier: Tier) -> bool {
    c.up && match tier {
        Tier::Ready => c.state == AdminState::Ready && !c.backup && c.weight > 0,
        Tier::Backup => c.state == AdminState::Ready && c.backup && c.weight > 0,
        Tier::Drain => c.state == AdminState::Drain,
        Tier::Maint => c.state == AdminState::Maint,
        Tier::Sticky => false,
    }
}

/// Balance over the first non-empty tier, skipping the servers in `exclude`
/// (already tried for this request). `key` drives the choice: a round-robin
/// counter, a hash of the client address, or a random number.
pub fn balance(
    servers: &[Candidate],
    balance: Balance,
    key: u64,
    bypass: bool,
    exclude: &[usize],
) -> Option<(usize, Tier)> {
    let tiers: &[Tier] = if bypass {
        &[Tier::Ready, Tier::Backup, Tier::Maint, Tier::Drain]
    } else {
        &[Tier::Ready, Tier::Backup, Tier::Drain]
    };
    tiers.iter().find_map(|&tier| {
        let eligible = |i: &usize| in_tier(&servers[*i], tier) && !exclude.contains(i);
        let pick = match balance {
            Balance::RoundRobin | Balance::Random => weighted(servers, key, eligible),
            Balance::SourceHash => rendezvous(servers, key, eligible),
        };
        pick.map(|i| (i, tier))
    })
}

/// Weight of a server inside its tier: last-resort tiers ignore weight 0.
fn effective_weight(c: &Candidate) -> u64 {
    u64::from(c.weight.max(1))
}

/// The server at position `key mod total weight` in the weighted sequence.
fn weighted(servers: &[Candidate], key: u64, eligible: impl Fn(&usize) -> bool) -> Option<usize> {
    let seq = || {
        (0..servers.len())
            .filter(&eligible)
            .map(|i| (i, effective_weight(&servers[i])))
    };
    let total: u64 = seq().map(|(_, w)| w).sum();
    if total == 0 {
        return None;
    }
    at_weight(seq(), key % total)
}

/// The server whose share of the weighted sequence `(server, weight)`
/// holds position `at`.
fn at_weight(seq: impl Iterator<Item = (usize, u64)>, mut at: u64) -> Option<usize> {
    for (i, w) in seq {
        if at < w {
            return Some(i);
        }
        at -= w;
    }
    None
}

/// A backend's first tier as its admin state makes it: the `ready`,
/// non-backup servers with a weight, in order. Built with each snapshot, so
/// that a request with no cookie to honour and nothing tried yet, while
/// every one of these servers is up (the common case), is balanced without
/// looking at the others: [`ReadyTier::pick`] then gives what [`balance`]
/// would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyTier {
    /// `(server, weight)` in server order.
    servers: Vec<(usize, u64)>,
    total: u64,
    /// One bit per server of the tier, to test against the backend's
    /// [`up_bit`]s.
    pub mask: u64,
}

/// A server's bit in its backend's up mask; `None` past the 64th server
/// (those are only ever balanced by [`balance`]).
pub fn up_bit(server: usize) -> Option<u64> {
    u32::try_from(server).ok().and_then(|s| 1u64.checked_shl(s))
}

impl ReadyTier {
    /// The tier of `servers` (their `up` is not looked at); `None` when it
    /// is empty or a server of it has no up bit.
    pub fn new(servers: &[Candidate]) -> Option<ReadyTier> {
        let up = |c: &Candidate| Candidate { up: true, ..*c };
        let mut tier = ReadyTier {
            servers: Vec::new(),
            total: 0,
            mask: 0,
        };
        for (i, c) in servers.iter().enumerate() {
            if in_tier(&up(c), Tier::Ready) {
                let w = effective_weight(c);
                tier.servers.push((i, w));
                tier.total += w;
                tier.mask |= up_bit(i)?;
            }
        }
        (tier.total > 0).then_some(tier)
    }

    /// The server `key` picks, as [`balance`] with round-robin or random
    /// keys picks it while the whole tier is up and nothing is excluded.
    pub fn pick(&self, key: u64) -> usize {
        at_weight(self.servers.iter().copied(), key % self.total).unwrap_or(self.servers[0].0)
    }
}

/// Weighted rendezvous hashing: each client key ranks every server the same
/// way on every instance, so removing a server moves only its own clients.
fn rendezvous(servers: &[Candidate], key: u64, eligible: impl Fn(&usize) -> bool) -> Option<usize> {
    (0..servers.len())
        .filter(&eligible)
        .map(|i| {
            let h = mix(key ^ servers[i].seed);
            // A uniform value in (0, 1], turned into a weighted score.
            let u = ((h >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
            (i, -(effective_weight(&servers[i]) as f64) / u.ln())
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| i)
}

/// A 64-bit finaliser (splitmix64): spreads similar keys apart.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use AdminState::*;

    fn c(state: AdminState, weight: u32, backup: bool, up: bool) -> Candidate {
        Candidate {
            state,
            weight,
            backup,
            up,
            seed: weight as u64 * 7919 + backup as u64,
        }
    }

    fn picks(servers: &[Candidate], bypass: bool) -> Vec<usize> {
        (0..12)
            .filter_map(|k| balance(servers, Balance::RoundRobin, k, bypass, &[]).map(|p| p.0))
            .collect()
    }

    #[test]
    fn round_robin_spreads_by_weight() {
        let s = [c(Ready, 1, false, true), c(Ready, 2, false, true)];
        let p = picks(&s, false);
        assert_eq!(p.iter().filter(|&&i| i == 0).count(), 4);
        assert_eq!(p.iter().filter(|&&i| i == 1).count(), 8);
    }

    #[test]
    fn drain_weight_zero_down_and_backup_take_no_new_users() {
        let s = [
            c(Drain, 1, false, true),
            c(Ready, 0, false, true),
            c(Ready, 1, false, false),
            c(Ready, 1, true, true),
            c(Ready, 1, false, true),
        ];
        assert!(picks(&s, false).iter().all(|&i| i == 4));
    }

    #[test]
    fn backup_then_drain_as_last_resort() {
        let mut s = [
            c(Drain, 1, false, true),
            c(Ready, 1, true, true),
            c(Ready, 1, false, false),
        ];
        assert_eq!(
            balance(&s, Balance::RoundRobin, 0, false, &[]),
            Some((1, Tier::Backup))
        );
        s[1].up = false;
        assert_eq!(
            balance(&s, Balance::RoundRobin, 0, false, &[]),
            Some((0, Tier::Drain))
        );
        s[0].up = false;
        assert_eq!(balance(&s, Balance::RoundRobin, 0, false, &[]), None);
    }

    #[test]
    fn maint_only_for_bypassing_requests_and_after_ready() {
        let s = [c(Maint, 1, false, true), c(Drain, 1, false, true)];
        assert_eq!(
            balance(&s, Balance::RoundRobin, 0, false, &[]),
            Some((1, Tier::Drain))
        );
        assert_eq!(
            balance(&s, Balance::RoundRobin, 0, true, &[]),
            Some((0, Tier::Maint))
        );
        let s = [c(Maint, 1, false, true), c(Ready, 1, false, true)];
        assert!(picks(&s, true).iter().all(|&i| i == 1));
    }

    #[test]
    fn exclude_skips_tried_servers() {
        let s = [c(Ready, 1, false, true), c(Ready, 1, false, true)];
        for k in 0..5 {
            assert_eq!(
                balance(&s, Balance::RoundRobin, k, false, &[0]),
                Some((1, Tier::Ready))
            );
        }
        assert_eq!(balance(&s, Balance::RoundRobin, 0, false, &[0, 1]), None);
    }

    /// The ready tier picks what `balance` picks whenever every one of
    /// its servers is up, over many mixes of states, weights and keys.
    #[test]
    fn ready_tier_picks_as_balance_does() {
        let states = [Ready, Drain, Maint];
        let mut seen_ready = 0;
        for case in 0..2000u64 {
            let h = mix(case);
            let n = 1 + (h % 6) as usize;
            let servers: Vec<Candidate> = (0..n)
                .map(|i| {
                    let bits = mix(h ^ i as u64);
                    c(
                        states[(bits % 3) as usize],
                        (bits >> 8) as u32 % 4,
                        bits >> 16 & 3 == 0,
                        bits >> 20 & 7 != 0,
                    )
                })
                .collect();
            let tier = ReadyTier::new(&servers);
            let all_up = servers
                .iter()
                .enumerate()
                .all(|(i, s)| s.up || tier.as_ref().is_none_or(|t| t.mask & 1 << i == 0));
            let Some(tier) = tier.filter(|_| all_up) else {
                continue;
            };
            seen_ready += 1;
            for key in 0..12 {
                let k = mix(key ^ h);
                assert_eq!(
                    balance(&servers, Balance::RoundRobin, k, false, &[]),
                    Some((tier.pick(k), Tier::Ready)),
                    "case {case}, key {k}: {servers:?}"
                );
            }
        }
        assert!(seen_ready > 300, "only {seen_ready} cases had a ready tier");
        // No ready server: no tier; past the 64th server: no bit.
        assert_eq!(ReadyTier::new(&[c(Drain, 1, false, true)]), None);
        let many: Vec<Candidate> = (0..65).map(|_| c(Ready, 1, false, true)).collect();
        assert_eq!(ReadyTier::new(&many), None);
        assert_eq!(ReadyTier::new(&many[..64]).map(|t| t.mask), Some(u64::MAX));
    }

    #[test]
    fn sticky_rules() {
        assert_eq!(sticky_target(&c(Ready, 0, false, true), false), Ok(()));
        assert_eq!(sticky_target(&c(Drain, 1, false, true), false), Ok(()));
        assert_eq!(
            sticky_target(&c(Maint, 1, false, true), false),
            Err(Redispatch::Maint)
        );
        assert_eq!(sticky_target(&c(Maint, 1, false, true), true), Ok(()));
        assert_eq!(
            sticky_target(&c(Ready, 1, false, false), true),
            Err(Redispatch::Down)
        );
    }

    #[test]
    fn source_hash_is_stable_and_moves_only_the_removed_servers_clients() {
        let mut s: Vec<Candidate> = (0..4)
            .map(|i| Candidate {
                state: Ready,
                weight: 1,
                backup: false,
                up: true,
                seed: mix(i),
            })
            .collect();
        let before: Vec<usize> = (0..400u64)
            .map(|k| {
                balance(&s, Balance::SourceHash, mix(k), false, &[])
                    .unwrap()
                    .0
            })
            .collect();
        for i in 0..4 {
            let n = before.iter().filter(|&&b| b == i).count();
            assert!(n > 50, "server {i} got only {n} of 400 clients");
        }
        s[2].up = false;
        for (k, &b) in before.iter().enumerate() {
            let now = balance(&s, Balance::SourceHash, mix(k as u64), false, &[])
                .unwrap()
                .0;
            if b != 2 {
                assert_eq!(now, b, "client {k} moved although its server stayed");
            }
        }
    }
}
