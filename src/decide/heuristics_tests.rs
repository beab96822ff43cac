//! Each heuristic against a fake clock: fires at the threshold and not before, windows
//! slide, auto-blocks expire and escalate, verification changes decisions.

use std::time::Duration;

use super::super::{decide, Commit, Facts, Reason, Recipient, Verdict};
use super::record_verified;
use crate::clock::Timestamp;
use crate::phone::{normalize, NumberFormat};
use crate::providers::RequestKind;
use crate::rules::RuleSet;
use crate::store::{memory::MemoryStore, Store};

const T0: u64 = 1_795_341_600;

fn rules(text: &str) -> RuleSet {
    RuleSet::compile([("h.toml", text)]).unwrap_or_else(|e| panic!("{e:?}"))
}

fn store() -> Store {
    Store::Memory(MemoryStore::new(100_000))
}

fn at(secs: u64) -> Timestamp {
    Timestamp::from_unix_secs(T0 + secs)
}

fn to(n: &str) -> [Recipient; 1] {
    [normalize(n, NumberFormat::E164, None)]
}

async fn send(r: &RuleSet, s: &Store, n: &str, t: Timestamp) -> Verdict {
    send_from(r, s, n, t, None).await
}

async fn send_from(r: &RuleSet, s: &Store, n: &str, t: Timestamp, ip: Option<[u8; 4]>) -> Verdict {
    send_n(r, s, n, t, ip, 1).await
}

/// A send of `segments` segments to `n`, from `ip`.
async fn send_n(
    r: &RuleSet,
    s: &Store,
    n: &str,
    t: Timestamp,
    ip: Option<[u8; 4]>,
    segments: u32,
) -> Verdict {
    let rec = to(n);
    let f = Facts {
        kind: RequestKind::Send,
        recipients: &rec,
        ip: ip.map(std::net::IpAddr::from),
        user: None,
        account: None,
        sender: None,
        segments,
    };
    decide(r, s, &f, t, Commit::Yes).await.verdict
}

fn reason(v: &Verdict) -> Option<Reason> {
    v.hit().map(|h| h.reason)
}

#[tokio::test]
async fn prefix_velocity_counts_distinct_numbers_and_slides() {
    let r = rules("[[heuristic]]\nname = \"pv\"\nkind = \"prefix_velocity\"\ndrop_digits = [3]\nwindow = \"10m\"\nmax_distinct = 3\n");
    let s = store();
    for i in 0..3 {
        assert_eq!(
            send(&r, &s, &format!("+44740012310{i}"), at(0)).await,
            Verdict::Allow,
            "{i}"
        );
    }
    // The same number again is not a new distinct one.
    assert_eq!(send(&r, &s, "+447400123100", at(1)).await, Verdict::Allow);
    // The fourth distinct number of the block fires.
    assert_eq!(
        reason(&send(&r, &s, "+447400123104", at(2)).await),
        Some(Reason::PrefixVelocity)
    );
    // Another block is not affected.
    assert_eq!(send(&r, &s, "+447400124104", at(2)).await, Verdict::Allow);
    // Ten minutes later the window has slid past the first three.
    assert_eq!(send(&r, &s, "+447400123105", at(601)).await, Verdict::Allow);
}

#[tokio::test]
async fn adjacent_numbers_catch_a_range_walk() {
    let r = rules("[[heuristic]]\nname = \"walk\"\nkind = \"adjacent_numbers\"\ndistance = 20\nwindow = \"1h\"\nmax_near = 3\n");
    let s = store();
    // Scattered numbers of one country are fine.
    for (i, n) in [
        "+447400100000",
        "+447400200000",
        "+447400300000",
        "+447400400000",
        "+447400500000",
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(send(&r, &s, n, at(i as u64)).await, Verdict::Allow);
    }
    // A walk: the fourth consecutive number has three neighbours within 20.
    for i in 0..3 {
        assert_eq!(
            send(&r, &s, &format!("+44740090000{i}"), at(10)).await,
            Verdict::Allow,
            "{i}"
        );
    }
    assert_eq!(
        reason(&send(&r, &s, "+447400900003", at(10)).await),
        Some(Reason::AdjacentNumbers)
    );
}

#[tokio::test]
async fn conversion_rate_needs_volume_and_feedback_changes_it() {
    let text = "[settings]\ntrust_verified = \"30d\"\n\
[[heuristic]]\nname = \"conv\"\nkind = \"conversion_rate\"\nkey = \"country\"\nwindow = \"1h\"\nmin_sends = 5\nmin_rate = 0.3\n";
    let r = rules(text);
    let s = store();
    // Four unverified sends to Jamaica: below the minimum volume, all pass.
    for i in 0..4 {
        assert_eq!(
            send(&r, &s, &format!("+1876555012{i}"), at(i)).await,
            Verdict::Allow,
            "{i}"
        );
    }
    // The fifth makes 5 sends, 0 verified: refused.
    assert_eq!(
        reason(&send(&r, &s, "+18765550129", at(10)).await),
        Some(Reason::LowConversion)
    );
    // Two verifications lift the rate to 2/5 = 40%.
    for n in ["+18765550120", "+18765550121"] {
        let d = normalize(n, NumberFormat::E164, None).unwrap();
        record_verified(&r, &s, &d, at(11)).await.unwrap();
    }
    assert_eq!(send(&r, &s, "+18765550129", at(12)).await, Verdict::Allow);
    // A number that verified is trusted and skips heuristics even when the rate drops.
    for i in 0..10 {
        send(&r, &s, &format!("+1876555013{i}"), at(20)).await;
    }
    assert_eq!(
        reason(&send(&r, &s, "+18765550140", at(21)).await),
        Some(Reason::LowConversion)
    );
    assert_eq!(
        send(&r, &s, "+18765550120", at(21)).await,
        Verdict::Allow,
        "trusted"
    );
}

/// A trusted number's sends skip the heuristics and are not counted, so its verifications
/// are not counted either: one real phone verified again and again (or one verification
/// reported twice, by the Verify check and by feedback) must not lift its country's rate.
#[tokio::test]
async fn a_trusted_numbers_verifications_do_not_whitewash_its_country() {
    let text = "[settings]\ntrust_verified = \"30d\"\n\
[[heuristic]]\nname = \"conv\"\nkind = \"conversion_rate\"\nkey = \"country\"\nwindow = \"1h\"\nmin_sends = 5\nmin_rate = 0.5\n";
    let r = rules(text);
    let s = store();
    let own = "+18765550100";
    let d = normalize(own, NumberFormat::E164, None).unwrap();
    // One send, one verification: counted once each.
    assert_eq!(send(&r, &s, own, at(0)).await, Verdict::Allow);
    record_verified(&r, &s, &d, at(1)).await.unwrap();
    // The same phone again and again: trusted, so neither its sends nor its codes count.
    for k in 0..10 {
        assert_eq!(send(&r, &s, own, at(2 + k)).await, Verdict::Allow);
        record_verified(&r, &s, &d, at(2 + k)).await.unwrap();
    }
    // Pumping: 4 more sends make 5, with 1 verified: 1 < 0.5 × 5.
    for i in 1..4 {
        assert_eq!(
            send(&r, &s, &format!("+1876555020{i}"), at(20)).await,
            Verdict::Allow
        );
    }
    assert_eq!(
        reason(&send(&r, &s, "+18765550204", at(21)).await),
        Some(Reason::LowConversion)
    );
}

/// Likewise a number an allow list lets skip a heuristic: its sends are not counted there,
/// nor are its verifications.
#[tokio::test]
async fn an_allow_listed_numbers_verifications_do_not_count() {
    let text = "[[list]]\nname = \"qa\"\naction = \"allow\"\nnumbers = [\"+18765550100\"]\nskip = [\"heuristics\"]\n\
[[heuristic]]\nname = \"conv\"\nkind = \"conversion_rate\"\nkey = \"country\"\nwindow = \"1h\"\nmin_sends = 3\nmin_rate = 0.5\n";
    let r = rules(text);
    let s = store();
    let qa = normalize("+18765550100", NumberFormat::E164, None).unwrap();
    for k in 0..5 {
        assert_eq!(send(&r, &s, "+18765550100", at(k)).await, Verdict::Allow);
        record_verified(&r, &s, &qa, at(k)).await.unwrap();
    }
    for i in 1..3 {
        assert_eq!(
            send(&r, &s, &format!("+1876555020{i}"), at(20)).await,
            Verdict::Allow
        );
    }
    assert_eq!(
        reason(&send(&r, &s, "+18765550203", at(21)).await),
        Some(Reason::LowConversion)
    );
}

#[tokio::test]
async fn country_budget_follows_the_verified_baseline() {
    let text = "[[heuristic]]\nname = \"cb\"\nkind = \"country_budget\"\nwindow = \"1h\"\nbaseline_window = \"24h\"\nfloor = 3\nmultiplier = 24.0\nmax = 100\n";
    let r = rules(text);
    let s = store();
    for i in 0..3 {
        assert_eq!(
            send(&r, &s, &format!("+4915112345{i:03}"), at(i)).await,
            Verdict::Allow
        );
    }
    assert_eq!(
        reason(&send(&r, &s, "+4915112345999", at(5)).await),
        Some(Reason::CountryBudget)
    );
    // Ten verifications in the baseline: cap = max(3, 10 × 24 × 1h/24h) = 10.
    let d = normalize("+4915112345000", NumberFormat::E164, None).unwrap();
    for _ in 0..10 {
        record_verified(&r, &s, &d, at(6)).await.unwrap();
    }
    for i in 0..7 {
        assert_eq!(
            send(&r, &s, &format!("+4915112346{i:03}"), at(7)).await,
            Verdict::Allow,
            "{i}"
        );
    }
    assert_eq!(
        reason(&send(&r, &s, "+4915112347000", at(8)).await),
        Some(Reason::CountryBudget)
    );
}

#[tokio::test]
async fn spend_budget_uses_the_price_table() {
    let text = "[prices]\ndefault = 0.10\n[prices.countries]\nGB = 0.04\n\
[[heuristic]]\nname = \"spend\"\nkind = \"spend_budget\"\nhourly = 0.25\n";
    let r = rules(text);
    let s = store();
    // 0.10 each elsewhere: two pass (0.20), the third would make 0.30 > 0.25.
    assert_eq!(send(&r, &s, "+4915112345001", at(0)).await, Verdict::Allow);
    assert_eq!(send(&r, &s, "+4915112345002", at(0)).await, Verdict::Allow);
    assert_eq!(
        reason(&send(&r, &s, "+4915112345003", at(0)).await),
        Some(Reason::SpendBudget)
    );
    // A GB message costs 0.04: 0.24 still fits.
    assert_eq!(send(&r, &s, "+447400123456", at(0)).await, Verdict::Allow);
    // An hour later the budget is back.
    assert_eq!(
        send(&r, &s, "+4915112345003", at(3601)).await,
        Verdict::Allow
    );
}

#[tokio::test]
async fn ip_spread_and_auto_block_escalation() {
    let text = "[[heuristic]]\nname = \"spread\"\nkind = \"ip_spread\"\nwindow = \"1h\"\nmax_countries = 2\nblock_for = \"10m\"\nmax_block = \"1h\"\n";
    let r = rules(text);
    let s = store();
    let ip = Some([203, 0, 113, 5]);
    assert_eq!(
        send_from(&r, &s, "+447400123456", at(0), ip).await,
        Verdict::Allow
    );
    assert_eq!(
        send_from(&r, &s, "+4915112345678", at(0), ip).await,
        Verdict::Allow
    );
    assert_eq!(
        reason(&send_from(&r, &s, "+18765550123", at(0), ip).await),
        Some(Reason::IpSpread)
    );
    // Now the IP is blocked outright, whatever it sends.
    assert_eq!(
        reason(&send_from(&r, &s, "+447400123456", at(60), ip).await),
        Some(Reason::AutoBlocked)
    );
    assert_eq!(
        send_from(&r, &s, "+447400123456", at(60), Some([198, 51, 100, 1])).await,
        Verdict::Allow
    );
    // The block expires after 10 minutes …
    assert_eq!(
        reason(&send_from(&r, &s, "+447400123456", at(599), ip).await),
        Some(Reason::AutoBlocked)
    );
    let later = 3601 + 601;
    assert_eq!(
        send_from(&r, &s, "+447400123456", at(later), ip).await,
        Verdict::Allow
    );
    // … and a repeat offence blocks for twice as long.
    send_from(&r, &s, "+4915112345678", at(later), ip).await;
    assert_eq!(
        reason(&send_from(&r, &s, "+18765550123", at(later), ip).await),
        Some(Reason::IpSpread)
    );
    assert_eq!(
        reason(&send_from(&r, &s, "+447400123456", at(later + 1100), ip).await),
        Some(Reason::AutoBlocked)
    );
    let blocks = s.list_flags(at(later)).await.unwrap();
    let block = blocks
        .iter()
        .find(|f| f.label == "spread ip 203.0.113.5")
        .expect("listed");
    assert_eq!(
        (block.level, block.until),
        (1, at(later + 1200)),
        "twice the first period"
    );
    // After 20 minutes the block itself is over (the spread still shows in the window,
    // so the heuristic answers, and blocks again for 40 minutes).
    let after = send_from(&r, &s, "+447400123456", at(later + 1201), ip).await;
    assert_eq!(reason(&after), Some(Reason::IpSpread));
}

#[tokio::test]
async fn shadow_heuristics_and_dry_runs() {
    let r = rules("[[heuristic]]\nname = \"pv\"\nmode = \"shadow\"\nkind = \"prefix_velocity\"\ndrop_digits = [3]\nwindow = \"10m\"\nmax_requests = 1\n");
    let s = store();
    assert_eq!(send(&r, &s, "+447400123100", at(0)).await, Verdict::Allow);
    let rec = to("+447400123101");
    let f = Facts {
        kind: RequestKind::Send,
        recipients: &rec,
        ip: None,
        user: None,
        account: None,
        sender: None,
        segments: 1,
    };
    let d = decide(&r, &s, &f, at(0), Commit::DryRun).await;
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(d.shadow[0].reason, Reason::PrefixVelocity);
    // The dry run recorded nothing: a real send sees 2 requests, not 3.
    let d = decide(&r, &s, &f, at(0), Commit::Yes).await;
    assert_eq!(d.shadow.len(), 1);
}

#[test]
fn heuristic_schema_errors_name_the_field() {
    let bad = "[[heuristic]]\nname = \"x\"\nkind = \"prefix_velocity\"\nwindow = \"10m\"\nmax_distinct = 3\nmin_rate = 0.5\n";
    let e = RuleSet::compile([("h.toml", bad)]).unwrap_err();
    assert_eq!(
        e[0].to_string(),
        "h.toml:1: x: min_rate does not apply to kind = \"prefix_velocity\""
    );
    let missing = "[[heuristic]]\nname = \"y\"\nkind = \"adjacent_numbers\"\nwindow = \"10m\"\n";
    let e = RuleSet::compile([("h.toml", missing)]).unwrap_err();
    assert!(
        e[0].to_string().contains("needs distance and max_near"),
        "{e:?}"
    );
    let kind = "[[heuristic]]\nname = \"z\"\nkind = \"vibes\"\n";
    assert!(RuleSet::compile([("h.toml", kind)]).unwrap_err()[0]
        .to_string()
        .contains("unknown kind \"vibes\""));
}

#[tokio::test]
async fn windows_are_bounded_per_key() {
    let r = rules("[[heuristic]]\nname = \"pv\"\nkind = \"prefix_velocity\"\ndrop_digits = [6]\nwindow = \"10m\"\nmax_distinct = 65534\n");
    let s = store();
    for i in 0..2_000u64 {
        send(&r, &s, &format!("+4474001{:05}", i), at(0)).await;
    }
    let _ = Duration::ZERO;
    // One key; its member list is capped (u16), not one entry per number forever.
    assert!(s.stats().keys <= 2, "{:?}", s.stats());
}

#[tokio::test]
async fn a_heuristic_refusal_still_counts_against_the_limits() {
    let limit = "[[limit]]\nname = \"cooldown\"\nkey = \"number\"\nrate = \"1/1h\"\nburst = 1\n";
    let both = rules(&format!(
        "{limit}[prices]\ndefault = 0.10\n[[heuristic]]\nname = \"spend\"\nkind = \"spend_budget\"\nhourly = 0.05\n"
    ));
    let s = store();
    // The limit passes, the spend budget refuses.
    assert_eq!(
        reason(&send(&both, &s, "+447400123456", at(0)).await),
        Some(Reason::SpendBudget)
    );
    // The limit counted the attempt: it now refuses first, before any heuristic runs.
    assert_eq!(
        reason(&send(&both, &s, "+447400123456", at(1)).await),
        Some(Reason::RateLimited)
    );
}

/// Two enforced heuristics fire on one request: the first in rule-file order is the
/// verdict (here a conversion rate written before a prefix velocity), the other is still
/// acted on (its auto-block is set).
#[tokio::test]
async fn the_first_heuristic_in_file_order_is_the_verdict() {
    let r = rules(
        "[[heuristic]]\nname = \"conv\"\nkind = \"conversion_rate\"\nkey = \"country\"\nwindow = \"1h\"\nmin_sends = 3\nmin_rate = 0.5\n\
         [[heuristic]]\nname = \"pv\"\nkind = \"prefix_velocity\"\ndrop_digits = [3]\nwindow = \"10m\"\nmax_distinct = 2\nblock_for = \"1h\"\n",
    );
    let s = store();
    for i in 0..2 {
        let n = format!("+44740012310{i}");
        assert_eq!(send(&r, &s, &n, at(i)).await, Verdict::Allow, "{i}");
    }
    // Third send: three unverified sends to GB and a third distinct number in the block.
    let v = send(&r, &s, "+447400123102", at(2)).await;
    assert_eq!(reason(&v), Some(Reason::LowConversion));
    assert_eq!(v.hit().map(|h| &*h.rule), Some("conv"));
    // The prefix velocity still blocked its block: another number in it is refused by the
    // block even though conversion alone would refuse it too.
    let v = send(&r, &s, "+447400123109", at(3)).await;
    assert_eq!(reason(&v), Some(Reason::AutoBlocked));
    assert_eq!(v.hit().map(|h| &*h.rule), Some("pv"));
}

/// A valid number of no country (+870, Inmarsat) is charged once to the global budget,
/// and to a country budget of its own (it was charged to the global key twice).
#[tokio::test]
async fn a_number_of_no_country_is_charged_once_and_has_its_own_country_budget() {
    let d = normalize("+870773111632", NumberFormat::E164, None).unwrap();
    assert!(d.is_valid() && d.country().is_none());
    let text = "[prices]\ndefault = 0.10\n\
[[heuristic]]\nname = \"spend\"\nkind = \"spend_budget\"\nhourly = 0.25\ncountry_hourly = 0.15\n";
    let r = rules(text);
    let s = store();
    assert_eq!(send(&r, &s, "+870773111632", at(0)).await, Verdict::Allow);
    // 0.20 of the 0.25 global budget: allowed (the double charge made it 0.30).
    assert_eq!(send(&r, &s, "+4915112345001", at(0)).await, Verdict::Allow);
    // A second number of no country: 0.20 of its own 0.15 country budget.
    let v = send(&r, &s, "+870773111633", at(0)).await;
    assert_eq!(reason(&v), Some(Reason::SpendBudget));
}

/// An allow list that skips a spend budget (by its name, or all heuristics) is not
/// charged to it nor refused by it.
#[tokio::test]
async fn an_allow_list_skip_covers_the_spend_budget() {
    let text = "[prices]\ndefault = 0.10\n\
[[list]]\nname = \"qa\"\naction = \"allow\"\nprefixes = [\"+4915112345\"]\nskip = [\"spend\"]\n\
[[heuristic]]\nname = \"spend\"\nkind = \"spend_budget\"\nhourly = 0.15\n";
    let r = rules(text);
    let s = store();
    // The allow-listed range skips the budget, however much it sends.
    for i in 0..3 {
        let n = format!("+4915112345{i:03}");
        assert_eq!(send(&r, &s, &n, at(i)).await, Verdict::Allow, "{i}");
    }
    // And was not charged to it: a number outside the list still has the whole budget.
    assert_eq!(send(&r, &s, "+4915199999001", at(5)).await, Verdict::Allow);
}

/// A user whose allow list skips the heuristics is not refused by a heuristic's IP
/// auto-block (set by other traffic from the same address).
#[tokio::test]
async fn an_allow_list_skip_covers_ip_auto_blocks() {
    let text = "[[list]]\nname = \"qa\"\naction = \"allow\"\nusers = [\"qa-automation\"]\nskip = [\"limits\", \"heuristics\"]\n\
[[heuristic]]\nname = \"spread\"\nkind = \"ip_spread\"\nwindow = \"1h\"\nmax_numbers = 1\nblock_for = \"1h\"\n";
    let r = rules(text);
    let s = store();
    let ip = Some([203, 0, 113, 5]);
    send_from(&r, &s, "+447400123456", at(0), ip).await;
    assert_eq!(
        reason(&send_from(&r, &s, "+447400123457", at(1), ip).await),
        Some(Reason::IpSpread)
    );
    let rec = to("+447400123458");
    let f = Facts {
        kind: RequestKind::Send,
        recipients: &rec,
        ip: ip.map(std::net::IpAddr::from),
        user: Some("qa-automation"),
        account: None,
        sender: None,
        segments: 1,
    };
    assert_eq!(
        decide(&r, &s, &f, at(2), Commit::Yes).await.verdict,
        Verdict::Allow
    );
}

#[test]
fn a_spend_budget_without_prices_is_a_mistake() {
    let text = "[[heuristic]]\nname = \"spend\"\nkind = \"spend_budget\"\nhourly = 0.15\n";
    let e = RuleSet::compile([("h.toml", text)]).expect_err("never fires without prices");
    assert!(e[0].to_string().contains("[prices]"), "{e:?}");
}

/// `max_near` above the window's default member cap (256) could never be reached.
#[tokio::test]
async fn adjacent_numbers_fire_above_the_default_member_cap() {
    let r = rules("[[heuristic]]\nname = \"walk\"\nkind = \"adjacent_numbers\"\ndistance = 1000\nwindow = \"1h\"\nmax_near = 300\n");
    let s = store();
    for i in 0..300 {
        let n = format!("+4474001{:05}", i);
        assert_eq!(send(&r, &s, &n, at(0)).await, Verdict::Allow, "{i}");
    }
    // 300 neighbours within 1000 of this one.
    assert_eq!(
        reason(&send(&r, &s, "+447400100300", at(1)).await),
        Some(Reason::AdjacentNumbers)
    );
}

/// Distinct counts saturate just above the member cap (a u16): a larger threshold could
/// never fire, so it is a mistake `check-rules` reports.
#[test]
fn distinct_thresholds_past_the_member_cap_are_mistakes() {
    for (kind, field) in [
        ("prefix_velocity", "max_distinct"),
        ("ip_spread", "max_numbers"),
    ] {
        let text = format!(
            "[[heuristic]]\nname = \"x\"\nkind = \"{kind}\"\nwindow = \"10m\"\n{field} = 70000\n"
        );
        let e = RuleSet::compile([("h.toml", text.as_str())]).expect_err(field);
        assert!(e[0].to_string().contains(field), "{e:?}");
    }
}

/// Two requests of one burst both read "no block" and both trip the heuristic: the second
/// auto-block finds the first one's block in force and is the same offence — it neither
/// doubles the period nor counts a second offence (it used to read the first one's
/// offence count and block for twice as long, and so on for every request of the burst).
#[tokio::test]
async fn an_auto_block_already_in_force_is_not_a_second_offence() {
    let text = "[[heuristic]]\nname = \"pv\"\nkind = \"prefix_velocity\"\ndrop_digits = [3]\nwindow = \"10m\"\nmax_distinct = 2\nblock_for = \"10m\"\nmax_block = \"24h\"\n";
    let r = rules(text);
    let s = store();
    let h = &r.heuristics[0];
    let e = crate::store::Entity::Prefix(447_400_123);
    let b = super::AutoBlock::new(h, e, Duration::from_secs(600));
    for _ in 0..3 {
        super::auto_block(&s, &b, at(0)).await.unwrap();
    }
    let blocks = s.list_flags(at(0)).await.unwrap();
    let block = blocks
        .iter()
        .find(|f| f.label == "pv prefix +447400123")
        .expect("listed");
    assert_eq!((block.level, block.until), (0, at(600)), "one offence");
    // After the block, a new offence is a repeat: twice the period.
    super::auto_block(&s, &b, at(700)).await.unwrap();
    let blocks = s.list_flags(at(700)).await.unwrap();
    let block = blocks
        .iter()
        .find(|f| f.label == "pv prefix +447400123")
        .expect("listed");
    assert_eq!((block.level, block.until), (1, at(700 + 1200)));
}

/// The worked examples of the README's "Pumping heuristics" section, rule by rule with
/// the README's own settings.
mod readme_examples {
    use super::*;

    #[tokio::test]
    async fn prefix_distinct_numbers() {
        let r = rules("[[heuristic]]\nname = \"prefix-distinct-numbers\"\nkind = \"prefix_velocity\"\ndrop_digits = [3, 4]\nwindow = \"10m\"\nmax_distinct = 8\nblock_for = \"30m\"\n");
        // The 9th distinct number of one 1k block within 10 minutes is refused …
        let s = store();
        for i in 0..8 {
            let n = format!("+447400123{:03}", 100 + i);
            assert_eq!(send(&r, &s, &n, at(i)).await, Verdict::Allow, "{n}");
        }
        assert_eq!(
            reason(&send(&r, &s, "+447400123456", at(10)).await),
            Some(Reason::PrefixVelocity)
        );
        // … and the 10k block (+44740012) is refused for 30 minutes.
        assert_eq!(
            reason(&send(&r, &s, "+447400129000", at(60)).await),
            Some(Reason::AutoBlocked)
        );
        assert_eq!(
            reason(&send(&r, &s, "+447400129000", at(10 + 1799)).await),
            Some(Reason::AutoBlocked)
        );
        assert_eq!(
            send(&r, &s, "+447400129000", at(10 + 1800)).await,
            Verdict::Allow
        );
        // So is the 9th distinct number of one 10k block, over several 1k blocks.
        let s = store();
        for i in 0..8 {
            let n = format!("+44740012{i}456");
            assert_eq!(send(&r, &s, &n, at(i)).await, Verdict::Allow, "{n}");
        }
        assert_eq!(
            reason(&send(&r, &s, "+447400128456", at(10)).await),
            Some(Reason::PrefixVelocity)
        );
    }

    #[tokio::test]
    async fn range_walk() {
        let r = rules("[[heuristic]]\nname = \"range-walk\"\nkind = \"adjacent_numbers\"\ndistance = 50\nwindow = \"1h\"\nmax_near = 3\nblock_for = \"1h\"\n");
        let s = store();
        for n in ["+447400123456", "+447400123457", "+447400123458"] {
            assert_eq!(send(&r, &s, n, at(0)).await, Verdict::Allow, "{n}");
        }
        assert_eq!(
            reason(&send(&r, &s, "+447400123459", at(600)).await),
            Some(Reason::AdjacentNumbers)
        );
    }

    #[tokio::test]
    async fn country_conversion() {
        let r = rules("[[heuristic]]\nname = \"country-conversion\"\nkind = \"conversion_rate\"\nkey = \"country\"\nwindow = \"6h\"\nmin_sends = 15\nmin_rate = 0.10\nblock_for = \"30m\"\n");
        let s = store();
        // 15 codes to KG in six hours, 1 verified: 1 < 0.10 × 15, refused.
        for i in 0..14 {
            let n = format!("+9967001234{i:02}");
            assert_eq!(send(&r, &s, &n, at(i * 1000)).await, Verdict::Allow, "{n}");
        }
        let first = normalize("+996700123400", NumberFormat::E164, None).unwrap();
        record_verified(&r, &s, &first, at(14_000)).await.unwrap();
        assert_eq!(
            reason(&send(&r, &s, "+996700123414", at(14_100)).await),
            Some(Reason::LowConversion)
        );
        // KG is blocked 30 minutes.
        assert_eq!(
            reason(&send(&r, &s, "+996700999999", at(14_100 + 1799)).await),
            Some(Reason::AutoBlocked)
        );
    }

    #[tokio::test]
    async fn country_budget() {
        let r = rules("[[heuristic]]\nname = \"country-budget\"\nkind = \"country_budget\"\nwindow = \"1h\"\nbaseline_window = \"24h\"\nfloor = 1000\nmultiplier = 4.0\nmax = 100000\n");
        let t = 86_400;
        for (verified, cap) in [(2_400, 1_000), (12_000, 2_000)] {
            let s = store();
            let d = normalize("+4915112345678", NumberFormat::E164, None).unwrap();
            for _ in 0..verified {
                record_verified(&r, &s, &d, at(t - 3 * 3600)).await.unwrap();
            }
            for i in 0..cap {
                let n = format!("+4915112{i:06}");
                assert_eq!(
                    send(&r, &s, &n, at(t)).await,
                    Verdict::Allow,
                    "{verified}: {n}"
                );
            }
            assert_eq!(
                reason(&send(&r, &s, "+4915119999999", at(t)).await),
                Some(Reason::CountryBudget),
                "{verified}"
            );
        }
    }

    #[tokio::test]
    async fn ip_spread() {
        let r = rules("[[heuristic]]\nname = \"ip-spread\"\nkind = \"ip_spread\"\nkey = \"ip\"\nwindow = \"1h\"\nmax_countries = 3\nmax_numbers = 10\nblock_for = \"1h\"\n");
        let s = store();
        let ip = Some([203, 0, 113, 7]);
        for i in 0..10 {
            let n = format!("+4474001234{i:02}");
            assert_eq!(
                send_from(&r, &s, &n, at(i), ip).await,
                Verdict::Allow,
                "{n}"
            );
        }
        // The 11th distinct number from one IP within an hour is refused, and the IP for
        // an hour.
        assert_eq!(
            reason(&send_from(&r, &s, "+447400123410", at(20), ip).await),
            Some(Reason::IpSpread)
        );
        assert_eq!(
            reason(&send_from(&r, &s, "+447400123400", at(20 + 3599), ip).await),
            Some(Reason::AutoBlocked)
        );
    }

    #[tokio::test]
    async fn spend_budget() {
        let r = rules("[prices]\ncurrency = \"USD\"\ndefault = 0.08\n[prices.countries]\nGB = 0.040\nKG = 0.35\n\
[[heuristic]]\nname = \"spend-budget\"\nkind = \"spend_budget\"\nhourly = 200.0\ndaily = 2000.0\ncountry_hourly = 50.0\ncountry_daily = 500.0\n");
        let s = store();
        // A 2-segment code to KG costs 0.70: 71 fit in 50.00 an hour, the 72nd is refused.
        for i in 0..71 {
            let n = format!("+9967001234{i:02}");
            assert_eq!(
                send_n(&r, &s, &n, at(i), None, 2).await,
                Verdict::Allow,
                "{n}"
            );
        }
        assert_eq!(
            reason(&send_n(&r, &s, "+996700123499", at(100), None, 2).await),
            Some(Reason::SpendBudget)
        );
    }
}

/// A repeat offender's block doubles up to `max_block`, and an offence more than a day
/// after the last block ended starts again at `block_for` (README, "Auto-block").
#[tokio::test]
async fn auto_blocks_double_up_to_max_block_and_reset_after_a_quiet_day() {
    let text = "[[heuristic]]\nname = \"spread\"\nkind = \"ip_spread\"\nwindow = \"1m\"\nmax_numbers = 1\nblock_for = \"10m\"\nmax_block = \"25m\"\n";
    let r = rules(text);
    let s = store();
    let ip = Some([203, 0, 113, 5]);
    let mut t = 0;
    // (quiet time after the block ends, then: level, block length in minutes)
    for (quiet, level, minutes) in [
        (0, 0, 10),
        (61, 1, 20),
        (61, 2, 25),
        (86_400 - 1, 3, 25),
        (86_400 + 1, 0, 10),
    ] {
        t += quiet;
        assert_eq!(
            send_from(&r, &s, "+447400123456", at(t), ip).await,
            Verdict::Allow,
            "at {t}"
        );
        let v = send_from(&r, &s, "+447400123999", at(t), ip).await;
        assert_eq!(reason(&v), Some(Reason::IpSpread), "at {t}");
        let flags = s.list_flags(at(t)).await.unwrap();
        let block = flags
            .iter()
            .find(|f| f.label == "spread ip 203.0.113.5")
            .expect("blocked");
        assert_eq!(
            (block.level, block.until),
            (level, at(t + minutes * 60)),
            "at {t}"
        );
        t += minutes * 60;
    }
}
