//! The pumping defence through the proxy: feedback changes decisions, auto-blocks are
//! listed and lifted on the admin API, and the audit log replays.

mod common;

use std::time::Duration;

use common::*;

const CONVERSION: &str = "\
[settings]\ntrust_verified = \"30d\"\n\
[[heuristic]]\nname = \"conv\"\nkind = \"conversion_rate\"\nkey = \"country\"\nwindow = \"1h\"\nmin_sends = 3\nmin_rate = 0.5\n";

#[tokio::test]
async fn feedback_changes_decisions() {
    let p = Proxy::start("", &[("h.toml", CONVERSION)]).await;
    for n in ["+18765550121", "+18765550122"] {
        assert_eq!(twilio_send(&p, n, &[]).await.status, 201);
    }
    let third = twilio_send(&p, "+18765550123", &[]).await;
    assert_eq!(third.status, 403, "{}", third.text());
    assert_eq!(third.header("smsfence-reason"), Some("low_conversion"));
    // Two of them verify: the rate climbs to 2/3.
    for n in ["+18765550121", "+18765550122"] {
        let a = send(
            "POST",
            &p.admin("/v1/feedback"),
            &[JSON],
            format!(r#"{{"number":"{n}","outcome":"verified"}}"#),
        )
        .await;
        assert_eq!(a.status, 204);
    }
    assert_eq!(twilio_send(&p, "+18765550124", &[]).await.status, 201);
    let bad = send(
        "POST",
        &p.admin("/v1/feedback"),
        &[JSON],
        r#"{"number":"+1","outcome":"verified"}"#,
    )
    .await;
    assert_eq!(bad.status, 400);
    let bad = send(
        "POST",
        &p.admin("/v1/feedback"),
        &[JSON],
        r#"{"number":"+18765550121","outcome":"maybe"}"#,
    )
    .await;
    assert_eq!(bad.status, 400);
    let m = send("GET", &p.admin("/metrics"), &[], "").await.text();
    assert!(
        m.contains(
            r#"smsfence_conversions_total{country="JM",outcome="verified",source="feedback"} 2"#
        ),
        "{m}"
    );
}

#[tokio::test]
async fn auto_blocks_are_listed_and_lifted() {
    let rules = "[[heuristic]]\nname = \"pv\"\nkind = \"prefix_velocity\"\ndrop_digits = [3]\nwindow = \"10m\"\nmax_distinct = 2\nblock_for = \"30m\"\n";
    let p = Proxy::start("", &[("h.toml", rules)]).await;
    assert_eq!(twilio_send(&p, "+447400123001", &[]).await.status, 201);
    assert_eq!(twilio_send(&p, "+447400123002", &[]).await.status, 201);
    assert_eq!(
        twilio_send(&p, "+447400123003", &[])
            .await
            .header("smsfence-reason"),
        Some("prefix_velocity")
    );
    p.advance(Duration::from_secs(900)); // the window has slid; the block has not
    let a = twilio_send(&p, "+447400123004", &[]).await;
    assert_eq!(a.header("smsfence-reason"), Some("auto_blocked"));
    let blocks = send("GET", &p.admin("/v1/blocks"), &[], "").await.json();
    assert_eq!(blocks["blocks"][0]["block"], "pv prefix +447400123");
    assert_eq!(blocks["blocks"][0]["remaining_secs"], 900);
    assert_eq!(blocks["blocks"][0]["enforced"], true);
    // The heuristic put in shadow: its block stays in the store but no longer refuses, and
    // the listing says so.
    let dir = p.rules_dir.as_ref().unwrap().path();
    std::fs::write(dir.join("h.toml"), format!("{rules}mode = \"shadow\"\n")).unwrap();
    let r = send("POST", &p.admin("/v1/reload"), &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let blocks = send("GET", &p.admin("/v1/blocks"), &[], "").await.json();
    assert_eq!(blocks["blocks"][0]["block"], "pv prefix +447400123");
    assert_eq!(blocks["blocks"][0]["enforced"], false);
    assert_eq!(twilio_send(&p, "+447400123005", &[]).await.status, 201);
    let lifted = send(
        "DELETE",
        &p.admin("/v1/blocks/pv/prefix/447400123"),
        &[],
        "",
    )
    .await;
    assert_eq!(lifted.status, 200, "{}", lifted.text());
    assert_eq!(
        send("GET", &p.admin("/v1/blocks"), &[], "").await.json()["blocks"],
        serde_json::json!([])
    );
    assert_eq!(twilio_send(&p, "+447400123004", &[]).await.status, 201);
    assert_eq!(
        send(
            "DELETE",
            &p.admin("/v1/blocks/pv/prefix/447400123"),
            &[],
            ""
        )
        .await
        .status,
        404
    );
}

#[tokio::test]
async fn the_audit_log_is_replay_input() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let cfg = format!("[audit]\noutput = \"{}\"\n", audit.display());
    let p = Proxy::start_default_rules(&cfg).await;
    assert_eq!(twilio_send(&p, "+447400123456", &[]).await.status, 201);
    assert_eq!(twilio_send(&p, "+447400123456", &[]).await.status, 429);
    assert_eq!(twilio_send(&p, "+449098790123", &[]).await.status, 400);
    let a = send(
        "POST",
        &p.url("/v2/Services/VA1/VerificationCheck"),
        &[FORM, BASIC],
        "To=%2B447400123456&Code=987654",
    )
    .await;
    assert_eq!(a.json()["status"], "approved");
    // The writer is a background thread: poll the file with a bound.
    let mut text = String::new();
    for _ in 0..200 {
        text = std::fs::read_to_string(&audit).unwrap_or_default();
        if text.lines().count() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 5, "{text}");
    assert_eq!(events[0]["decision"], "allow");
    assert_eq!(events[0]["number"], "+447400123456");
    assert_eq!(events[0]["country"], "GB");
    assert_eq!(events[0]["upstream_status"], 201);
    assert_eq!(events[1]["reasons"][0], "rate_limited");
    assert_eq!(events[2]["rule"], "deny-non-personal-types");
    assert!(events.iter().any(|e| e["event"] == "verified"));
    assert!(
        !text.contains("Your code") && !text.contains("987654"),
        "no message text or code: {text}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smsfence"))
        .args([
            "replay",
            "--rules",
            concat!(env!("CARGO_MANIFEST_DIR"), "/rules"),
        ])
        .arg(&audit)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("4 sends, 1 verification outcomes, 0 malformed"),
        "{stdout}"
    );
}

#[tokio::test]
async fn an_unparsable_recipient_replays_as_it_was_decided() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let cfg = format!("[audit]\noutput = \"{}\"\n", audit.display());
    let p = Proxy::start_default_rules(&cfg).await;
    // Plivo takes several recipients: one valid, one that is not a number.
    let body = r#"{"src":"+15005550006","dst":"447400123456<not-a-number","text":"hi"}"#;
    let a = send(
        "POST",
        &p.url("/v1/Account/MA1/Message/"),
        &[JSON, BASIC],
        body,
    )
    .await;
    assert_eq!(a.header("smsfence-reason"), Some("invalid_number"));
    assert_eq!(
        twilio_send(&p, "garbage", &[])
            .await
            .header("smsfence-reason"),
        Some("invalid_number")
    );
    let mut text = String::new();
    for _ in 0..200 {
        text = std::fs::read_to_string(&audit).unwrap_or_default();
        if text.lines().count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        !text.contains("not-a-number") && !text.contains("garbage"),
        "{text}"
    );
    let dec = dir.path().join("decisions.jsonl");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smsfence"))
        .args([
            "replay",
            "--rules",
            concat!(env!("CARGO_MANIFEST_DIR"), "/rules"),
            "--decisions",
        ])
        .arg(&dec)
        .arg(&audit)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("2 sends, 0 verification outcomes, 0 malformed"),
        "{stdout}\n{text}"
    );
    let decisions = std::fs::read_to_string(&dec).unwrap();
    for l in decisions.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["reasons"][0], "invalid_number", "{decisions}\n{text}");
    }
}

/// A send the provider did not take (an error status, or no answer at all) sent no code
/// and cost nothing: it is not counted as a send of the conversion rate nor charged to a
/// budget — else a provider outage leaves its countries refused as unverified, and its
/// budgets spent, once the provider is back.
#[tokio::test]
async fn sends_the_provider_refused_are_not_counted() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let down = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&down);
    let up = MockUpstream::with(move |_| {
        if flag.load(Ordering::SeqCst) {
            Reply::json(503, r#"{"code":20503,"message":"Service unavailable"}"#)
        } else {
            Reply::json(201, r#"{"sid":"SMmock","status":"queued"}"#)
        }
    })
    .await;
    let rules = "[prices]\ndefault = 0.10\n\
[[heuristic]]\nname = \"conv\"\nkind = \"conversion_rate\"\nkey = \"country\"\nwindow = \"1h\"\nmin_sends = 4\nmin_rate = 0.5\n\
[[heuristic]]\nname = \"spend\"\nkind = \"spend_budget\"\nhourly = 0.35\n";
    let p = Proxy::start(&all_presets_to(&up.url()), &[("h.toml", rules)]).await;
    for i in 0..4 {
        let a = twilio_send(&p, &format!("+1876555010{i}"), &[]).await;
        assert_eq!(
            a.status,
            503,
            "{i}: the provider's own answer: {}",
            a.text()
        );
    }
    // Nothing reached the provider's ledger: the budget (3 × 0.10 ≤ 0.35) and the
    // conversion rate (3 sends, below min_sends) start from the provider's recovery.
    down.store(false, Ordering::SeqCst);
    for i in 0..3 {
        let a = twilio_send(&p, &format!("+1876555020{i}"), &[]).await;
        assert_eq!(a.status, 201, "{i}: {}", a.text());
    }
    // A fourth unverified send: 0 of 4 verified.
    let a = twilio_send(&p, "+18765550203", &[]).await;
    assert_eq!(a.header("smsfence-reason"), Some("low_conversion"));
    // An upstream that cannot be reached at all: not counted either.
    drop(up);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let p = Proxy::start(&all_presets_to(&dead), &[("h.toml", rules)]).await;
    for i in 0..4 {
        let a = twilio_send(&p, &format!("+1876555030{i}"), &[]).await;
        assert_eq!(a.status, 502, "{i}: {}", a.text());
    }
}

/// The admin API's JSON errors say where a body is wrong, never what it held: serde's
/// messages repeat the value they could not use (`invalid type: integer
/// `14155550123``, `unknown variant `…``).
#[tokio::test]
async fn admin_json_errors_do_not_repeat_values() {
    let p = Proxy::start("", &[("h.toml", CONVERSION)]).await;
    for (path, body) in [
        (
            "/v1/feedback",
            r#"{"number":14155550123,"outcome":"verified"}"#,
        ),
        (
            "/v1/feedback",
            r#"{"number":"+14155550199","outcome":"+14155550123"}"#,
        ),
        (
            "/v1/feedback",
            r#"{"number":"+14155550199","+14155550123":1}"#,
        ),
        ("/v1/check", r#"{"number":["+14155550123"]}"#),
    ] {
        let a = send("POST", &p.admin(path), &[JSON], body).await;
        assert_eq!(a.status, 400, "{body}: {}", a.text());
        assert!(a.text().contains("line 1"), "{body}: {}", a.text());
        assert!(!a.text().contains("4155550123"), "{body}: {}", a.text());
    }
    // A missing field is named (the name is smsfence's own).
    let a = send(
        "POST",
        &p.admin("/v1/feedback"),
        &[JSON],
        r#"{"outcome":"failed"}"#,
    )
    .await;
    assert!(a.text().contains("missing field `number`"), "{}", a.text());
}
