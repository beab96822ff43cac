//! Evaluation: one request's facts against one rules snapshot → a [`Decision`].
//!
//! Order: allow lists → deny lists and policies (country, prefix, CIDR, number type) →
//! rate limits (GCRA on every key of the request, all-or-nothing) → heuristics. The first
//! enforced refusal is the verdict; shadow rules are evaluated and recorded alongside but
//! never refuse. Time comes in as a [`Timestamp`]; the only I/O is through the [`Store`].
//! Nothing here logs, and no phone number leaves this module except inside store keys.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Timestamp;
use crate::phone::{Destination, PhoneError};
use crate::providers::RequestKind;
use crate::rules::{KeyKind, LimitRule, ListRule, Mode, OnStoreError, RuleSet, Skip};
use crate::store::{Entity, GcraCheck, GcraOutcome, Held, LimitKey, Store};

pub mod gcra;
pub mod heuristics;

/// A stable, snake_case reason code for a refusal.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The number could not be parsed or matches no numbering plan.
    InvalidNumber,
    /// The request shape is not one the preset reads.
    UnsupportedRequest,
    /// The number is on a deny list.
    DeniedNumber,
    /// The number's prefix is on a deny list.
    DeniedPrefix,
    /// The number's country is on a deny list or denied by a country policy.
    DeniedCountry,
    /// A country allow-list policy does not include the number's country.
    CountryNotAllowed,
    /// The number's type (premium rate, …) is denied by policy.
    NumberType,
    /// The end user's IP is on a deny list.
    DeniedIp,
    /// The end user is on a deny list.
    DeniedUser,
    /// The provider account is on a deny list.
    DeniedAccount,
    /// The sender is on a deny list.
    DeniedSender,
    /// A rate limit is exhausted.
    RateLimited,
    /// Too many requests or distinct numbers in one prefix.
    PrefixVelocity,
    /// Many numerically adjacent numbers (a range walk).
    AdjacentNumbers,
    /// Codes sent to this prefix or country are rarely verified.
    LowConversion,
    /// The country's volume is far above its verified baseline.
    CountryBudget,
    /// The estimated spend budget is used up.
    SpendBudget,
    /// One IP or subnet spreads over many numbers or countries.
    IpSpread,
    /// The prefix, country or IP is auto-blocked after repeated offences.
    AutoBlocked,
    /// The state store is unreachable and the rule fails closed.
    StoreUnavailable,
    /// The key ceiling is reached and the rule fails closed.
    Capacity,
}

impl Reason {
    /// Every reason, for metric pre-registration and documentation.
    pub const ALL: [Reason; 21] = [
        Reason::InvalidNumber,
        Reason::UnsupportedRequest,
        Reason::DeniedNumber,
        Reason::DeniedPrefix,
        Reason::DeniedCountry,
        Reason::CountryNotAllowed,
        Reason::NumberType,
        Reason::DeniedIp,
        Reason::DeniedUser,
        Reason::DeniedAccount,
        Reason::DeniedSender,
        Reason::RateLimited,
        Reason::PrefixVelocity,
        Reason::AdjacentNumbers,
        Reason::LowConversion,
        Reason::CountryBudget,
        Reason::SpendBudget,
        Reason::IpSpread,
        Reason::AutoBlocked,
        Reason::StoreUnavailable,
        Reason::Capacity,
    ];

    /// The stable code.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidNumber => "invalid_number",
            Reason::UnsupportedRequest => "unsupported_request",
            Reason::DeniedNumber => "denied_number",
            Reason::DeniedPrefix => "denied_prefix",
            Reason::DeniedCountry => "denied_country",
            Reason::CountryNotAllowed => "country_not_allowed",
            Reason::NumberType => "number_type",
            Reason::DeniedIp => "denied_ip",
            Reason::DeniedUser => "denied_user",
            Reason::DeniedAccount => "denied_account",
            Reason::DeniedSender => "denied_sender",
            Reason::RateLimited => "rate_limited",
            Reason::PrefixVelocity => "prefix_velocity",
            Reason::AdjacentNumbers => "adjacent_numbers",
            Reason::LowConversion => "low_conversion",
            Reason::CountryBudget => "country_budget",
            Reason::SpendBudget => "spend_budget",
            Reason::IpSpread => "ip_spread",
            Reason::AutoBlocked => "auto_blocked",
            Reason::StoreUnavailable => "store_unavailable",
            Reason::Capacity => "capacity",
        }
    }

    /// The inverse of [`Reason::as_str`].
    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// A short human explanation (no numbers, no text).
    pub fn sentence(self) -> &'static str {
        match self {
            Reason::InvalidNumber => "the destination is not a valid phone number",
            Reason::UnsupportedRequest => "the request is not in a shape smsfence can check",
            Reason::DeniedNumber => "the destination number is on a deny list",
            Reason::DeniedPrefix => "the destination number range is on a deny list",
            Reason::DeniedCountry => "sending to the destination country is denied",
            Reason::CountryNotAllowed => "the destination country is not in the allowed list",
            Reason::NumberType => "the destination number type cannot receive verification codes",
            Reason::DeniedIp => "the end user's IP address is on a deny list",
            Reason::DeniedUser => "the end user is on a deny list",
            Reason::DeniedAccount => "the account is on a deny list",
            Reason::DeniedSender => "the sender is on a deny list",
            Reason::RateLimited => "a rate limit was reached",
            Reason::PrefixVelocity => "too many messages to one number range",
            Reason::AdjacentNumbers => "too many messages to consecutive numbers",
            Reason::LowConversion => "codes sent to this destination are rarely verified",
            Reason::CountryBudget => "unusual volume to the destination country",
            Reason::SpendBudget => "the SMS spend budget is used up",
            Reason::IpSpread => "one client is sending to too many different numbers",
            Reason::AutoBlocked => {
                "the destination is temporarily blocked after suspicious traffic"
            }
            Reason::StoreUnavailable => "the rate-limit store is unavailable",
            Reason::Capacity => "the rate limiter is at capacity",
        }
    }
}

/// One recipient after normalization: a destination, or why it is not one.
pub type Recipient = Result<Destination, PhoneError>;

/// Everything the decision looks at, for one request.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// What the request does.
    pub kind: RequestKind,
    /// Every recipient.
    pub recipients: &'a [Recipient],
    /// The end user's IP, from a trusted header.
    pub ip: Option<IpAddr>,
    /// The end user's id, from a trusted header.
    pub user: Option<&'a str>,
    /// The provider account.
    pub account: Option<&'a str>,
    /// The sender.
    pub sender: Option<&'a str>,
    /// Segments per recipient.
    pub segments: u32,
}

/// A rule that fired (or would have, for shadow rules).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Hit {
    /// The reason code.
    pub reason: Reason,
    /// The rule's name (`builtin` for built-in refusals).
    pub rule: Arc<str>,
    /// The recipient (0-based) that caused it, when one did.
    pub recipient: Option<usize>,
}

/// The outcome for the request as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it.
    Allow,
    /// Refuse it for now; a retry after `retry_after` may pass.
    Throttle {
        /// When to retry.
        retry_after: Duration,
        /// What fired.
        hit: Hit,
    },
    /// Refuse it.
    Block(Hit),
}

impl Verdict {
    /// `allow`, `throttle` or `block`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Throttle { .. } => "throttle",
            Verdict::Block(_) => "block",
        }
    }

    /// The hit behind a refusal.
    pub fn hit(&self) -> Option<&Hit> {
        match self {
            Verdict::Allow => None,
            Verdict::Throttle { hit, .. } | Verdict::Block(hit) => Some(hit),
        }
    }
}

/// The IETF `RateLimit` fields of one opted-in limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitInfo {
    /// The rule name (the policy name in the header).
    pub rule: Arc<str>,
    /// The burst (quota).
    pub quota: u32,
    /// The window the quota refills over, in seconds.
    pub window_secs: u64,
    /// Requests left now.
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
}

/// Everything a decision produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The verdict.
    pub verdict: Verdict,
    /// Shadow rules that would have refused (and enforced rules under global shadow).
    pub shadow: Vec<Hit>,
    /// Whether any rule was decided without its store (fail open / closed / local).
    pub degraded: bool,
    /// Whether some limit was decided by the in-process fallback (`on_store_error =
    /// "local"`) because the shared store failed.
    pub local: bool,
    /// RateLimit header data of the most restrictive opted-in limit.
    pub rate_limit: Option<RateLimitInfo>,
    /// Estimated cost of the request (price table currency), when prices are configured.
    pub cost: Option<f64>,
    /// What an allowed request added to conversion rates and budgets: to give back
    /// ([`heuristics::give_back`]) if the provider does not take the send, which then
    /// sent no code and cost nothing. Empty for a refused request (given back already,
    /// as far as it is).
    pub counted: Vec<crate::store::WindowOp<'static>>,
}

/// Whether a decision may change state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// A real request: consume tokens, record observations.
    Yes,
    /// A dry run (`/v1/check`): consume nothing.
    DryRun,
}

/// Collects hits while the rules are walked.
struct Outcome {
    verdict: Verdict,
    shadow: Vec<Hit>,
    /// The shadow hits, once there are more than a scan should search (a shadow rule
    /// firing on each of thousands of recipients would otherwise scan all before it).
    shadow_seen: HashSet<Hit>,
    shadow_all: bool,
}

/// Shadow hits up to this many are searched by a scan; past it, through `shadow_seen`.
const SCANNED_HITS: usize = 16;

impl Outcome {
    fn fire(&mut self, mode: Mode, hit: Hit, retry_after: Option<Duration>) {
        if mode == Mode::Shadow || self.shadow_all {
            let seen = if self.shadow.len() < SCANNED_HITS {
                self.shadow.contains(&hit)
            } else {
                if self.shadow_seen.is_empty() {
                    self.shadow_seen.extend(self.shadow.iter().cloned());
                }
                !self.shadow_seen.insert(hit.clone())
            };
            if !seen {
                self.shadow.push(hit);
            }
        } else if self.verdict == Verdict::Allow {
            self.verdict = match retry_after {
                Some(retry_after) => Verdict::Throttle { retry_after, hit },
                None => Verdict::Block(hit),
            };
        }
    }

    fn allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }
}

/// The name of built-in refusals (invalid numbers, unsupported requests).
pub const BUILTIN: &str = "builtin";

/// Decides one request against one rules snapshot.
pub async fn decide(
    rules: &RuleSet,
    store: &Store,
    facts: &Facts<'_>,
    now: Timestamp,
    commit: Commit,
) -> Decision {
    // `::ffff:1.2.3.4` is 1.2.3.4: to CIDR lists, and to IP and subnet keys (a /56 of
    // mapped addresses would be all of IPv4). The proxy reads client addresses so;
    // `/v1/check` and replay take them as written.
    let mapped;
    let facts = match facts.ip {
        Some(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_some() => {
            mapped = Facts {
                ip: v6.to_ipv4_mapped().map(IpAddr::V4),
                ..*facts
            };
            &mapped
        }
        _ => facts,
    };
    let mut out = Outcome {
        verdict: Verdict::Allow,
        shadow: Vec::new(),
        shadow_seen: HashSet::new(),
        shadow_all: rules.shadow_all,
    };

    // Allow lists on the request (IP, user, account, sender), then per recipient.
    let request_skip = rules
        .allow
        .iter()
        .filter(|l| l.active(now) && l.matches_request(facts))
        .fold(Skip::none(), |acc, l| acc.union(&l.skip));
    let mut skips: Vec<Skip> = Vec::with_capacity(facts.recipients.len());

    for (i, r) in facts.recipients.iter().enumerate() {
        let at = Some(i);
        let dest = match r {
            Ok(d) if d.is_valid() => d,
            _ => {
                out.fire(
                    Mode::Enforce,
                    Hit {
                        reason: Reason::InvalidNumber,
                        rule: rules.builtin_name.clone(),
                        recipient: at,
                    },
                    None,
                );
                skips.push(Skip::all());
                continue;
            }
        };
        let skip = rules
            .allow
            .iter()
            .filter(|l| l.active(now) && l.matches_destination(dest))
            .fold(request_skip.clone(), |acc, l| acc.union(&l.skip));
        if !skip.deny {
            for l in rules
                .deny
                .iter()
                .filter(|l| l.active(now) && !skip.skips_rule(&l.name))
            {
                if let Some(reason) = l.denies_destination(dest) {
                    out.fire(
                        l.mode,
                        Hit {
                            reason,
                            rule: l.name.clone(),
                            recipient: at,
                        },
                        None,
                    );
                }
            }
        }
        if !skip.policies {
            for p in rules.policies.iter().filter(|p| !skip.skips_rule(&p.name)) {
                if let Some(reason) = p.refuses(dest) {
                    out.fire(
                        p.mode,
                        Hit {
                            reason,
                            rule: p.name.clone(),
                            recipient: at,
                        },
                        None,
                    );
                }
            }
        }
        skips.push(skip);
    }
    if !request_skip.deny {
        for l in rules
            .deny
            .iter()
            .filter(|l| l.active(now) && !request_skip.skips_rule(&l.name))
        {
            if let Some(reason) = l.denies_request(facts) {
                out.fire(
                    l.mode,
                    Hit {
                        reason,
                        rule: l.name.clone(),
                        recipient: None,
                    },
                    None,
                );
            }
        }
    }

    let mut degraded = false;
    let mut used_local = false;
    let mut rate_limit = None;
    let mut counted = Vec::new();
    // An allowed request's budget reservations: given back should the request be dropped
    // before this returns (a client that hangs up during the shadow limits' calls).
    let mut held = Held::default();
    if out.allowed() {
        let (checks, owners) = limit_checks(rules, facts, &skips, Mode::Enforce, out.shadow_all);
        if !checks.is_empty() {
            match store.gcra(&checks, now, commit == Commit::Yes).await {
                Ok(GcraOutcome::Allowed { states }) => {
                    rate_limit = rate_limit_info(&checks, &owners, rules, &states);
                }
                Ok(GcraOutcome::Refused {
                    index,
                    retry_after,
                    capacity,
                }) => {
                    let (rule, recipient) = owners[index];
                    let limit = &rules.limits[rule];
                    let reason = if capacity {
                        Reason::Capacity
                    } else {
                        Reason::RateLimited
                    };
                    out.fire(
                        Mode::Enforce,
                        Hit {
                            reason,
                            rule: limit.name.clone(),
                            recipient,
                        },
                        Some(retry_after),
                    );
                }
                Err(_) => {
                    degraded = true;
                    let closed = owners.iter().any(|(r, _)| rules.limits[*r].fails_closed());
                    // A closed rule refuses anyway: the fallback must not take tokens then.
                    let local = store.fallback().filter(|_| !closed).map(|m| {
                        // The limits that fall back to the in-process limiter.
                        let at: Vec<usize> = (0..checks.len())
                            .filter(|&i| {
                                rules.limits[owners[i].0].on_store_error == OnStoreError::Local
                            })
                            .collect();
                        let sub: Vec<GcraCheck<'_>> = at.iter().map(|&i| checks[i]).collect();
                        (at, m.gcra(&sub, now, commit == Commit::Yes))
                    });
                    if let Some((rule, recipient)) =
                        owners.iter().find(|(r, _)| rules.limits[*r].fails_closed())
                    {
                        let limit = &rules.limits[*rule];
                        out.fire(
                            Mode::Enforce,
                            Hit {
                                reason: Reason::StoreUnavailable,
                                rule: limit.name.clone(),
                                recipient: *recipient,
                            },
                            Some(limit.interval),
                        );
                    } else if let Some((at, outcome)) = local {
                        used_local = !at.is_empty();
                        if let GcraOutcome::Refused {
                            index,
                            retry_after,
                            capacity,
                        } = outcome
                        {
                            let (rule, recipient) = owners[at[index]];
                            out.fire(
                                Mode::Enforce,
                                Hit {
                                    reason: if capacity {
                                        Reason::Capacity
                                    } else {
                                        Reason::RateLimited
                                    },
                                    rule: rules.limits[rule].name.clone(),
                                    recipient,
                                },
                                Some(retry_after),
                            );
                        }
                    }
                }
            }
        }
    }
    // One deadline per request: after a store failure the remaining store calls would
    // only wait out their own timeouts, so they are skipped (heuristics and shadow
    // limits fail open).
    if out.allowed() && !rules.heuristics.is_empty() && !degraded {
        match heuristics::evaluate(
            rules,
            store,
            facts,
            &skips,
            now,
            commit == Commit::Yes,
            &mut out,
        )
        .await
        {
            Ok(evaluated) => {
                degraded |= evaluated.degraded;
                // Refused by a heuristic: its budget reservations were given back
                // (`evaluate` does it). The limits it passed keep counting it — an attack
                // that a heuristic refuses goes on filling the limits, which then refuse
                // it before any heuristic runs, far more cheaply (and without a store key
                // per attempt).
                if out.allowed() {
                    counted = evaluated.reserved;
                }
                held = evaluated.held;
            }
            Err(_) => degraded = true,
        }
    }
    // Shadow limits (and every limit under global shadow) are evaluated one rule at a time,
    // consuming only when the request goes through.
    let consume_shadow = commit == Commit::Yes && out.allowed();
    let shadow_limits = !degraded;
    let (checks, owners) = limit_checks(rules, facts, &skips, Mode::Shadow, out.shadow_all);
    let mut start = 0;
    while shadow_limits && start < checks.len() {
        let rule = owners[start].0;
        let end = start
            + owners[start..]
                .iter()
                .take_while(|(r, _)| *r == rule)
                .count();
        match store.gcra(&checks[start..end], now, consume_shadow).await {
            Ok(GcraOutcome::Refused { index, .. }) => {
                let recipient = owners[start + index].1;
                out.fire(
                    Mode::Shadow,
                    Hit {
                        reason: Reason::RateLimited,
                        rule: rules.limits[rule].name.clone(),
                        recipient,
                    },
                    None,
                );
            }
            Ok(GcraOutcome::Allowed { .. }) => {}
            Err(_) => {
                degraded = true;
                break;
            }
        }
        start = end;
    }

    // No `.await` from here to the send upstream: the reservations stand from now on
    // (`Decision::counted`).
    held.settle();
    Decision {
        cost: heuristics::cost(rules, facts),
        verdict: out.verdict,
        shadow: out.shadow,
        degraded,
        local: used_local,
        rate_limit,
        counted,
    }
}

/// The GCRA checks of every limit in `mode` that applies, with (rule index, recipient)
/// for each. Under global shadow every limit counts as shadow.
fn limit_checks<'f>(
    rules: &RuleSet,
    facts: &Facts<'f>,
    skips: &[Skip],
    mode: Mode,
    shadow_all: bool,
) -> (Vec<GcraCheck<'f>>, Vec<(usize, Option<usize>)>) {
    // Sized at the first limit that applies: a mode with none allocates nothing.
    let mut checks = Vec::new();
    let mut owners = Vec::new();
    let mut index = HashMap::new();
    for (idx, limit) in rules.limits.iter().enumerate() {
        let effective = if shadow_all { Mode::Shadow } else { limit.mode };
        if effective != mode || !limit.applies_to(facts.kind) {
            continue;
        }
        if checks.capacity() == 0 {
            checks.reserve(rules.limits.len() - idx);
            owners.reserve(rules.limits.len() - idx);
        }
        let mut counted = 0u32;
        for (i, r) in facts.recipients.iter().enumerate() {
            let Ok(dest) = r else { continue };
            if skips.get(i).is_some_and(|s| s.skips_limit(&limit.name)) {
                continue;
            }
            counted += 1;
            if let Some(entity) = limit.destination_entity(dest) {
                push_check(
                    &mut checks,
                    &mut owners,
                    &mut index,
                    limit,
                    idx,
                    entity,
                    Some(i),
                    1,
                );
            }
        }
        if counted == 0 {
            continue;
        }
        if let Some(entity) = request_entity(limit, facts) {
            push_check(
                &mut checks,
                &mut owners,
                &mut index,
                limit,
                idx,
                entity,
                None,
                counted,
            );
        }
    }
    (checks, owners)
}

/// Checks up to this many are searched by a scan; past it, through an index (a request
/// of thousands of recipients would otherwise scan every check for each new one).
const SCANNED_CHECKS: usize = 32;

#[allow(clippy::too_many_arguments)]
fn push_check<'f>(
    checks: &mut Vec<GcraCheck<'f>>,
    owners: &mut Vec<(usize, Option<usize>)>,
    index: &mut HashMap<LimitKey<'f>, usize>,
    limit: &LimitRule,
    idx: usize,
    entity: Entity<'f>,
    recipient: Option<usize>,
    cost: u32,
) {
    let key = LimitKey {
        rule: limit.id,
        entity,
    };
    // The same number twice in one request is one key with twice the cost.
    let found = if checks.len() < SCANNED_CHECKS {
        checks.iter().position(|c| c.key == key)
    } else {
        if index.is_empty() {
            index.extend(checks.iter().enumerate().map(|(i, c)| (c.key, i)));
        }
        match index.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => Some(*e.get()),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(checks.len());
                None
            }
        }
    };
    if let Some(pos) = found {
        checks[pos].cost += cost;
        return;
    }
    checks.push(GcraCheck {
        key,
        interval: limit.interval,
        burst: limit.burst,
        cost,
        on_overflow_closed: limit.overflow_closed,
    });
    owners.push((idx, recipient));
}

fn request_entity<'f>(limit: &LimitRule, facts: &Facts<'f>) -> Option<Entity<'f>> {
    match limit.key {
        KeyKind::Ip => facts.ip.map(Entity::Ip),
        KeyKind::Subnet { v4, v6 } => facts
            .ip
            .map(|ip| Entity::Subnet(crate::rules::subnet_of(ip, v4, v6))),
        KeyKind::Account => facts.account.map(Entity::Account),
        KeyKind::User => facts.user.map(Entity::User),
        KeyKind::Sender => facts.sender.map(Entity::Sender),
        KeyKind::Global => Some(Entity::Global),
        KeyKind::Number | KeyKind::Prefix { .. } | KeyKind::Country => None,
    }
}

fn rate_limit_info(
    checks: &[GcraCheck<'_>],
    owners: &[(usize, Option<usize>)],
    rules: &RuleSet,
    states: &[gcra::State],
) -> Option<RateLimitInfo> {
    checks
        .iter()
        .zip(owners)
        .zip(states)
        .filter(|((_, (rule, _)), _)| rules.limits[*rule].headers)
        .min_by_key(|(_, s)| s.remaining)
        .map(|((c, (rule, _)), s)| RateLimitInfo {
            rule: rules.limits[*rule].name.clone(),
            quota: c.burst,
            window_secs: crate::providers::retry_after_secs(c.interval.saturating_mul(c.burst)),
            remaining: s.remaining,
            reset_secs: s.reset.as_secs(),
        })
}

impl ListRule {
    fn active(&self, now: Timestamp) -> bool {
        self.until.is_none_or(|u| now < u)
    }
}

#[cfg(test)]
mod tests;
