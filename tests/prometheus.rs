//! The real tools: `promtool check metrics` on a live scrape, `promtool check/test rules`
//! on the alert rules, and a real Prometheus on loopback scraping a running smsfence
//! under traffic, through which every PromQL expression of the dashboard and the alert
//! rules must parse and return data. Without Prometheus: every metric, label and label
//! value they select on is one smsfence exports, the README's metrics table is what it
//! exports, and dashboard queries give what they should (promtool on sample series).
//! Installs Debian's prometheus when it is missing.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ensure_prometheus() {
    ensure_tools(&["promtool", "prometheus"], "install-prometheus.sh");
}

/// Kills the child on drop, also when the test fails.

#[test]
fn alert_rules_check_and_unit_tests() {
    ensure_prometheus();
    let dir = repo().join("grafana");
    let check = Command::new("promtool")
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let test = Command::new("promtool")
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    // Every alert has a unit test.
    let alerts = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("alerts_test.yml")).unwrap();
    for line in alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {line}")),
            "{line} has no promtool test"
        );
    }
}

/// Every PromQL expression: the dashboard's, and each alert's left-hand side (the
/// comparison removed, so that "returns data" means the series exist).
fn expressions() -> Vec<(String, String)> {
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("grafana/smsfence-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let e = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$__range", "5m")
                .replace("$instance", ".*");
            out.push((format!("panel {:?}", p["title"].as_str().unwrap()), e));
        }
    }
    let alerts = std::fs::read_to_string(repo().join("grafana/alerts.yml")).unwrap();
    let mut name = String::new();
    for l in alerts.lines() {
        if let Some(n) = l.trim().strip_prefix("- alert: ") {
            name = n.to_owned();
        }
        if let Some(e) = l.trim().strip_prefix("expr: ") {
            out.push((format!("alert {name}"), e.to_owned()));
            let first = top_level(e, " and ")[0];
            let first = top_level(first, " or ")[0];
            let lhs = first
                .rsplit_once(" > ")
                .or_else(|| first.rsplit_once(" < "))
                .map_or(first, |(l, _)| l);
            out.push((format!("alert {name} (left-hand side)"), lhs.to_owned()));
        }
    }
    out
}

/// `expr` split at `op` where it stands outside every parenthesis, brace and bracket.
fn top_level<'e>(expr: &'e str, op: &str) -> Vec<&'e str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in expr.char_indices() {
        match c {
            '(' | '{' | '[' => depth += 1,
            ')' | '}' | ']' => depth -= 1,
            _ if depth == 0 && i >= start && expr[i..].starts_with(op) => {
                parts.push(&expr[start..i]);
                start = i + op.len();
            }
            _ => {}
        }
    }
    parts.push(&expr[start..]);
    parts
}

async fn query(prom: &str, expr: &str) -> serde_json::Value {
    let q: String = form_urlencoded::byte_serialize(expr.as_bytes()).collect();
    send("GET", &format!("{prom}/api/v1/query?query={q}"), &[], "")
        .await
        .json()
}

/// [`query`] while Prometheus may still be starting: `None` until it answers 200
/// (it accepts connections before its storage is ready, and says 503 meanwhile).
async fn query_when_up(prom: &str, expr: &str) -> Option<serde_json::Value> {
    let q: String = form_urlencoded::byte_serialize(expr.as_bytes()).collect();
    let a = send("GET", &format!("{prom}/api/v1/query?query={q}"), &[], "").await;
    (a.status == 200).then(|| a.json())
}

fn rules_dir_with_shadow() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(repo().join("rules")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        dir.path().join("90-shadow.toml"),
        "[[limit]]\nname = \"shadow-global\"\nmode = \"shadow\"\nkey = \"global\"\nrate = \"1/hour\"\nburst = 1\n",
    )
    .unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_scrape_passes_promtool_and_every_query_returns_data() {
    ensure_prometheus();
    let up = MockUpstream::with(|r| {
        if r.uri.contains("VerificationCheck") {
            Reply::json(200, r#"{"status":"approved","valid":true}"#)
        } else {
            Reply::json(201, r#"{"sid":"SM1","status":"queued"}"#)
        }
    })
    .await;
    let dir = rules_dir_with_shadow();
    let route = "[[route]]\nname = \"twilio\"\npreset = \"twilio\"\nupstream = \"UP\"\n"
        .replace("UP", &up.url());
    let p = Proxy::start_with(
        &route,
        smsfence::rules::reload::Source::Dir(dir.path().to_owned()),
        Some(dir),
        false,
    )
    .await;
    let p = Arc::new(p);

    // Traffic in the background: allowed sends, premium-rate blocks, repeats (throttles),
    // pumping-like bursts in one block, and approved Verify checks.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (p, stop) = (p.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i: u64 = 0;
            while !stop.load(Ordering::Relaxed) && i < 3_000 {
                let n = format!("+4474{:08}", (i * 7_919) % 100_000_000);
                twilio_send(&p, &n, &[]).await;
                if i % 3 == 0 {
                    twilio_send(&p, &n, &[]).await;
                    twilio_send(&p, "+449098790123", &[]).await;
                    twilio_send(&p, &format!("+44740012{:04}", i % 10_000), &[]).await;
                    let body = format!("To=%2B{}&Code=123456", n.trim_start_matches('+'));
                    send(
                        "POST",
                        &p.url("/v2/Services/VA1/VerificationCheck"),
                        &[FORM, BASIC],
                        body,
                    )
                    .await;
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // promtool check metrics on a live scrape.
    let scrape = send("GET", &p.admin("/metrics"), &[], "").await.text();
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(check.stdin.as_mut().unwrap(), scrape.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus scraping the admin port every second.
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: smsfence\n    static_configs:\n      - targets: ['{}']\n",
            p.instance.admin_addr
        ),
    )
    .unwrap();
    let port = free_port();
    let _prom = Running(
        Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                work.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let prom = format!("http://127.0.0.1:{port}");
    // Wait (bounded) until Prometheus holds several scrapes of smsfence.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape smsfence within 90 s"
        );
        let ready = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok();
        if ready {
            let v = query_when_up(&prom, "count_over_time(smsfence_build_info[1m])")
                .await
                .unwrap_or_default();
            let n = v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<u32>().ok())
                .unwrap_or(0);
            if n >= 6 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let mut empty = Vec::new();
    for (what, expr) in expressions() {
        let v = query(&prom, &expr).await;
        assert_eq!(v["status"], "success", "{what}: {expr} does not parse: {v}");
        let result = &v["data"]["result"];
        if result.as_array().is_none_or(|r| r.is_empty()) {
            empty.push(format!("{what}: {expr}"));
        }
    }
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    // Alert expressions with their threshold may legitimately be empty (nothing alarming);
    // their left-hand sides and every dashboard query must have data.
    empty.retain(|e| !e.starts_with("alert ") || e.contains("(left-hand side)"));
    assert!(
        empty.is_empty(),
        "queries without data after traffic:\n{}",
        empty.join("\n")
    );
}

/// The dashboard's and SmsfenceConversionDrop's conversion rate: verified / allowed
/// recipients. A Verify flow where every code is entered (after one typo) is a 100%
/// conversion, not 33%: a code check sends no code.
#[tokio::test]
async fn conversion_rate_counts_codes_sent_not_code_checks() {
    let p = Proxy::start("", &[]).await;
    let to = "To=%2B447400123456";
    let start = send(
        "POST",
        &p.url("/v2/Services/VA1/Verifications"),
        &[FORM, BASIC],
        format!("{to}&Channel=sms"),
    )
    .await;
    assert_eq!(start.status, 201);
    for code in ["000000", "123456"] {
        let a = send(
            "POST",
            &p.url("/v2/Services/VA1/VerificationCheck"),
            &[FORM, BASIC],
            format!("{to}&Code={code}"),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let m = send("GET", &p.admin("/metrics"), &[], "").await.text();
    let sum = |family: &str, must: &[&str]| -> f64 {
        m.lines()
            .filter(|l| l.starts_with(family) && must.iter().all(|s| l.contains(s)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let verified = sum(
        "smsfence_conversions_total{",
        &[r#"country="GB""#, r#"outcome="verified""#],
    );
    let allowed = sum(
        "smsfence_recipients_total{",
        &[r#"country="GB""#, r#"decision="allow""#],
    );
    assert_eq!(verified, 1.0, "{m}");
    assert_eq!(verified / allowed, 1.0, "{m}");
}

/// SmsfenceStoreErrors takes rate() of smsfence_store_errors_total: with a shared store,
/// its series must exist at 0 from the start, or the first errors of a kind go unseen.
#[tokio::test]
async fn shared_store_error_series_exist_from_the_start() {
    let port = free_port();
    let cfg = format!("[store]\nkind = \"redis\"\nurls = [\"redis://127.0.0.1:{port}\"]\n");
    let p = Proxy::start(&cfg, &[]).await;
    let m = send("GET", &p.admin("/metrics"), &[], "").await.text();
    for kind in ["conversion", "verify_ref"] {
        let line = format!("smsfence_store_errors_total{{kind=\"{kind}\",store=\"redis\"}} 0");
        assert!(m.contains(&line), "missing {line}\n{m}");
    }
    // Nor is there a second, in-process store for the dashboard to show at 0.
    let memory: Vec<&str> = m
        .lines()
        .filter(|l| l.contains(r#"store="memory""#))
        .collect();
    assert!(memory.is_empty(), "{memory:#?}");
}

/// The expression of the dashboard panel titled `title` (its only query, or the first),
/// with Grafana's range variables set to 5 minutes.
fn panel_expr(title: &str) -> String {
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("grafana/smsfence-dashboard.json")).unwrap(),
    )
    .unwrap();
    let panel = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["title"] == title)
        .unwrap_or_else(|| panic!("no panel {title:?}"));
    panel["targets"][0]["expr"]
        .as_str()
        .unwrap()
        .replace("$__rate_interval", "5m")
        .replace("$__range", "5m")
        .replace("$instance", ".*")
}

/// Runs `promtool test rules` on one PromQL expression: `series` are input series in
/// promtool's notation (one sample a minute), `expected` the samples it must give at
/// `eval_time`, as (labels, value).
fn promql_gives(series: &[(&str, &str)], expr: &str, eval_time: &str, expected: &[(&str, f64)]) {
    ensure_prometheus();
    let dir = tempfile::tempdir().unwrap();
    let mut t = String::from(
        "rule_files: []\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n",
    );
    for (s, v) in series {
        t += &format!("      - series: '{s}'\n        values: '{v}'\n");
    }
    t += &format!(
        "    promql_expr_test:\n      - expr: '{}'\n        eval_time: {eval_time}\n        exp_samples:\n",
        expr.replace('\'', "''")
    );
    for (labels, value) in expected {
        t += &format!("          - labels: '{labels}'\n            value: {value}\n");
    }
    std::fs::write(dir.path().join("t.yml"), t).unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules", "t.yml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{expr}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A country whose codes are never verified — pure pumping — has no conversions series
/// at all; the conversion-rate panel shows it at 0%, not as a missing line.
#[test]
fn conversion_rate_panel_shows_a_country_never_verified_at_zero() {
    promql_gives(
        &[
            (
                r#"smsfence_recipients_total{country="KG",number_type="mobile",decision="allow"}"#,
                "0+60x20",
            ),
            (
                r#"smsfence_recipients_total{country="GB",number_type="mobile",decision="allow"}"#,
                "0+60x20",
            ),
            (
                r#"smsfence_conversions_total{source="verify_check",outcome="verified",country="GB"}"#,
                "0+30x20",
            ),
        ],
        &panel_expr("Conversion rate by country (verified / allowed recipients)"),
        "15m",
        &[(r#"{country="GB"}"#, 0.5), (r#"{country="KG"}"#, 0.0)],
    );
}

/// Instances that share one Redis each report its key count: the tracked-keys panel
/// shows it once, and the sum of the in-process stores, which are one per instance.
#[test]
fn tracked_keys_panel_counts_a_shared_store_once() {
    promql_gives(
        &[
            (
                r#"smsfence_store_keys{instance="a:9090",store="memory"}"#,
                "100x10",
            ),
            (
                r#"smsfence_store_keys{instance="b:9090",store="memory"}"#,
                "200x10",
            ),
            (
                r#"smsfence_store_keys{instance="c:9090",store="redis"}"#,
                "5000x10",
            ),
            (
                r#"smsfence_store_keys{instance="d:9090",store="redis"}"#,
                "5000x10",
            ),
        ],
        &panel_expr("Tracked keys"),
        "5m",
        &[
            (r#"{store="memory"}"#, 300.0),
            (r#"{store="redis"}"#, 5000.0),
        ],
    );
}

/// A scrape's series: (family, labels) for every sample line.
fn samples(scrape: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out = Vec::new();
    for line in scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, rest) = match line.find('{') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line.split(' ').next().unwrap(), ""),
        };
        let mut labels = Vec::new();
        let mut rest = rest;
        while let Some(eq) = rest.find("=\"") {
            let label = rest[..eq].trim_start_matches(',').to_owned();
            let value_and_more = &rest[eq + 2..];
            let end = value_and_more.find('"').unwrap();
            labels.push((label, value_and_more[..end].to_owned()));
            rest = &value_and_more[end + 1..];
            if rest.starts_with('}') {
                break;
            }
        }
        out.push((name.to_owned(), labels));
    }
    out
}

/// Labels Prometheus gives every series it scrapes (smsfence exports neither).
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// A label matcher: (label, operator, value).
type Matcher = (String, String, String);

/// Every `smsfence_…{matchers}` selector of an expression: (metric, matchers).
fn selectors(expr: &str) -> Vec<(String, Vec<Matcher>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = expr[at..].find("smsfence_") {
        let start = at + i;
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(expr.len(), |n| start + n);
        let name = expr[start..end].to_owned();
        let mut matchers = Vec::new();
        at = end;
        if expr[end..].starts_with('{') {
            let close = end + expr[end..].find('}').unwrap();
            for m in expr[end + 1..close]
                .split(',')
                .filter(|m| !m.trim().is_empty())
            {
                let op_at = m.find(['=', '!']).unwrap();
                let op_len = if m[op_at + 1..].starts_with(['=', '~']) {
                    2
                } else {
                    1
                };
                let label = m[..op_at].trim().to_owned();
                let op = m[op_at..op_at + op_len].to_owned();
                let value = m[op_at + op_len..].trim().trim_matches('"').to_owned();
                matchers.push((label, op, value));
            }
            at = close;
        }
        out.push((name, matchers));
    }
    out
}

/// The labels of every `by (…)` of an expression.
fn grouping_labels(expr: &str) -> Vec<String> {
    expr.match_indices("by (")
        .flat_map(|(i, _)| {
            let inner = &expr[i + 4..];
            inner[..inner.find(')').unwrap()]
                .split(',')
                .map(|l| l.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A scrape of smsfence (shipped rules and a shadow rule) after requests of most
/// outcomes: forwarded, throttled (a repeat), blocked (premium rate), passthrough,
/// not_found, upstream_error; a verified Verify check and failed feedback.
async fn scrape_after_traffic() -> String {
    let up = MockUpstream::with(|r| {
        if r.uri.contains("VerificationCheck") {
            Reply::json(200, r#"{"status":"approved","valid":true}"#)
        } else {
            Reply::json(201, r#"{"sid":"SM1","status":"queued"}"#)
        }
    })
    .await;
    let dir = rules_dir_with_shadow();
    let closed = format!("http://127.0.0.1:{}", free_port());
    let routes = format!(
        "[[route]]\nname = \"twilio\"\npreset = \"twilio\"\nupstream = \"{}\"\n\
         [[route]]\nname = \"vonage\"\npreset = \"vonage\"\nupstream = \"{closed}\"\n",
        up.url()
    );
    let p = Proxy::start_with(
        &routes,
        smsfence::rules::reload::Source::Dir(dir.path().to_owned()),
        Some(dir),
        false,
    )
    .await;
    // forwarded, throttled (a repeat), blocked (premium rate), passthrough, not_found,
    // upstream_error; a verified Verify check and failed feedback.
    twilio_send(&p, "+447400123456", &[]).await;
    twilio_send(&p, "+447400123456", &[]).await;
    twilio_send(&p, "+449098790123", &[]).await;
    send(
        "GET",
        &p.url("/2010-04-01/Accounts/ACtest/Messages/SM1.json"),
        &[BASIC],
        "",
    )
    .await;
    send("GET", &p.url("/nowhere"), &[], "").await;
    send(
        "POST",
        &p.url("/sms/json"),
        &[FORM],
        "api_key=k&api_secret=s&to=447400123457&from=X&text=hi",
    )
    .await;
    send(
        "POST",
        &p.url("/v2/Services/VA1/VerificationCheck"),
        &[FORM, BASIC],
        "To=%2B447400123456&Code=123456",
    )
    .await;
    let failed = r#"{"number":"+447400123458","outcome":"failed"}"#;
    assert_eq!(
        send("POST", &p.admin("/v1/feedback"), &[JSON], failed)
            .await
            .status,
        204
    );
    // The store's gauges and counters are published by the sweeper, at once on start.
    metrics_with(&p, "smsfence_store_refused_cache_hits_total").await
}

/// The dashboard's `instance` variable narrows every panel: with several instances, each
/// one's numbers (its own rules generation, its own keys) can be seen.
#[test]
fn every_dashboard_query_follows_the_instance_variable() {
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("grafana/smsfence-dashboard.json")).unwrap(),
    )
    .unwrap();
    let variable = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "instance")
        .expect("an instance variable");
    assert_eq!(
        variable["query"]["query"],
        "label_values(smsfence_build_info, instance)"
    );
    assert_eq!(variable["includeAll"], true);
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for (name, matchers) in selectors(expr) {
                assert!(
                    matchers
                        .iter()
                        .any(|(l, op, v)| l == "instance" && op == "=~" && v == "$instance"),
                    "panel {}: {name} is not narrowed to $instance in {expr}",
                    p["title"]
                );
            }
        }
    }
}

/// Every metric, label and label value the dashboard and the alerts select on is one
/// smsfence exports, spelt as it exports it — checked against a scrape after requests of
/// most outcomes, and against the code's own lists for values traffic here does not
/// produce (every reason code, every request outcome). A typo in one alternative of
/// `reason=~"a|b"` still returns data, so "returns data" alone would not see it.
#[tokio::test]
async fn every_metric_label_and_value_the_dashboard_and_alerts_name_is_exported() {
    let scrape = scrape_after_traffic().await;
    let samples = samples(&scrape);

    // What the code can put in a label that this traffic did not.
    let known = |family: &str, label: &str| -> Vec<String> {
        match (family, label) {
            (_, "reason") => smsfence::decide::Reason::ALL
                .iter()
                .map(|r| r.as_str().to_owned())
                .chain(["none".to_owned()])
                .collect(),
            ("smsfence_requests_total", "outcome") => smsfence::proxy::handler::Outcome::ALL
                .iter()
                .map(|o| o.as_str().to_owned())
                .collect(),
            _ => Vec::new(),
        }
    };
    let mut wrong = Vec::new();
    for (what, expr) in expressions() {
        let mut families = Vec::new();
        for (name, matchers) in selectors(&expr) {
            let family = samples
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(n, _)| n.clone());
            let Some(family) = family else {
                wrong.push(format!("{what}: no metric {name}"));
                continue;
            };
            families.push(family.clone());
            let series: Vec<_> = samples.iter().filter(|(n, _)| *n == family).collect();
            for (label, op, value) in matchers {
                if TARGET_LABELS.contains(&label.as_str()) {
                    continue;
                }
                let values: Vec<String> = series
                    .iter()
                    .flat_map(|(_, l)| {
                        l.iter()
                            .filter(|(k, _)| *k == label)
                            .map(|(_, v)| v.clone())
                    })
                    .chain(known(&family, &label))
                    .collect();
                if values.is_empty() {
                    wrong.push(format!("{what}: {family} has no label {label}"));
                    continue;
                }
                let alternatives: Vec<&str> = if op.ends_with('~') {
                    assert!(
                        value
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '|'),
                        "{what}: only alternations of values are checked: {value}"
                    );
                    value.split('|').collect()
                } else {
                    vec![value.as_str()]
                };
                for v in alternatives {
                    if !values.iter().any(|x| x == v) {
                        wrong.push(format!("{what}: {family}{{{label}{op}…}}: no value {v:?}"));
                    }
                }
            }
        }
        for label in grouping_labels(&expr) {
            if TARGET_LABELS.contains(&label.as_str()) {
                continue;
            }
            let exists = samples
                .iter()
                .filter(|(n, _)| families.contains(n))
                .any(|(_, l)| l.iter().any(|(k, _)| *k == label));
            if !exists {
                wrong.push(format!("{what}: by ({label}) is no label of {families:?}"));
            }
        }
    }
    // Legends name labels their query keeps.
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("grafana/smsfence-dashboard.json")).unwrap(),
    )
    .unwrap();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let legend = t["legendFormat"].as_str().unwrap_or("");
            let by = grouping_labels(t["expr"].as_str().unwrap());
            for (i, _) in legend.match_indices("{{") {
                let label = &legend[i + 2..i + 2 + legend[i + 2..].find("}}").unwrap()];
                if !by.iter().any(|b| b == label.trim()) {
                    wrong.push(format!(
                        "panel {}: legend {{{{{label}}}}} is not kept by its query",
                        p["title"]
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}\n\n{scrape}", wrong.join("\n"));
}

/// The README's metrics table is what `/metrics` exports: every family, its type and its
/// labels, and nothing else.
#[tokio::test]
async fn the_readme_metrics_table_is_what_smsfence_exports() {
    let scrape = scrape_after_traffic().await;
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let table = &readme[readme.find("| metric | type | labels | meaning |").unwrap()..];
    let mut documented = std::collections::BTreeMap::new();
    for row in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_owned();
        let mut labels: Vec<String> = cells[3]
            .split(',')
            .map(|l| l.trim().trim_matches('`').to_owned())
            .filter(|l| !l.is_empty())
            .collect();
        labels.sort();
        documented.insert(name, (cells[2].to_owned(), labels));
    }
    let mut exported = std::collections::BTreeMap::new();
    for line in scrape.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').unwrap();
            exported.insert(name.to_owned(), (kind.to_owned(), Vec::<String>::new()));
        }
    }
    for (name, labels) in samples(&scrape) {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| exported.contains_key(*f)))
            .unwrap_or(&name)
            .to_owned();
        let entry = &mut exported.get_mut(&family).unwrap().1;
        for (l, _) in labels.into_iter().filter(|(l, _)| l != "le") {
            if !entry.contains(&l) {
                entry.push(l);
            }
        }
        entry.sort();
    }
    assert_eq!(
        documented.keys().collect::<Vec<_>>(),
        exported.keys().collect::<Vec<_>>(),
        "families"
    );
    assert_eq!(documented, exported, "types and labels");
}

/// The counters of `families` in a scrape as promtool input series, each growing by its
/// scraped value every minute: rates over them stand in the ratio of the counts.
fn as_input_series(scrape: &str, families: &[&str]) -> Vec<(String, String)> {
    scrape
        .lines()
        .filter(|l| families.iter().any(|f| l.starts_with(&format!("{f}{{"))))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            (value > 0.0).then(|| (series.to_owned(), format!("0+{value}x20")))
        })
        .collect()
}

/// SmsfenceRefusalRateSpike ("more than a quarter of decided sends are refused") and the
/// refusal-rate panel, on real traffic: one send allowed, one refused, and a Verify check
/// of the allowed code. A check sends nothing: the sends refused are one in two.
#[tokio::test]
async fn refusal_rate_counts_sends_not_code_checks() {
    let up = MockUpstream::with(|r| {
        if r.uri.contains("VerificationCheck") {
            Reply::json(200, r#"{"status":"approved","valid":true}"#)
        } else {
            Reply::json(201, r#"{"sid":"SM1","status":"queued"}"#)
        }
    })
    .await;
    let route = format!(
        "[[route]]\nname = \"twilio\"\npreset = \"twilio\"\nupstream = \"{}\"\n",
        up.url()
    );
    let p = Proxy::start_default_rules(&route).await;
    assert_eq!(twilio_send(&p, "+447400123456", &[]).await.status, 201);
    assert_eq!(twilio_send(&p, "+449098790123", &[]).await.status, 400);
    let check = send(
        "POST",
        &p.url("/v2/Services/VA1/VerificationCheck"),
        &[FORM, BASIC],
        "To=%2B447400123456&Code=123456",
    )
    .await;
    assert_eq!(check.status, 200, "{}", check.text());
    let scrape = send("GET", &p.admin("/metrics"), &[], "").await.text();
    let series = as_input_series(
        &scrape,
        &["smsfence_decisions_total", "smsfence_recipients_total"],
    );
    let series: Vec<(&str, &str)> = series
        .iter()
        .map(|(s, v)| (s.as_str(), v.as_str()))
        .collect();
    let (_, alert) = expressions()
        .into_iter()
        .find(|(what, _)| what == "alert SmsfenceRefusalRateSpike (left-hand side)")
        .unwrap();
    promql_gives(&series, &alert, "10m", &[("{}", 0.5)]);
    promql_gives(
        &series,
        &panel_expr("Refusal rate by country"),
        "10m",
        &[(r#"{country="GB"}"#, 0.5)],
    );
}

/// Each instance numbers its own rule loads (from 1 at start): the panel shows each
/// instance's, where a maximum would show one instance's count for all.
#[test]
fn rules_generation_panel_shows_each_instance() {
    promql_gives(
        &[
            (r#"smsfence_rules_generation{instance="a:9090"}"#, "7x10"),
            (r#"smsfence_rules_generation{instance="b:9090"}"#, "1x10"),
        ],
        &panel_expr("Rules generation"),
        "5m",
        &[
            (r#"{instance="a:9090"}"#, 7.0),
            (r#"{instance="b:9090"}"#, 1.0),
        ],
    );
}
