//! Memory of the in-process store: bytes per tracked key, and a flood of a million
//! distinct numbers through the default rules under the key ceiling.
//!
//! `cargo bench --bench memory` (release; ≈ 4 min). Prints one line per case; exits
//! non-zero if the number of tracked keys (`StoreStats::keys`, what the
//! `smsfence_store_keys` gauge shows) ever exceeds `store.max_keys` by more than the few keys
//! of countries and the global key, which are always tracked. Linux only (reads
//! /proc/self). Each case runs in a fresh process (this binary re-runs itself), so that
//! memory freed by one case and kept by the allocator does not hide the next one's growth.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use smsfence::clock::Timestamp;
use smsfence::decide::{self, Commit, Facts, Recipient, Verdict};
use smsfence::phone::{self, NumberFormat};
use smsfence::providers::RequestKind;
use smsfence::rules::RuleSet;
use smsfence::store::{memory::MemoryStore, Entity, GcraCheck, LimitKey, Store, WindowOp};

#[path = "common/rules.rs"]
mod common_rules;
use common_rules::all_forwarded_rules;

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

/// Bytes per heuristic window: RSS before and after `n` windows of one member each (the
/// shape of a prefix-velocity window: a distinct-member cap of 9).
fn bytes_per_window(n: u64) {
    let store = MemoryStore::new(usize::MAX);
    let before = status_kib("VmRSS:");
    let now = Timestamp::from_unix_secs(1_800_000_000);
    for i in 0..n {
        let op = WindowOp {
            key: LimitKey {
                rule: 1,
                entity: Entity::Prefix(447_400_000 + i),
            },
            window: Duration::from_secs(600),
            amount: 1,
            member: Some(447_400_000_000 + i),
            cap: 9,
            near: None,
        };
        store.windows(std::slice::from_ref(&op), now, &[true]);
    }
    let after = status_kib("VmRSS:");
    let keys = store.stats().keys;
    println!(
        "bytes_per_window: {keys} windows (1 member each), RSS {before} KiB -> {after} KiB: \
         {:.1} bytes per window",
        (after.saturating_sub(before) * 1024) as f64 / keys as f64
    );
}

/// A million distinct numbers through the rules; keys must stay under the ceiling, but for
/// the keys of countries and the global key, which the store always tracks (a bounded few:
/// here at most 4 per rule for each of the flood's two countries and for the global key,
/// however long the flood).
fn flood(name: &str, rules: &RuleSet, max_keys: usize, n: u64) -> bool {
    let store = Store::Memory(MemoryStore::new(max_keys));
    let always_tracked = (rules.limits.len() + rules.heuristics.len()) * 3 * 4;
    let bound = (max_keys + always_tracked) as u64;
    let before = status_kib("VmRSS:");
    let mut now = Timestamp::from_unix_secs(1_800_000_000);
    let (mut allowed, mut refused, mut peak_keys) = (0u64, 0u64, 0u64);
    let (mut time, mut count) = ([Duration::ZERO; 2], [0u32; 2]);
    let mut ok = true;
    for i in 0..n {
        // +44 740x xxxxxx and +1 415 NXX XXXX (N = 2..9: valid NANP) numbers, spread over
        // ranges, all valid and distinct.
        // (The multiplier is coprime to both moduli: no number repeats.)
        let raw = if i % 2 == 0 {
            format!("+44740{:07}", i.wrapping_mul(2_654_435_761) % 10_000_000)
        } else {
            format!(
                "+1415{}",
                2_000_000 + i.wrapping_mul(2_654_435_761) % 8_000_000
            )
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
        let t = Instant::now();
        let d = ready(decide::decide(rules, &store, &facts, now, Commit::Yes));
        let spent = t.elapsed();
        // Time per decision, split at the first key the ceiling turned away.
        let slot = usize::from(store.stats().rejected > 0);
        time[slot] += spent;
        count[slot] += 1;
        if d.verdict == Verdict::Allow {
            allowed += 1;
        } else {
            refused += 1;
        }
        // Every request: two relaxed atomic loads.
        let keys = store.stats().keys;
        peak_keys = peak_keys.max(keys);
        if keys > bound {
            ok = false;
        }
    }
    let after = status_kib("VmRSS:");
    let stats = store.stats();
    let grown = after.saturating_sub(before);
    println!(
        "flood[{name}]: {n} distinct numbers, ceiling {max_keys}: peak keys {peak_keys}, \
         final keys {}, rejected {}, allowed {allowed}, refused {refused}, \
         RSS {before} KiB -> {after} KiB (+{grown} KiB, {:.0} bytes per peak key), VmHWM {} KiB",
        stats.keys,
        stats.rejected,
        (grown * 1024) as f64 / peak_keys.max(1) as f64,
        status_kib("VmHWM:")
    );
    let per = |k: usize| time[k].as_secs_f64() * 1e6 / f64::from(count[k].max(1));
    println!(
        "flood[{name}]: decide {:.1} µs per request over the {} before the ceiling turned a \
         key away, {:.1} µs over the {} after",
        per(0),
        count[0],
        per(1),
        count[1]
    );
    if !ok {
        println!(
            "flood[{name}]: tracked keys exceeded the ceiling of {max_keys} \
             (+ {always_tracked} keys of countries and the global key)"
        );
    }
    ok
}

const CASES: [&str; 5] = [
    "bytes_per_key",
    "bytes_per_window",
    "flood_default",
    "flood_forwarded_1m",
    "flood_forwarded_100k",
];

/// Runs one case in this process; false if the key ceiling was exceeded.
fn run(case: &str) -> bool {
    let start = status_kib("VmRSS:");
    phone::fast::warm_up();
    println!(
        "{case}: RSS {start} KiB at start, {} KiB once the fast normalization tables of \
         every calling code are built",
        status_kib("VmRSS:")
    );
    match case {
        "bytes_per_key" => bytes_per_key(1_000_000),
        "bytes_per_window" => bytes_per_window(1_000_000),
        "flood_default" => {
            let shipped = RuleSet::embedded().expect("the embedded rules compile");
            return flood("default rules", &shipped, 1_000_000, 1_000_000);
        }
        "flood_forwarded_1m" => {
            return flood(
                "default rules, all forwarded",
                &all_forwarded_rules(),
                1_000_000,
                1_000_000,
            )
        }
        "flood_forwarded_100k" => {
            return flood(
                "default rules, all forwarded",
                &all_forwarded_rules(),
                100_000,
                1_000_000,
            )
        }
        other => panic!("unknown case {other}"),
    }
    true
}

fn main() {
    // `cargo bench` passes `--bench`; run in every case.
    const VAR: &str = "SMSFENCE_MEMORY_CASE";
    if let Ok(case) = std::env::var(VAR) {
        std::process::exit(if run(&case) { 0 } else { 2 });
    }
    let exe = std::env::current_exe().expect("this executable");
    let mut ok = true;
    for case in CASES {
        let status = std::process::Command::new(&exe)
            .env(VAR, case)
            .status()
            .expect("re-run this bench");
        ok &= status.success();
    }
    if !ok {
        eprintln!("the key ceiling was exceeded");
        std::process::exit(1);
    }
}
