//! Redaction, tested: requests whose bodies and credentials carry unique markers go
//! through every preset (allowed, refused, malformed, unknown paths) into a real smsfence
//! process logging at debug level in JSON with an audit file; no marker may appear in
//! anything smsfence wrote: logs, audit log, metrics, or its own response bodies.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;

const TEXT: &str = "TextMarkerQz7";
const CODE: &str = "CodeMarkerWv3";
const BASIC_SECRET: &str = "BasicSecretMarkerJk2";
const BEARER: &str = "BearerMarkerPp5";
const API_SECRET: &str = "ApiSecretMarkerLm8";
const SIG: &str = "SigMarkerRt4";
const QUERY_TOKEN: &str = "QueryTokenMarkerXy6";
const PATH_KEY: &str = "PathKeyMarkerAb1cdefgh";
const MARKERS: [&str; 8] = [
    TEXT,
    CODE,
    BASIC_SECRET,
    BEARER,
    API_SECRET,
    SIG,
    QUERY_TOKEN,
    PATH_KEY,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_text_code_or_credential_leaves_smsfence() {
    let up = MockUpstream::with(|_| Reply::json(200, r#"{"ok":true}"#)).await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let examples = format!("{}/examples/generic", env!("CARGO_MANIFEST_DIR"));
    let generic: String = ["smspm", "twofactor"]
        .iter()
        .map(|n| {
            let t = std::fs::read_to_string(format!("{examples}/{n}.toml")).unwrap();
            let line = t
                .lines()
                .find(|l| l.starts_with("upstream = "))
                .unwrap()
                .to_owned();
            t.replace(&line, &format!("upstream = \"{}\"", up.url()))
        })
        .collect();
    let cfg = format!(
        "[audit]\noutput = \"{}\"\nnumbers = \"full\"\n{}\n{generic}",
        audit.display(),
        all_presets_to(&up.url())
    );
    let cfg_path = dir.path().join("svc.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let stdout_path = dir.path().join("stdout.log");
    let stderr_path = dir.path().join("stderr.log");
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_smsfence"))
            .arg("--config")
            .arg(&cfg_path)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .arg("--rules")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"))
            .env("RUST_LOG", "debug")
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Copy stderr to a file while finding the listening addresses.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let err_file = stderr_path.clone();
    std::thread::spawn(move || {
        let mut f = std::fs::File::create(err_file).unwrap();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            use std::io::Write;
            let _ = writeln!(f, "{line}");
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut proxy, mut admin) = (String::new(), String::new());
    while proxy.is_empty() {
        assert!(Instant::now() < deadline, "smsfence did not start");
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) {
                if v["message"] == "smsfence is listening" {
                    proxy = format!("http://{}", v["proxy"].as_str().unwrap());
                    admin = format!("http://{}", v["admin"].as_str().unwrap());
                }
            }
        }
    }

    let b64 = base64::engine::general_purpose::STANDARD;
    let basic = format!("Basic {}", b64.encode(format!("ACmarker:{BASIC_SECRET}")));
    let bearer = format!("Bearer {BEARER}");
    let body_text = format!("Your code is {CODE}. {TEXT}");
    let mut responses = Vec::new();
    let mut go = |r: Answer| responses.push(r);
    let form = |to: &str| {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("To", to)
            .append_pair("From", "+15005550006")
            .append_pair("Body", &body_text)
            .finish()
    };
    // Each preset sends to its own number twice (allowed, then throttled), then to a
    // premium-rate number and to garbage.
    for round in 0..4 {
        let pick = |p: u32| match round {
            0 | 1 => format!("+447400{p:02}1234"),
            2 => "+449098790123".to_owned(),
            _ => "not-a-number".to_owned(),
        };
        let to = &pick(0);
        let u = format!("{proxy}/2010-04-01/Accounts/ACmarker/Messages.json");
        go(send("POST", &u, &[FORM, ("authorization", &basic)], form(to)).await);
        let v = format!(
            "api_key=k&api_secret={API_SECRET}&sig={SIG}&to={}&from=ACME&text={}",
            pick(1).trim_start_matches('+'),
            body_text.replace(' ', "+")
        );
        go(send("POST", &format!("{proxy}/sms/json"), &[FORM], v).await);
        let t = serde_json::json!({"from": "+15005550006", "to": pick(2), "text": body_text})
            .to_string();
        go(send(
            "POST",
            &format!("{proxy}/v2/messages"),
            &[JSON, ("authorization", &bearer)],
            t,
        )
        .await);
        let p = serde_json::json!({"src": "+15005550006", "dst": pick(3), "text": body_text})
            .to_string();
        go(send(
            "POST",
            &format!("{proxy}/v1/Account/MA1/Message/"),
            &[JSON, ("authorization", &basic)],
            p,
        )
        .await);
        let s = serde_json::json!({"from": "ACME", "to": [pick(4)], "body": body_text}).to_string();
        go(send(
            "POST",
            &format!("{proxy}/xms/v1/plan1/batches"),
            &[JSON, ("authorization", &bearer)],
            s,
        )
        .await);
        let i = serde_json::json!({"messages": [{"sender": "ACME", "destinations": [{"to": pick(5)}], "content": {"text": body_text}}]}).to_string();
        go(send(
            "POST",
            &format!("{proxy}/sms/3/messages"),
            &[JSON, ("authorization", &format!("App {BEARER}"))],
            i,
        )
        .await);
        let q = format!(
            "{proxy}/?hash=h&token={QUERY_TOKEN}&toNumber={}&text={TEXT}",
            pick(6).trim_start_matches('+')
        );
        go(send("GET", &q, &[], "").await);
        go(send(
            "GET",
            &format!(
                "{proxy}/API/V1/{PATH_KEY}/SMS/{}/AUTOGEN",
                pick(7).trim_start_matches('+')
            ),
            &[],
            "",
        )
        .await);
    }
    // Malformed bodies, unknown paths carrying secrets, Verify checks with codes.
    go(send(
        "POST",
        &format!("{proxy}/v2/messages"),
        &[JSON, ("authorization", &bearer)],
        format!("{{\"text\":\"{TEXT}\""),
    )
    .await);
    go(send(
        "POST",
        &format!("{proxy}/API/V9/{PATH_KEY}/{QUERY_TOKEN}?token={QUERY_TOKEN}"),
        &[],
        TEXT,
    )
    .await);
    let check = format!("To=%2B447400123456&Code={CODE}");
    go(send(
        "POST",
        &format!("{proxy}/v2/Services/VA1/VerificationCheck"),
        &[FORM, ("authorization", &basic)],
        check,
    )
    .await);
    go(send(
        "POST",
        &format!("{proxy}/v2/verify/req-1"),
        &[JSON, ("authorization", &bearer)],
        format!("{{\"code\":\"{CODE}\"}}"),
    )
    .await);
    // A Plivo Verify session started, then validated with the code in `otp`.
    go(send(
        "POST",
        &format!("{proxy}/v1/Account/MAmarker/Verify/Session/"),
        &[JSON, ("authorization", &basic)],
        r#"{"recipient":"447400123456"}"#,
    )
    .await);
    go(send(
        "POST",
        &format!(
            "{proxy}/v1/Account/MAmarker/Verify/Session/8e712097-8090-4644-81e7-8f4265d8354e/"
        ),
        &[JSON, ("authorization", &basic)],
        format!("{{\"otp\":\"{CODE}\"}}"),
    )
    .await);
    let metrics = send("GET", &format!("{admin}/metrics"), &[], "")
        .await
        .text();

    // Let the audit writer catch up (bounded), then stop smsfence and read everything.
    for _ in 0..100 {
        if std::fs::read_to_string(&audit)
            .map(|t| t.lines().count())
            .unwrap_or(0)
            >= 30
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let logs = std::fs::read_to_string(&stderr_path).unwrap()
        + &std::fs::read_to_string(&stdout_path).unwrap();
    let audit_text = std::fs::read_to_string(&audit).unwrap();
    assert!(logs.contains("\"level\":\"DEBUG\""), "debug logging was on");
    assert!(
        audit_text.lines().count() >= 30,
        "the audit log has the decisions"
    );
    assert!(
        up.requests().len() >= 8,
        "each preset's first send was forwarded: {}",
        up.requests().len()
    );
    let own: Vec<String> = responses
        .iter()
        .filter(|r| {
            r.headers.contains_key("smsfence-reason") || r.headers.contains_key("smsfence-error")
        })
        .map(Answer::text)
        .collect();
    assert!(
        own.len() >= 20,
        "refusals and errors were produced: {}",
        own.len()
    );
    // Positive control: the markers really went through smsfence (to the upstream).
    assert!(up
        .requests()
        .iter()
        .any(|r| String::from_utf8_lossy(&r.body).contains(TEXT)));
    assert!(up.requests().iter().any(|r| r.uri.contains(QUERY_TOKEN)));
    assert!(up
        .requests()
        .iter()
        .any(|r| r.uri.contains("/Verify/Session/8e712097")
            && String::from_utf8_lossy(&r.body).contains(CODE)));
    let encoded_secret = b64.encode(format!("ACmarker:{BASIC_SECRET}"));
    for (what, text) in [
        ("logs", &logs),
        ("audit log", &audit_text),
        ("metrics", &metrics),
        ("smsfence responses", &own.join("\n")),
    ] {
        for m in MARKERS.iter().chain([&encoded_secret.as_str()]) {
            assert!(!text.contains(m), "{m} leaked into the {what}");
        }
    }
    // No phone number in metrics either.
    assert!(
        !metrics.contains("447400123456"),
        "a number leaked into the metrics"
    );
}

/// `numbers = "masked"` and `"hash"` apply to every number the audit log writes: every
/// recipient of a multi-recipient send, Verify checks, verification outcomes, refusals.
#[tokio::test]
async fn redacted_audit_logs_hold_no_number_in_full() {
    for mode in ["masked", "hash"] {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit.jsonl");
        let cfg = format!(
            "[audit]\noutput = \"{}\"\nnumbers = \"{mode}\"\nhash_key = \"0123456789abcdef\"\n",
            audit.display()
        );
        let p = Proxy::start_default_rules(&cfg).await;
        let plivo = r#"{"src":"+15005550006","dst":"447400123456<447400123457","text":"hi"}"#;
        send(
            "POST",
            &p.url("/v1/Account/MA1/Message/"),
            &[JSON, BASIC],
            plivo,
        )
        .await;
        twilio_send(&p, "+447400123458", &[]).await;
        twilio_send(&p, "+447400123458", &[]).await; // throttled
        twilio_send(&p, "+449098790123", &[]).await; // premium rate: blocked
        send(
            "POST",
            &p.url("/v2/Services/VA1/VerificationCheck"),
            &[FORM, BASIC],
            "To=%2B447400123459&Code=987654",
        )
        .await;
        send(
            "POST",
            &p.admin("/v1/feedback"),
            &[JSON],
            r#"{"number":"+447400123460","outcome":"failed"}"#,
        )
        .await;
        assert!(p.instance.app.audit.flush(Duration::from_secs(10)).await);
        let text = std::fs::read_to_string(&audit).unwrap();
        assert!(text.lines().count() >= 7, "{mode}: {text}");
        for n in [
            "7400123456",
            "7400123457",
            "7400123458",
            "7400123459",
            "7400123460",
            "9098790123",
        ] {
            assert!(!text.contains(n), "{mode}: {n} in full: {text}");
        }
        let marker = if mode == "hash" { "\"h:" } else { "****\"" };
        assert!(text.matches(marker).count() >= 7, "{mode}: {text}");
    }
}

/// `identities = "hash"` writes the end user's IP and id as keyed hashes (the same IP, the
/// same hash), `"omit"` leaves them out; the default writes them as received.
#[tokio::test]
async fn audit_identities_are_hashed_or_left_out() {
    let ip = ("x-smsfence-end-user-ip", "203.0.113.7");
    let user = ("x-smsfence-end-user-id", "user-4242");
    for mode in ["full", "hash", "omit"] {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit.jsonl");
        let cfg = format!(
            "[audit]\noutput = \"{}\"\nidentities = \"{mode}\"\nhash_key = \"0123456789abcdef\"\n",
            audit.display()
        );
        let p = Proxy::start_default_rules(&cfg).await;
        twilio_send(&p, "+447400123458", &[ip, user]).await;
        twilio_send(&p, "+447400123459", &[ip, user]).await;
        assert!(p.instance.app.audit.flush(Duration::from_secs(10)).await);
        let text = std::fs::read_to_string(&audit).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{mode}: {text}");
        match mode {
            "full" => {
                assert_eq!(lines[0]["ip"], "203.0.113.7");
                assert_eq!(lines[0]["user"], "user-4242");
            }
            "hash" => {
                assert!(
                    !text.contains("203.0.113.7") && !text.contains("4242"),
                    "{text}"
                );
                for field in ["ip", "user"] {
                    let h = lines[0][field].as_str().unwrap();
                    assert!(h.starts_with("h:") && h.len() == 18, "{field}: {h}");
                    assert_eq!(lines[1][field], lines[0][field], "{field}: stable");
                }
                assert_ne!(lines[0]["ip"], lines[0]["user"]);
            }
            _ => {
                assert!(
                    lines[0].get("ip").is_none() && lines[0].get("user").is_none(),
                    "{text}"
                );
            }
        }
    }
}
