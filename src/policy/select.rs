//! Server choice (CONTRACT section 3, step 4): honour the sticky cookie when
//! its server can take the request, otherwise balance over the best tier of
//! servers. Pure: the caller passes each server's admin state, weight, backup
//! flag and health, and a key (round-robin counter, client hash or random).

use super::slowstart::FULL;
use crate::config::{AdminState, Balance};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What the selector needs to know about one server.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub state: AdminState,
    pub weight: u32,
    pub backup: bool,
    pub up: bool,
    /// A stable per-server seed for source hashing (from the server id).
    pub seed: u64,
    /// At its `max_conns`: balancing passes it over (a sticky request
    /// waits for it instead).
    pub full: bool,
    /// Its slow-start share of its weight, in thousandths
    /// ([`crate::policy::slowstart::FULL`] once it is over).
    pub share: u16,
}

impl Candidate {
    /// A server with no limit reached and no slow start under way.
    pub fn new(state: AdminState, weight: u32, backup: bool, up: bool, seed: u64) -> Candidate {
        Candidate {
            state,
            weight,
            backup,
            up,
            seed,
            full: false,
            share: FULL,
        }
    }
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
    !c.full && in_tier_by_state(c, tier)
}

/// [`in_tier`] whether or not the server is full.
fn in_tier_by_state(c: &Candidate, tier: Tier) -> bool {
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
    balance_among(servers, balance, key, bypass, exclude, in_tier)
}

/// [`balance`] with the servers of a tier given by `member`.
fn balance_among(
    servers: &[Candidate],
    balance: Balance,
    key: u64,
    bypass: bool,
    exclude: &[usize],
    member: fn(&Candidate, Tier) -> bool,
) -> Option<(usize, Tier)> {
    let tiers: &[Tier] = if bypass {
        &[Tier::Ready, Tier::Backup, Tier::Maint, Tier::Drain]
    } else {
        &[Tier::Ready, Tier::Backup, Tier::Drain]
    };
    // The tier is the first one with a server in it by its state: a tier
    // whose servers are all full is not replaced by the next (backups and
    // draining servers do not take the overflow of full ready servers; the
    // request waits for one of them).
    tiers
        .iter()
        .find_map(|&tier| {
            let present = (0..servers.len())
                .any(|i| in_tier_by_state(&servers[i], tier) && !exclude.contains(&i));
            if !present {
                return None;
            }
            let eligible = |i: &usize| member(&servers[*i], tier) && !exclude.contains(i);
            let pick = match balance {
                Balance::RoundRobin | Balance::Random => weighted(servers, key, eligible),
                Balance::SourceHash => rendezvous(servers, key, eligible),
            };
            Some(pick.map(|i| (i, tier)))
        })
        .flatten()
}

/// Weight of a server inside its tier: last-resort tiers ignore weight 0.
fn effective_weight(c: &Candidate) -> u64 {
    u64::from(c.weight.max(1))
}

/// The server at position `key mod total weight` in the weighted sequence.
/// While a server of it is in slow start, weights count in thousandths of
/// their share and the key is mixed, so that its small share is spread
/// over time rather than taken in one run.
fn weighted(servers: &[Candidate], key: u64, eligible: impl Fn(&usize) -> bool) -> Option<usize> {
    let ramping = (0..servers.len())
        .filter(&eligible)
        .any(|i| servers[i].share < FULL);
    let weight = |c: &Candidate| {
        if ramping {
            effective_weight(c) * u64::from(c.share.clamp(1, FULL))
        } else {
            effective_weight(c)
        }
    };
    let seq = || {
        (0..servers.len())
            .filter(&eligible)
            .map(|i| (i, weight(&servers[i])))
    };
    let total: u64 = seq().map(|(_, w)| w).sum();
    if total == 0 {
        return None;
    }
    let key = if ramping { mix(key) } else { key };
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

/// A 64-bit key of a client address for source hashing.
pub fn ip_key(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => {
            let n = u128::from(v6);
            (n >> 64) as u64 ^ n as u64
        }
    }
}

/// The key that drives a balancing choice: the backend's round-robin
/// counter (advanced), a random number, or the client's address hashed.
pub fn balance_key(balance: Balance, counter: &AtomicU64, client: IpAddr) -> u64 {
    match balance {
        Balance::RoundRobin => counter.fetch_add(1, Relaxed),
        Balance::Random => rand::random(),
        Balance::SourceHash => mix(ip_key(client)),
    }
}

/// The outcome of [`choose`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub pick: Option<(usize, Tier)>,
    /// Why the sticky server was passed over, on a first attempt.
    pub redispatch: Option<Redispatch>,
    /// No pick because the servers that could take the request are full:
    /// it waits in the backend's queue, for this one server (its sticky
    /// server) or for any.
    pub wait: Option<Wait>,
}

/// What a queued request waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Its sticky server: it is not moved to another because of load.
    Server(usize),
    /// Any server balancing may give it ([`queue_targets`]).
    Any,
}

/// Whether a server with `inflight` requests may take one more under its
/// `max_conns` (0: no limit).
pub fn below_max(inflight: u64, max_conns: u64) -> bool {
    max_conns == 0 || inflight < max_conns
}

/// The servers a request waiting for any server may be given when one of
/// them has room: those of the first tier balancing would use if none were
/// full (bits as [`up_bit`]).
pub fn queue_targets(servers: &[Candidate]) -> u64 {
    [Tier::Ready, Tier::Backup, Tier::Drain]
        .iter()
        .map(|&tier| {
            (0..servers.len())
                .filter(|&i| in_tier_by_state(&servers[i], tier))
                .filter_map(up_bit)
                .fold(0, |m, b| m | b)
        })
        .find(|&m| m != 0)
        .unwrap_or(0)
}

/// Any choice: the sticky server (`cookie`) if it may take the request and
/// was not tried, else the best tier of the servers not in `tried`.
/// `bypass` says whether the request bypasses maintenance (asked only when
/// it matters: it may verify a token); `key` gives the balancing key (asked
/// only when balancing).
pub fn choose(
    servers: &[Candidate],
    cookie: Option<usize>,
    tried: &[usize],
    balance_by: Balance,
    key: impl FnOnce() -> u64,
    mut bypass: impl FnMut() -> bool,
) -> Choice {
    let mut redispatch = None;
    if let Some(s) = cookie.filter(|s| !tried.contains(s) && *s < servers.len()) {
        let bypassing = servers[s].state == AdminState::Maint && bypass();
        match sticky_target(&servers[s], bypassing) {
            Ok(()) if servers[s].full => {
                return Choice {
                    pick: None,
                    redispatch: None,
                    wait: Some(Wait::Server(s)),
                }
            }
            Ok(()) => {
                return Choice {
                    pick: Some((s, Tier::Sticky)),
                    redispatch: None,
                    wait: None,
                }
            }
            Err(reason) if tried.is_empty() => redispatch = Some(reason),
            Err(_) => {}
        }
    }
    let key = key();
    let mut pick = balance(servers, balance_by, key, false, tried);
    // Only when no ready server is left does a bypassing request need to
    // know it may also use servers in maint.
    if !matches!(pick, Some((_, Tier::Ready | Tier::Backup))) && bypass() {
        pick = balance(servers, balance_by, key, true, tried).or(pick);
    }
    // Nothing with room: wait when a server could take it but is full.
    let wait = (pick.is_none()
        && servers.iter().any(|c| c.full)
        && balance_among(servers, balance_by, key, false, tried, in_tier_by_state).is_some())
    .then_some(Wait::Any);
    Choice {
        pick,
        redispatch,
        wait,
    }
}

/// The common first choices, decided without looking at every server: a
/// cookie naming a server that is `up` (per the backend's `up_mask`) and
/// `ready` or in `drain`; or no cookie, round-robin or random balancing,
/// and the whole `ready` tier up. `None` leaves the choice to [`choose`],
/// which gives the same answer in these cases (`cookie_state` is the
/// state of the cookie's server).
pub fn choose_fast(
    cookie: Option<(usize, AdminState)>,
    ready: Option<&ReadyTier>,
    up_mask: u64,
    balance_by: Balance,
    key: impl FnOnce() -> u64,
) -> Option<(usize, Tier)> {
    if let Some((s, state)) = cookie {
        // The rule of `choose` without a bypass: a server in `maint` is
        // left to it.
        let up = up_bit(s).is_some_and(|bit| up_mask & bit != 0);
        let c = Candidate::new(state, 0, false, up, 0);
        sticky_target(&c, false).ok()?;
        return Some((s, Tier::Sticky));
    }
    if balance_by == Balance::SourceHash {
        return None;
    }
    let tier = ready.filter(|t| up_mask & t.mask == t.mask)?;
    Some((tier.pick(key()), Tier::Ready))
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
            let share = f64::from(servers[i].share.clamp(1, FULL)) / f64::from(FULL);
            (i, -(effective_weight(&servers[i]) as f64 * share) / u.ln())
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
mod tests;
