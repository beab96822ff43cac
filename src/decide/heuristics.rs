//! SMS-pumping heuristics: the shape of the traffic rather than its rate.
//!
//! Run after the rate limits, on requests still allowed. Velocity observations (prefix,
//! adjacency, IP spread) and conversion-rate sends record every attempt that reaches
//! them. Sends counted for country budgets and spend are *reserved*: added and read in
//! one atomic store operation, and given back ([`give_back`]) when the request is
//! finally refused — so concurrent requests on several instances can never overrun a
//! budget (each sees every reservation made before it). A send the provider does not take
//! sent no code and cost nothing: the handler gives back its conversion sends and budget
//! reservations alike ([`Decision::counted`](super::Decision::counted)). A give-back runs
//! to its end even if the request is dropped meanwhile (its client hung up), and a request
//! dropped between reserving and being decided gives its reservations back all the same
//! ([`Held`]): a client cannot leave a budget charged for sends that never went out. Numbers that
//! verified recently skip the heuristics. An enforced heuristic with `block_for` also blocks its key (prefix,
//! country, IP) for a period that doubles with each repeat offence. Its writes, like a
//! verification's record, run to their end even if the request is dropped ([`Detached`]).

use std::sync::Arc;
use std::time::Duration;

use super::{Facts, Hit, Outcome, Reason};
use crate::clock::Timestamp;
use crate::phone::Destination;
use crate::providers::RequestKind;
use crate::rules::{subnet_of, Check, HeuristicRule, KeyKind, Mode, RuleSet, Skip};
use crate::store::window::Reading;
use crate::store::{Detached, Entity, Flag, Held, LimitKey, Store, StoreError, WindowOp};

/// Key namespaces, mixed into rule ids so that one rule's several kinds of state never
/// share a key.
const VERIFIED: u64 = 0x5645_5249_4649_4544;
const BLOCK: u64 = 0x424c_4f43_4b00_0000;
const STRIKE: u64 = 0x5354_5249_4b45_0000;
const NUMBERS: u64 = 0x4e55_4d42_4552_5300;
const HOURLY: u64 = 0x484f_5552_4c59_0000;
const DAILY: u64 = 0x4441_494c_5900_0000;
/// The spend budget's share of numbers that belong to no country (+800, +870, +979 …).
const NO_COUNTRY: u64 = 0x4e4f_434f_554e_5452;
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
fn block_entity(
    h: &HeuristicRule,
    d: Option<&Destination>,
    facts: &Facts<'_>,
) -> Option<Entity<'static>> {
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

fn destination_entity(key: KeyKind, d: &Destination) -> Option<Entity<'static>> {
    match key {
        KeyKind::Prefix { drop } => Some(Entity::Prefix(d.prefix(drop))),
        KeyKind::Country => d.country().map(Entity::Country),
        _ => None,
    }
}

fn ip_entity(key: KeyKind, facts: &Facts<'_>) -> Option<Entity<'static>> {
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

/// The window operations of every heuristic, in one list for one store call. The
/// operations of one heuristic and recipient are consecutive: one per observation for the
/// velocity checks (prefix, adjacency, IP spread), a (sends, verified) pair for conversion
/// rates and country budgets, four sums for spend. No entity of a window borrows from the
/// request, so that what a request added can outlive it ([`Evaluated::reserved`]).
struct Plan {
    ops: Vec<WindowOp<'static>>,
    /// Per op: (heuristic index, recipient).
    owners: Vec<(usize, usize)>,
    /// Per op: whether the store records it now.
    commits: Vec<bool>,
    /// Whether this is a real request (not a dry run).
    commit: bool,
}

impl Plan {
    /// An observation: read and, on a real request, recorded whatever the outcome.
    fn observe(&mut self, hi: usize, at: usize, op: WindowOp<'static>) {
        self.push(hi, at, op, self.commit);
    }

    /// A send (amount > 0) or a read of what verified (amount 0): read as if added, and
    /// added at once on a real request — conversion attempts for good, budget sends as
    /// reservations that a refusal gives back.
    fn send(&mut self, hi: usize, at: usize, op: WindowOp<'static>) {
        self.push(hi, at, op, self.commit && op.amount > 0);
    }

    fn push(&mut self, hi: usize, at: usize, op: WindowOp<'static>, commit: bool) {
        self.ops.push(op);
        self.owners.push((hi, at));
        self.commits.push(commit);
    }
}

/// A window operation with no member and no neighbourhood: a plain sum.
fn sum_op(rule: u64, entity: Entity<'static>, window: Duration, amount: u64) -> WindowOp<'static> {
    WindowOp {
        key: LimitKey { rule, entity },
        window,
        amount,
        member: None,
        cap: 0,
        near: None,
    }
}

/// What [`evaluate`] leaves behind once its windows are written.
#[derive(Debug, Default)]
pub(super) struct Evaluated {
    /// What the request added to conversion rates and budgets: the budget reservations
    /// first (given back already if the request was refused), then the conversion sends
    /// (given back too if the provider does not take the send).
    pub reserved: Vec<WindowOp<'static>>,
    /// An auto-block could not be set, or a refused request's reservations could not be
    /// given back (the store failed after the windows were written): every heuristic was
    /// still judged.
    pub degraded: bool,
    /// An allowed request's budget reservations, held until [`super::decide`] returns (a
    /// request dropped before then gives them back); already settled when refused.
    pub held: Held,
}

/// Evaluates every heuristic; fires hits into `out`. A store error before the windows
/// are written is returned (nothing was reserved); one after is reported in
/// [`Evaluated::degraded`].
pub(super) async fn evaluate<'f>(
    rules: &RuleSet,
    store: &Store,
    facts: &Facts<'f>,
    skips: &[Skip],
    now: Timestamp,
    commit: bool,
    out: &mut Outcome,
) -> Result<Evaluated, StoreError> {
    let active = |h: &HeuristicRule| h.kinds.contains(facts.kind);
    if !rules.heuristics.iter().any(active) {
        return Ok(Evaluated::default());
    }
    let dests: Vec<Option<&Destination>> = facts
        .recipients
        .iter()
        .map(|r| r.as_ref().ok().filter(|d| d.is_valid()))
        .collect();

    // Recently verified numbers are trusted, and auto-blocks may be in force: both are
    // flags, read in one store operation (one round trip on Redis): the trust keys first
    // (one per recipient), then the block keys.
    let trust_len = if rules.trust_verified.is_some() {
        dests.len()
    } else {
        0
    };
    let mut keys: Vec<LimitKey<'f>> = Vec::with_capacity(trust_len + rules.heuristics.len());
    keys.extend(dests[..trust_len].iter().map(|d| LimitKey {
        rule: TRUST,
        entity: Entity::Number(d.map_or(0, Destination::digits)),
    }));
    let listed =
        |h: &HeuristicRule, i: usize| skips.get(i).is_some_and(|s| s.skips_heuristic(&h.name));
    // Per block key: (heuristic index, recipient).
    let mut block_owners = Vec::new();
    for (hi, h) in rules.heuristics.iter().enumerate() {
        if h.block_for.is_none() || !active(h) {
            continue;
        }
        let block_key = |e| LimitKey {
            rule: h.id ^ BLOCK,
            entity: e,
        };
        if let Check::IpSpread { .. } = h.check {
            // An allow list that skips this heuristic for every recipient skips its IP
            // block too (trust does not: verified numbers stay under IP blocks).
            if (0..dests.len()).all(|i| dests[i].is_none() || listed(h, i)) {
                continue;
            }
            if let Some(e) = block_entity(h, None, facts) {
                keys.push(block_key(e));
                block_owners.push((hi, None));
            }
            continue;
        }
        for (i, d) in dests.iter().enumerate() {
            if let (Some(d), false) = (d, listed(h, i)) {
                if let Some(e) = block_entity(h, Some(d), facts) {
                    keys.push(block_key(e));
                    block_owners.push((hi, Some(i)));
                }
            }
        }
    }
    // A heuristic whose key is blocked already answers with the block; its windows still
    // record the attempt (an attack that goes on stays visible), but it does not fire
    // again, which would extend the block with every refused attempt.
    let mut trusted = vec![false; dests.len()];
    let mut blocked: Vec<usize> = Vec::new();
    if !keys.is_empty() {
        let flags = store.flags(&keys, now).await?;
        for (i, f) in flags[..trust_len].iter().enumerate() {
            trusted[i] = f.is_some() && dests[i].is_some();
        }
        for (&(hi, at), flag) in block_owners.iter().zip(&flags[trust_len..]) {
            // A trusted number skips the heuristics, their blocks included.
            if flag.is_some() && !at.is_some_and(|i| trusted[i]) {
                if !blocked.contains(&hi) {
                    blocked.push(hi);
                }
                let h = &rules.heuristics[hi];
                out.fire(
                    h.mode,
                    Hit {
                        reason: Reason::AutoBlocked,
                        rule: h.name.clone(),
                        recipient: at,
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
    let expected = rules.heuristics.len() * dests.len() * 4;
    let mut plan = Plan {
        ops: Vec::with_capacity(expected),
        owners: Vec::with_capacity(expected),
        commits: Vec::with_capacity(expected),
        commit,
    };
    for (hi, h) in rules.heuristics.iter().enumerate() {
        if !active(h) {
            continue;
        }
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
                        let op = WindowOp {
                            key: LimitKey {
                                rule: h.id.wrapping_add(u64::from(n)),
                                entity: Entity::Prefix(d.prefix(n)),
                            },
                            window: *window,
                            amount: 1,
                            member: Some(d.digits()),
                            cap: cap_for(*max_distinct),
                            near: None,
                        };
                        plan.observe(hi, i, op);
                    }
                }
            }
            Check::AdjacentNumbers {
                distance,
                window,
                max_near,
            } => {
                for (i, d) in dests.iter().enumerate() {
                    let Some(d) = d.filter(|_| !skipped(h, i)) else {
                        continue;
                    };
                    let op = WindowOp {
                        key: LimitKey {
                            rule: h.id,
                            entity: Entity::Prefix(d.prefix(neighbourhood_drop(*distance))),
                        },
                        window: *window,
                        amount: 1,
                        member: Some(d.digits()),
                        // Enough members kept that `max_near` neighbours can be seen.
                        cap: cap_for(Some(*max_near)).max(DEFAULT_CAP),
                        near: Some(*distance),
                    };
                    plan.observe(hi, i, op);
                }
            }
            Check::ConversionRate { key, window, .. } => {
                for (i, d) in dests.iter().enumerate() {
                    let Some(d) = d.filter(|_| !skipped(h, i)) else {
                        continue;
                    };
                    if let Some(e) = destination_entity(*key, d) {
                        plan.send(hi, i, sum_op(h.id, e, *window, 1));
                        plan.send(hi, i, sum_op(h.id ^ VERIFIED, e, *window, 0));
                    }
                }
            }
            Check::CountryBudget {
                window,
                baseline_window,
                ..
            } => {
                for (i, d) in dests.iter().enumerate() {
                    let Some(d) = d.filter(|_| !skipped(h, i)) else {
                        continue;
                    };
                    if let Some(c) = d.country() {
                        let e = Entity::Country(c);
                        plan.send(hi, i, sum_op(h.id, e, *window, 1));
                        plan.send(hi, i, sum_op(h.id ^ VERIFIED, e, *baseline_window, 0));
                    }
                }
            }
            Check::SpendBudget { .. } => {
                let Some(prices) = &rules.prices else {
                    continue;
                };
                for (i, d) in dests.iter().enumerate() {
                    // Trust does not skip spend, but an allow list that skips it does.
                    let Some(d) = d.filter(|_| !listed(h, i)) else {
                        continue;
                    };
                    let micros = (prices.per_segment(d.country())
                        * f64::from(facts.segments.max(1))
                        * MICRO)
                        .round() as u64;
                    // Numbers of no country share one country budget of their own: not
                    // the global key, which they are charged to already.
                    let (country_ns, country) = match d.country() {
                        Some(c) => (0, Entity::Country(c)),
                        None => (NO_COUNTRY, Entity::Global),
                    };
                    // In the order the budgets are read: hourly, country hourly, daily,
                    // country daily.
                    for (ns, window) in [(HOURLY, HOUR), (DAILY, DAY)] {
                        plan.send(hi, i, sum_op(h.id ^ ns, Entity::Global, window, micros));
                        let op = sum_op(h.id ^ ns ^ country_ns, country, window, micros);
                        plan.send(hi, i, op);
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
                    let spread = |rule, member, limit| WindowOp {
                        key: LimitKey { rule, entity: e },
                        window: *window,
                        amount: 1,
                        member: Some(member),
                        cap: cap_for(limit),
                        near: None,
                    };
                    if max_countries.is_some() {
                        plan.observe(hi, i, spread(h.id, country_member(d), *max_countries));
                    }
                    if max_numbers.is_some() {
                        let op = spread(h.id ^ NUMBERS, d.digits(), *max_numbers);
                        plan.observe(hi, i, op);
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
    // What the request adds to conversion rates and budgets: budgets first (see
    // `Evaluated::reserved`).
    let check = |k: &usize| &rules.heuristics[plan.owners[*k].0].check;
    let budget = |k: &usize| {
        plan.commits[*k]
            && matches!(
                check(k),
                Check::CountryBudget { .. } | Check::SpendBudget { .. }
            )
    };
    let conversion =
        |k: &usize| plan.commits[*k] && matches!(check(k), Check::ConversionRate { .. });
    let mut reserved: Vec<WindowOp<'static>> = (0..plan.ops.len())
        .filter(budget)
        .map(|k| plan.ops[k])
        .collect();
    let budgets = reserved.len();
    reserved.extend((0..plan.ops.len()).filter(conversion).map(|k| plan.ops[k]));
    // The budget reservations are held from the moment they are made: a request dropped
    // before it settles them (its client hung up) gives them back all the same.
    let (reads, held) = if plan.ops.is_empty() {
        (Vec::new(), Held::default())
    } else if commit {
        let held = &reserved[..budgets];
        store.reserve(&plan.ops, &plan.commits, held, now).await?
    } else {
        let reads = store.windows_each(&plan.ops, &plan.commits, now).await?;
        (reads, Held::default())
    };

    // Judged without a pause (no `.await`): the auto-blocks of the heuristics that fire
    // are set afterwards, once a refusal's give-back is under way.
    let mut newly_blocked = Vec::new();
    let mut degraded = false;
    let mut k = 0;
    while k < plan.ops.len() {
        let (hi, at) = plan.owners[k];
        let h = &rules.heuristics[hi];
        let (reason, len) = judge(h, &plan.ops[k], &reads[k..]);
        k += len;
        let Some(reason) = reason.filter(|_| !blocked.contains(&hi)) else {
            continue;
        };
        let enforced = h.mode == Mode::Enforce && !out.shadow_all;
        out.fire(
            h.mode,
            Hit {
                reason,
                rule: h.name.clone(),
                recipient: Some(at),
            },
            None,
        );
        if let (true, true, Some(base)) = (enforced, commit, h.block_for) {
            let d = dests[at];
            if let Some(e) = block_entity(h, d, facts) {
                // One offence per key per request, however many recipients tripped it.
                if !newly_blocked.contains(&(hi, base, e)) {
                    newly_blocked.push((hi, base, e));
                }
            }
        }
    }
    // Refused: the budget reservations are given back, by a give-back that runs to its
    // end even if this request is dropped from here on. An allowed request holds them
    // until it is decided (`decide` settles them when it returns).
    let (giving, held) = if commit && !out.allowed() {
        let giving = give_back(store, &reserved[..budgets], now);
        held.settle();
        (Some(giving), Held::default())
    } else {
        (None, held)
    };
    // The auto-blocks run to their end even if this request is dropped from here on.
    let blocks = newly_blocked
        .into_iter()
        .map(|(hi, base, entity)| AutoBlock::new(&rules.heuristics[hi], entity, base))
        .collect();
    let blocking = auto_blocks(store, blocks, now);
    degraded |= blocking.await.is_err();
    if let Some(giving) = giving {
        degraded |= giving.await.is_err();
    }
    Ok(Evaluated {
        reserved,
        degraded,
        held,
    })
}

/// Whether heuristic `h` fires on the readings of its group of operations starting with
/// `op` (see [`Plan`]); and how many operations the group has.
fn judge(h: &HeuristicRule, op: &WindowOp<'_>, reads: &[Reading]) -> (Option<Reason>, usize) {
    let r = &reads[0];
    match &h.check {
        Check::PrefixVelocity {
            max_requests,
            max_distinct,
            ..
        } => {
            let over = max_requests.is_some_and(|m| r.total > m)
                || max_distinct.is_some_and(|m| r.distinct > m);
            (over.then_some(Reason::PrefixVelocity), 1)
        }
        Check::AdjacentNumbers { max_near, .. } => {
            ((r.near >= *max_near).then_some(Reason::AdjacentNumbers), 1)
        }
        Check::IpSpread {
            max_countries,
            max_numbers,
            ..
        } => {
            let limit = if op.key.rule == h.id ^ NUMBERS {
                *max_numbers
            } else {
                *max_countries
            };
            let over = limit.is_some_and(|m| r.distinct > m);
            (over.then_some(Reason::IpSpread), 1)
        }
        Check::ConversionRate {
            min_sends,
            min_rate,
            ..
        } => {
            // The reading already includes this request.
            let (sends, verified) = (r.total, reads[1].total);
            let low = sends >= *min_sends && (verified as f64) < min_rate * sends as f64;
            (low.then_some(Reason::LowConversion), 2)
        }
        Check::CountryBudget {
            window,
            baseline_window,
            floor,
            multiplier,
            max,
        } => {
            let (sends, verified) = (r.total, reads[1].total);
            let scaled =
                verified as f64 * multiplier * window.as_secs_f64() / baseline_window.as_secs_f64();
            let mut cap = (*floor).max(scaled.ceil() as u64);
            if let Some(m) = max {
                cap = cap.min(*m);
            }
            ((sends > cap).then_some(Reason::CountryBudget), 2)
        }
        Check::SpendBudget {
            hourly,
            daily,
            country_hourly,
            country_daily,
        } => {
            let budgets = [*hourly, *country_hourly, *daily, *country_daily];
            let over = budgets
                .iter()
                .zip(reads)
                .any(|(b, r)| b.is_some_and(|b| (r.total as f64) > (b * MICRO).round()));
            (over.then_some(Reason::SpendBudget), 4)
        }
    }
}

/// One auto-block to set, with owned copies of what it needs from its rule.
#[derive(Debug)]
struct AutoBlock {
    /// The heuristic's id.
    rule: u64,
    /// The block's first period, doubled with each repeat offence...
    base: Duration,
    /// ...up to this.
    max_block: Duration,
    /// The key blocked.
    entity: Entity<'static>,
    /// The label `GET /v1/blocks` lists it under.
    label: String,
}

impl AutoBlock {
    fn new(h: &HeuristicRule, entity: Entity<'static>, base: Duration) -> AutoBlock {
        AutoBlock {
            rule: h.id,
            base,
            max_block: h.max_block,
            label: label(h, &entity),
            entity,
        }
    }
}

/// Sets a refusal's auto-blocks (see [`auto_block`]). They start at once and run to their
/// end even if what is returned is dropped unawaited ([`Detached`]): each is several
/// writes (the block, its offence count, the index `GET /v1/blocks` lists), and a client
/// that hangs up between them would leave the next block not doubled, or a block in force
/// but not listed. On Redis, one task of its own; in memory, done before this returns.
fn auto_blocks(store: &Store, blocks: Vec<AutoBlock>, now: Timestamp) -> Detached {
    async fn set_all(
        store: &Store,
        blocks: &[AutoBlock],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut result = Ok(());
        for b in blocks {
            if let Err(e) = auto_block(store, b, now).await {
                result = Err(e);
            }
        }
        result
    }
    if blocks.is_empty() {
        return Detached::Done(Some(Ok(())));
    }
    match store {
        Store::Memory(_) => Detached::now(set_all(store, &blocks, now)),
        Store::Redis(r) => {
            let store = Store::Redis(Arc::clone(r));
            Detached::spawn(r, async move { set_all(&store, &blocks, now).await })
        }
    }
}

/// Blocks `b.entity` for `b.base × 2^(offences)`, capped at the rule's `max_block`. A
/// block already in force (set by a concurrent request of the same burst, which read "no
/// block" too) is left as it is: that is one offence, not a repeat.
async fn auto_block(store: &Store, b: &AutoBlock, now: Timestamp) -> Result<(), StoreError> {
    let strike_key = LimitKey {
        rule: b.rule ^ STRIKE,
        entity: b.entity,
    };
    let level = store
        .flags(&[strike_key], now)
        .await?
        .pop()
        .flatten()
        .map_or(0, |f| f.level + 1);
    let period = b
        .base
        .saturating_mul(1u32 << level.min(16))
        .min(b.max_block.max(b.base));
    let until = now.add(period);
    let added = store
        .add_flag(
            LimitKey {
                rule: b.rule ^ BLOCK,
                entity: b.entity,
            },
            Flag {
                until,
                level,
                label: b.label.clone(),
            },
            now,
        )
        .await?;
    if !added {
        return Ok(());
    }
    // Offences are remembered for a day past the block, so a repeat doubles it.
    let strike = Flag {
        until: until.add(DAY),
        level,
        label: format!("{} (offences)", b.label),
    };
    store.set_flag(strike_key, strike, now).await
}

/// Gives back sends a request added (see the module docs). It starts at once and runs to
/// its end even if the request is dropped before awaiting it ([`Store::give_back`]).
pub fn give_back(store: &Store, reserved: &[WindowOp<'static>], now: Timestamp) -> Detached {
    store.give_back(reserved, now)
}

/// [`record_verified`] for a real verification: it starts at once and the whole record
/// (trust, then the conversion and baseline windows) runs to its end even if what is
/// returned is dropped unawaited ([`Detached`]). A record cut off after the trust mark
/// would be lost for good — later verifications of the number are not counted, since it
/// is trusted — and conversion rates and baselines would read too low. On Redis it runs
/// in a task of its own with owned copies (the rules snapshot, the number); in memory it
/// completes before this returns (no task; the store answers without a pause).
pub fn record_verified_detached(
    rules: Arc<RuleSet>,
    store: &Store,
    dest: Destination,
    now: Timestamp,
) -> Detached {
    match store {
        Store::Memory(_) => Detached::now(record_verified(&rules, store, &dest, now)),
        Store::Redis(r) => {
            let store = Store::Redis(Arc::clone(r));
            Detached::spawn(r, async move {
                record_verified(&rules, &store, &dest, now).await
            })
        }
    }
}

/// Records that `dest` verified: conversion and baseline windows, and trust.
///
/// A verification counts only where the number's sends count: a number that is trusted
/// already, or that an allow list lets skip a heuristic, sends without being counted
/// ([`evaluate`]), so its verifications are not counted either — else one real phone
/// verified again and again, or one verification reported twice (by the Verify check and
/// by feedback, even at once), would lift the conversion rate and baseline of its whole
/// prefix and country.
pub async fn record_verified(
    rules: &RuleSet,
    store: &Store,
    dest: &Destination,
    now: Timestamp,
) -> Result<(), StoreError> {
    let trust_key = LimitKey {
        rule: TRUST,
        entity: Entity::Number(dest.digits()),
    };
    let trust = rules.trust_verified.map(|t| Flag {
        until: now.add(t),
        level: 0,
        label: crate::store::TRUST_LABEL.into(),
    });
    // Checked and taken in one step: of one verification reported several times at once
    // (on several instances), exactly one finds the number untrusted and counts.
    let trusted = match &trust {
        Some(flag) => !store.add_flag(trust_key, flag.clone(), now).await?,
        None => false,
    };
    let listed = |h: &HeuristicRule| {
        rules.allow.iter().any(|l| {
            l.active(now) && l.matches_destination(dest) && l.skip.skips_heuristic(&h.name)
        })
    };
    let mut ops = Vec::new();
    for h in rules.heuristics.iter().filter(|h| !trusted && !listed(h)) {
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
    // A number trusted already has its trust renewed.
    if let (true, Some(flag)) = (trusted, trust) {
        store.set_flag(trust_key, flag, now).await?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "heuristics_tests.rs"]
mod tests;
