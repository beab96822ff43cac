//! Rules end to end: every rule kind through the proxy, shadow mode, hot reload (admin,
//! file watcher, broken files), `check-rules`, `/v1/check`, `/v1/rules`, the admin token.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use smsfence::rules::reload::Source;

const LIMIT_1: &str = "[[limit]]\nname = \"cooldown\"\nkey = \"number\"\nrate = \"1/60s\"\nburst = 1\nheaders = true\n";

fn route(up: &MockUpstream) -> String {
    format!(
        "[[route]]\nname = \"twilio\"\npreset = \"twilio\"\nupstream = \"{}\"\n",
        up.url()
    )
}

#[tokio::test]
async fn each_rule_kind_refuses_natively_and_nothing_reaches_the_upstream() {
    let up = MockUpstream::start().await;
    let rules = r#"
[[list]]
name = "deny-numbers"
action = "deny"
numbers = ["+447400900001"]

[[list]]
name = "deny-ip"
action = "deny"
cidrs = ["192.0.2.0/24"]

[[policy]]
name = "no-premium"
deny_types = ["premium_rate"]

[[policy]]
name = "countries"
country_mode = "deny"
countries = ["JM"]
"#;
    let p = Proxy::start(&route(&up), &[("a.toml", rules), ("b.toml", LIMIT_1)]).await;
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16, &'a str, &'a str);
    let cases: [Case; 5] = [
        ("+447400900001", &[], 403, "denied_number", "deny-numbers"),
        (
            "+447400900002",
            &[("x-smsfence-end-user-ip", "192.0.2.10")],
            403,
            "denied_ip",
            "deny-ip",
        ),
        ("+449098790123", &[], 400, "number_type", "no-premium"),
        ("+18765550123", &[], 400, "denied_country", "countries"),
        ("not a number", &[], 400, "invalid_number", "builtin"),
    ];
    for (to, headers, status, reason, rule) in cases {
        let a = twilio_send(&p, to, headers).await;
        assert_eq!(a.status.as_u16(), status, "{to}: {}", a.text());
        assert_eq!(a.header("smsfence-reason"), Some(reason), "{to}");
        assert_eq!(a.header("smsfence-rule"), Some(rule), "{to}");
        let msg = a.json()["message"].as_str().unwrap().to_owned();
        assert!(msg.contains(&format!("reason={reason}")), "{msg}");
        assert!(
            !msg.contains(to.trim_start_matches('+')),
            "the number is not echoed: {msg}"
        );
    }
    assert!(
        up.requests().is_empty(),
        "no refused request reached the upstream"
    );
    // The limit: first passes with RateLimit headers, second is throttled natively.
    let a = twilio_send(&p, "+447400900003", &[]).await;
    assert_eq!(a.status, 201);
    assert_eq!(a.header("ratelimit-policy"), Some("\"cooldown\";q=1;w=60"));
    assert_eq!(a.header("ratelimit"), Some("\"cooldown\";r=0;t=60"));
    let b = twilio_send(&p, "+447400900003", &[]).await;
    assert_eq!(b.status, 429);
    assert_eq!(b.header("retry-after"), Some("60"));
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn shadow_rules_forward_and_record() {
    let up = MockUpstream::start().await;
    let shadow = LIMIT_1.replace("key =", "mode = \"shadow\"\nkey =");
    let p = Proxy::start(&route(&up), &[("r.toml", &shadow)]).await;
    for _ in 0..3 {
        assert_eq!(twilio_send(&p, "+447400900003", &[]).await.status, 201);
    }
    assert_eq!(up.requests().len(), 3);
    let m = send("GET", &p.admin("/metrics"), &[], "").await.text();
    assert!(
        m.contains(r#"smsfence_decisions_total{country="GB",decision="throttle",mode="shadow",reason="rate_limited",rule="cooldown"} 2"#),
        "{m}"
    );
}

/// Global shadow as the README has it: enforced rules and invalid numbers are recorded and
/// forwarded; a request the preset cannot read is still refused (it was never decided).
#[tokio::test]
async fn global_shadow_forwards_invalid_numbers_but_not_unreadable_requests() {
    let up = MockUpstream::start().await;
    let rules = format!("[settings]\nshadow = true\n{LIMIT_1}");
    let p = Proxy::start(&route(&up), &[("r.toml", &rules)]).await;
    for _ in 0..2 {
        assert_eq!(twilio_send(&p, "+447400900003", &[]).await.status, 201);
    }
    assert_eq!(twilio_send(&p, "+4477", &[]).await.status, 201);
    assert_eq!(up.requests().len(), 3);
    let m = send("GET", &p.admin("/metrics"), &[], "").await.text();
    assert!(
        m.contains(r#"decision="block",mode="shadow",reason="invalid_number",rule="builtin"} 1"#),
        "{m}"
    );
    let a = twilio_send(&p, "+447400900005", &[("content-encoding", "gzip")]).await;
    assert_eq!(a.header("smsfence-reason"), Some("unsupported_request"));
    assert_eq!(up.requests().len(), 3);
}

async fn generation(p: &Proxy) -> u64 {
    send("GET", &p.admin("/v1/rules"), &[], "").await.json()["generation"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn reload_under_traffic_with_zero_failed_requests() {
    let up = MockUpstream::start().await;
    let p = Proxy::start(&route(&up), &[("r.toml", LIMIT_1)]).await;
    let dir = p.rules_dir.as_ref().unwrap().path().to_owned();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (stop, failures, sent) = (stop.clone(), failures.clone(), sent.clone());
        let url = p.url("/2010-04-01/Accounts/ACtest/Messages.json");
        workers.push(tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) && i < 2_000 {
                let body = format!("To=%2B4474009{w}{i:04}&Body=x");
                let a = send("POST", &url, &[FORM, BASIC], body).await;
                // Every request gets a decided answer: 201, or 429 from a limit.
                if a.status != 201 && a.status != 429 {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                sent.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    for round in 0..6 {
        let text = if round % 2 == 0 {
            LIMIT_1.replace("1/60s", "2/60s")
        } else {
            LIMIT_1.to_owned()
        };
        std::fs::write(dir.join("r.toml"), text).unwrap();
        let r = send("POST", &p.admin("/v1/reload"), &[], "").await;
        assert_eq!(r.status, 200, "{}", r.text());
        // A broken file in between never takes effect.
        std::fs::write(
            dir.join("broken.toml"),
            "[[limit]]\nname = \"x\"\nkey = \"nope\"\n",
        )
        .unwrap();
        let r = send("POST", &p.admin("/v1/reload"), &[], "").await;
        assert_eq!(r.status, 422);
        std::fs::remove_file(dir.join("broken.toml")).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert!(sent.load(Ordering::Relaxed) > 0);
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert_eq!(generation(&p).await, 7);
    let m = send("GET", &p.admin("/metrics"), &[], "").await.text();
    assert!(
        m.contains("smsfence_rule_reloads_total{result=\"failure\"} 6"),
        "{m}"
    );
    assert!(m.contains("smsfence_rules_generation 7"), "{m}");
}

#[tokio::test]
async fn broken_reload_keeps_the_old_rules_and_says_where() {
    let up = MockUpstream::start().await;
    let p = Proxy::start(&route(&up), &[("r.toml", LIMIT_1)]).await;
    let dir = p.rules_dir.as_ref().unwrap().path().to_owned();
    assert_eq!(twilio_send(&p, "+447400900003", &[]).await.status, 201);
    std::fs::write(
        dir.join("r.toml"),
        LIMIT_1.replace("burst = 1", "burst = 0"),
    )
    .unwrap();
    let r = send("POST", &p.admin("/v1/reload"), &[], "").await;
    assert_eq!(r.status, 422);
    let errors = r.json()["errors"].to_string();
    assert!(
        errors.contains("r.toml:1: cooldown: burst must be at least 1"),
        "{errors}"
    );
    // Still generation 1, still limiting.
    assert_eq!(generation(&p).await, 1);
    assert_eq!(twilio_send(&p, "+447400900003", &[]).await.status, 429);
    let rules = send("GET", &p.admin("/v1/rules"), &[], "").await.json();
    assert!(rules["last_reload_errors"][0]
        .as_str()
        .unwrap()
        .contains("burst"));
    // The metrics say so for as long as it lasts, not only as a counter's increase.
    let metric = |m: &str, name: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {m}"))
    };
    let m = send("GET", &p.admin("/metrics"), &[], "").await.text();
    assert_eq!(metric(&m, "smsfence_rules_last_reload_successful"), 0.0);
    let loaded = metric(&m, "smsfence_rules_last_reload_success_timestamp_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(loaded > now - 60.0 && loaded <= now, "{loaded} vs {now}");
    std::fs::write(dir.join("r.toml"), LIMIT_1).unwrap();
    assert_eq!(
        send("POST", &p.admin("/v1/reload"), &[], "").await.status,
        200
    );
    let m = send("GET", &p.admin("/metrics"), &[], "").await.text();
    assert_eq!(metric(&m, "smsfence_rules_last_reload_successful"), 1.0);
    assert!(metric(&m, "smsfence_rules_last_reload_success_timestamp_seconds") >= loaded);
    let rules = send("GET", &p.admin("/v1/rules"), &[], "").await.json();
    assert_eq!(rules["last_reload_errors"], serde_json::json!([]));
}

#[tokio::test]
async fn a_broken_file_keeps_the_whole_old_set_not_the_good_files_of_the_new_one() {
    // A good change to 10-lists.toml saved with a broken 30-limits.toml: neither applies,
    // and the cooldown already running goes on.
    let up = MockUpstream::start().await;
    let p = Proxy::start(&route(&up), &[("30-limits.toml", LIMIT_1)]).await;
    let dir = p.rules_dir.as_ref().unwrap().path().to_owned();
    assert_eq!(twilio_send(&p, "+447400900003", &[]).await.status, 201);
    std::fs::write(
        dir.join("10-lists.toml"),
        "[[list]]\nname = \"incident\"\naction = \"deny\"\nnumbers = [\"+447400900004\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("30-limits.toml"),
        LIMIT_1.replace("1/60s", "1/60 seconds please"),
    )
    .unwrap();
    let r = send("POST", &p.admin("/v1/reload"), &[], "").await;
    assert_eq!(r.status, 422);
    assert_eq!(generation(&p).await, 1);
    assert_eq!(twilio_send(&p, "+447400900004", &[]).await.status, 201);
    assert_eq!(twilio_send(&p, "+447400900003", &[]).await.status, 429);
    assert_eq!(
        up.requests().len(),
        2,
        "only the two allowed sends went upstream"
    );
    // Once the limits file is fixed, both files apply together.
    std::fs::write(dir.join("30-limits.toml"), LIMIT_1).unwrap();
    let r = send("POST", &p.admin("/v1/reload"), &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(twilio_send(&p, "+447400900004", &[]).await.status, 403);
    assert_eq!(twilio_send(&p, "+447400900003", &[]).await.status, 429);
    p.advance(Duration::from_secs(60));
    assert_eq!(twilio_send(&p, "+447400900003", &[]).await.status, 201);
    assert_eq!(up.requests().len(), 3);
}

#[tokio::test]
async fn limiter_state_survives_a_reload_of_unchanged_rules() {
    let up = MockUpstream::start().await;
    let other =
        "[[limit]]\nname = \"other\"\nkey = \"global\"\nrate = \"1000/60s\"\nburst = 1000\n";
    let p = Proxy::start(&route(&up), &[("r.toml", LIMIT_1)]).await;
    assert_eq!(twilio_send(&p, "+447400900003", &[]).await.status, 201);
    let dir = p.rules_dir.as_ref().unwrap().path().to_owned();
    std::fs::write(dir.join("z.toml"), other).unwrap();
    assert_eq!(
        send("POST", &p.admin("/v1/reload"), &[], "").await.status,
        200
    );
    assert_eq!(
        twilio_send(&p, "+447400900003", &[]).await.status,
        429,
        "the cooldown still holds"
    );
}

#[tokio::test]
async fn saving_a_file_reloads_within_seconds() {
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r.toml"), LIMIT_1).unwrap();
    let p = Proxy::start_with(&route(&up), Source::Dir(dir.path().to_owned()), None, true).await;
    assert_eq!(generation(&p).await, 1);
    // Editors save through a rename: write a temp file, rename it over the old one.
    let tmp = dir.path().join(".r.toml.swp");
    std::fs::write(&tmp, LIMIT_1.replace("1/60s", "5/60s")).unwrap();
    std::fs::rename(&tmp, dir.path().join("r.toml")).unwrap();
    let mut reloaded = false;
    for _ in 0..100 {
        if generation(&p).await >= 2 {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reloaded, "the watcher reloaded within 5 s");
}

#[tokio::test]
async fn v1_check_is_a_dry_run() {
    let p = Proxy::start("", &[("r.toml", LIMIT_1)]).await;
    let check = |body: &'static str| {
        let url = p.admin("/v1/check");
        async move { send("POST", &url, &[JSON], body).await }
    };
    for _ in 0..3 {
        let a = check(r#"{"number":"+18765550123","ip":"198.51.100.1","user":"u1"}"#).await;
        assert_eq!(a.status, 200);
        let j = a.json();
        assert_eq!(j["decision"], "allow");
        assert_eq!(j["number"]["e164"], "+18765550123");
        assert_eq!(j["number"]["country"], "JM");
        assert_eq!(j["number"]["type"], "mobile");
        assert_eq!(j["number"]["valid"], true);
    }
    let a = check(r#"{"number":"07400 900123","default_region":"GB"}"#).await;
    assert_eq!(a.json()["number"]["e164"], "+447400900123");
    // A real send consumes the token; then check says throttle.
    twilio_send(&p, "+18765550123", &[]).await;
    let j = check(r#"{"number":"+18765550123"}"#).await.json();
    assert_eq!(j["decision"], "throttle");
    assert_eq!(j["reasons"][0], "rate_limited");
    assert_eq!(j["rule"], "cooldown");
    assert_eq!(j["retry_after"], 60);
    let j = check(r#"{"number":"banana"}"#).await.json();
    assert_eq!(j["decision"], "block");
    assert_eq!(j["reasons"][0], "invalid_number");
    for bad in [
        r#"{"numbr":"+1"}"#,
        "not json",
        r#"{"number":"+1","ip":"x"}"#,
        // A number given as a JSON number: refused without echoing it.
        r#"{"number":18765550123}"#,
        r#"{"number":"+18765550123","user":18765550123}"#,
        r#"{"number":["+18765550123"]}"#,
    ] {
        let a = check(bad).await;
        assert_eq!(a.status, 400, "{bad}");
        let message = a.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(!message.contains("8765550123"), "{bad}: {message}");
    }
    let a = check(r#"{"number":18765550123}"#).await;
    let message = a.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("invalid type: integer, expected a string"),
        "{message}"
    );
}

#[tokio::test]
async fn admin_token_guards_the_v1_api() {
    let p = Proxy::start(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"s3cret\"\n",
        &[("r.toml", LIMIT_1)],
    )
    .await;
    assert_eq!(
        send("GET", &p.admin("/v1/rules"), &[], "").await.status,
        401
    );
    assert_eq!(
        send(
            "GET",
            &p.admin("/v1/rules"),
            &[("authorization", "Bearer wrong")],
            ""
        )
        .await
        .status,
        401
    );
    let ok = send(
        "GET",
        &p.admin("/v1/rules"),
        &[("authorization", "Bearer s3cret")],
        "",
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["rules"][0]["name"], "cooldown");
    // Probes and metrics stay open.
    assert_eq!(send("GET", &p.admin("/healthz"), &[], "").await.status, 200);
    assert_eq!(send("GET", &p.admin("/metrics"), &[], "").await.status, 200);
}

#[test]
fn check_rules_command() {
    let bin = env!("CARGO_BIN_EXE_smsfence");
    let ok = std::process::Command::new(bin)
        .args(["check-rules", concat!(env!("CARGO_MANIFEST_DIR"), "/rules")])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(out.contains(": ok — "), "{out}");
    assert!(!out.contains("no rule here"), "{out}");

    // A directory without rule files (a volume not mounted, files named *.yaml) is valid,
    // and says that it checks nothing.
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("limits.yaml"), "limit: 1\n").unwrap();
    let none = std::process::Command::new(bin)
        .arg("check-rules")
        .arg(empty.path())
        .output()
        .unwrap();
    assert!(none.status.success());
    let out = String::from_utf8_lossy(&none.stdout);
    assert!(out.contains("no rule here"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.toml"),
        "[[limit]]\nname = \"a\"\nkey = \"number\"\nrate = \"1/60s\"\nburst = 1\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.toml"),
        "# comment\n[[limit]]\nname = \"a\"\nkey = \"number\"\nrate = \"1/60s\"\nburst = 1\n\n[[policy]]\nname = \"p\"\ndeny_types = [\"premium\"]\n",
    )
    .unwrap();
    let bad = std::process::Command::new(bin)
        .arg("check-rules")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    let b = dir.path().join("b.toml").display().to_string();
    assert!(
        err.contains(&format!("{b}:2: a: duplicate rule name")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{b}:8: p: deny_types: unknown number type \"premium\""
        )),
        "{err}"
    );
    assert!(err.contains("2 mistake(s)"), "{err}");
}

/// Polls `GET /v1/rules` until the generation reaches `at_least` (at most 5 s).
async fn reaches_generation(p: &Proxy, at_least: u64) -> bool {
    for _ in 0..100 {
        if generation(p).await >= at_least {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn the_watcher_follows_a_rules_directory_that_is_replaced_or_comes_back() {
    let up = MockUpstream::start().await;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("rules");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("r.toml"), LIMIT_1).unwrap();
    let p = Proxy::start_with(&route(&up), Source::Dir(dir.clone()), None, true).await;
    // A deploy that puts a new directory in place of the old one.
    let new = parent.path().join("rules.new");
    std::fs::create_dir(&new).unwrap();
    std::fs::write(new.join("r.toml"), LIMIT_1.replace("1/60s", "2/60s")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::rename(&new, &dir).unwrap();
    assert!(
        reaches_generation(&p, 2).await,
        "the new directory was read"
    );
    // Edits inside the new directory are seen too.
    std::fs::write(dir.join("r.toml"), LIMIT_1.replace("1/60s", "3/60s")).unwrap();
    assert!(
        reaches_generation(&p, 3).await,
        "an edit in the replacing directory reloaded"
    );
    // Gone for a while (failed reloads keep the rules), then back.
    std::fs::remove_dir_all(&dir).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(generation(&p).await, 3);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("r.toml"), LIMIT_1.replace("1/60s", "4/60s")).unwrap();
    assert!(
        reaches_generation(&p, 4).await,
        "a directory that came back was read"
    );
}

#[tokio::test]
async fn the_watcher_follows_a_rules_directory_symlink_that_is_switched() {
    // `rules -> releases/1`, switched atomically to `releases/2` (a rename of a new
    // symlink over the old one), as deploy tools do.
    let up = MockUpstream::start().await;
    let parent = tempfile::tempdir().unwrap();
    let (one, two) = (parent.path().join("1"), parent.path().join("2"));
    for d in [&one, &two] {
        std::fs::create_dir(d).unwrap();
        std::fs::write(d.join("r.toml"), LIMIT_1).unwrap();
    }
    let dir = parent.path().join("rules");
    std::os::unix::fs::symlink(&one, &dir).unwrap();
    let p = Proxy::start_with(&route(&up), Source::Dir(dir.clone()), None, true).await;
    std::fs::write(two.join("r.toml"), LIMIT_1.replace("1/60s", "2/60s")).unwrap();
    let tmp = parent.path().join("rules.tmp");
    std::os::unix::fs::symlink(&two, &tmp).unwrap();
    std::fs::rename(&tmp, &dir).unwrap();
    assert!(reaches_generation(&p, 2).await, "the switch was seen");
    std::fs::write(two.join("r.toml"), LIMIT_1.replace("1/60s", "3/60s")).unwrap();
    assert!(
        reaches_generation(&p, 3).await,
        "an edit in the new target was seen"
    );
}

#[tokio::test]
async fn admin_wrong_methods_get_405_with_allow() {
    let p = Proxy::start("", &[("r.toml", LIMIT_1)]).await;
    for (method, path, allow) in [
        ("POST", "/healthz", "GET"),
        ("DELETE", "/metrics", "GET"),
        ("GET", "/v1/reload", "POST"),
        ("PUT", "/v1/check", "POST"),
        ("POST", "/v1/blocks", "GET"),
        ("GET", "/v1/blocks/rule/ip/192.0.2.1", "DELETE"),
    ] {
        let a = send(method, &p.admin(path), &[], "").await;
        assert_eq!(a.status, 405, "{method} {path}: {}", a.text());
        assert_eq!(a.header("allow"), Some(allow), "{method} {path}");
        assert!(a.json()["error"]["message"].as_str().is_some());
    }
    assert_eq!(
        send("GET", &p.admin("/v2/rules"), &[], "").await.status,
        404
    );
}

#[tokio::test]
async fn admin_token_scheme_is_case_insensitive() {
    // RFC 9110 §11.1: the scheme is case-insensitive; some clients send "bearer".
    let p = Proxy::start(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"s3cret\"\n",
        &[("r.toml", LIMIT_1)],
    )
    .await;
    for (auth, status) in [
        ("bearer s3cret", 200),
        ("BEARER s3cret", 200),
        ("Bearer S3CRET", 401),
        ("Bearer s3cret2", 401),
        ("Basic s3cret", 401),
        ("s3cret", 401),
        ("Bearer", 401),
        ("", 401),
    ] {
        let a = send("GET", &p.admin("/v1/rules"), &[("authorization", auth)], "").await;
        assert_eq!(a.status, status, "{auth:?}");
    }
}

#[tokio::test]
async fn the_watcher_follows_a_kubernetes_configmap_update() {
    // A ConfigMap volume: `r.toml -> ..data/r.toml`, `..data -> ..<timestamp>`; an update
    // writes a new timestamped directory, points `..data` at it through a rename, then
    // deletes the old one. Nothing happens to `r.toml` itself.
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("..2026_11_22_1")).unwrap();
    std::fs::write(d.join("..2026_11_22_1/r.toml"), LIMIT_1).unwrap();
    std::os::unix::fs::symlink("..2026_11_22_1", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/r.toml", d.join("r.toml")).unwrap();
    let p = Proxy::start_with(&route(&up), Source::Dir(d.to_owned()), None, true).await;
    assert_eq!(twilio_send(&p, "+447400900003", &[]).await.status, 201);
    assert_eq!(twilio_send(&p, "+447400900003", &[]).await.status, 429);
    std::fs::create_dir(d.join("..2026_11_22_2")).unwrap();
    std::fs::write(
        d.join("..2026_11_22_2/r.toml"),
        LIMIT_1.replace("burst = 1", "burst = 5"),
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_11_22_2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    std::fs::remove_dir_all(d.join("..2026_11_22_1")).unwrap();
    assert!(reaches_generation(&p, 2).await, "the update was seen");
    assert_eq!(
        twilio_send(&p, "+447400900004", &[])
            .await
            .header("ratelimit-policy"),
        Some("\"cooldown\";q=5;w=300"),
        "the new rules are live"
    );
}

#[tokio::test]
async fn rapid_saves_end_on_the_last_one() {
    let up = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r.toml"), LIMIT_1).unwrap();
    let p = Proxy::start_with(&route(&up), Source::Dir(dir.path().to_owned()), None, true).await;
    for burst in 2..=9 {
        // Broken and good versions in turn, the last one good.
        std::fs::write(
            dir.path().join("r.toml"),
            "[[limit]]\nname = \"cooldown\"\n",
        )
        .unwrap();
        let text = LIMIT_1.replace("burst = 1", &format!("burst = {burst}"));
        std::fs::write(dir.path().join("r.toml"), text).unwrap();
    }
    assert!(reaches_generation(&p, 2).await);
    let last = LIMIT_1
        .replace("burst = 1", "burst = 9")
        .replace("1/60s", "1/1s");
    std::fs::write(dir.path().join("r.toml"), last).unwrap();
    let mut policy = None;
    for i in 0..100 {
        let a = twilio_send(&p, &format!("+4474009001{i:02}"), &[]).await;
        policy = a.header("ratelimit-policy").map(str::to_owned);
        if policy.as_deref() == Some("\"cooldown\";q=9;w=9") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(policy.as_deref(), Some("\"cooldown\";q=9;w=9"));
    let rules = send("GET", &p.admin("/v1/rules"), &[], "").await.json();
    assert_eq!(rules["last_reload_errors"], serde_json::json!([]));
}
