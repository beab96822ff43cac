//! `smsfence replay`: recorded traffic through a rule set, offline and deterministic.
//!
//! Each JSON line is one event — `ts` (RFC 3339), `event` (`send`, `verified`, `failed`),
//! `number`, and optionally `numbers`, `ip`, `user`, `account`, `provider`, `segments`,
//! `country_hint`, `kind`, `label` — in the shape smsfence's own audit log writes, so
//! production traffic replays as is (other fields are ignored). Time comes from the `ts`
//! of each line; every rule set gets a fresh in-memory store. Malformed lines are
//! reported with their line number and skipped. Nothing here touches the network.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::net::IpAddr;

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

/// Runs `input` through `rules`. Optional progress callback gets bytes read so far.
pub async fn replay(
    rules: &RuleSet,
    input: impl BufRead,
    mut progress: impl FnMut(u64),
) -> std::io::Result<Summary> {
    let store = Store::Memory(MemoryStore::new(50_000_000));
    let mut summary = Summary::default();
    let mut read = 0u64;
    // Split on bytes, not `lines()`: a line that is not UTF-8 is one malformed line, not
    // an I/O error that ends the replay.
    for (i, line) in input.split(b'\n').enumerate() {
        let mut line = line?;
        let n = i + 1;
        summary.lines = n;
        read += line.len() as u64 + 1;
        if n % 65_536 == 0 {
            progress(read);
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let mut bad = |msg: String| {
            summary.malformed_count += 1;
            if summary.malformed.len() < 20 {
                summary.malformed.push((n, msg));
            }
        };
        let Ok(line) = String::from_utf8(line) else {
            bad("not UTF-8 text".into());
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line = match serde_json::from_str(&line) {
            Ok(l) => l,
            Err(e) => {
                bad(format!("not a JSON event ({e})"));
                continue;
            }
        };
        let Some(ts) = Timestamp::parse_rfc3339(&parsed.ts) else {
            bad(format!("ts {:?} is not an RFC 3339 time", parsed.ts));
            continue;
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
            bad("no number".into());
            continue;
        }
        // An audit log written with numbers = "masked" or "hash" keeps no number to
        // decide on: say so rather than decide `invalid_number` (or, for a masked
        // verification, credit a shorter number).
        if raw.iter().any(|r| r.contains('*') || r.starts_with("h:")) {
            bad("the number is masked or hashed: replay needs an audit log written with numbers = \"full\"".into());
            continue;
        }
        let recipients: Vec<Recipient> = raw
            .iter()
            .map(|r| phone::normalize(r, format, region))
            .collect();
        match parsed.event.as_str() {
            "verified" | "failed" => {
                summary.outcomes += 1;
                if parsed.event == "verified" {
                    if let Some(Ok(d)) = recipients.first() {
                        let _ = heuristics::record_verified(rules, &store, d, ts).await;
                    } else {
                        bad("the number is not a phone number (masked or hashed audit numbers cannot be replayed)".into());
                    }
                }
            }
            "send" => {
                let kind = match parsed.kind.as_deref().map(RequestKind::parse) {
                    Some(Some(k)) => k,
                    Some(None) => {
                        bad(format!(
                            "unknown kind {:?}",
                            parsed.kind.unwrap_or_default()
                        ));
                        continue;
                    }
                    None => RequestKind::Send,
                };
                let ip = match parsed.ip.as_deref().map(str::parse::<IpAddr>) {
                    Some(Err(_)) => {
                        bad("ip is not an IP address".into());
                        continue;
                    }
                    Some(Ok(ip)) => Some(ip),
                    None => None,
                };
                let facts = Facts {
                    kind,
                    recipients: &recipients,
                    ip,
                    user: parsed.user.as_deref(),
                    account: parsed.account.as_deref(),
                    sender: None,
                    segments: parsed.segments.unwrap_or(1),
                };
                let d = decide::decide(rules, &store, &facts, ts, Commit::Yes).await;
                let hit = d.verdict.hit();
                summary.decisions.push(LineDecision {
                    line: n,
                    decision: d.verdict.as_str(),
                    reasons: hit.map(|h| vec![h.reason.as_str()]).unwrap_or_default(),
                    rule: hit.map(|h| h.rule.to_string()),
                    label: parsed.label,
                    cost: d.cost.unwrap_or(0.0),
                    country: match recipients.first() {
                        Some(Ok(dest)) => dest
                            .country()
                            .map_or_else(|| "unknown".into(), |c| c.to_string()),
                        _ => "invalid".into(),
                    },
                });
                if matches!(d.verdict, Verdict::Allow) {
                    // Nothing else: the store already recorded it.
                }
            }
            other => bad(format!("event {other:?} is not send, verified or failed")),
        }
    }
    Ok(summary)
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
