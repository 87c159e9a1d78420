//! Unit tests of the server choice.

use super::*;
use AdminState::*;

fn c(state: AdminState, weight: u32, backup: bool, up: bool) -> Candidate {
    Candidate::new(
        state,
        weight,
        backup,
        up,
        weight as u64 * 7919 + backup as u64,
    )
}

/// 1 to `max` servers of any state, weight 0 to 3, some backups, some
/// down, drawn from `seed`.
fn random_servers(seed: u64, max: u64) -> Vec<Candidate> {
    let states = [Ready, Drain, Maint];
    (0..1 + seed % max)
        .map(|i| {
            let bits = mix(seed ^ i);
            c(
                states[(bits % 3) as usize],
                (bits >> 8) as u32 % 4,
                bits >> 16 & 3 == 0,
                bits >> 20 & 7 != 0,
            )
        })
        .collect()
}

fn picks(servers: &[Candidate], bypass: bool) -> Vec<usize> {
    (0..12)
        .filter_map(|k| balance(servers, Balance::RoundRobin, k, bypass, &[]).map(|p| p.0))
        .collect()
}

/// The fast choice, whenever it answers, answers as the full one does,
/// over every mix of states, weights, backups and health of 4 servers.
#[test]
fn fast_choice_agrees_with_full_choice() {
    let mut checked = 0;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..20_000 {
        x = mix(x);
        let servers = random_servers(x, 4);
        let n = servers.len();
        let up_mask = servers
            .iter()
            .enumerate()
            .filter(|(_, c)| c.up)
            .fold(0, |m, (i, _)| m | up_bit(i).unwrap_or(0));
        let ready = ReadyTier::new(&servers);
        let cookie = (x >> 40 & 1 == 1).then_some((x >> 41) as usize % n);
        for balance_by in [Balance::RoundRobin, Balance::Random, Balance::SourceHash] {
            let key = x >> 3;
            let fast = choose_fast(
                cookie.map(|s| (s, servers[s].state)),
                ready.as_ref(),
                up_mask,
                balance_by,
                || key,
            );
            for bypass in [false, true] {
                let full = choose(&servers, cookie, &[], balance_by, || key, || bypass);
                if let Some(f) = fast {
                    assert_eq!(
                        Some(f),
                        full.pick,
                        "{servers:?} cookie {cookie:?} {balance_by:?}"
                    );
                    checked += 1;
                }
            }
        }
    }
    // The fast path answered often enough for the comparison to count.
    assert!(checked > 10_000, "only {checked} fast answers");
}

#[test]
fn full_choice_reports_redispatch_on_first_attempt_only() {
    let s = [c(Maint, 1, false, true), c(Ready, 1, false, true)];
    let first = choose(&s, Some(0), &[], Balance::RoundRobin, || 0, || false);
    assert_eq!(first.pick, Some((1, Tier::Ready)));
    assert_eq!(first.redispatch, Some(Redispatch::Maint));
    // A bypassing request keeps its server in maint.
    let bypassing = choose(&s, Some(0), &[], Balance::RoundRobin, || 0, || true);
    assert_eq!(bypassing.pick, Some((0, Tier::Sticky)));
    let down = [c(Ready, 1, false, false), c(Ready, 1, false, true)];
    let d = choose(&down, Some(0), &[], Balance::RoundRobin, || 0, || false);
    assert_eq!(
        (d.pick, d.redispatch),
        (Some((1, Tier::Ready)), Some(Redispatch::Down))
    );
    let retry = choose(&down, Some(0), &[1], Balance::RoundRobin, || 0, || false);
    assert_eq!((retry.pick, retry.redispatch), (None, None));
}

#[test]
fn balance_keys() {
    let counter = AtomicU64::new(5);
    let ip: IpAddr = "192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
    assert_eq!(balance_key(Balance::RoundRobin, &counter, ip), 5);
    assert_eq!(balance_key(Balance::RoundRobin, &counter, ip), 6);
    let h = balance_key(Balance::SourceHash, &counter, ip);
    assert_eq!(h, mix(ip_key(ip)));
    assert_eq!(counter.load(Relaxed), 7, "source hash leaves the counter");
    let v6: IpAddr = "2001:db8::1".parse().unwrap_or(ip);
    assert_ne!(ip_key(v6), 0);
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
    let mut seen_ready = 0;
    for case in 0..2000u64 {
        let h = mix(case);
        let servers = random_servers(h, 6);
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
        .map(|i| Candidate::new(Ready, 1, false, true, mix(i)))
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

fn full(mut c: Candidate) -> Candidate {
    c.full = true;
    c
}

#[test]
fn full_servers_are_passed_over_then_the_request_waits() {
    let rr = Balance::RoundRobin;
    let s = [full(c(Ready, 1, false, true)), c(Ready, 1, false, true)];
    for k in 0..4 {
        let ch = choose(&s, None, &[], rr, || k, || false);
        assert_eq!((ch.pick, ch.wait), (Some((1, Tier::Ready)), None));
    }
    // Every server that could take it is full: it waits for any.
    let both = [
        full(c(Ready, 1, false, true)),
        full(c(Ready, 1, false, true)),
    ];
    let ch = choose(&both, None, &[], rr, || 0, || false);
    assert_eq!((ch.pick, ch.wait), (None, Some(Wait::Any)));
    // A full ready tier is not replaced by a drain or backup server with
    // room: the request waits for a ready server.
    let tiers = [full(c(Ready, 1, false, true)), c(Drain, 1, false, true)];
    let ch = choose(&tiers, None, &[], rr, || 0, || false);
    assert_eq!((ch.pick, ch.wait), (None, Some(Wait::Any)));
    let backup = [full(c(Ready, 1, false, true)), c(Ready, 1, true, true)];
    let ch = choose(&backup, None, &[], rr, || 0, || false);
    assert_eq!((ch.pick, ch.wait), (None, Some(Wait::Any)));
    // Once the ready server is down, the backup takes it.
    let down = [full(c(Ready, 1, false, false)), c(Ready, 1, true, true)];
    let ch = choose(&down, None, &[], rr, || 0, || false);
    assert_eq!((ch.pick, ch.wait), (Some((1, Tier::Backup)), None));
    // Nothing could take it even with room: no wait.
    let down = [full(c(Ready, 1, false, false)), c(Maint, 1, false, true)];
    let ch = choose(&down, None, &[], rr, || 0, || false);
    assert_eq!((ch.pick, ch.wait), (None, None));
}

#[test]
fn a_sticky_request_waits_for_its_full_server_and_is_not_moved() {
    let s = [full(c(Ready, 1, false, true)), c(Ready, 1, false, true)];
    let ch = choose(&s, Some(0), &[], Balance::RoundRobin, || 0, || false);
    assert_eq!((ch.pick, ch.wait), (None, Some(Wait::Server(0))));
    // A sticky server it may not use is redispatched as before.
    let m = [full(c(Maint, 1, false, true)), c(Ready, 1, false, true)];
    let ch = choose(&m, Some(0), &[], Balance::RoundRobin, || 0, || false);
    assert_eq!(ch.pick, Some((1, Tier::Ready)));
    assert_eq!(ch.redispatch, Some(Redispatch::Maint));
}

#[test]
fn below_max_and_queue_targets() {
    assert!(below_max(4, 5) && !below_max(5, 5) && below_max(1_000, 0));
    let s = [
        c(Ready, 1, false, true),
        full(c(Ready, 1, false, true)),
        c(Drain, 1, false, true),
        c(Ready, 1, false, false),
    ];
    assert_eq!(queue_targets(&s), 0b011, "the ready tier, full or not");
    let drain_only = [c(Maint, 1, false, true), c(Drain, 1, false, true)];
    assert_eq!(queue_targets(&drain_only), 0b10);
    assert_eq!(queue_targets(&[c(Ready, 1, false, false)]), 0);
}

#[test]
fn a_slow_starting_server_gets_its_share_spread_out() {
    let mut s = [c(Ready, 1, false, true), c(Ready, 1, false, true)];
    s[1].share = 100;
    let picks: Vec<usize> = (0..11_000)
        .filter_map(|k| balance(&s, Balance::RoundRobin, k, false, &[]).map(|p| p.0))
        .collect();
    let to_slow = picks.iter().filter(|&&i| i == 1).count();
    assert!((800..1200).contains(&to_slow), "{to_slow} of 11000");
    // Spread: every run of 200 consecutive picks holds some of each.
    assert!(picks.chunks(200).all(|w| w.contains(&0) && w.contains(&1)));
    // Source hashing weighs the share as well.
    let hashed = (0..4000u64)
        .filter(|&k| balance(&s, Balance::SourceHash, mix(k), false, &[]).map(|p| p.0) == Some(1))
        .count();
    assert!(hashed < 800, "{hashed} of 4000");
}
