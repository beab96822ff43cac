//! `smsfence replay`: recorded traffic through a rule set, offline and deterministic.
//!
//! Each JSON line is one event — `ts` (RFC 3339), `event` (`send`, `verified`, `failed`),
//! `number`, and optionally `numbers`, `ip`, `user`, `account`, `provider`, `segments`,
//! `country_hint`, `kind`, `label` — in the shape smsfence's own audit log writes, so
//! production traffic replays as is (other fields are ignored). Time comes from the `ts`
//! of each line, and lines are decided in `ts` order (within [`REORDER_WINDOW`]); an
//! allowed send the provider did not take (`upstream_status` ≥ 400, `upstream_error`
//! `refused`) is given back, as live. Every rule set gets a fresh in-memory store.
//! Malformed lines are reported with their line number and skipped. Nothing here touches
//! the network.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::clock::Timestamp;
use crate::decide::{self, heuristics, Commit, Facts, Recipient, Verdict};
use crate::phone::{self, Country, NumberFormat};
use crate::providers::RequestKind;
use crate::rules::RuleSet;
use crate::store::{memory::MemoryStore, Store};

/// One input line.
#[derive(Debug, Deserialize)]
struct Line {
    ts: String,
    event: String,
    #[serde(default)]
    number: Option<String>,
    #[serde(default)]
    numbers: Vec<String>,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    account: Option<String>,
    #[serde(default)]
    segments: Option<u32>,
    #[serde(default)]
    country_hint: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    label: Option<String>,
    /// The provider's answer to an allowed send (audit log).
    #[serde(default)]
    upstream_status: Option<u16>,
    /// Why the provider did not answer (audit log): `refused` means nothing was sent.
    #[serde(default)]
    upstream_error: Option<String>,
}

/// The decision on one `send` line.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LineDecision {
    /// 1-based line number in the input.
    pub line: usize,
    /// `allow`, `throttle` or `block`.
    pub decision: &'static str,
    /// Reason codes.
    pub reasons: Vec<&'static str>,
    /// The refusing rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The line's label (simulator output), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Estimated cost.
    #[serde(skip)]
    pub cost: f64,
    /// Destination country of the first recipient.
    #[serde(skip)]
    pub country: String,
}

/// What a replay found.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Lines read.
    pub lines: usize,
    /// `verified` / `failed` events applied.
    pub outcomes: usize,
    /// Malformed lines: (line, what is wrong); all counted, the first 20 kept.
    pub malformed: Vec<(usize, String)>,
    /// Malformed lines in all.
    pub malformed_count: usize,
    /// Every send's decision, in input order.
    pub decisions: Vec<LineDecision>,
}

impl Summary {
    fn count(&self, d: &str) -> usize {
        self.decisions.iter().filter(|x| x.decision == d).count()
    }

    /// A plain-text report: totals, by reason, rule and country, cost, labels.
    pub fn report(&self, currency: &str, by_label: bool) -> String {
        let mut out = String::new();
        let sends = self.decisions.len();
        let pct = |n: usize| {
            if sends == 0 {
                0.0
            } else {
                100.0 * n as f64 / sends as f64
            }
        };
        out.push_str(&format!(
            "{} lines: {} sends, {} verification outcomes, {} malformed\n",
            self.lines, sends, self.outcomes, self.malformed_count
        ));
        for d in ["allow", "throttle", "block"] {
            out.push_str(&format!(
                "  {d:<9} {:>8}  {:5.1}%\n",
                self.count(d),
                pct(self.count(d))
            ));
        }
        let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
        let mut by_rule: BTreeMap<&str, usize> = BTreeMap::new();
        let mut by_country: BTreeMap<&str, [usize; 2]> = BTreeMap::new();
        let (mut cost_allowed, mut cost_refused) = (0.0, 0.0);
        for d in &self.decisions {
            let refused = d.decision != "allow";
            if let Some(r) = d.reasons.first() {
                *by_reason.entry(r).or_default() += 1;
            }
            if let Some(r) = &d.rule {
                *by_rule.entry(r).or_default() += 1;
            }
            by_country.entry(&d.country).or_default()[usize::from(refused)] += 1;
            if refused {
                cost_refused += d.cost;
            } else {
                cost_allowed += d.cost;
            }
        }
        let table = |out: &mut String, title: &str, m: &BTreeMap<&str, usize>| {
            if m.is_empty() {
                return;
            }
            out.push_str(&format!("refused by {title}:\n"));
            let mut v: Vec<_> = m.iter().collect();
            v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            for (k, n) in v {
                out.push_str(&format!("  {k:<28} {n:>8}\n"));
            }
        };
        table(&mut out, "reason", &by_reason);
        table(&mut out, "rule", &by_rule);
        out.push_str("by country (allowed / refused):\n");
        let mut countries: Vec<_> = by_country.iter().collect();
        countries.sort_by(|a, b| (b.1[0] + b.1[1]).cmp(&(a.1[0] + a.1[1])).then(a.0.cmp(b.0)));
        for (c, [a, r]) in countries.iter().take(25) {
            out.push_str(&format!("  {c:<8} {a:>8} / {r:<8}\n"));
        }
        out.push_str(&format!("estimated cost: allowed {cost_allowed:.2} {currency}, refused {cost_refused:.2} {currency}\n"));
        if by_label {
            out.push_str(&self.label_report());
        }
        for (line, msg) in &self.malformed {
            out.push_str(&format!("malformed line {line}: {msg}\n"));
        }
        out
    }

    /// Per label: sends, refused, refused share.
    pub fn label_report(&self) -> String {
        let mut by: BTreeMap<&str, [usize; 2]> = BTreeMap::new();
        for d in &self.decisions {
            let e = by.entry(d.label.as_deref().unwrap_or("-")).or_default();
            e[0] += 1;
            e[1] += usize::from(d.decision != "allow");
        }
        let mut out =
            String::from("by label:\n  label                     sends   refused   share\n");
        for (label, [n, r]) in by {
            out.push_str(&format!(
                "  {label:<22} {n:>8} {r:>9} {:>6.2}%\n",
                100.0 * r as f64 / n.max(1) as f64
            ));
        }
        out
    }
}

/// How far out of `ts` order the lines of an audit log can be. A line is written when its
/// request finishes — a refusal at once, an allowed send once its upstream answered (at
/// most `upstream.timeout` later) — but its `ts` is when it was decided: replay decides
/// in `ts` order, holding each line back until a line this much later has been read.
pub const REORDER_WINDOW: Duration = Duration::from_secs(300);

/// The longest line read (an audit event is a few hundred bytes).
pub const MAX_LINE: usize = 1 << 20;

/// A line read and checked, waiting for its turn.
struct Event {
    line: usize,
    ts: Timestamp,
    what: What,
    recipients: Vec<Recipient>,
    ip: Option<IpAddr>,
    user: Option<String>,
    account: Option<String>,
    segments: u32,
    label: Option<String>,
    /// The provider did not take the send (an HTTP error status, or no connection):
    /// given back as it was live.
    not_taken: bool,
}

/// What a line says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    /// A request of this kind, to decide.
    Send(RequestKind),
    /// A verification: conversion rates and trust, as live.
    Verified,
    /// A failed verification: only counted.
    Failed,
}

/// Runs `input` through `rules`. Optional progress callback gets bytes read so far.
pub async fn replay(
    rules: &RuleSet,
    input: impl BufRead,
    mut progress: impl FnMut(u64),
) -> std::io::Result<Summary> {
    let store = Store::Memory(MemoryStore::new(50_000_000));
    let mut summary = Summary::default();
    let mut read = 0u64;
    // Lines waiting for their turn, by (ts, outcome after send, line): at one instant a
    // send goes before a verification, which live is recorded once the send's check is
    // answered (and written before it).
    let mut pending: BTreeMap<(Timestamp, bool, usize), Event> = BTreeMap::new();
    let mut newest = Timestamp::default();
    // Read as bytes, not `lines()`: a line that is not UTF-8 is one malformed line, not
    // an I/O error that ends the replay; and at most MAX_LINE of it: a line longer than
    // any event is not held in memory.
    let mut input = input;
    let mut n = 0;
    loop {
        let mut line = Vec::new();
        let len = (&mut input)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if len == 0 {
            break;
        }
        n += 1;
        summary.lines = n;
        read += len as u64;
        if n % 65_536 == 0 {
            progress(read);
        }
        let parsed = if line.last() == Some(&b'\n') {
            line.pop();
            parse(n, line)
        } else if line.len() > MAX_LINE {
            read += input.skip_until(b'\n')? as u64;
            Err(format!("longer than {MAX_LINE} bytes"))
        } else {
            // The last line, with no newline.
            parse(n, line)
        };
        match parsed {
            Ok(Some(event)) => {
                newest = newest.max(event.ts);
                let outcome = !matches!(event.what, What::Send(_));
                pending.insert((event.ts, outcome, n), event);
            }
            Ok(None) => continue,
            Err(msg) => {
                summary.malformed_count += 1;
                if summary.malformed.len() < 20 {
                    summary.malformed.push((n, msg));
                }
                continue;
            }
        }
        while let Some(first) = pending.first_entry() {
            if first.key().0.add(REORDER_WINDOW) > newest {
                break;
            }
            apply(rules, &store, first.remove(), &mut summary).await;
        }
    }
    while let Some((_, event)) = pending.pop_first() {
        apply(rules, &store, event, &mut summary).await;
    }
    summary.decisions.sort_by_key(|d| d.line);
    Ok(summary)
}

/// Reads one line: an event, `None` for a blank line, or what is wrong with it.
fn parse(n: usize, mut line: Vec<u8>) -> Result<Option<Event>, String> {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    let Ok(line) = String::from_utf8(line) else {
        return Err("not UTF-8 text".into());
    };
    if line.trim().is_empty() {
        return Ok(None);
    }
    let parsed: Line =
        serde_json::from_str(&line).map_err(|e| format!("not a JSON event ({e})"))?;
    let Some(ts) = Timestamp::parse_rfc3339(&parsed.ts) else {
        return Err(format!("ts {:?} is not an RFC 3339 time", parsed.ts));
    };
    let region = parsed.country_hint.as_deref().and_then(Country::parse);
    let format = if region.is_some() {
        NumberFormat::National
    } else {
        NumberFormat::E164
    };
    let raw: Vec<&str> = parsed
        .number
        .iter()
        .chain(parsed.numbers.iter())
        .map(String::as_str)
        .collect();
    if raw.is_empty() {
        return Err("no number".into());
    }
    // An audit log written with numbers = "masked" or "hash" keeps no number to
    // decide on: say so rather than decide `invalid_number` (or, for a masked
    // verification, credit a shorter number).
    if raw.iter().any(|r| r.contains('*') || r.starts_with("h:")) {
        return Err("the number is masked or hashed: replay needs an audit log written with numbers = \"full\"".into());
    }
    let recipients: Vec<Recipient> = raw
        .iter()
        .map(|r| phone::normalize(r, format, region))
        .collect();
    let what = match parsed.event.as_str() {
        "verified" => {
            if !matches!(recipients.first(), Some(Ok(_))) {
                return Err("the number is not a phone number".into());
            }
            What::Verified
        }
        "failed" => What::Failed,
        "send" => match parsed.kind.as_deref().map(RequestKind::parse) {
            Some(Some(k)) => What::Send(k),
            Some(None) => {
                return Err(format!(
                    "unknown kind {:?}",
                    parsed.kind.unwrap_or_default()
                ))
            }
            None => What::Send(RequestKind::Send),
        },
        other => return Err(format!("event {other:?} is not send, verified or failed")),
    };
    let ip = match parsed.ip.as_deref().map(str::parse::<IpAddr>) {
        Some(Err(_)) => return Err("ip is not an IP address".into()),
        Some(Ok(ip)) => Some(ip),
        None => None,
    };
    let not_taken = parsed.upstream_status.is_some_and(|s| s >= 400)
        || parsed.upstream_error.as_deref() == Some("refused");
    Ok(Some(Event {
        line: n,
        ts,
        what,
        recipients,
        ip,
        user: parsed.user,
        account: parsed.account,
        segments: parsed.segments.unwrap_or(1),
        label: parsed.label,
        not_taken,
    }))
}

/// Decides a send, or records a verification outcome, at the event's time.
async fn apply(rules: &RuleSet, store: &Store, event: Event, summary: &mut Summary) {
    let kind = match event.what {
        What::Send(kind) => kind,
        What::Verified => {
            summary.outcomes += 1;
            if let Some(Ok(d)) = event.recipients.first() {
                let _ = heuristics::record_verified(rules, store, d, event.ts).await;
            }
            return;
        }
        What::Failed => {
            summary.outcomes += 1;
            return;
        }
    };
    let facts = Facts {
        kind,
        recipients: &event.recipients,
        ip: event.ip,
        user: event.user.as_deref(),
        account: event.account.as_deref(),
        sender: None,
        segments: event.segments,
    };
    let d = decide::decide(rules, store, &facts, event.ts, Commit::Yes).await;
    if matches!(d.verdict, Verdict::Allow) && event.not_taken {
        let _ = heuristics::give_back(store, &d.counted, event.ts).await;
    }
    let hit = d.verdict.hit();
    summary.decisions.push(LineDecision {
        line: event.line,
        decision: d.verdict.as_str(),
        reasons: hit.map(|h| vec![h.reason.as_str()]).unwrap_or_default(),
        rule: hit.map(|h| h.rule.to_string()),
        label: event.label,
        cost: d.cost.unwrap_or(0.0),
        country: match event.recipients.first() {
            Some(Ok(dest)) => dest
                .country()
                .map_or_else(|| "unknown".into(), |c| c.to_string()),
            _ => "invalid".into(),
        },
    });
}

/// Writes one `{"line", "decision", "reasons"}` object per send.
pub fn write_decisions(summary: &Summary, mut out: impl Write) -> std::io::Result<()> {
    for d in &summary.decisions {
        serde_json::to_writer(
            &mut out,
            &serde_json::json!({"line": d.line, "decision": d.decision, "reasons": d.reasons}),
        )?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// The sends decided differently by two rule sets: (line, A, B).
pub fn compare<'a>(a: &'a Summary, b: &'a Summary) -> Vec<(&'a LineDecision, &'a LineDecision)> {
    a.decisions
        .iter()
        .zip(&b.decisions)
        .filter(|(x, y)| x.decision != y.decision || x.reasons != y.reasons)
        .collect()
}
