//! `smsfence replay` as a user runs it: deterministic, `--compare`, `--decisions`,
//! malformed lines reported and skipped, audit-log lines accepted, and the audit log of
//! a live run replayed to the same decisions.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn replay(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_smsfence"))
        .arg("replay")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const RULES_A: &str =
    "[[limit]]\nname = \"cooldown\"\nkey = \"number\"\nrate = \"1/60s\"\nburst = 1\n";
const RULES_B: &str =
    "[[limit]]\nname = \"cooldown\"\nkey = \"number\"\nrate = \"1/10s\"\nburst = 1\n";

const TRAFFIC: &str = r#"{"ts":"2026-11-22T10:00:00Z","event":"send","number":"+447400123456","ip":"203.0.113.1"}
{"ts":"2026-11-22T10:00:30Z","event":"send","number":"+447400123456"}
this is not json
{"ts":"2026-11-22T10:00:31Z","event":"verified","number":"+447400123456"}
{"ts":"yesterday","event":"send","number":"+447400123456"}
{"ts":"2026-11-22T10:01:00Z","event":"send","number":"+449098790123"}
{"ts":"2026-11-22T10:01:05.123Z","event":"send","request_id":"sf-1","provider":"twilio","route":"twilio","kind":"send","decision":"allow","number":"+447400123457","country":"GB","segments":2,"latency_ms":0.4}
{"ts":"2026-11-22T10:02:00Z","event":"send","number":"+447400123456"}
"#;

fn setup() -> (tempfile::TempDir, String, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    let policy = "[[policy]]\nname = \"types\"\ndeny_types = [\"premium_rate\"]\n";
    std::fs::write(a.join("r.toml"), format!("{RULES_A}{policy}")).unwrap();
    std::fs::write(b.join("r.toml"), format!("{RULES_B}{policy}")).unwrap();
    let file = dir.path().join("traffic.jsonl");
    std::fs::write(&file, TRAFFIC).unwrap();
    let s = |p: std::path::PathBuf| p.display().to_string();
    (dir, s(a), s(b), s(file))
}

#[test]
fn decisions_are_deterministic_and_in_input_order() {
    let (dir, a, _, file) = setup();
    let out1 = dir.path().join("d1.jsonl");
    let out2 = dir.path().join("d2.jsonl");
    let (ok, stdout, stderr) =
        replay(&["--rules", &a, &file, "--decisions", out1.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    replay(&["--rules", &a, &file, "--decisions", out2.to_str().unwrap()]);
    let d1 = std::fs::read_to_string(&out1).unwrap();
    assert_eq!(
        d1,
        std::fs::read_to_string(&out2).unwrap(),
        "same input, same output"
    );
    let lines: Vec<serde_json::Value> = d1
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(u64, &str)> = lines
        .iter()
        .map(|v| (v["line"].as_u64().unwrap(), v["decision"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "allow"),
            (2, "throttle"),
            (6, "block"),
            (7, "allow"),
            (8, "allow")
        ]
    );
    assert_eq!(lines[1]["reasons"][0], "rate_limited");
    assert_eq!(lines[2]["reasons"][0], "number_type");
    assert!(
        stdout.contains("5 sends, 1 verification outcomes, 2 malformed"),
        "{stdout}"
    );
    assert!(stdout.contains("malformed line 3:"), "{stdout}");
    assert!(
        stdout.contains("malformed line 5: ts \"yesterday\""),
        "{stdout}"
    );
}

#[test]
fn compare_lists_the_sends_decided_differently() {
    let (_dir, a, b, file) = setup();
    let (ok, stdout, stderr) = replay(&["--rules", &a, &file, "--compare", &b]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("== 1 sends decided differently"),
        "{stdout}"
    );
    assert!(
        stdout.contains("line 2: throttle [rate_limited] → allow []"),
        "{stdout}"
    );
}

#[test]
fn a_broken_rules_directory_is_a_clear_error() {
    let (dir, _, _, file) = setup();
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("r.toml"), "[[limit]]\nname = \"x\"\n").unwrap();
    let (ok, _, stderr) = replay(&["--rules", bad.to_str().unwrap(), &file]);
    assert!(!ok);
    assert!(stderr.contains("r.toml:1: x:"), "{stderr}");
}

#[test]
fn masked_and_hashed_audit_numbers_are_reported_not_decided() {
    let (dir, a, _b, _file) = setup();
    let file = dir.path().join("redacted.jsonl");
    std::fs::write(
        &file,
        concat!(
            r#"{"ts":"2026-11-22T10:00:00Z","event":"send","number":"+4474001234**"}"#,
            "\n",
            r#"{"ts":"2026-11-22T10:00:01Z","event":"verified","number":"h:0123456789abcdef"}"#,
            "\n",
            r#"{"ts":"2026-11-22T10:00:02Z","event":"send","number":"+447400123456"}"#,
            "\n"
        ),
    )
    .unwrap();
    let (ok, stdout, stderr) = replay(&["--rules", &a, &file.display().to_string()]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("1 sends, 0 verification outcomes, 2 malformed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("malformed line 1: the number is masked or hashed"),
        "{stdout}"
    );
    assert!(stdout.contains("malformed line 2:"), "{stdout}");
}

#[test]
fn a_line_that_is_not_utf8_is_malformed_not_the_end_of_the_replay() {
    let (dir, a, _b, _file) = setup();
    let file = dir.path().join("latin1.jsonl");
    let mut bytes =
        br#"{"ts":"2026-11-22T10:00:00Z","event":"send","number":"+447400123456"}"#.to_vec();
    bytes.extend_from_slice(b"\n{\"ts\":\"2026-11-22T10:00:01Z\",\"event\":\"send\",\"number\":\"+447400123457\",\"user\":\"Jos\xe9\"}\n");
    bytes.extend_from_slice(
        br#"{"ts":"2026-11-22T10:00:02Z","event":"send","number":"+447400123458"}"#,
    );
    bytes.push(b'\n');
    std::fs::write(&file, bytes).unwrap();
    let (ok, stdout, stderr) = replay(&["--rules", &a, &file.display().to_string()]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("3 lines: 2 sends, 0 verification outcomes, 1 malformed"),
        "{stdout}"
    );
    assert!(stdout.contains("malformed line 2:"), "{stdout}");
}

/// A line longer than any event (a binary file, a run of NULs where a log was truncated
/// under its writer) is one malformed line, read past without holding it in memory.
#[test]
fn an_overlong_line_is_malformed_and_skipped() {
    let (dir, a, _b, _file) = setup();
    let file = dir.path().join("long.jsonl");
    let mut bytes = vec![0u8; 3 << 20];
    bytes.push(b'\n');
    bytes.extend_from_slice(
        br#"{"ts":"2026-11-22T10:00:02Z","event":"send","number":"+447400123458"}"#,
    );
    bytes.push(b'\n');
    std::fs::write(&file, bytes).unwrap();
    let (ok, stdout, stderr) = replay(&["--rules", &a, &file.display().to_string()]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("2 lines: 1 sends, 0 verification outcomes, 1 malformed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("malformed line 1: longer than 1048576 bytes"),
        "{stdout}"
    );
}

/// The audit log of a live run, replayed against the same rules, decides every send as
/// the proxy did: the lines are written when requests finish (an allowed send after its
/// upstream answered, a refusal at once), not in the order they were decided, and sends
/// the provider did not take were given back live.
#[tokio::test]
async fn a_live_audit_log_replays_to_the_decisions_the_proxy_made() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let hang_first = Arc::new(AtomicBool::new(true));
    let hang = Arc::clone(&hang_first);
    let up = MockUpstream::with(move |r| {
        let body = String::from_utf8_lossy(&r.body);
        // Numbers ending 01..03: the provider refuses them (an HTTP error status).
        if ["01", "02", "03"]
            .iter()
            .any(|n| body.contains(&format!("4474001234{n}&")))
        {
            return Reply::json(400, r#"{"code":21211}"#);
        }
        let mut reply = Reply::json(201, r#"{"sid":"SMmock","status":"queued"}"#);
        reply.hang = hang.swap(false, Ordering::SeqCst);
        reply
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let rules = "[[limit]]\nname = \"cooldown\"\nkey = \"number\"\nrate = \"1/60s\"\nburst = 1\n\n\
                 [[heuristic]]\nname = \"conversion\"\nkind = \"conversion_rate\"\nkey = \"country\"\n\
                 window = \"1h\"\nmin_sends = 3\nmin_rate = 0.5\n";
    // Vonage goes to a port nothing listens on: connections refused, nothing sent.
    let cfg = format!(
        "[audit]\noutput = \"{}\"\n\
         [[route]]\nname = \"twilio\"\npreset = \"twilio\"\nupstream = \"{}\"\n\
         [[route]]\nname = \"vonage\"\npreset = \"vonage\"\nupstream = \"http://127.0.0.1:{}\"\n",
        audit.display(),
        up.url(),
        free_port()
    );
    let p = Arc::new(Proxy::start(&cfg, &[("r.toml", rules)]).await);
    let second = Duration::from_secs(1);

    // A send whose upstream is slow, and a repeat decided (and refused) meanwhile: the
    // repeat's line is written first.
    let first = {
        let p = Arc::clone(&p);
        tokio::spawn(async move { twilio_send(&p, "+447400123400", &[]).await })
    };
    up.arrived.notified().await;
    p.advance(second);
    assert_eq!(twilio_send(&p, "+447400123400", &[]).await.status, 429);
    up.release();
    assert_eq!(first.await.unwrap().status, 201);
    // Sends the provider refuses, and one it cannot be connected to: given back.
    for n in ["01", "02", "03"] {
        p.advance(second);
        let a = twilio_send(&p, &format!("+4474001234{n}"), &[]).await;
        assert_eq!(a.status, 400, "{}", a.text());
    }
    p.advance(second);
    let vonage = "api_key=k&api_secret=s&from=ACME&text=hi&to=447400123409";
    let a = send("POST", &p.url("/sms/json"), &[FORM], vonage).await;
    assert_eq!(a.status, 502, "{}", a.text());
    // Only the first send counts toward GB's conversion rate so far.
    p.advance(second);
    assert_eq!(twilio_send(&p, "+447400123404", &[]).await.status, 201);
    p.advance(second);
    let a = twilio_send(&p, "+447400123405", &[]).await;
    assert_eq!(a.header("smsfence-reason"), Some("low_conversion"));
    p.advance(second);
    let fb = send(
        "POST",
        &p.admin("/v1/feedback"),
        &[JSON],
        r#"{"number":"+447400123404","outcome":"verified"}"#,
    )
    .await;
    assert_eq!(fb.status, 204);
    p.advance(second);
    twilio_send(&p, "+447400123406", &[]).await;
    assert!(p.instance.app.audit.flush(Duration::from_secs(10)).await);

    let text = std::fs::read_to_string(&audit).unwrap();
    let live: Vec<(u64, String)> = text
        .lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["event"] == "send").then(|| {
                let reasons = v.get("reasons").cloned().unwrap_or(serde_json::json!([]));
                (i as u64 + 1, format!("{} {}", v["decision"], reasons))
            })
        })
        .collect();
    assert_eq!(live.len(), 9, "{text}");
    let first_line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(
        first_line["decision"], "throttle",
        "the refused repeat is written before the send it repeats: {text}"
    );

    let rules_dir = p.rules_dir.as_ref().unwrap().path().display().to_string();
    let out = dir.path().join("decisions.jsonl");
    let (ok, stdout, stderr) = replay(&[
        "--rules",
        &rules_dir,
        &audit.display().to_string(),
        "--decisions",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("0 malformed"), "{stdout}");
    let replayed: Vec<(u64, String)> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["line"].as_u64().unwrap(),
                format!("{} {}", v["decision"], v["reasons"]),
            )
        })
        .collect();
    assert_eq!(
        replayed, live,
        "replay disagrees with the live run:\n{text}"
    );
}
