//! Memory of the in-process store: bytes per tracked key, and a flood of a million
//! distinct numbers through the default rules under the key ceiling.
//!
//! `cargo bench --bench memory` (release; ≈ 10 s). Prints a table; exits non-zero if the
//! number of tracked keys ever exceeds `store.max_keys`. Linux only (reads /proc/self).

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use smsfence::clock::Timestamp;
use smsfence::decide::{self, Commit, Facts, Recipient, Verdict};
use smsfence::phone::{self, NumberFormat};
use smsfence::providers::RequestKind;
use smsfence::rules::RuleSet;
use smsfence::store::{memory::MemoryStore, Entity, GcraCheck, LimitKey, Store};

struct Noop;
impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

fn ready<F: Future>(f: F) -> F::Output {
    let waker = Waker::from(Arc::new(Noop));
    let mut cx = Context::from_waker(&waker);
    match pin!(f).as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the memory store never waits"),
    }
}

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Bytes per key: RSS before and after tracking `n` keys, one check each.
fn bytes_per_key(n: u64) {
    let store = MemoryStore::new(usize::MAX);
    let before = status_kib("VmRSS:");
    let now = Timestamp::from_unix_secs(1_800_000_000);
    for i in 0..n {
        let check = GcraCheck {
            key: LimitKey {
                rule: 1,
                entity: Entity::Number(447_400_000_000 + i),
            },
            interval: Duration::from_secs(3600),
            burst: 10,
            cost: 1,
            on_overflow_closed: false,
        };
        store.gcra(std::slice::from_ref(&check), now, true);
    }
    let after = status_kib("VmRSS:");
    let keys = store.stats().keys;
    println!(
        "bytes_per_key: {keys} keys, RSS {before} KiB -> {after} KiB: {:.1} bytes per key",
        (after.saturating_sub(before) * 1024) as f64 / keys as f64
    );
}

/// The shipped rules with every limit raised out of reach, so every request commits its
/// keys (the worst case for memory: nothing is refused early).
fn raised_rules() -> RuleSet {
    let rate = regex::Regex::new(r#"(?m)^rate = "\d+/"#).expect("valid");
    let burst = regex::Regex::new(r"(?m)^burst = \d+").expect("valid");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/rules");
    let mut files: Vec<(String, String)> = Vec::new();
    for e in std::fs::read_dir(dir).expect("the rules directory") {
        let p = e.expect("a dir entry").path();
        if p.extension().is_some_and(|x| x == "toml") {
            let text = std::fs::read_to_string(&p).expect("a rule file");
            let text = rate.replace_all(&text, "rate = \"1000000000/");
            let text = burst.replace_all(&text, "burst = 1000000000");
            files.push((p.display().to_string(), text.into_owned()));
        }
    }
    files.sort();
    RuleSet::compile(files.iter().map(|(f, t)| (f.as_str(), t.as_str()))).expect("rules compile")
}

/// A million distinct numbers through the rules; keys must stay under the ceiling.
fn flood(name: &str, rules: &RuleSet, max_keys: usize, n: u64) -> bool {
    let store = Store::Memory(MemoryStore::new(max_keys));
    let before = status_kib("VmRSS:");
    let mut now = Timestamp::from_unix_secs(1_800_000_000);
    let (mut allowed, mut refused, mut peak_keys) = (0u64, 0u64, 0u64);
    let mut ok = true;
    for i in 0..n {
        // +44 740x xxxxxx and +1 NANP numbers, spread over ranges.
        let h = i.wrapping_mul(2_654_435_761) % 10_000_000;
        let raw = if i % 2 == 0 {
            format!("+44740{h:07}")
        } else {
            format!("+1415{h:07}")
        };
        let r: [Recipient; 1] = [phone::normalize(&raw, NumberFormat::E164, None)];
        let facts = Facts {
            kind: RequestKind::Send,
            recipients: &r,
            ip: None,
            user: None,
            account: Some("AC0123456789abcdef0123456789abcdef"),
            sender: None,
            segments: 1,
        };
        now = now.add(Duration::from_micros(100));
        let d = ready(decide::decide(rules, &store, &facts, now, Commit::Yes));
        if d.verdict == Verdict::Allow {
            allowed += 1;
        } else {
            refused += 1;
        }
        if i % 50_000 == 0 || i == n - 1 {
            let keys = store.stats().keys;
            peak_keys = peak_keys.max(keys);
            if keys > max_keys as u64 {
                ok = false;
            }
        }
    }
    let after = status_kib("VmRSS:");
    let stats = store.stats();
    println!(
        "flood[{name}]: {n} distinct numbers, ceiling {max_keys}: peak keys {peak_keys}, \
         final keys {}, rejected {}, allowed {allowed}, refused {refused}, \
         RSS {before} KiB -> {after} KiB (+{} KiB), VmHWM {} KiB",
        stats.keys,
        stats.rejected,
        after.saturating_sub(before),
        status_kib("VmHWM:")
    );
    ok
}

fn main() {
    // `cargo bench` passes `--bench`; run in every case.
    phone::fast::warm_up();
    bytes_per_key(1_000_000);
    let shipped = RuleSet::embedded().expect("the embedded rules compile");
    let raised = raised_rules();
    let mut ok = true;
    ok &= flood("default rules", &shipped, 1_000_000, 1_000_000);
    ok &= flood(
        "default rules, limits raised",
        &raised,
        1_000_000,
        1_000_000,
    );
    ok &= flood("default rules, limits raised", &raised, 100_000, 1_000_000);
    if !ok {
        eprintln!("the key ceiling was exceeded");
        std::process::exit(1);
    }
}
