//! SMS-pumping heuristics: the shape of the traffic rather than its rate.
//!
//! Run after the rate limits, on requests still allowed. Velocity observations (prefix,
//! adjacency, IP spread) and conversion-rate sends record every attempt that reaches
//! them. Sends counted for country budgets and spend are *reserved*: added and read in
//! one atomic store operation, and given back ([`give_back`]) when the request is
//! finally refused — so concurrent requests on several instances can never overrun a
//! budget (each sees every reservation made before it). Numbers that verified recently
//! skip the heuristics. An enforced heuristic with `block_for` also blocks its key (prefix,
//! country, IP) for a period that doubles with each repeat offence.

use std::time::Duration;

use super::{Facts, Hit, Outcome, Reason};
use crate::clock::Timestamp;
use crate::phone::Destination;
use crate::providers::RequestKind;
use crate::rules::{subnet_of, Check, HeuristicRule, KeyKind, Mode, RuleSet, Skip};
use crate::store::{Entity, Flag, LimitKey, Store, StoreError, WindowOp};

/// Key namespaces, mixed into rule ids so that one rule's several kinds of state never
/// share a key.
const VERIFIED: u64 = 0x5645_5249_4649_4544;
const BLOCK: u64 = 0x424c_4f43_4b00_0000;
const STRIKE: u64 = 0x5354_5249_4b45_0000;
const NUMBERS: u64 = 0x4e55_4d42_4552_5300;
const HOURLY: u64 = 0x484f_5552_4c59_0000;
const DAILY: u64 = 0x4441_494c_5900_0000;
/// The rule id of "this number verified recently".
const TRUST: u64 = 0x5452_5553_5400_0000;

/// Money is summed in millionths.
const MICRO: f64 = 1_000_000.0;
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
/// Distinct members kept per window when the rule sets no tighter bound.
const DEFAULT_CAP: u16 = 256;

/// The estimated cost of a request: price per segment × segments, for every valid recipient.
pub fn cost(rules: &RuleSet, facts: &Facts<'_>) -> Option<f64> {
    // A code check sends no message.
    if facts.kind == RequestKind::VerifyCheck {
        return None;
    }
    let prices = rules.prices.as_ref()?;
    Some(
        facts
            .recipients
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|d| prices.per_segment(d.country()) * f64::from(facts.segments.max(1)))
            .sum(),
    )
}

fn country_member(d: &Destination) -> u64 {
    d.country().map_or(0, |c| {
        let b = c.as_str().as_bytes();
        (u64::from(b[0]) << 8) | u64::from(b[1])
    })
}

fn cap_for(limit: Option<u64>) -> u16 {
    limit.map_or(DEFAULT_CAP, |l| {
        u16::try_from(l.saturating_add(1)).unwrap_or(u16::MAX)
    })
}

/// The key a heuristic blocks for one recipient (or the request), when it blocks.
fn block_entity<'f>(
    h: &HeuristicRule,
    d: Option<&Destination>,
    facts: &Facts<'f>,
) -> Option<Entity<'f>> {
    match &h.check {
        Check::PrefixVelocity { drop, .. } => {
            d.map(|d| Entity::Prefix(d.prefix(drop.iter().copied().max().unwrap_or(3))))
        }
        Check::AdjacentNumbers { distance, .. } => {
            d.map(|d| Entity::Prefix(d.prefix(neighbourhood_drop(*distance))))
        }
        Check::ConversionRate { key, .. } => d.and_then(|d| destination_entity(*key, d)),
        Check::CountryBudget { .. } => d.and_then(|d| d.country().map(Entity::Country)),
        Check::IpSpread { key, .. } => ip_entity(*key, facts),
        Check::SpendBudget { .. } => None,
    }
}

fn destination_entity<'f>(key: KeyKind, d: &Destination) -> Option<Entity<'f>> {
    match key {
        KeyKind::Prefix { drop } => Some(Entity::Prefix(d.prefix(drop))),
        KeyKind::Country => d.country().map(Entity::Country),
        _ => None,
    }
}

fn ip_entity<'f>(key: KeyKind, facts: &Facts<'f>) -> Option<Entity<'f>> {
    match key {
        KeyKind::Ip => facts.ip.map(Entity::Ip),
        KeyKind::Subnet { v4, v6 } => facts.ip.map(|ip| Entity::Subnet(subnet_of(ip, v4, v6))),
        _ => None,
    }
}

/// Digits to drop so that numbers within `distance` mostly share a prefix.
fn neighbourhood_drop(distance: u64) -> u32 {
    (distance.saturating_mul(10))
        .checked_ilog10()
        .map_or(1, |l| l + 1)
        .clamp(1, 12)
}

fn label(h: &HeuristicRule, e: &Entity<'_>) -> String {
    let what = match e {
        Entity::Prefix(p) => format!("prefix +{p}"),
        Entity::Country(c) => format!("country {c}"),
        Entity::Ip(ip) => format!("ip {ip}"),
        Entity::Subnet(n) => format!("subnet {n}"),
        other => format!("{other:?}"),
    };
    format!("{} {what}", h.name)
}

/// The per-recipient observations of one heuristic, and the ops recorded only on allow.
struct Plan<'f> {
    /// (heuristic index, recipient, op): read now, committed now when `commit`.
    now: Vec<(usize, Option<usize>, WindowOp<'f>)>,
    /// Read as if added; sends (amount > 0) are added at once when committing — conversion
    /// attempts for good, budget sends as reservations that a refusal gives back.
    on_allow: Vec<(usize, Option<usize>, WindowOp<'f>)>,
}

/// Evaluates every heuristic; fires hits into `out`; returns the budget reservations to
/// give back if the request is finally refused.
pub(super) async fn evaluate<'f>(
    rules: &RuleSet,
    store: &Store,
    facts: &Facts<'f>,
    skips: &[Skip],
    now: Timestamp,
    commit: bool,
    out: &mut Outcome,
) -> Result<Vec<WindowOp<'f>>, StoreError> {
    let active: Vec<usize> = (0..rules.heuristics.len())
        .filter(|&i| rules.heuristics[i].kinds.contains(&facts.kind))
        .collect();
    if active.is_empty() {
        return Ok(Vec::new());
    }
    let dests: Vec<Option<&Destination>> = facts
        .recipients
        .iter()
        .map(|r| r.as_ref().ok().filter(|d| d.is_valid()))
        .collect();

    // Recently verified numbers are trusted, and auto-blocks may be in force: both are
    // flags, read in one store operation (one round trip on Redis).
    let trust_keys: Vec<LimitKey<'f>> = if rules.trust_verified.is_some() {
        dests
            .iter()
            .map(|d| LimitKey {
                rule: TRUST,
                entity: Entity::Number(d.map_or(0, Destination::digits)),
            })
            .collect()
    } else {
        Vec::new()
    };
    let listed =
        |h: &HeuristicRule, i: usize| skips.get(i).is_some_and(|s| s.skips_heuristic(&h.name));
    let mut block_keys = Vec::new();
    for &hi in &active {
        let h = &rules.heuristics[hi];
        if h.block_for.is_none() {
            continue;
        }
        match &h.check {
            Check::IpSpread { .. } => {
                if let Some(e) = block_entity(h, None, facts) {
                    block_keys.push((
                        hi,
                        None,
                        LimitKey {
                            rule: h.id ^ BLOCK,
                            entity: e,
                        },
                    ));
                }
            }
            _ => {
                for (i, d) in dests.iter().enumerate() {
                    if let (Some(d), false) = (d, listed(h, i)) {
                        if let Some(e) = block_entity(h, Some(d), facts) {
                            block_keys.push((
                                hi,
                                Some(i),
                                LimitKey {
                                    rule: h.id ^ BLOCK,
                                    entity: e,
                                },
                            ));
                        }
                    }
                }
            }
        }
    }
    // A heuristic whose key is blocked already answers with the block; its windows still
    // record the attempt (an attack that goes on stays visible), but it does not fire
    // again, which would extend the block with every refused attempt.
    let mut trusted = vec![false; dests.len()];
    let mut blocked = std::collections::HashSet::new();
    let keys: Vec<LimitKey<'f>> = trust_keys
        .iter()
        .copied()
        .chain(block_keys.iter().map(|(_, _, k)| *k))
        .collect();
    if !keys.is_empty() {
        let mut flags = store.flags(&keys, now).await?;
        let block_flags = flags.split_off(trust_keys.len());
        for (i, f) in flags.into_iter().enumerate() {
            trusted[i] = f.is_some() && dests[i].is_some();
        }
        for ((hi, at, _), flag) in block_keys.iter().zip(block_flags) {
            // A trusted number skips the heuristics, their blocks included.
            if flag.is_some() && !at.is_some_and(|i| trusted[i]) {
                blocked.insert(*hi);
                let h = &rules.heuristics[*hi];
                out.fire(
                    h.mode,
                    Hit {
                        reason: Reason::AutoBlocked,
                        rule: h.name.clone(),
                        recipient: *at,
                    },
                    None,
                );
            }
        }
    }

    let skipped = |h: &HeuristicRule, i: usize| trusted[i] || listed(h, i);
    let all_skipped =
        |h: &HeuristicRule| (0..dests.len()).all(|i| dests[i].is_none() || skipped(h, i));

    // Sized for the usual plan (at most four windows per heuristic and recipient), so
    // that building it does not reallocate.
    let expected = active.len() * dests.len() * 4;
    let mut plan = Plan {
        now: Vec::with_capacity(expected),
        on_allow: Vec::with_capacity(expected),
    };
    for &hi in &active {
        let h = &rules.heuristics[hi];
        match &h.check {
            Check::PrefixVelocity {
                drop,
                window,
                max_distinct,
                ..
            } => {
                for (i, d) in dests.iter().enumerate() {
                    let Some(d) = d.filter(|_| !skipped(h, i)) else {
                        continue;
                    };
                    for &n in drop {
                        plan.now.push((
                            hi,
                            Some(i),
                            WindowOp {
                                key: LimitKey {
                                    rule: h.id.wrapping_add(u64::from(n)),
                                    entity: Entity::Prefix(d.prefix(n)),
                                },
                                window: *window,
                                amount: 1,
                                member: Some(d.digits()),
                                cap: cap_for(*max_distinct),
                                near: None,
                            },
                        ));
                    }
                }
            }
            Check::AdjacentNumbers {
                distance, window, ..
            } => {
                for (i, d) in dests.iter().enumerate() {
                    let Some(d) = d.filter(|_| !skipped(h, i)) else {
                        continue;
                    };
                    plan.now.push((
                        hi,
                        Some(i),
                        WindowOp {
                            key: LimitKey {
                                rule: h.id,
                                entity: Entity::Prefix(d.prefix(neighbourhood_drop(*distance))),
                            },
                            window: *window,
                            amount: 1,
                            member: Some(d.digits()),
                            cap: DEFAULT_CAP,
                            near: Some(*distance),
                        },
                    ));
                }
            }
            Check::ConversionRate { key, window, .. } => {
                for (i, d) in dests.iter().enumerate() {
                    let Some(d) = d.filter(|_| !skipped(h, i)) else {
                        continue;
                    };
                    let Some(e) = destination_entity(*key, d) else {
                        continue;
                    };
                    let op = |rule, amount| WindowOp {
                        key: LimitKey { rule, entity: e },
                        window: *window,
                        amount,
                        member: None,
                        cap: 0,
                        near: None,
                    };
                    plan.on_allow.push((hi, Some(i), op(h.id, 1)));
                    plan.on_allow.push((hi, Some(i), op(h.id ^ VERIFIED, 0)));
                }
            }
            Check::CountryBudget {
                window,
                baseline_window,
                ..
            } => {
                for (i, d) in dests.iter().enumerate() {
                    let Some(c) = d.filter(|_| !skipped(h, i)).and_then(Destination::country)
                    else {
                        continue;
                    };
                    let e = Entity::Country(c);
                    plan.on_allow.push((
                        hi,
                        Some(i),
                        WindowOp {
                            key: LimitKey {
                                rule: h.id,
                                entity: e,
                            },
                            window: *window,
                            amount: 1,
                            member: None,
                            cap: 0,
                            near: None,
                        },
                    ));
                    plan.on_allow.push((
                        hi,
                        Some(i),
                        WindowOp {
                            key: LimitKey {
                                rule: h.id ^ VERIFIED,
                                entity: e,
                            },
                            window: *baseline_window,
                            amount: 0,
                            member: None,
                            cap: 0,
                            near: None,
                        },
                    ));
                }
            }
            Check::SpendBudget { .. } => {
                let Some(prices) = &rules.prices else {
                    continue;
                };
                for (i, d) in dests.iter().enumerate() {
                    let Some(d) = d else { continue };
                    let micros = (prices.per_segment(d.country())
                        * f64::from(facts.segments.max(1))
                        * MICRO)
                        .round() as u64;
                    let country = d.country().map_or(Entity::Global, Entity::Country);
                    for (ns, window) in [(HOURLY, HOUR), (DAILY, DAY)] {
                        for entity in [Entity::Global, country] {
                            plan.on_allow.push((
                                hi,
                                Some(i),
                                WindowOp {
                                    key: LimitKey {
                                        rule: h.id ^ ns,
                                        entity,
                                    },
                                    window,
                                    amount: micros,
                                    member: None,
                                    cap: 0,
                                    near: None,
                                },
                            ));
                        }
                    }
                }
            }
            Check::IpSpread {
                key,
                window,
                max_countries,
                max_numbers,
            } => {
                if all_skipped(h) {
                    continue;
                }
                let Some(e) = ip_entity(*key, facts) else {
                    continue;
                };
                for (i, d) in dests.iter().enumerate() {
                    let Some(d) = d.filter(|_| !skipped(h, i)) else {
                        continue;
                    };
                    if max_countries.is_some() {
                        plan.now.push((
                            hi,
                            Some(i),
                            WindowOp {
                                key: LimitKey {
                                    rule: h.id,
                                    entity: e,
                                },
                                window: *window,
                                amount: 1,
                                member: Some(country_member(d)),
                                cap: cap_for(*max_countries),
                                near: None,
                            },
                        ));
                    }
                    if max_numbers.is_some() {
                        plan.now.push((
                            hi,
                            Some(i),
                            WindowOp {
                                key: LimitKey {
                                    rule: h.id ^ NUMBERS,
                                    entity: e,
                                },
                                window: *window,
                                amount: 1,
                                member: Some(d.digits()),
                                cap: cap_for(*max_numbers),
                                near: None,
                            },
                        ));
                    }
                }
            }
        }
    }

    // Every window in one store operation (one round trip on Redis). Velocity
    // observations are recorded as they are read. Sends are added as they are read too
    // (one atomic operation per window): conversion rates count every attempt — a
    // refused code request is an unverified one too, so a pumping run cannot slip back
    // under the minimum volume by being refused — and budget sends are reservations,
    // given back if the request is refused after all.
    let now_len = plan.now.len();
    let all_ops: Vec<WindowOp<'f>> = plan
        .now
        .iter()
        .chain(&plan.on_allow)
        .map(|(_, _, op)| *op)
        .collect();
    let later_ops = &all_ops[now_len..];
    let commits: Vec<bool> = all_ops
        .iter()
        .enumerate()
        .map(|(k, op)| commit && (k < now_len || op.amount > 0))
        .collect();
    let mut reads = if all_ops.is_empty() {
        Vec::new()
    } else {
        store.windows_each(&all_ops, &commits, now).await?
    };
    let later_reads = reads.split_off(now_len);
    let now_reads = reads;
    let reserved: Vec<WindowOp<'f>> = (0..later_ops.len())
        .filter(|&k| {
            commits[now_len + k]
                && !matches!(
                    rules.heuristics[plan.on_allow[k].0].check,
                    Check::ConversionRate { .. }
                )
        })
        .map(|k| later_ops[k])
        .collect();

    let mut fired: Vec<(usize, Option<usize>, Reason)> = Vec::new();
    for ((hi, at, op), r) in plan.now.iter().zip(&now_reads) {
        let h = &rules.heuristics[*hi];
        let reason = match &h.check {
            Check::PrefixVelocity {
                max_requests,
                max_distinct,
                ..
            } => (max_requests.is_some_and(|m| r.total > m)
                || max_distinct.is_some_and(|m| r.distinct > m))
            .then_some(Reason::PrefixVelocity),
            Check::AdjacentNumbers { max_near, .. } => {
                (r.near >= *max_near).then_some(Reason::AdjacentNumbers)
            }
            Check::IpSpread {
                max_countries,
                max_numbers,
                ..
            } => {
                let numbers = op.key.rule == h.id ^ NUMBERS;
                let limit = if numbers {
                    *max_numbers
                } else {
                    *max_countries
                };
                limit
                    .is_some_and(|m| r.distinct > m)
                    .then_some(Reason::IpSpread)
            }
            _ => None,
        };
        if let Some(reason) = reason {
            fired.push((*hi, *at, reason));
        }
    }
    // Pairs (sends, verified) for conversion and country budgets; spend in fours.
    let mut i = 0;
    while i < plan.on_allow.len() {
        let (hi, at, _) = plan.on_allow[i];
        let h = &rules.heuristics[hi];
        match &h.check {
            Check::ConversionRate {
                min_sends,
                min_rate,
                ..
            } => {
                // The reading already includes this request.
                let (sends, verified) = (later_reads[i].total, later_reads[i + 1].total);
                if sends >= *min_sends && (verified as f64) < min_rate * sends as f64 {
                    fired.push((hi, at, Reason::LowConversion));
                }
                i += 2;
            }
            Check::CountryBudget {
                window,
                baseline_window,
                floor,
                multiplier,
                max,
            } => {
                let (sends, verified) = (later_reads[i].total, later_reads[i + 1].total);
                let scaled = verified as f64 * multiplier * window.as_secs_f64()
                    / baseline_window.as_secs_f64();
                let mut cap = (*floor).max(scaled.ceil() as u64);
                if let Some(m) = max {
                    cap = cap.min(*m);
                }
                if sends > cap {
                    fired.push((hi, at, Reason::CountryBudget));
                }
                i += 2;
            }
            Check::SpendBudget {
                hourly,
                daily,
                country_hourly,
                country_daily,
            } => {
                let budgets = [*hourly, *country_hourly, *daily, *country_daily];
                let over = (0..4).any(|k| {
                    budgets[k]
                        .is_some_and(|b| (later_reads[i + k].total as f64) > (b * MICRO).round())
                });
                if over {
                    fired.push((hi, at, Reason::SpendBudget));
                }
                i += 4;
            }
            _ => i += 1,
        }
    }

    let mut newly_blocked = Vec::new();
    for (hi, at, reason) in fired.into_iter().filter(|(hi, _, _)| !blocked.contains(hi)) {
        let h = &rules.heuristics[hi];
        let enforced = h.mode == Mode::Enforce && !out.shadow_all;
        out.fire(
            h.mode,
            Hit {
                reason,
                rule: h.name.clone(),
                recipient: at,
            },
            None,
        );
        if let (true, true, Some(base)) = (enforced, commit, h.block_for) {
            let d = at.and_then(|i| dests[i]);
            if let Some(e) = block_entity(h, d, facts) {
                // One offence per key per request, however many recipients tripped it.
                if !newly_blocked.contains(&(hi, e)) {
                    newly_blocked.push((hi, e));
                    auto_block(store, h, e, base, now).await?;
                }
            }
        }
    }
    Ok(reserved)
}

/// Blocks `entity` for `base × 2^(offences)`, capped at the rule's `max_block`.
async fn auto_block(
    store: &Store,
    h: &HeuristicRule,
    entity: Entity<'_>,
    base: Duration,
    now: Timestamp,
) -> Result<(), StoreError> {
    let strike_key = LimitKey {
        rule: h.id ^ STRIKE,
        entity,
    };
    let level = store
        .flags(&[strike_key], now)
        .await?
        .pop()
        .flatten()
        .map_or(0, |f| f.level + 1);
    let period = base
        .saturating_mul(1u32 << level.min(16))
        .min(h.max_block.max(base));
    let label = label(h, &entity);
    let until = now.add(period);
    store
        .set_flag(
            LimitKey {
                rule: h.id ^ BLOCK,
                entity,
            },
            Flag {
                until,
                level,
                label: label.clone(),
            },
            now,
        )
        .await?;
    // Offences are remembered for a day past the block, so a repeat doubles it.
    let strike = Flag {
        until: until.add(DAY),
        level,
        label: format!("{label} (offences)"),
    };
    store.set_flag(strike_key, strike, now).await
}

/// Gives back the budget sends a refused request reserved (see the module docs).
pub(super) async fn give_back(
    store: &Store,
    reserved: &[WindowOp<'_>],
    now: Timestamp,
) -> Result<(), StoreError> {
    if reserved.is_empty() {
        return Ok(());
    }
    store.give_back(reserved, now).await
}

/// Records that `dest` verified: conversion and baseline windows, and trust.
pub async fn record_verified(
    rules: &RuleSet,
    store: &Store,
    dest: &Destination,
    now: Timestamp,
) -> Result<(), StoreError> {
    let mut ops = Vec::new();
    for h in &rules.heuristics {
        match &h.check {
            Check::ConversionRate { key, window, .. } => {
                if let Some(e) = destination_entity(*key, dest) {
                    ops.push(WindowOp {
                        key: LimitKey {
                            rule: h.id ^ VERIFIED,
                            entity: e,
                        },
                        window: *window,
                        amount: 1,
                        member: None,
                        cap: 0,
                        near: None,
                    });
                }
            }
            Check::CountryBudget {
                baseline_window, ..
            } => {
                if let Some(c) = dest.country() {
                    ops.push(WindowOp {
                        key: LimitKey {
                            rule: h.id ^ VERIFIED,
                            entity: Entity::Country(c),
                        },
                        window: *baseline_window,
                        amount: 1,
                        member: None,
                        cap: 0,
                        near: None,
                    });
                }
            }
            _ => {}
        }
    }
    if !ops.is_empty() {
        store.windows(&ops, now, true).await?;
    }
    if let Some(trust) = rules.trust_verified {
        let flag = Flag {
            until: now.add(trust),
            level: 0,
            label: "verified".into(),
        };
        store
            .set_flag(
                LimitKey {
                    rule: TRUST,
                    entity: Entity::Number(dest.digits()),
                },
                flag,
                now,
            )
            .await?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "heuristics_tests.rs"]
mod tests;
