//! `smsfence replay` as a user runs it: deterministic, `--compare`, `--decisions`,
//! malformed lines reported and skipped, audit-log lines accepted.

use std::process::Command;

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
