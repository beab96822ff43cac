//! The shared store against a real Redis that the tests start themselves (Debian's
//! `redis-server`, installed by `scripts/install-redis.sh` when missing) on ephemeral
//! loopback ports, and stop afterwards:
//! - two instances sharing one Redis enforce a per-number limit, a distinct-numbers
//!   heuristic and a spend budget exactly;
//! - all-or-nothing holds across Cluster slots (a refused request consumes nothing);
//! - Redis killed mid-traffic: `on_store_error` open / closed / local each behave as
//!   configured, nothing hangs past the store timeout, and service recovers by itself;
//! - a three-master Redis Cluster;
//! - `INFO commandstats` shows one round trip per request for the limits.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::redis_server::{wait_until, Redis};
use common::*;

/// A `[store]` section. Tests of exact counts use a generous timeout so that a loaded
/// machine cannot turn a slow answer into a degraded decision (and they check none was).
fn store_config(urls: &[String], cluster: bool, timeout: &str, extra: &str) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    format!(
        "[store]\nkind = \"redis\"\nurls = [{}]\ncluster = {cluster}\ntimeout = \"{timeout}\"\nsweep_interval = \"1h\"\n{extra}\n",
        urls.join(", ")
    )
}

/// Decisions made without the store, over every fallback.
/// Waits for the sweeper's first pass (at start: DBSIZE, after the flag index), so that
/// command counts taken from here on are the requests' alone.
fn sweeper_has_run(redis: &Redis) {
    wait_until(Duration::from_secs(10), || redis.calls("dbsize") >= 1);
}

async fn degraded(p: &Proxy) -> u64 {
    let m = send("GET", &p.admin("/metrics"), &[], "").await.text();
    m.lines()
        .filter(|l| l.starts_with("smsfence_degraded_decisions_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn two_instances(
    redis_urls: &[String],
    cluster: bool,
    up: &MockUpstream,
    rules: &str,
) -> (Proxy, Proxy) {
    let cfg = format!(
        "{}{}",
        store_config(redis_urls, cluster, "2s", ""),
        all_presets_to(&up.url())
    );
    let a = Proxy::start(&cfg, &[("r.toml", rules)]).await;
    let b = Proxy::start(&cfg, &[("r.toml", rules)]).await;
    (a, b)
}

/// Sends `n` Twilio sends at once, alternating between the two instances; returns the
/// statuses.
async fn burst(a: &Proxy, b: &Proxy, numbers: &[String]) -> Vec<u16> {
    let sends = numbers.iter().enumerate().map(|(i, to)| {
        let p = if i % 2 == 0 { a } else { b };
        async move { twilio_send(p, to, &[]).await.status.as_u16() }
    });
    futures_util::future::join_all(sends).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_a_per_number_limit_exactly() {
    let redis = Redis::start(false);
    let up = MockUpstream::start().await;
    let rules = "[[limit]]\nname = \"per-number\"\nkey = \"number\"\nrate = \"5/1h\"\nburst = 5\non_store_error = \"closed\"\n";
    let (a, b) = two_instances(&[redis.url()], false, &up, rules).await;
    let numbers = vec!["+447400123456".to_owned(); 40];
    let statuses = burst(&a, &b, &numbers).await;
    assert_eq!(
        statuses.iter().filter(|&&s| s == 201).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 429).count(),
        35,
        "{statuses:?}"
    );
    assert_eq!(
        up.requests().len(),
        5,
        "exactly the allowed count reached the upstream"
    );
    assert_eq!(
        degraded(&a).await + degraded(&b).await,
        0,
        "every decision by Redis"
    );
    // Both instances did refuse some: the state really is shared.
    for p in [&a, &b] {
        let m = send("GET", &p.admin("/metrics"), &[], "").await.text();
        assert!(
            m.contains("smsfence_decisions_total{country=\"GB\",decision=\"throttle\",mode=\"enforce\",reason=\"rate_limited\",rule=\"per-number\"}"),
            "{m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_distinct_numbers_per_prefix() {
    let redis = Redis::start(false);
    let up = MockUpstream::start().await;
    let rules = "[[heuristic]]\nname = \"pv\"\nkind = \"prefix_velocity\"\ndrop_digits = [3]\nwindow = \"10m\"\nmax_distinct = 8\n";
    let (a, b) = two_instances(&[redis.url()], false, &up, rules).await;
    // 30 distinct numbers of one 1k block, all at once over both instances.
    let numbers: Vec<String> = (0..30).map(|i| format!("+447400123{i:03}")).collect();
    let statuses = burst(&a, &b, &numbers).await;
    assert_eq!(
        statuses.iter().filter(|&&s| s == 201).count(),
        8,
        "{statuses:?}"
    );
    assert_eq!(up.requests().len(), 8);
    assert_eq!(
        degraded(&a).await + degraded(&b).await,
        0,
        "every decision by Redis"
    );
    // Another block is unaffected.
    assert_eq!(twilio_send(&a, "+447400999001", &[]).await.status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_a_spend_budget_exactly() {
    let redis = Redis::start(false);
    let up = MockUpstream::start().await;
    // 0.10 per segment; 0.55 an hour: five sends.
    let rules = "[prices]\ndefault = 0.10\n[[heuristic]]\nname = \"spend\"\nkind = \"spend_budget\"\nhourly = 0.55\n";
    let (a, b) = two_instances(&[redis.url()], false, &up, rules).await;
    let numbers: Vec<String> = (0..24).map(|i| format!("+4915112345{i:03}")).collect();
    let statuses = burst(&a, &b, &numbers).await;
    assert_eq!(
        statuses.iter().filter(|&&s| s == 201).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(up.requests().len(), 5);
    assert_eq!(
        degraded(&a).await + degraded(&b).await,
        0,
        "every decision by Redis"
    );
}

/// Rule files for the fault test: one limit per `on_store_error` mode, each on its own
/// kind of key so that one request hits exactly one of them.
fn fault_rules(mode: &str) -> String {
    format!("[[limit]]\nname = \"per-number-{mode}\"\nkey = \"number\"\nrate = \"1/1h\"\nburst = 1\non_store_error = \"{mode}\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_mid_traffic_each_mode_behaves_and_recovers() {
    let mut redis = Redis::start(false);
    let up = MockUpstream::start().await;
    let url = redis.url();
    let mut proxies = Vec::new();
    for mode in ["open", "closed", "local"] {
        let cfg = format!(
            "{}{}",
            store_config(
                std::slice::from_ref(&url),
                false,
                "200ms",
                "breaker_failures = 3\nbreaker_cooldown = \"200ms\"\n"
            ),
            all_presets_to(&up.url())
        );
        proxies.push((
            mode,
            Proxy::start(&cfg, &[("r.toml", &fault_rules(mode))]).await,
        ));
    }
    // Healthy: the first send to a number passes, the second is throttled, in every mode.
    for (i, (mode, p)) in proxies.iter().enumerate() {
        let to = format!("+44740012340{i}");
        assert_eq!(twilio_send(p, &to, &[]).await.status, 201, "{mode}");
        let second = twilio_send(p, &to, &[]).await;
        assert_eq!(second.status, 429, "{mode}: {:?}", second.headers);
    }
    let forwarded = up.requests().len();
    assert_eq!(forwarded, 3);

    redis.kill();
    for (i, (mode, p)) in proxies.iter().enumerate() {
        for round in 0..4 {
            let to = format!("+44740012350{i}");
            let started = Instant::now();
            let a = twilio_send(p, &to, &[]).await;
            // Never hangs: the store timeout is 200 ms, the breaker fails faster still.
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{mode}: {:?}",
                started.elapsed()
            );
            match *mode {
                "open" => assert_eq!(a.status, 201, "{mode}: fail open forwards"),
                "closed" => {
                    assert_eq!(
                        a.header("smsfence-reason"),
                        Some("store_unavailable"),
                        "{mode}"
                    );
                    assert_ne!(a.status, 201);
                }
                _ => {
                    // The in-process limiter: the first send passes, later ones are throttled.
                    let want = if round == 0 { 201 } else { 429 };
                    assert_eq!(a.status, want, "{mode} round {round}: {}", a.text());
                }
            }
        }
        let m = send("GET", &p.admin("/metrics"), &[], "").await.text();
        let label = format!("smsfence_degraded_decisions_total{{fallback=\"{mode}\"}} ");
        let n: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix(&label))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        assert!(n >= 1, "{mode}: degraded decisions counted\n{m}");
        let ready = send("GET", &p.admin("/readyz"), &[], "").await;
        assert_eq!(ready.status, 200, "not required: degraded but ready");
        assert_eq!(ready.json()["status"], "degraded");
    }
    assert_eq!(
        up.requests().len(),
        forwarded + 4 + 1,
        "open forwarded 4, local 1"
    );

    // Redis comes back on the same port: every instance recovers without a restart.
    // Recovered means decided by Redis again: the number's key is in Redis (fail-open
    // and the local fallback would both forward without writing it there).
    redis.spawn(false);
    for (i, (mode, p)) in proxies.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut attempt = 0;
        let to = loop {
            let to = format!("+447400124{i}{attempt:02}");
            let a = twilio_send(p, &to, &[]).await;
            let digits = &to[1..];
            let in_redis = redis
                .cli(&["--scan", "--pattern", &format!("sf:{{n{digits}}}:*")])
                .is_some_and(|o| !o.trim().is_empty());
            if a.status == 201 && in_redis {
                break to;
            }
            assert!(
                Instant::now() < deadline,
                "{mode} did not recover: {}",
                a.text()
            );
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(twilio_send(p, &to, &[]).await.status, 429, "{mode}");
        let ready = send("GET", &p.admin("/readyz"), &[], "").await;
        assert_eq!(ready.json()["status"], "ready", "{mode}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_store_refuses_to_start_without_redis() {
    let port = free_port();
    let cfg = format!(
        "{}[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        store_config(
            &[format!("redis://127.0.0.1:{port}")],
            false,
            "2s",
            "require_store = true\nconnect_timeout = \"300ms\"\n"
        )
    );
    let config = smsfence::config::Config::from_toml("t.toml", &cfg).unwrap();
    let started = Instant::now();
    let err = smsfence::proxy::Instance::start(smsfence::proxy::Options {
        config,
        rules: smsfence::rules::reload::Source::Embedded,
        watch_rules: false,
        clock: std::sync::Arc::new(smsfence::clock::SystemClock::new()),
    })
    .await
    .err()
    .expect("start fails");
    assert!(err.to_string().contains("state store"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // Without require_store it starts degraded and says so.
    let up = MockUpstream::start().await;
    let cfg = format!(
        "{}{}",
        store_config(
            &[format!("redis://127.0.0.1:{port}")],
            false,
            "2s",
            "connect_timeout = \"300ms\"\n"
        ),
        all_presets_to(&up.url())
    );
    let p = Proxy::start(&cfg, &[("r.toml", &fault_rules("closed"))]).await;
    let ready = send("GET", &p.admin("/readyz"), &[], "").await;
    assert_eq!(
        (ready.status.as_u16(), ready.json()["status"].clone()),
        (200, "degraded".into())
    );
    let a = twilio_send(&p, "+447400123456", &[]).await;
    assert_eq!(a.header("smsfence-reason"), Some("store_unavailable"));
}

/// A refused request consumes nothing, also when its keys live in different slots
/// (a Cluster runs one script per slot and gives back what the others took).
async fn all_or_nothing_across_slots(urls: &[String], cluster: bool) {
    let up = MockUpstream::start().await;
    let both = "[[limit]]\nname = \"per-number\"\nkey = \"number\"\nrate = \"1/1h\"\nburst = 1\n\
                [[limit]]\nname = \"per-prefix\"\nkey = \"prefix\"\ndrop_digits = 3\nrate = \"2/1h\"\nburst = 2\n";
    let cfg = format!(
        "{}{}",
        store_config(urls, cluster, "2s", ""),
        all_presets_to(&up.url())
    );
    let p = Proxy::start(&cfg, &[("r.toml", both)]).await;
    assert_eq!(twilio_send(&p, "+447400123001", &[]).await.status, 201);
    let a = twilio_send(&p, "+447400123002", &[]).await;
    assert_eq!(a.status, 201, "{}", a.text());
    let refused = twilio_send(&p, "+447400123003", &[]).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("smsfence-rule"), Some("per-prefix"));
    // Drop the prefix limit; the number limit keeps its state (same name and key kind).
    let only_number =
        "[[limit]]\nname = \"per-number\"\nkey = \"number\"\nrate = \"1/1h\"\nburst = 1\n";
    let dir = p.rules_dir.as_ref().unwrap().path();
    std::fs::write(dir.join("r.toml"), only_number).unwrap();
    let r = send("POST", &p.admin("/v1/reload"), &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    // +…003 was refused, so its number bucket is untouched: it passes now. +…001 is spent.
    assert_eq!(twilio_send(&p, "+447400123003", &[]).await.status, 201);
    assert_eq!(twilio_send(&p, "+447400123001", &[]).await.status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_node_all_or_nothing() {
    let redis = Redis::start(false);
    all_or_nothing_across_slots(&[redis.url()], false).await;
}

struct Cluster {
    nodes: Vec<Redis>,
}

impl Cluster {
    fn start() -> Cluster {
        let nodes: Vec<Redis> = (0..3).map(|_| Redis::start(true)).collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        for n in &nodes {
            wait_until(Duration::from_secs(20), || {
                n.cli(&["CLUSTER", "INFO"])
                    .is_some_and(|i| i.contains("cluster_state:ok"))
            });
        }
        Cluster { nodes }
    }

    fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Redis::url).collect()
    }

    /// Keys on each node.
    fn spread(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| {
                n.cli(&["DBSIZE"])
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0)
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_master_cluster() {
    let cluster = Cluster::start();
    let urls = cluster.urls();
    // Per number, per country and global limits: each request touches three slots.
    let up = MockUpstream::start().await;
    let rules = "[[limit]]\nname = \"per-number\"\nkey = \"number\"\nrate = \"2/1h\"\nburst = 2\n\
                 [[limit]]\nname = \"per-country\"\nkey = \"country\"\nrate = \"1000/1h\"\nburst = 1000\n\
                 [[limit]]\nname = \"global\"\nkey = \"global\"\nrate = \"1000/1h\"\nburst = 1000\n\
                 [[heuristic]]\nname = \"pv\"\nkind = \"prefix_velocity\"\ndrop_digits = [3]\nwindow = \"10m\"\nmax_distinct = 500\n";
    let (a, b) = two_instances(&urls, true, &up, rules).await;
    let mut numbers = Vec::new();
    for i in 0..12 {
        let to = if i % 2 == 0 {
            format!("+4474001{i:05}")
        } else {
            format!("+491511234{i:04}")
        };
        numbers.extend(std::iter::repeat_n(to, 3));
    }
    let statuses = burst(&a, &b, &numbers).await;
    assert_eq!(
        statuses.iter().filter(|&&s| s == 201).count(),
        24,
        "{statuses:?}"
    );
    assert_eq!(up.requests().len(), 24);
    assert_eq!(
        degraded(&a).await + degraded(&b).await,
        0,
        "every decision by Redis"
    );
    let spread = cluster.spread();
    assert!(
        spread.iter().filter(|&&n| n > 0).count() >= 2,
        "keys landed on several nodes: {spread:?}"
    );
    all_or_nothing_across_slots(&urls, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_round_trip_per_request_for_the_limits() {
    let redis = Redis::start(false);
    let up = MockUpstream::start().await;
    let rules = "[[limit]]\nname = \"per-number\"\nkey = \"number\"\nrate = \"5/1h\"\nburst = 5\n\
                 [[limit]]\nname = \"per-prefix\"\nkey = \"prefix\"\ndrop_digits = 3\nrate = \"100/1h\"\nburst = 100\n\
                 [[limit]]\nname = \"per-country\"\nkey = \"country\"\nrate = \"1000/1h\"\nburst = 1000\n\
                 [[limit]]\nname = \"global\"\nkey = \"global\"\nrate = \"1000/1h\"\nburst = 1000\n";
    let cfg = format!(
        "{}{}",
        store_config(&[redis.url()], false, "2s", ""),
        all_presets_to(&up.url())
    );
    let p = Proxy::start(&cfg, &[("r.toml", rules)]).await;
    sweeper_has_run(&redis);
    redis.cli(&["CONFIG", "RESETSTAT"]).unwrap();
    for i in 0..10 {
        assert_eq!(
            twilio_send(&p, &format!("+4474001230{i:02}"), &[])
                .await
                .status,
            201
        );
    }
    // Four limits, ten requests: ten EVALSHA calls and no other command from smsfence.
    // (Redis counts the commands a script runs too: four GETs and four SETs per call,
    // one per limit — every key of the request inside the one call.)
    assert_eq!(redis.calls("evalsha"), 10);
    assert_eq!((redis.calls("get"), redis.calls("set")), (40, 40));
    for other in ["eval", "script", "mget", "hgetall", "ping", "dbsize"] {
        assert_eq!(redis.calls(other), 0, "{other}");
    }
    // A refused key is then answered locally until its retry-after: a flood against one
    // number does not become a flood against Redis.
    for _ in 0..5 {
        twilio_send(&p, "+447400123000", &[]).await;
    }
    redis.cli(&["CONFIG", "RESETSTAT"]).unwrap();
    for _ in 0..20 {
        assert_eq!(twilio_send(&p, "+447400123000", &[]).await.status, 429);
    }
    assert_eq!(redis.calls("evalsha"), 0, "refused keys are cached locally");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_round_trips_per_request_with_the_default_rules() {
    let redis = Redis::start(false);
    let up = MockUpstream::start().await;
    let cfg = format!(
        "{}{}",
        store_config(&[redis.url()], false, "2s", ""),
        all_presets_to(&up.url())
    );
    let p = Proxy::start_default_rules(&cfg).await;
    sweeper_has_run(&redis);
    redis.cli(&["CONFIG", "RESETSTAT"]).unwrap();
    let n = 6;
    for i in 0..n {
        // Scattered numbers in different countries: nothing fires.
        let to = [
            "+447400123456",
            "+4915112345678",
            "+33612345678",
            "+61412345678",
            "+819012345678",
            "+14155550123",
        ][i];
        let a = twilio_send(&p, to, &[]).await;
        assert_eq!(a.status, 201, "{to}: {}", a.text());
    }
    // Per request: the limits (one EVALSHA), trust and auto-block flags (one MGET), every
    // heuristic window (one EVALSHA). Nothing else (the windows script's own HGETALL,
    // ZADD … are counted by Redis too, but run inside the one call).
    let n = n as u64;
    assert_eq!((redis.calls("evalsha"), redis.calls("mget")), (2 * n, n));
    for other in ["eval", "script", "hset", "del", "dbsize"] {
        assert_eq!(redis.calls(other), 0, "{other}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verify_check_on_another_instance_finds_its_number() {
    let redis = Redis::start(false);
    let guard = "[[limit]]\nname = \"guess\"\nkey = \"number\"\nkinds = [\"verify_check\"]\nrate = \"1/10m\"\nburst = 1\n";
    let cfg = format!(
        "{}{}",
        store_config(&[redis.url()], false, "2s", ""),
        all_presets_to("sandbox")
    );
    let a = Proxy::start(&cfg, &[("r.toml", guard)]).await;
    let b = Proxy::start(&cfg, &[("r.toml", guard)]).await;
    // Vonage Verify: started through A; the check (request_id only) reaches B.
    let started = send(
        "POST",
        &a.url("/v2/verify"),
        &[JSON],
        r#"{"brand":"ACME","workflow":[{"channel":"sms","to":"447400123456"}]}"#,
    )
    .await;
    assert_eq!(started.status, 202);
    let id = started.json()["request_id"].as_str().unwrap().to_owned();
    let check = |p: &Proxy| {
        let url = p.url(&format!("/v2/verify/{id}"));
        async move { send("POST", &url, &[JSON], r#"{"code":"123456"}"#).await }
    };
    assert_eq!(check(&b).await.status, 200);
    let m = send("GET", &b.admin("/metrics"), &[], "").await.text();
    assert!(
        m.contains("smsfence_conversions_total{country=\"GB\",outcome=\"verified\",source=\"verify_check\"} 1"),
        "B recorded the conversion for the number A saw: {m}"
    );
    // The check was decided against the number: a second one (on A) hits the guard.
    let again = check(&a).await;
    assert_eq!(again.status, 429, "{}", again.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_flushed_from_redis_are_loaded_again() {
    let redis = Redis::start(false);
    let up = MockUpstream::start().await;
    let rules = "[[limit]]\nname = \"per-number\"\nkey = \"number\"\nrate = \"1/1h\"\nburst = 1\non_store_error = \"closed\"\n";
    let cfg = format!(
        "{}{}",
        store_config(&[redis.url()], false, "2s", ""),
        all_presets_to(&up.url())
    );
    let p = Proxy::start(&cfg, &[("r.toml", rules)]).await;
    sweeper_has_run(&redis);
    assert_eq!(twilio_send(&p, "+447400123001", &[]).await.status, 201);
    // A restarted or failed-over node has no scripts: NOSCRIPT, then EVAL loads it again.
    redis.cli(&["SCRIPT", "FLUSH"]).unwrap();
    redis.cli(&["CONFIG", "RESETSTAT"]).unwrap();
    let a = twilio_send(&p, "+447400123002", &[]).await;
    assert_eq!(a.status, 201, "{}", a.text());
    assert_eq!(twilio_send(&p, "+447400123002", &[]).await.status, 429);
    assert_eq!(
        redis.calls("eval"),
        1,
        "one EVAL after the NOSCRIPT, EVALSHA again after"
    );
    assert_eq!(redis.calls("evalsha"), 2);
    assert_eq!(degraded(&p).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_gives_its_budget_reservation_back() {
    refused_requests_give_their_reservation_back(false).await;
}

/// The same, when the refusing heuristic's auto-block cannot be written (Redis denies
/// SET): the decision is degraded, yet every heuristic is judged and the reservation is
/// still given back (it used to be kept: the error ended the evaluation early).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_auto_block_still_gives_the_reservation_back() {
    refused_requests_give_their_reservation_back(true).await;
}

async fn refused_requests_give_their_reservation_back(failing_auto_block: bool) {
    let redis = Redis::start(false);
    let up = MockUpstream::start().await;
    // 0.10 a send, 0.55 an hour: five sends. At most 2 distinct numbers per 1k block.
    let block_for = if failing_auto_block {
        // The windows script never calls SET; the auto-block does.
        redis.cli(&["ACL", "SETUSER", "default", "-set"]).unwrap();
        "block_for = \"1m\"\n"
    } else {
        ""
    };
    let rules = format!(
        "[prices]\ndefault = 0.10\n\
         [[heuristic]]\nname = \"spend\"\nkind = \"spend_budget\"\nhourly = 0.55\n\
         [[heuristic]]\nname = \"pv\"\nkind = \"prefix_velocity\"\ndrop_digits = [3]\nwindow = \"10m\"\nmax_distinct = 2\n{block_for}"
    );
    let cfg = format!(
        "{}{}",
        store_config(&[redis.url()], false, "2s", ""),
        all_presets_to(&up.url())
    );
    let p = Proxy::start(&cfg, &[("r.toml", &rules)]).await;
    for (to, want) in [
        ("+447400123001", 201),
        ("+447400123002", 201),
        // The third number of the block is refused by the velocity rule: its spend
        // reservation is given back.
        ("+447400123003", 403),
        ("+447400555001", 201),
        ("+447400666001", 201),
        ("+447400777001", 201),
        // Five sends spent: the budget is used up.
        ("+447400888001", 403),
    ] {
        let a = twilio_send(&p, to, &[]).await;
        assert_eq!(a.status, want, "{to}: {}", a.text());
    }
    let last = twilio_send(&p, "+447400999001", &[]).await;
    assert_eq!(last.header("smsfence-reason"), Some("spend_budget"));
    assert_eq!(up.requests().len(), 5);
    // Only the refusal whose auto-block failed is degraded.
    assert_eq!(degraded(&p).await, u64::from(failing_auto_block));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_costs_a_request_one_timeout_not_one_per_call() {
    let redis = Redis::start(false);
    let up = MockUpstream::start().await;
    // Limits (enforced and shadow) and heuristics: five store calls if each waited.
    let rules = "[[limit]]\nname = \"per-number\"\nkey = \"number\"\nrate = \"1/1h\"\nburst = 1\non_store_error = \"open\"\n\
                 [[limit]]\nname = \"shadow-prefix\"\nmode = \"shadow\"\nkey = \"prefix\"\ndrop_digits = 3\nrate = \"1/1h\"\nburst = 1\n\
                 [[heuristic]]\nname = \"pv\"\nkind = \"prefix_velocity\"\ndrop_digits = [3]\nwindow = \"10m\"\nmax_distinct = 5\n";
    let cfg = format!(
        "{}{}",
        store_config(&[redis.url()], false, "400ms", "breaker_failures = 1000\n"),
        all_presets_to(&up.url())
    );
    let p = Proxy::start(&cfg, &[("r.toml", rules)]).await;
    assert_eq!(twilio_send(&p, "+447400123001", &[]).await.status, 201);
    // Freeze Redis: connections stay open, nothing answers.
    let pid = redis.pid().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    let a = twilio_send(&p, "+447400123002", &[]).await;
    let took = started.elapsed();
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    assert_eq!(a.status, 201, "fail open");
    assert!(
        took < Duration::from_millis(790),
        "one store timeout (400 ms), not one per store call: {took:?}"
    );
    assert!(
        took >= Duration::from_millis(400),
        "it did wait for the store: {took:?}"
    );
}

/// Redis comes back with an empty script cache (a restart or failover, here SCRIPT FLUSH)
/// while the breaker is open after timeouts: the half-open probe is an EVALSHA that gets
/// NOSCRIPT. That answer closes the breaker, so the EVAL that follows runs (it used to be
/// refused by the still-open breaker, and every later probe failed the same way: the
/// store was never used again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_closes_when_redis_returns_without_its_scripts() {
    use smsfence::clock::Timestamp;
    use smsfence::config::StoreConfig;
    use smsfence::store::redis::RedisStore;
    use smsfence::store::{Entity, GcraCheck, LimitKey};

    let redis = Redis::start(false);
    let cfg = StoreConfig {
        timeout: Duration::from_millis(100),
        breaker_failures: 1,
        breaker_cooldown: Duration::from_millis(200),
        pool_size: 1,
        ..redis.store_config()
    };
    let store = RedisStore::connect(&cfg).await.unwrap();
    let check = GcraCheck {
        key: LimitKey {
            rule: 1,
            entity: Entity::Number(447400123456),
        },
        interval: Duration::from_secs(60),
        burst: 1000,
        cost: 1,
        on_overflow_closed: false,
    };
    let now = Timestamp::from_unix_secs(1);
    assert!(store.gcra(&[check], now, true).await.is_ok());
    // A timeout opens the breaker (Redis paused for 500 ms).
    redis.cli(&["CLIENT", "PAUSE", "500", "ALL"]).unwrap();
    assert!(store.gcra(&[check], now, true).await.is_err());
    wait_until(Duration::from_secs(5), || {
        redis.cli(&["PING"]).is_some_and(|o| o.trim() == "PONG")
    });
    redis.cli(&["SCRIPT", "FLUSH"]).unwrap();
    let start = Instant::now();
    let mut errors = Vec::new();
    while start.elapsed() < Duration::from_secs(3) {
        match store.gcra(&[check], now, true).await {
            Ok(_) => return,
            Err(e) => errors.push(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    errors.dedup();
    panic!("Redis answers, yet every call failed for 3 s: {errors:?}");
}

/// The flag index has no TTL of its own: the sweeper's refresh drops the entries of
/// expired flags (it used to be pruned only when someone listed the blocks), and only
/// those that still hold the value that was read (a flag set again meanwhile stays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_flags_leave_the_index_and_a_flag_set_again_stays() {
    use smsfence::clock::Timestamp;
    use smsfence::store::redis::RedisStore;
    use smsfence::store::{Entity, Flag, LimitKey};

    let redis = Redis::start(false);
    let store = RedisStore::connect(&redis.store_config()).await.unwrap();
    let now = Timestamp::from_unix_secs(1_000);
    for n in 0..50u64 {
        let key = LimitKey {
            rule: 7,
            entity: Entity::Prefix(447400000 + n),
        };
        let flag = Flag {
            until: Timestamp::from_unix_secs(1_000 + 1 + n % 2),
            level: 0,
            label: format!("block {n}"),
        };
        store.set_flag(key, flag, now).await.unwrap();
    }
    assert_eq!(redis.cli(&["HLEN", "sf:flags"]).unwrap().trim(), "50");
    // Half of them expired by then.
    store.refresh(Timestamp::from_unix_secs(1_001)).await;
    assert_eq!(redis.cli(&["HLEN", "sf:flags"]).unwrap().trim(), "25");
    store.refresh(Timestamp::from_unix_secs(1_002)).await;
    assert_eq!(redis.cli(&["HLEN", "sf:flags"]).unwrap().trim(), "0");

    // Compare-and-delete: an entry rewritten after it was read is not dropped.
    let script = include_str!("../src/store/lua/unflag.lua");
    redis.cli(&["HSET", "sf:flags", "f", "new"]).unwrap();
    let dropped = redis
        .cli(&["EVAL", script, "1", "sf:flags", "f", "old"])
        .unwrap();
    assert_eq!(dropped.trim(), "0");
    assert_eq!(redis.cli(&["HGET", "sf:flags", "f"]).unwrap().trim(), "new");
    let dropped = redis
        .cli(&["EVAL", script, "1", "sf:flags", "f", "new"])
        .unwrap();
    assert_eq!(dropped.trim(), "1");
}

/// Redis' clock (`TIME`), for the memory store of a differential test.
fn redis_now(redis: &Redis) -> smsfence::clock::Timestamp {
    let out = redis.cli(&["TIME"]).unwrap();
    let mut parts = out.split_whitespace().map(|p| p.parse::<u64>().unwrap());
    let (s, us) = (parts.next().unwrap(), parts.next().unwrap());
    smsfence::clock::Timestamp::from_nanos(s * 1_000_000_000 + us * 1_000)
}

/// The same operations, keys and times through the `Store` interface on memory and on
/// Redis give the same answers: GCRA (costs above one, several keys, refusals, dry runs),
/// windows (sums, distinct members at their cap, neighbours, reads without commit),
/// give-backs (more than a window holds, too) and flags. Windows and limits are an hour
/// long, so the microseconds between the two stores' clocks cross no boundary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_redis_decide_alike() {
    use smsfence::store::redis::RedisStore;
    use smsfence::store::Store;

    let redis = Redis::start(false);
    let cfg = smsfence::config::StoreConfig {
        timeout: Duration::from_secs(2),
        ..redis.store_config()
    };
    let shared = Store::Redis(RedisStore::connect(&cfg).await.unwrap());
    decide_alike(&shared, &redis).await;

    // Every key expires by itself, but the flag index.
    let dest =
        smsfence::phone::normalize("+447400123456", smsfence::phone::NumberFormat::E164, None)
            .unwrap();
    shared
        .put_ref("VE123", &dest, Duration::from_secs(60))
        .await
        .unwrap();
    let keys = redis.cli(&["--scan"]).unwrap();
    assert!(keys.lines().count() > 10, "{keys}");
    for k in keys.lines().filter(|k| *k != "sf:flags") {
        let ttl: i64 = redis.cli(&["PTTL", k]).unwrap().trim().parse().unwrap();
        assert!(ttl > 0, "{k} has no TTL ({ttl})");
    }
}

/// A limit loosened by a reload (same name and key, so the same state): the TAT the old
/// rate left is settled to one new burst window, in Redis too, refused request or not —
/// the key then refills at the new rate instead of waiting out the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tat_left_by_a_slower_rate_is_settled() {
    use smsfence::store::redis::RedisStore;
    use smsfence::store::{Entity, GcraCheck, GcraOutcome, LimitKey, Store};

    let redis = Redis::start(false);
    let shared = Store::Redis(RedisStore::connect(&redis.store_config()).await.unwrap());
    let check = |interval: Duration, burst: u32| GcraCheck {
        key: LimitKey {
            rule: 7,
            entity: Entity::Number(447_400_123_456),
        },
        interval,
        burst,
        cost: 1,
        on_overflow_closed: false,
    };
    let day = check(Duration::from_secs(86_400), 1);
    let fast = check(Duration::from_secs(6), 10);
    let now = redis_now(&redis);
    assert!(matches!(
        shared.gcra(&[day], now, true).await.unwrap(),
        GcraOutcome::Allowed { .. }
    ));
    match shared.gcra(&[fast], now, true).await.unwrap() {
        GcraOutcome::Refused { retry_after, .. } => {
            assert!(retry_after <= Duration::from_secs(6), "{retry_after:?}")
        }
        other => panic!("{other:?}"),
    }
    let keys = redis.cli(&["--scan"]).unwrap();
    let key = keys.lines().next().expect("the limit's key");
    let ttl: u64 = redis.cli(&["PTTL", key]).unwrap().trim().parse().unwrap();
    assert!(
        ttl <= 61_000,
        "{key} still waits out the old rate: {ttl} ms"
    );
}

/// [`memory_and_redis_decide_alike`] on a three-master Cluster: a request's keys on
/// several slots (GCRA groups per hash tag, given back when another refuses; one window
/// script per key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_a_cluster_decide_alike() {
    use smsfence::store::redis::RedisStore;
    use smsfence::store::Store;

    let cluster = Cluster::start();
    let cfg = smsfence::config::StoreConfig {
        urls: cluster.urls(),
        cluster: true,
        timeout: Duration::from_secs(2),
        ..cluster.nodes[0].store_config()
    };
    let shared = Store::Redis(RedisStore::connect(&cfg).await.unwrap());
    decide_alike(&shared, &cluster.nodes[0]).await;
}

/// Runs the same random operations on `shared` and on a memory store on the clock of
/// `clock`, comparing every answer.
async fn decide_alike(shared: &smsfence::store::Store, clock: &Redis) {
    use smsfence::store::memory::MemoryStore;
    use smsfence::store::{Entity, Flag, GcraCheck, GcraOutcome, LimitKey, Store, WindowOp};

    let memory = Store::Memory(MemoryStore::new(1_000_000));
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let hour = Duration::from_secs(3600);
    let entity = |r: u64| match r % 3 {
        0 => Entity::Number(447_400_123_000 + r),
        1 => Entity::Prefix(4_474_001 + r),
        _ => Entity::Global,
    };
    for step in 0..300 {
        let now = redis_now(clock);
        match rnd(4) {
            0 => {
                let checks: Vec<GcraCheck<'_>> = (0..1 + rnd(3))
                    .map(|_| GcraCheck {
                        key: LimitKey {
                            rule: rnd(2),
                            entity: entity(rnd(4)),
                        },
                        interval: hour / 4,
                        burst: 4,
                        cost: 1 + rnd(3) as u32,
                        on_overflow_closed: false,
                    })
                    .collect();
                let commit = rnd(4) != 0;
                let m = memory.gcra(&checks, now, commit).await.unwrap();
                let r = shared.gcra(&checks, now, commit).await.unwrap();
                match (&m, &r) {
                    (GcraOutcome::Allowed { states: a }, GcraOutcome::Allowed { states: b }) => {
                        let rem = |s: &Vec<smsfence::decide::gcra::State>| {
                            s.iter().map(|s| s.remaining).collect::<Vec<_>>()
                        };
                        assert_eq!(rem(a), rem(b), "step {step}: {checks:?}");
                    }
                    // A refusal answered from Redis' refused-key cache names a key
                    // the cache knows, with its wait: never longer than memory's.
                    (
                        GcraOutcome::Refused { retry_after: a, .. },
                        GcraOutcome::Refused { retry_after: b, .. },
                    ) => assert!(
                        *b <= *a + Duration::from_secs(1),
                        "step {step}: {checks:?}: memory {m:?}, redis {r:?}"
                    ),
                    _ => panic!("step {step}: memory {m:?}, redis {r:?} for {checks:?}"),
                }
            }
            1 | 2 => {
                let ops: Vec<WindowOp<'_>> = (0..1 + rnd(3))
                    .map(|_| {
                        // A key counts members always or never (as every heuristic's).
                        let rule = 10 + rnd(2);
                        let members = rule == 10;
                        WindowOp {
                            key: LimitKey {
                                rule,
                                entity: entity(rnd(4)),
                            },
                            window: hour,
                            amount: rnd(4),
                            // Under the cap: past it, which of several members seen at
                            // the same time (one request's) is dropped differs.
                            member: members.then(|| 100 + rnd(6)),
                            cap: 8,
                            near: (members && rnd(2) == 0).then_some(2),
                        }
                    })
                    .collect();
                let commits: Vec<bool> = ops.iter().map(|_| rnd(4) != 0).collect();
                let m = memory.windows_each(&ops, &commits, now).await.unwrap();
                let r = shared.windows_each(&ops, &commits, now).await.unwrap();
                assert_eq!(m, r, "step {step}: {ops:?} {commits:?}");
            }
            _ => {
                let ops: Vec<WindowOp<'_>> = (0..1 + rnd(2))
                    .map(|_| WindowOp {
                        key: LimitKey {
                            rule: 10 + rnd(2),
                            entity: entity(rnd(4)),
                        },
                        window: hour,
                        amount: 1 + rnd(5),
                        member: None,
                        cap: 3,
                        near: None,
                    })
                    .collect();
                memory.give_back(&ops, now).await.unwrap();
                shared.give_back(&ops, now).await.unwrap();
            }
        }
    }

    // Flags: set, read back, listed, removed.
    let now = redis_now(clock);
    let key = |n| LimitKey {
        rule: 3,
        entity: Entity::Number(n),
    };
    for store in [&memory, shared] {
        for (n, label) in [(1, "block a"), (2, smsfence::store::TRUST_LABEL)] {
            let flag = Flag {
                until: now.add(hour),
                level: 1,
                label: label.into(),
            };
            store.set_flag(key(n), flag, now).await.unwrap();
        }
    }
    let m = memory.flags(&[key(1), key(2), key(3)], now).await.unwrap();
    let r = shared.flags(&[key(1), key(2), key(3)], now).await.unwrap();
    assert_eq!(m, r);
    // When a flag ends Redis says, by its own clock (see
    // `a_flag_lasts_as_long_as_its_key_whatever_the_instance_clock`).
    // Trust marks are not listed on Redis (`GET /v1/blocks` leaves them out anyway).
    let labels = |v: Vec<Flag>| {
        v.into_iter()
            .map(|f| f.label)
            .filter(|l| l != smsfence::store::TRUST_LABEL)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        labels(memory.list_flags(now).await.unwrap()),
        labels(shared.list_flags(now).await.unwrap())
    );
    assert_eq!(
        memory.remove_flags("block a").await.unwrap(),
        shared.remove_flags("block a").await.unwrap()
    );
}

/// A request of several keys that the refused-key cache knows is answered with the
/// longest of their waits, as Redis (and memory) would: not with the first key's, which
/// gave the client a `Retry-After` after which it was refused again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_refusal_waits_for_the_slowest_key() {
    use smsfence::store::redis::RedisStore;
    use smsfence::store::{Entity, GcraCheck, GcraOutcome, LimitKey};

    let redis = Redis::start(false);
    let store = RedisStore::connect(&redis.store_config()).await.unwrap();
    let now = redis_now(&redis);
    let check = |n: u64, interval: u64| GcraCheck {
        key: LimitKey {
            rule: 1,
            entity: Entity::Number(n),
        },
        interval: Duration::from_secs(interval),
        burst: 1,
        cost: 1,
        on_overflow_closed: false,
    };
    let (fast, slow) = (check(1, 10), check(2, 3600));
    for c in [fast, slow] {
        assert!(matches!(
            store.gcra(&[c], now, true).await,
            Ok(GcraOutcome::Allowed { .. })
        ));
        // Refused, and cached.
        assert!(matches!(
            store.gcra(&[c], now, true).await,
            Ok(GcraOutcome::Refused { .. })
        ));
    }
    match store.gcra(&[fast, slow], now, true).await {
        Ok(GcraOutcome::Refused {
            index, retry_after, ..
        }) => {
            assert_eq!(index, 1, "the slow key names the wait");
            assert!(retry_after > Duration::from_secs(3000), "{retry_after:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(store.stats().cache_hits >= 1);
}

/// A flag lasts as long as its Redis key, on every instance: an instance whose clock runs
/// ahead of the one that set a block used to see the block end early by the difference,
/// and let through what the other instances still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_lasts_as_long_as_its_key_whatever_the_instance_clock() {
    use smsfence::store::redis::RedisStore;
    use smsfence::store::{Entity, Flag, LimitKey};

    let redis = Redis::start(false);
    let a = RedisStore::connect(&redis.store_config()).await.unwrap();
    let b = RedisStore::connect(&redis.store_config()).await.unwrap();
    let key = LimitKey {
        rule: 9,
        entity: Entity::Prefix(4_474_001),
    };
    let now = redis_now(&redis);
    let flag = Flag {
        until: now.add(Duration::from_secs(60)),
        level: 0,
        label: "block".into(),
    };
    a.set_flag(key, flag.clone(), now).await.unwrap();
    // B's clock runs two minutes ahead; the key has about a minute left in Redis.
    let ahead = now.add(Duration::from_secs(120));
    assert_eq!(b.flags(&[key], ahead).await.unwrap(), vec![Some(flag)]);
    redis.cli(&["PEXPIRE", "sf:{p4474001}:f:0000000000000009", "1"]);
    wait_until(Duration::from_secs(5), || {
        redis
            .cli(&["EXISTS", "sf:{p4474001}:f:0000000000000009"])
            .as_deref()
            == Some("0\n")
    });
    assert_eq!(b.flags(&[key], now).await.unwrap(), vec![None]);
}

/// A burst of concurrent requests that all trip one heuristic is one offence: the block
/// lasts `block_for`, not `block_for` doubled once per request that read "no block"
/// before the first one was written (40 at once used to block the range for `max_block`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_concurrent_burst_is_one_offence_not_one_per_request() {
    let redis = Redis::start(false);
    let up = MockUpstream::start().await;
    let rules = "[[heuristic]]\nname = \"pv\"\nkind = \"prefix_velocity\"\ndrop_digits = [3]\nwindow = \"10m\"\nmax_distinct = 2\nblock_for = \"10m\"\nmax_block = \"24h\"\n";
    let (a, b) = two_instances(&[redis.url()], false, &up, rules).await;
    let numbers: Vec<String> = (0..40).map(|i| format!("+447400123{i:03}")).collect();
    let statuses = burst(&a, &b, &numbers).await;
    assert_eq!(
        statuses.iter().filter(|&&s| s == 201).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(degraded(&a).await + degraded(&b).await, 0);
    let blocks = send("GET", &a.admin("/v1/blocks"), &[], "").await.json();
    let blocks = blocks["blocks"].as_array().expect("a list").clone();
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    assert_eq!(blocks[0]["block"], "pv prefix +447400123");
    assert_eq!(blocks[0]["offences"], 1, "{blocks:?}");
    assert!(
        blocks[0]["remaining_secs"]
            .as_u64()
            .is_some_and(|s| s <= 600),
        "{blocks:?}"
    );
}

/// A send decided before a reload that changed a budget's window, and given back after it
/// (the provider refused it), leaves the window the reload started alone, on memory and on
/// Redis. The give-back used to take from the new window what the old one had held (memory)
/// or drop every slot of the new window, written with another slot width (Redis): a spend
/// budget started afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_back_across_a_reload_leaves_the_new_window_alone() {
    use smsfence::clock::Timestamp;
    use smsfence::store::redis::RedisStore;
    use smsfence::store::{memory::MemoryStore, Entity, LimitKey, Store, WindowOp};

    let redis = Redis::start(false);
    let cfg = smsfence::config::StoreConfig {
        timeout: Duration::from_secs(2),
        ..redis.store_config()
    };
    let stores = [
        Store::Memory(MemoryStore::new(100)),
        Store::Redis(RedisStore::connect(&cfg).await.unwrap()),
    ];
    let op = |window: u64, amount: u64| WindowOp {
        key: LimitKey {
            rule: 9,
            entity: Entity::Global,
        },
        window: Duration::from_secs(window),
        amount,
        member: None,
        cap: 0,
        near: None,
    };
    let now = Timestamp::from_unix_secs(T0);
    for store in &stores {
        let kind = store.kind();
        // Reserved under the old rules (an hour's window) …
        store.windows(&[op(3600, 5)], now, true).await.unwrap();
        // … the reload makes it ten minutes, and a send under the new rules counts 3 …
        let read = store.windows(&[op(600, 3)], now, true).await.unwrap();
        assert_eq!(read[0].total, 3, "{kind}: the new window starts afresh");
        // … then the first send is given back.
        store.give_back(&[op(3600, 5)], now).await.unwrap();
        let read = store.windows(&[op(600, 0)], now, false).await.unwrap();
        assert_eq!(read[0].total, 3, "{kind}: the new window keeps its sends");
    }
}

/// One verification reported many times at once (the Verify check and `/v1/feedback`, on
/// two instances) counts once for its range's conversion rate: trust is checked and
/// taken in one step. Each report used to read "not trusted yet" before any had set the
/// mark, and each counted — a pumping range's rate lifted by repeating one report.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_verification_reported_at_once_many_times_counts_once() {
    let redis = Redis::start(false);
    let up = MockUpstream::start().await;
    let rules = "[settings]\ntrust_verified = \"30d\"\n\
                 [[heuristic]]\nname = \"conv\"\nkind = \"conversion_rate\"\nkey = \"prefix\"\ndrop_digits = [3]\nwindow = \"1h\"\nmin_sends = 5\nmin_rate = 0.5\n";
    let (a, b) = two_instances(&[redis.url()], false, &up, rules).await;
    let reports = (0..20).map(|i| {
        let p = if i % 2 == 0 { &a } else { &b };
        async move {
            send(
                "POST",
                &p.admin("/v1/feedback"),
                &[JSON],
                r#"{"number": "+447400123456", "outcome": "verified"}"#,
            )
            .await
            .status
        }
    });
    let statuses = futures_util::future::join_all(reports).await;
    assert!(statuses.iter().all(|s| *s == 204), "{statuses:?}");
    // The range's verified window (no sends yet): one key, counting one.
    let keys = redis
        .cli(&["--scan", "--pattern", "sf:{p447400123}:w:*"])
        .unwrap();
    let keys: Vec<&str> = keys.lines().collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let slots = redis.cli(&["HVALS", keys[0]]).unwrap();
    let counted: u64 = slots
        .lines()
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum();
    assert_eq!(counted, 1, "{slots}");
}
