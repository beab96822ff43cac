//! Decisions per second with the default rules: the in-process store vs a shared Redis.
//!
//! `cargo bench --bench redis` starts its own `redis-server` on a free loopback port (it
//! must be installed: `scripts/install-redis.sh`), runs the same workload — a new number
//! each decision, 64 decisions in flight — against the memory store and against Redis,
//! in alternating rounds, and prints decisions/s per round and the ratio. Bounded: a few
//! seconds a round. Not a test: CI only builds it.
//!
//! The rules are the default kinds (per-number, per-prefix, per-country and global
//! limits, prefix velocity, conversion rate, spend budget) with thresholds no request of
//! the workload reaches, so every decision takes the full path: refusals would be
//! answered from the local refused-key cache and flatter Redis.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smsfence::clock::Timestamp;
use smsfence::config::StoreConfig;
use smsfence::decide::{self, Commit, Facts, Recipient};
use smsfence::phone::{self, NumberFormat};
use smsfence::providers::RequestKind;
use smsfence::rules::RuleSet;
use smsfence::store::{memory::MemoryStore, redis::RedisStore, Store};

const IN_FLIGHT: usize = 64;
const RULES: &str = r#"
[prices]
default = 0.01
[[limit]]
name = "number"
key = "number"
rate = "1/60s"
burst = 1
[[limit]]
name = "prefix"
key = "prefix"
drop_digits = 3
rate = "1000000/1m"
burst = 1000000
[[limit]]
name = "country"
key = "country"
rate = "100000000/1m"
burst = 100000000
[[limit]]
name = "global"
key = "global"
rate = "100000000/1m"
burst = 100000000
[[heuristic]]
name = "prefix-velocity"
kind = "prefix_velocity"
drop_digits = [3, 4]
window = "10m"
max_distinct = 1000
[[heuristic]]
name = "conversion"
kind = "conversion_rate"
key = "country"
window = "6h"
min_sends = 1000000000
min_rate = 0.1
[[heuristic]]
name = "spend"
kind = "spend_budget"
hourly = 100000000.0
"#;
const ROUND: Duration = Duration::from_secs(3);
const ROUNDS: usize = 3;

/// Distinct valid GB mobiles for i < 50 million: 50 ranges of a million numbers, each
/// range walked in a scattered order (a bijection on 0..10^6).
fn number(i: u64) -> String {
    let n = ((i % 1_000_000).wrapping_mul(2_654_435_761) % 1_000_000) as u32;
    let r = (i / 1_000_000) % 50;
    let range = [74, 75, 77, 78, 79][(r / 10) as usize] * 100 + r % 10;
    format!("+44{range}{n:06}")
}

/// The next number index, across every task and round: no number is used twice.
static NEXT: AtomicU64 = AtomicU64::new(0);

async fn round(rules: Arc<RuleSet>, store: Arc<Store>) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + ROUND;
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (rules, store, done) = (rules.clone(), store.clone(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let i = NEXT.fetch_add(1, Ordering::Relaxed);
                    let r: Vec<Recipient> =
                        vec![phone::normalize(&number(i), NumberFormat::E164, None)];
                    let facts = Facts {
                        kind: RequestKind::Send,
                        recipients: &r,
                        ip: None,
                        user: None,
                        account: Some("ACbench"),
                        sender: None,
                        segments: 1,
                    };
                    let now = Timestamp::from_nanos(
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_nanos() as u64),
                    );
                    std::hint::black_box(
                        decide::decide(&rules, &store, &facts, now, Commit::Yes).await,
                    );
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed) as f64 / ROUND.as_secs_f64()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing useful.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let server = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn();
    let Ok(mut server) = server else {
        eprintln!("redis-server is not installed (scripts/install-redis.sh); skipping");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let rules =
            Arc::new(RuleSet::compile([("bench.toml", RULES)]).expect("the bench rules compile"));
        let cfg = StoreConfig {
            urls: vec![format!("redis://127.0.0.1:{port}")],
            timeout: Duration::from_millis(500),
            ..StoreConfig::default()
        };
        let start = Instant::now();
        let redis = loop {
            match RedisStore::connect(&StoreConfig {
                require_store: true,
                ..cfg.clone()
            })
            .await
            {
                Ok(r) => break r,
                Err(_) if start.elapsed() < Duration::from_secs(10) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("redis did not come up: {e}"),
            }
        };
        let redis = Arc::new(Store::Redis(redis));
        let memory = Arc::new(Store::Memory(MemoryStore::new(10_000_000)));
        println!(
            "all-pass rules, a new number per decision, {IN_FLIGHT} in flight, 2 worker threads"
        );
        println!("round  memory dec/s   redis dec/s   redis/memory");
        for r in 0..ROUNDS {
            let m = round(rules.clone(), memory.clone()).await;
            let d = round(rules.clone(), redis.clone()).await;
            println!("{:>5}  {m:>12.0}  {d:>12.0}  {:>12.3}", r + 1, d / m);
        }
        let evalsha = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "INFO", "commandstats"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        // What Redis spent, per command (those run inside the scripts included).
        for l in evalsha.lines().filter(|l| l.starts_with("cmdstat_")) {
            println!("{l}");
        }
        let s = redis.stats();
        println!(
            "redis store: {} timeouts, {} failures, {} refusals answered from the local cache",
            s.timeouts, s.failures, s.cache_hits
        );
    });
    let _ = server.kill();
    let _ = server.wait();
}
