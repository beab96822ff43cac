//! Decision tests: every rule kind against a fake clock, all-or-nothing, shadow mode.

use std::net::IpAddr;
use std::time::Duration;

use super::*;
use crate::phone::{normalize, NumberFormat};
use crate::rules::RuleSet;
use crate::store::memory::MemoryStore;

const T0: u64 = 1_795_341_600;

fn rules(text: &str) -> RuleSet {
    RuleSet::compile([("test.toml", text)]).unwrap_or_else(|e| panic!("{e:?}"))
}

fn store() -> Store {
    Store::Memory(MemoryStore::new(10_000))
}

fn dest(n: &str) -> Recipient {
    normalize(n, NumberFormat::E164, None)
}

fn at(secs: u64) -> Timestamp {
    Timestamp::from_unix_secs(T0 + secs)
}

fn facts<'a>(recipients: &'a [Recipient]) -> Facts<'a> {
    Facts {
        kind: RequestKind::Send,
        recipients,
        ip: None,
        user: None,
        account: None,
        sender: None,
        segments: 1,
    }
}

async fn verdict(r: &RuleSet, s: &Store, f: &Facts<'_>, t: Timestamp) -> Verdict {
    decide(r, s, f, t, Commit::Yes).await.verdict
}

fn rule_of(v: &Verdict) -> Option<&str> {
    v.hit().map(|h| &*h.rule)
}

#[tokio::test]
async fn number_limit_burst_refill_and_retry_after() {
    let r = rules("[[limit]]\nname = \"n\"\nkey = \"number\"\nrate = \"2/60s\"\nburst = 2\n");
    let s = store();
    let to = [dest("+447400900123")];
    let f = facts(&to);
    assert_eq!(verdict(&r, &s, &f, at(0)).await, Verdict::Allow);
    assert_eq!(verdict(&r, &s, &f, at(0)).await, Verdict::Allow);
    match verdict(&r, &s, &f, at(0)).await {
        Verdict::Throttle { retry_after, hit } => {
            assert_eq!(retry_after, Duration::from_secs(30));
            assert_eq!(hit.reason, Reason::RateLimited);
            assert_eq!(&*hit.rule, "n");
            assert_eq!(hit.recipient, Some(0));
        }
        v => panic!("{v:?}"),
    }
    assert!(matches!(
        verdict(&r, &s, &f, at(29)).await,
        Verdict::Throttle { .. }
    ));
    assert_eq!(verdict(&r, &s, &f, at(30)).await, Verdict::Allow);
}

#[tokio::test]
async fn all_or_nothing_across_rules() {
    // A global cap of 3 and a per-number cap of 1: a refused request consumes neither.
    let r = rules(
        "[[limit]]\nname = \"num\"\nkey = \"number\"\nrate = \"1/hour\"\nburst = 1\n\
         [[limit]]\nname = \"all\"\nkey = \"global\"\nrate = \"3/hour\"\nburst = 3\n",
    );
    let s = store();
    let a = [dest("+447400900001")];
    assert_eq!(verdict(&r, &s, &facts(&a), at(0)).await, Verdict::Allow);
    for _ in 0..5 {
        // Refused by "num": must not eat the global budget.
        assert_eq!(
            rule_of(&verdict(&r, &s, &facts(&a), at(0)).await),
            Some("num")
        );
    }
    for n in ["+447400900002", "+447400900003"] {
        let b = [dest(n)];
        assert_eq!(verdict(&r, &s, &facts(&b), at(0)).await, Verdict::Allow);
    }
    let c = [dest("+447400900004")];
    assert_eq!(
        rule_of(&verdict(&r, &s, &facts(&c), at(0)).await),
        Some("all")
    );
}

#[tokio::test]
async fn multi_recipient_counts_each_and_names_the_culprit() {
    let r = rules(
        "[[limit]]\nname = \"num\"\nkey = \"number\"\nrate = \"1/hour\"\nburst = 1\n\
         [[limit]]\nname = \"acct\"\nkey = \"account\"\nrate = \"4/hour\"\nburst = 4\n",
    );
    let s = store();
    let first = [dest("+447400900002")];
    let mut f = facts(&first);
    f.account = Some("AC1");
    assert_eq!(verdict(&r, &s, &f, at(0)).await, Verdict::Allow);
    let three = [
        dest("+447400900001"),
        dest("+447400900002"),
        dest("+447400900003"),
    ];
    let mut f = facts(&three);
    f.account = Some("AC1");
    let v = verdict(&r, &s, &f, at(0)).await;
    assert_eq!(v.hit().map(|h| h.recipient), Some(Some(1)), "{v:?}");
    // Recipients 0 and 2 were not consumed, and the account budget (cost 3) neither.
    let two = [dest("+447400900001"), dest("+447400900003")];
    let mut f = facts(&two);
    f.account = Some("AC1");
    assert_eq!(verdict(&r, &s, &f, at(0)).await, Verdict::Allow);
    // Account used 1 + 2 = 3 of 4: a request with 2 recipients exceeds it.
    let more = [dest("+447400900005"), dest("+447400900006")];
    let mut f = facts(&more);
    f.account = Some("AC1");
    assert_eq!(rule_of(&verdict(&r, &s, &f, at(0)).await), Some("acct"));
}

#[tokio::test]
async fn prefix_country_ip_subnet_user_sender_keys() {
    let text = "\
[[limit]]\nname = \"pfx\"\nkey = \"prefix\"\ndrop_digits = 3\nrate = \"2/hour\"\nburst = 2\n\
[[limit]]\nname = \"sub\"\nkey = \"subnet\"\nipv4_prefix = 24\nrate = \"3/hour\"\nburst = 3\n\
[[limit]]\nname = \"usr\"\nkey = \"user\"\nrate = \"1/hour\"\nburst = 1\n\
[[limit]]\nname = \"snd\"\nkey = \"sender\"\nrate = \"1/hour\"\nburst = 1\n";
    let r = rules(text);
    let s = store();
    let n = |x: &str| [dest(x)];
    // Prefix: two numbers of the same 1k block pass, the third is refused.
    let (a, b, c) = (n("+447400900101"), n("+447400900102"), n("+447400900103"));
    assert_eq!(verdict(&r, &s, &facts(&a), at(0)).await, Verdict::Allow);
    assert_eq!(verdict(&r, &s, &facts(&b), at(0)).await, Verdict::Allow);
    assert_eq!(
        rule_of(&verdict(&r, &s, &facts(&c), at(0)).await),
        Some("pfx")
    );
    // Subnet: three IPs of one /24 share a bucket.
    let ip = |last: u8| Some(IpAddr::from([198, 51, 100, last]));
    for (i, num) in ["+447400800001", "+447400700001", "+447400600001"]
        .iter()
        .enumerate()
    {
        let to = n(num);
        let mut f = facts(&to);
        f.ip = ip(i as u8 + 1);
        assert_eq!(verdict(&r, &s, &f, at(0)).await, Verdict::Allow, "{num}");
    }
    let to = n("+447400500001");
    let mut f = facts(&to);
    f.ip = ip(200);
    assert_eq!(rule_of(&verdict(&r, &s, &f, at(0)).await), Some("sub"));
    // User and sender keys only apply when present.
    let to = n("+447400400001");
    let mut f = facts(&to);
    f.user = Some("u1");
    assert_eq!(verdict(&r, &s, &f, at(0)).await, Verdict::Allow);
    let to = n("+447400300001");
    let mut f = facts(&to);
    f.user = Some("u1");
    assert_eq!(rule_of(&verdict(&r, &s, &f, at(0)).await), Some("usr"));
    let (x, y) = (n("+447400200001"), n("+447400100001"));
    let mut f = facts(&x);
    f.sender = Some("ACME");
    assert_eq!(verdict(&r, &s, &f, at(0)).await, Verdict::Allow);
    let mut f = facts(&y);
    f.sender = Some("ACME");
    assert_eq!(rule_of(&verdict(&r, &s, &f, at(0)).await), Some("snd"));
}

#[tokio::test]
async fn country_key_uses_the_real_country() {
    let r = rules("[[limit]]\nname = \"cc\"\nkey = \"country\"\nrate = \"1/hour\"\nburst = 1\n");
    let s = store();
    let us = [dest("+14155550123")];
    let jm = [dest("+18765550123")];
    assert_eq!(verdict(&r, &s, &facts(&us), at(0)).await, Verdict::Allow);
    // Jamaica shares +1 with the US but is its own country.
    assert_eq!(verdict(&r, &s, &facts(&jm), at(0)).await, Verdict::Allow);
    let us2 = [dest("+12125550123")];
    assert_eq!(
        rule_of(&verdict(&r, &s, &facts(&us2), at(0)).await),
        Some("cc")
    );
}

#[tokio::test]
async fn italian_fixed_lines_are_italian_to_country_rules() {
    // +39 0… keeps its 0 in E.164: such numbers must still be IT to a deny list and a
    // country limit, not a valid number of no country that no country rule sees.
    let r = rules(
        "[[list]]\nname = \"no-it\"\naction = \"deny\"\ncountries = [\"IT\"]\nmode = \"shadow\"\n\
         [[limit]]\nname = \"cc\"\nkey = \"country\"\nrate = \"1/hour\"\nburst = 1\n",
    );
    let s = store();
    let milan = [dest("+390212345678")];
    let d = decide(&r, &s, &facts(&milan), at(0), Commit::Yes).await;
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(
        d.shadow.first().map(|h| h.reason),
        Some(Reason::DeniedCountry)
    );
    let mobile = [dest("+393123456789")];
    assert_eq!(
        rule_of(&verdict(&r, &s, &facts(&mobile), at(0)).await),
        Some("cc")
    );
}

#[tokio::test]
async fn ipv4_mapped_client_addresses_are_ipv4() {
    // As /v1/check and replay take them: ::ffff:1.2.3.4 is in 1.2.3.0/24 (and in a list
    // written ::ffff:5.6.7.0/120), and not in the same /56 as every other IPv4 client.
    let r = rules(
        "[[list]]\nname = \"d\"\naction = \"deny\"\ncidrs = [\"1.2.3.0/24\", \"::ffff:5.6.7.0/120\"]\n\
         [[limit]]\nname = \"s\"\nkey = \"subnet\"\nrate = \"1/hour\"\nburst = 1\n",
    );
    let s = store();
    let to = [dest("+447400123456")];
    let from = |ip: &str| Facts {
        ip: Some(ip.parse().expect("ip")),
        ..facts(&to)
    };
    for denied in ["::ffff:1.2.3.4", "5.6.7.8"] {
        let v = verdict(&r, &s, &from(denied), at(0)).await;
        assert_eq!(
            v.hit().map(|h| h.reason),
            Some(Reason::DeniedIp),
            "{denied}"
        );
    }
    assert_eq!(
        verdict(&r, &s, &from("::ffff:9.9.9.9"), at(0)).await,
        Verdict::Allow
    );
    assert_eq!(
        verdict(&r, &s, &from("::ffff:8.8.8.8"), at(0)).await,
        Verdict::Allow
    );
    assert_eq!(
        rule_of(&verdict(&r, &s, &from("9.9.9.10"), at(0)).await),
        Some("s")
    );
}

#[tokio::test]
async fn a_loosened_limit_applies_at_once_after_a_reload() {
    // A limit's state survives a reload that keeps its name and key, also when its rate
    // changes. Loosened from 1/day to 10/minute, a number that sent under the old rate
    // waits one new interval, not the rest of the old day.
    let daily = rules("[[limit]]\nname = \"n\"\nkey = \"number\"\nrate = \"1/day\"\nburst = 1\n");
    let fast = rules("[[limit]]\nname = \"n\"\nkey = \"number\"\nrate = \"10/1m\"\nburst = 10\n");
    let s = store();
    let to = [dest("+447400123456")];
    assert_eq!(
        verdict(&daily, &s, &facts(&to), at(0)).await,
        Verdict::Allow
    );
    assert!(matches!(
        verdict(&daily, &s, &facts(&to), at(60)).await,
        Verdict::Throttle { .. }
    ));
    match verdict(&fast, &s, &facts(&to), at(60)).await {
        Verdict::Throttle { retry_after, .. } => assert_eq!(retry_after, Duration::from_secs(6)),
        v => panic!("{v:?}"),
    }
    assert_eq!(
        verdict(&fast, &s, &facts(&to), at(66)).await,
        Verdict::Allow
    );
    // Tightened back, the state it left applies as it is.
    assert!(matches!(
        verdict(&daily, &s, &facts(&to), at(67)).await,
        Verdict::Throttle { .. }
    ));
}

#[tokio::test]
async fn kinds_scope_limits_to_verify_checks() {
    let r = rules(
        "[[limit]]\nname = \"guess\"\nkey = \"number\"\nkinds = [\"verify_check\"]\nrate = \"5/10m\"\nburst = 5\n",
    );
    let s = store();
    let to = [dest("+447400900123")];
    let mut check = facts(&to);
    check.kind = RequestKind::VerifyCheck;
    for _ in 0..5 {
        assert_eq!(verdict(&r, &s, &check, at(0)).await, Verdict::Allow);
    }
    assert_eq!(
        rule_of(&verdict(&r, &s, &check, at(0)).await),
        Some("guess")
    );
    // Sends are not counted by a verify_check limit.
    assert_eq!(verdict(&r, &s, &facts(&to), at(0)).await, Verdict::Allow);
}

#[tokio::test]
async fn lists_policies_and_expiry() {
    let text = r#"
[[list]]
name = "vip"
action = "allow"
numbers = ["+447400900999"]

[[list]]
name = "bad-range"
action = "deny"
prefixes = ["+4474009001"]
until = 2026-11-23T00:00:00Z

[[list]]
name = "bad-ip"
action = "deny"
cidrs = ["203.0.113.0/24"]

[[policy]]
name = "types"
deny_types = ["premium_rate"]

[[policy]]
name = "served"
country_mode = "allow"
countries = ["GB", "US"]

[[limit]]
name = "num"
key = "number"
rate = "1/hour"
burst = 1
"#;
    let r = rules(text);
    let s = store();
    let hit = |v: Verdict| v.hit().map(|h| (h.reason, h.rule.to_string()));
    let to = [dest("+447400900123")];
    assert_eq!(
        hit(verdict(&r, &s, &facts(&to), at(0)).await),
        Some((Reason::DeniedPrefix, "bad-range".into()))
    );
    // The deny entry expires at midnight.
    assert_eq!(
        verdict(&r, &s, &facts(&to), at(14 * 3600)).await,
        Verdict::Allow
    );
    let prem = [dest("+449098790123")];
    assert_eq!(
        hit(verdict(&r, &s, &facts(&prem), at(0)).await),
        Some((Reason::NumberType, "types".into()))
    );
    let de = [dest("+4915112345678")];
    assert_eq!(
        hit(verdict(&r, &s, &facts(&de), at(0)).await),
        Some((Reason::CountryNotAllowed, "served".into()))
    );
    let ok = [dest("+447400800123")];
    let mut f = facts(&ok);
    f.ip = Some(IpAddr::from([203, 0, 113, 9]));
    assert_eq!(
        hit(verdict(&r, &s, &f, at(0)).await),
        Some((Reason::DeniedIp, "bad-ip".into()))
    );
    // The allow-listed number skips limits entirely.
    let vip = [dest("+447400900999")];
    for _ in 0..5 {
        assert_eq!(verdict(&r, &s, &facts(&vip), at(0)).await, Verdict::Allow);
    }
}

#[tokio::test]
async fn invalid_numbers_are_refused() {
    let r = rules("[[limit]]\nname = \"n\"\nkey = \"number\"\nrate = \"1/hour\"\nburst = 1\n");
    let s = store();
    for raw in ["hello", "+99912345", "+4477"] {
        let to = [dest(raw)];
        let v = verdict(&r, &s, &facts(&to), at(0)).await;
        assert_eq!(
            v.hit().map(|h| h.reason),
            Some(Reason::InvalidNumber),
            "{raw}"
        );
        assert!(matches!(v, Verdict::Block(_)));
    }
}

#[tokio::test]
async fn shadow_rules_record_but_never_refuse() {
    let text = "\
[[limit]]\nname = \"n\"\nmode = \"shadow\"\nkey = \"number\"\nrate = \"1/hour\"\nburst = 1\n\
[[policy]]\nname = \"voip\"\nmode = \"shadow\"\ndeny_types = [\"premium_rate\"]\n";
    let r = rules(text);
    let s = store();
    let to = [dest("+447400900123")];
    let first = decide(&r, &s, &facts(&to), at(0), Commit::Yes).await;
    assert_eq!(first.verdict, Verdict::Allow);
    assert!(first.shadow.is_empty());
    let second = decide(&r, &s, &facts(&to), at(0), Commit::Yes).await;
    assert_eq!(second.verdict, Verdict::Allow);
    assert_eq!(second.shadow.len(), 1);
    assert_eq!(&*second.shadow[0].rule, "n");
    let prem = [dest("+449098790123")];
    let d = decide(&r, &s, &facts(&prem), at(0), Commit::Yes).await;
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(d.shadow[0].reason, Reason::NumberType);
}

#[tokio::test]
async fn global_shadow_refuses_nothing() {
    let text = "[settings]\nshadow = true\n[[limit]]\nname = \"n\"\nkey = \"number\"\nrate = \"1/hour\"\nburst = 1\n";
    let r = rules(text);
    let s = store();
    let to = [dest("+447400900123")];
    decide(&r, &s, &facts(&to), at(0), Commit::Yes).await;
    let d = decide(&r, &s, &facts(&to), at(0), Commit::Yes).await;
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(
        d.shadow.iter().map(|h| &*h.rule).collect::<Vec<_>>(),
        vec!["n"]
    );
    let bad = [dest("garbage")];
    let d = decide(&r, &s, &facts(&bad), at(0), Commit::Yes).await;
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(d.shadow[0].reason, Reason::InvalidNumber);
}

#[tokio::test]
async fn dry_run_consumes_nothing() {
    let r = rules("[[limit]]\nname = \"n\"\nkey = \"number\"\nrate = \"1/hour\"\nburst = 1\n");
    let s = store();
    let to = [dest("+447400900123")];
    for _ in 0..3 {
        let d = decide(&r, &s, &facts(&to), at(0), Commit::DryRun).await;
        assert_eq!(d.verdict, Verdict::Allow);
    }
    assert_eq!(verdict(&r, &s, &facts(&to), at(0)).await, Verdict::Allow);
}

#[tokio::test]
async fn rate_limit_headers_are_opt_in() {
    let r = rules(
        "[[limit]]\nname = \"n\"\nkey = \"number\"\nrate = \"3/hour\"\nburst = 3\nheaders = true\n\
         [[limit]]\nname = \"quiet\"\nkey = \"global\"\nrate = \"100/hour\"\nburst = 100\n",
    );
    let s = store();
    let to = [dest("+447400900123")];
    let d = decide(&r, &s, &facts(&to), at(0), Commit::Yes).await;
    let rl = d.rate_limit.expect("opted in");
    assert_eq!(&*rl.rule, "n");
    assert_eq!(
        (rl.quota, rl.remaining, rl.window_secs, rl.reset_secs),
        (3, 2, 3600, 1200)
    );
}

#[test]
fn a_million_distinct_numbers_stay_under_the_key_ceiling() {
    use crate::store::{Entity, GcraCheck, LimitKey};
    let ceiling = 50_000;
    let s = MemoryStore::new(ceiling);
    let now = at(0);
    for n in 0..1_000_000u64 {
        let check = GcraCheck {
            key: LimitKey {
                rule: 7,
                entity: Entity::Number(447_400_000_000 + n),
            },
            interval: Duration::from_secs(60),
            burst: 1,
            cost: 1,
            on_overflow_closed: false,
        };
        assert!(matches!(
            s.gcra(&[check], now, true),
            crate::store::GcraOutcome::Allowed { .. }
        ));
        if n % 100_000 == 0 {
            assert!(s.stats().keys <= ceiling as u64);
        }
    }
    let stats = s.stats();
    assert_eq!(stats.keys, ceiling as u64);
    assert_eq!(
        stats.rejected,
        1_000_000 - ceiling as u64,
        "every untracked key is counted"
    );
}

#[tokio::test]
async fn distinct_numbers_through_the_default_rules_stay_under_the_ceiling() {
    // Rate-limit keys and heuristic windows share the one ceiling; the keys of countries
    // and the global key are always tracked, past it too (four countries here, a few keys
    // per country and rule).
    let rules = RuleSet::embedded().unwrap();
    let ceiling = 5_000;
    let bounded = 64;
    let s = Store::Memory(MemoryStore::new(ceiling));
    for n in 0..20_000u64 {
        // Spread over many 1k blocks and several countries, a second apart.
        let raw = match n % 4 {
            0 => format!("+4474{:08}", n * 7919 % 100_000_000),
            1 => format!("+49151{:08}", n * 7919 % 100_000_000),
            2 => format!("+336{:08}", n * 7919 % 100_000_000),
            _ => format!("+6141{:07}", n * 7919 % 10_000_000),
        };
        let r = [crate::phone::normalize(
            &raw,
            crate::phone::NumberFormat::E164,
            None,
        )];
        let f = Facts {
            kind: crate::providers::RequestKind::Send,
            recipients: &r,
            ip: None,
            user: None,
            account: None,
            sender: None,
            segments: 1,
        };
        decide(&rules, &s, &f, at(n), Commit::Yes).await;
        if n % 1_000 == 0 {
            assert!(
                s.stats().keys <= ceiling as u64 + bounded,
                "{n}: {:?}",
                s.stats()
            );
        }
    }
    let stats = s.stats();
    assert!(stats.keys <= ceiling as u64 + bounded, "{stats:?}");
    assert!(
        stats.rejected > 0,
        "the ceiling was reached and counted: {stats:?}"
    );
}

#[tokio::test]
async fn allow_list_skip_by_rule_name_covers_policies_and_deny_lists() {
    let text = r#"
[[list]]
name = "partner"
action = "allow"
users = ["partner"]
skip = ["types", "bad-range"]

[[list]]
name = "bad-range"
action = "deny"
prefixes = ["+4474009001"]

[[policy]]
name = "types"
deny_types = ["premium_rate"]
"#;
    let r = rules(text);
    let s = store();
    for n in ["+449098790123", "+447400900123"] {
        let to = [dest(n)];
        let mut f = facts(&to);
        f.user = Some("partner");
        assert_eq!(verdict(&r, &s, &f, at(0)).await, Verdict::Allow, "{n}");
        // Without the allow list, refused.
        assert!(
            verdict(&r, &s, &facts(&to), at(0)).await != Verdict::Allow,
            "{n}"
        );
    }
}

#[tokio::test]
async fn ratelimit_headers_of_a_very_slow_limit_do_not_panic() {
    // check-rules accepts this limit; its headers must not overflow `interval × burst`.
    let r = rules(
        "[[limit]]\nname = \"n\"\nkey = \"number\"\nrate = \"1/5000000000000000s\"\nburst = 4000\nheaders = true\n",
    );
    let s = store();
    let to = [dest("+447400900123")];
    let d = decide(&r, &s, &facts(&to), at(0), Commit::Yes).await;
    assert_eq!(d.verdict, Verdict::Allow);
    assert!(d.rate_limit.is_some());
}

#[tokio::test]
async fn the_shipped_lists_qa_users_skip_limits_but_not_deny_lists_or_policies() {
    // rules/10-lists.toml and 20-policies.toml as shipped: the QA user sends as often as
    // it likes, but never to a denied range or a premium-rate number.
    let r = RuleSet::embedded().expect("the shipped rules compile");
    let s = store();
    let gb = [dest("+447400123456")];
    let as_qa = |to| Facts {
        user: Some("qa-automation"),
        ..facts(to)
    };
    for i in 0..12 {
        assert_eq!(
            verdict(&r, &s, &as_qa(&gb), at(i)).await,
            Verdict::Allow,
            "{i}"
        );
    }
    let iridium = [dest("+881612345678")];
    let premium = [dest("+449098790123")];
    for (to, why) in [
        (&iridium, Reason::DeniedPrefix),
        (&premium, Reason::NumberType),
    ] {
        let v = verdict(&r, &s, &as_qa(to), at(20)).await;
        assert_eq!(v.hit().map(|h| h.reason), Some(why));
    }
    // Anyone else: one code per number per minute.
    let other = [dest("+447400123457")];
    assert_eq!(verdict(&r, &s, &facts(&other), at(0)).await, Verdict::Allow);
    assert_eq!(
        rule_of(&verdict(&r, &s, &facts(&other), at(30)).await),
        Some("number-cooldown")
    );
}

#[tokio::test]
async fn a_shadow_limit_turned_to_enforce_keeps_its_state() {
    // State is keyed by rule name and key kind, not mode: what the shadow rule counted,
    // the enforcing one sees.
    let limit = "name = \"n\"\nkey = \"number\"\nrate = \"1/hour\"\nburst = 1\n";
    let shadow = rules(&format!("[[limit]]\nmode = \"shadow\"\n{limit}"));
    let enforce = rules(&format!("[[limit]]\n{limit}"));
    let s = store();
    let to = [dest("+447400123456")];
    assert_eq!(
        verdict(&shadow, &s, &facts(&to), at(0)).await,
        Verdict::Allow
    );
    let d = decide(&shadow, &s, &facts(&to), at(1), Commit::Yes).await;
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(d.shadow.iter().map(|h| &*h.rule).collect::<Vec<_>>(), ["n"]);
    assert_eq!(
        rule_of(&verdict(&enforce, &s, &facts(&to), at(2)).await),
        Some("n")
    );
}

#[tokio::test]
async fn country_rules_use_the_numbering_plans_country() {
    // Shared calling codes: +1 (US, CA, JM …), +44 (GB and the crown dependencies GG, JE,
    // IM), +7 (RU, KZ). A policy serving US, GB and RU serves none of the others, and a
    // per-country limit counts each country on its own.
    let r = rules(
        "[[policy]]\nname = \"served\"\ncountry_mode = \"allow\"\ncountries = [\"US\", \"GB\", \"RU\"]\n\
         [[limit]]\nname = \"cc\"\nkey = \"country\"\nrate = \"1/hour\"\nburst = 1\n",
    );
    let s = store();
    for n in [
        "+14165550123",
        "+18762345678",
        "+447781123456",
        "+441534123456",
        "+447624123456",
        "+77012345678",
    ] {
        let to = [dest(n)];
        let v = verdict(&r, &s, &facts(&to), at(0)).await;
        assert_eq!(
            v.hit().map(|h| h.reason),
            Some(Reason::CountryNotAllowed),
            "{n}"
        );
    }
    for n in ["+12025550123", "+447400123456", "+79161234567"] {
        let to = [dest(n)];
        assert_eq!(
            verdict(&r, &s, &facts(&to), at(0)).await,
            Verdict::Allow,
            "{n}"
        );
    }
}

#[tokio::test]
async fn a_destination_allow_list_does_not_lift_an_origin_deny_list() {
    // An allow list on numbers skips, for that recipient, the deny lists on destinations;
    // the deny lists on the request's origin (cidrs, users, accounts, senders) only an
    // allow list matching the origin skips.
    let r = rules(
        "[[list]]\nname = \"vip\"\naction = \"allow\"\nnumbers = [\"+447400123456\"]\n\
         [[list]]\nname = \"bad-range\"\naction = \"deny\"\nprefixes = [\"+4474001\"]\n\
         [[list]]\nname = \"bad-ip\"\naction = \"deny\"\ncidrs = [\"203.0.113.0/24\"]\n\
         [[list]]\nname = \"office\"\naction = \"allow\"\ncidrs = [\"203.0.113.7\"]\nskip = [\"deny\"]\n",
    );
    let s = store();
    let vip = [dest("+447400123456")];
    assert_eq!(verdict(&r, &s, &facts(&vip), at(0)).await, Verdict::Allow);
    let from = |ip: [u8; 4]| Facts {
        ip: Some(IpAddr::from(ip)),
        ..facts(&vip)
    };
    assert_eq!(
        rule_of(&verdict(&r, &s, &from([203, 0, 113, 9]), at(0)).await),
        Some("bad-ip")
    );
    assert_eq!(
        verdict(&r, &s, &from([203, 0, 113, 7]), at(0)).await,
        Verdict::Allow
    );
}
