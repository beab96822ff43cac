//! The README's TOML snippets are what smsfence reads: every rules snippet passes
//! `check-rules`, every service-config snippet parses and validates. A key renamed in the
//! code, or a typo in the README, fails here instead of in a reader's first start.

use std::path::Path;

use smsfence::config::Config;
use smsfence::rules::RuleSet;

/// Every ```toml block of README.md, with the line its fence opens on.
fn toml_snippets() -> Vec<(usize, String)> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("reading README.md");
    let mut snippets = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (i, line) in readme.lines().enumerate() {
        match &mut open {
            None if line.trim_start().starts_with("```toml") => open = Some((i + 1, String::new())),
            None => {}
            Some(_) if line.trim_start().starts_with("```") => snippets.extend(open.take()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    assert!(open.is_none(), "README.md: a ```toml block is never closed");
    snippets
}

/// A rules snippet has a rule table, `[settings]` or `[prices]`; every other one is service
/// configuration.
fn is_rules(text: &str) -> bool {
    text.lines().map(str::trim).any(|l| {
        [
            "[[limit]]",
            "[[list]]",
            "[[policy]]",
            "[[heuristic]]",
            "[settings]",
            "[prices]",
        ]
        .contains(&l)
    })
}

#[test]
fn every_toml_snippet_in_the_readme_loads() {
    let snippets = toml_snippets();
    let (rules, configs): (Vec<_>, Vec<_>) = snippets.iter().partition(|(_, t)| is_rules(t));
    // The README has rules and config snippets both; finding none means the parser above broke.
    assert!(rules.len() >= 5, "rules snippets found: {}", rules.len());
    assert!(
        configs.len() >= 3,
        "config snippets found: {}",
        configs.len()
    );

    let mut wrong = Vec::new();
    for (line, text) in rules {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("snippet.toml"), text).unwrap();
        if let Err(errors) = RuleSet::load_dir(dir.path()) {
            for e in errors {
                wrong.push(format!(
                    "README.md:{line}: rules snippet, its line {}: {}: {}",
                    e.line, e.rule, e.message
                ));
            }
        }
    }
    for (line, text) in configs {
        let checked = Config::from_toml("snippet.toml", text).and_then(|c| c.validate());
        if let Err(e) = checked {
            wrong.push(format!("README.md:{line}: config snippet: {e}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The README's `check-rules` sample is what `smsfence check-rules rules` prints for the
/// shipped rules with the two mistakes it shows made (line numbers included: they move when
/// `rules/` is edited). A line ending in `…` in the README is a prefix of the real one.
#[test]
fn the_readme_check_rules_sample_is_what_check_rules_prints() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let start = readme
        .find("$ smsfence check-rules rules\n")
        .expect("the README's check-rules sample");
    let sample: Vec<&str> = readme[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    for entry in std::fs::read_dir(repo.join("rules")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, rules.join(path.file_name().unwrap())).unwrap();
    }
    let edit = |file: &str, from: &str, to: &str| {
        let path = rules.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "rules/{file} no longer has {from:?}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    };
    // The two mistakes of the sample: a prefix limit without drop_digits, a misspelt type.
    edit(
        "30-limits.toml",
        "name = \"prefix-1k-velocity\"\ndescription = \"A block of 1,000 numbers rarely needs more than 20 codes in 10 minutes.\"\nkey = \"prefix\"\ndrop_digits = 3\n",
        "name = \"prefix-1k-velocity\"\ndescription = \"A block of 1,000 numbers rarely needs more than 20 codes in 10 minutes.\"\nkey = \"prefix\"\n",
    );
    edit(
        "20-policies.toml",
        "deny_types = [\"premium_rate\"",
        "deny_types = [\"premium\"",
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smsfence"))
        .args(["check-rules", "rules"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let printed = String::from_utf8_lossy(&out.stderr);
    let printed: Vec<&str> = printed.lines().collect();
    assert_eq!(sample.len(), printed.len(), "{sample:#?}\n{printed:#?}");
    for (s, p) in sample.iter().zip(&printed) {
        let matches = match s.strip_suffix('…') {
            Some(prefix) => p.starts_with(prefix),
            None => s == p,
        };
        assert!(matches, "README: {s}\nprinted: {p}");
    }
}

mod common;

/// The output line the README shows right after the line that starts with `command`.
fn readme_output_after(command: &str) -> (String, serde_json::Value) {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let mut lines = readme.lines().skip_while(|l| !l.starts_with(command));
    let shown = lines
        .next()
        .unwrap_or_else(|| panic!("README.md has no line starting {command:?}"));
    let output = lines.next().expect("an output line after the command");
    let output = serde_json::from_str(output)
        .unwrap_or_else(|e| panic!("README.md: the output of {shown:?} is not JSON: {e}"));
    (shown.to_owned(), output)
}

/// The Admin API's `/v1/check` sample and the auto-block samples of "Pumping heuristics"
/// are what smsfence answers, on the shipped rules with every preset on the sandbox.
#[tokio::test]
async fn the_readme_admin_samples_are_what_smsfence_answers() {
    use common::{send, twilio_send, Proxy, JSON};
    let p = Proxy::start_default_rules("").await;

    let (shown, want) = readme_output_after("$ curl -s localhost:9090/v1/check -d '");
    let body = shown
        .split_once("-d '")
        .and_then(|(_, b)| b.strip_suffix('\''))
        .expect("the sample's body in single quotes");
    let got = send("POST", &p.admin("/v1/check"), &[JSON], body.to_owned()).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json(), want, "{shown}");

    // The range walk of the `range-walk` example: …459 has 3 neighbours, and its block of
    // 1,000 numbers is listed 3 s later.
    for n in ["+447400123456", "+447400123457", "+447400123458"] {
        assert_eq!(twilio_send(&p, n, &[]).await.status, 201, "{n}");
    }
    let refused = twilio_send(&p, "+447400123459", &[]).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.header("smsfence-rule"), Some("range-walk"));
    p.advance(std::time::Duration::from_secs(3));
    let (_, want) = readme_output_after("$ curl -s localhost:9090/v1/blocks");
    let got = send("GET", &p.admin("/v1/blocks"), &[], "").await;
    assert_eq!(got.json(), want);

    let (shown, want) = readme_output_after("$ curl -s -X DELETE localhost:9090/v1/blocks/");
    let path = shown
        .split_whitespace()
        .find_map(|w| w.strip_prefix("localhost:9090"))
        .unwrap();
    let got = send("DELETE", &p.admin(path), &[], "").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json(), want, "{shown}");
    let got = send("DELETE", &p.admin(path), &[], "").await;
    assert_eq!(got.status, 404, "lifting it again: there is none");
}
