//! The official provider SDKs, unchanged but for their base URL, in front of the real
//! proxy and a recording mock upstream. For each SDK:
//! - an allowed send succeeds, and the upstream receives exactly the bytes the same SDK
//!   sends when it talks to the upstream directly;
//! - a throttled send (the same number again within the cooldown) raises the SDK's
//!   rate-limit error; SDKs that retry a 429 by themselves are seen retrying;
//! - a blocked send (a premium-rate number) raises the SDK's ordinary exception with the
//!   expected status and code, and smsfence saw exactly one request (no SDK retry).
//!
//! The drivers are `tests/sdk/drive.py` and `tests/sdk/node/drive.js`; each run is one
//! child process, ended after 60 s. `scripts/setup-sdk-tests.sh` installs the SDKs (.venv/,
//! tests/sdk/node/node_modules/) once per test process. Set SMSFENCE_SKIP_SDK_TESTS=1 to
//! skip them (it says so loudly). Nothing sleeps: the one SDK that waits before retrying
//! (Sinch, for `Retry-After`) runs its retry loop on a virtual clock in its driver.
//!
//! Not covered: Sinch project auth (key id/secret) fetches an OAuth token from
//! `configuration.auth_origin` before sending — that call goes to the token host, not
//! through smsfence — so the Sinch driver uses service-plan auth (a static Bearer token).

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use serde_json::{json as j, Value};

const RULES: &str = "\
[[limit]]\nname = \"cooldown\"\nkey = \"number\"\nrate = \"1/60s\"\nburst = 1\n\
[[policy]]\nname = \"no-premium\"\ndeny_types = [\"premium_rate\"]\n";

/// A premium-rate number: the `no-premium` policy blocks it.
const PREMIUM: &str = "+449098790123";

/// How long one SDK run may take before it is ended (`timeout`, then KILL 5 s later).
const SDK_TIMEOUT_SECS: &str = "60";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Installs the SDKs, once per test process (the tests run in parallel, and two installs
/// into one .venv/ break each other). False when SMSFENCE_SKIP_SDK_TESTS=1.
fn setup() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        if std::env::var("SMSFENCE_SKIP_SDK_TESTS").is_ok_and(|v| v == "1") {
            // Straight to the process's stderr: `eprintln!` would be captured and hidden.
            let _ = std::io::stderr().write_all(
                b"\n!!! SMSFENCE_SKIP_SDK_TESTS=1: the official-SDK tests are SKIPPED !!!\n\n",
            );
            return false;
        }
        let status = Command::new("bash")
            .arg(repo().join("scripts/setup-sdk-tests.sh"))
            .status()
            .expect("run the SDK setup");
        assert!(status.success(), "scripts/setup-sdk-tests.sh failed");
        true
    })
}

/// Success answers in each provider's own shape, by path.
fn upstream_reply(r: &Recorded) -> Reply {
    let uri = r.uri.as_str();
    if uri.contains("/Messages.json") {
        Reply::json(
            201,
            r#"{"sid":"SM00000000000000000000000000000001","account_sid":"ACtest","status":"queued","to":"+447400123456","from":"+15005550006","body":"Your code is 123456","num_segments":"1","direction":"outbound-api","api_version":"2010-04-01","price":null,"error_code":null}"#,
        )
    } else if uri.starts_with("/v2/messages") {
        Reply::json(
            200,
            r#"{"data":{"record_type":"message","id":"40385f64-5717-4562-b3fc-2c963f66afa6","to":[{"phone_number":"+447400123456","status":"queued"}],"type":"SMS","direction":"outbound","parts":1,"errors":[]}}"#,
        )
    } else if uri.starts_with("/v1/Account/") {
        Reply::json(
            202,
            r#"{"api_id":"db342550-7f1d-11e1-8ea7-1231380bc196","message":"message(s) queued","message_uuid":["db3ce55a-7f1d-11e1-8ea7-1231380bc196"]}"#,
        )
    } else if uri.starts_with("/sms/json") {
        Reply::json(
            200,
            r#"{"message-count":"1","messages":[{"to":"447400123456","message-id":"0A0000000123ABCD1","status":"0","remaining-balance":"3.14159265","message-price":"0.03330000","network":"23410"}]}"#,
        )
    } else if uri.starts_with("/xms/v1/") {
        Reply::json(
            201,
            r#"{"id":"01FC66621XXXXX119Z8PMV1QPQ","to":["447400123456"],"from":"ACME","canceled":false,"body":"Your code is 123456","type":"mt_text","created_at":"2026-11-22T10:00:00.000Z","modified_at":"2026-11-22T10:00:00.000Z","delivery_report":"none","expire_at":"2026-11-25T10:00:00.000Z","flash_message":false}"#,
        )
    } else if uri.starts_with("/sms/3/messages") {
        Reply::json(
            200,
            r#"{"bulkId":"2034072219640523073","messages":[{"messageId":"2250be2d4219-3af1-78856-aabe-1362af1edfd2","status":{"groupId":1,"groupName":"PENDING","id":26,"name":"PENDING_ACCEPTED","description":"Message sent to next instance"},"destination":"447400123456"}]}"#,
        )
    } else {
        Reply::json(404, r#"{"error":"unknown path in the SDK test mock"}"#)
    }
}

#[derive(Clone, Copy, Debug)]
enum Lang {
    Python,
    Node,
}

/// What one SDK run reported (see the drivers).
#[derive(Debug)]
struct Outcome {
    ok: bool,
    /// The exception class.
    error: Option<String>,
    /// The HTTP status the exception carries, when it carries one.
    status: Option<u64>,
    /// The provider's error code as the SDK exposes it.
    code: Value,
    /// The error text an application can read from the exception.
    message: String,
    /// How long the SDK would have slept between retries (drivers with a virtual clock).
    slept: Vec<f64>,
}

/// Runs one send through an SDK, in a child process ended after `SDK_TIMEOUT_SECS`.
fn drive(lang: Lang, provider: &str, base: &str, to: &str) -> Outcome {
    let (program, script, dir) = match lang {
        Lang::Python => (
            repo().join(".venv/bin/python"),
            repo().join("tests/sdk/drive.py"),
            repo(),
        ),
        Lang::Node => (
            PathBuf::from("node"),
            repo().join("tests/sdk/node/drive.js"),
            repo().join("tests/sdk/node"),
        ),
    };
    let out = Command::new("timeout")
        .args(["--kill-after=5", SDK_TIMEOUT_SECS])
        .arg(&program)
        .arg(script)
        .args([provider, base, to])
        .current_dir(dir)
        // Everything stays on 127.0.0.1, even with a proxy configured in the environment.
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .output()
        .expect("run the SDK driver under `timeout` (coreutils)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !matches!(out.status.code(), Some(124 | 137) | None),
        "{lang:?} {provider}: the SDK did not finish within {SDK_TIMEOUT_SECS} s; stderr {stderr:?}"
    );
    assert!(
        !matches!(out.status.code(), Some(126 | 127)),
        "{lang:?} {provider}: cannot run {program:?} (the Node SDK tests need node >= 20 and npm; \
         or set SMSFENCE_SKIP_SDK_TESTS=1); stderr {stderr:?}"
    );
    let line = stdout.lines().last().unwrap_or("");
    let v: Value = serde_json::from_str(line).unwrap_or_else(|_| {
        panic!("{lang:?} {provider}: no JSON outcome; stdout {stdout:?}, stderr {stderr:?}")
    });
    Outcome {
        ok: v["ok"].as_bool().unwrap_or(false),
        error: v["error"].as_str().map(str::to_owned),
        status: v["status"].as_u64(),
        code: v["code"].clone(),
        message: v["message"].as_str().unwrap_or_default().to_owned(),
        slept: v["slept"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default(),
    }
}

/// `smsfence_requests_total` of one route and outcome.
async fn route_requests(p: &Proxy, route: &str, outcome: &str) -> u64 {
    let metrics = send("GET", &p.admin("/metrics"), &[], "").await.text();
    let key = format!(
        "smsfence_requests_total{{outcome=\"{outcome}\",provider=\"{route}\",route=\"{route}\"}} "
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// What an SDK should raise for a refusal.
struct Expect {
    /// The exception class.
    error: &'static str,
    /// The HTTP status it carries (None where the SDK's exception has none).
    status: Option<u64>,
    /// The provider code it exposes.
    code: Value,
    /// Whether the exception exposes smsfence's explanation (`[smsfence reason=…]`).
    explains: bool,
}

fn expect(error: &'static str, status: Option<u64>, code: Value) -> Expect {
    Expect {
        error,
        status,
        code,
        explains: true,
    }
}

struct Case {
    lang: Lang,
    provider: &'static str,
    throttle: Expect,
    /// Requests smsfence sees for one throttled send: more than one when the SDK retries
    /// a 429 by itself.
    throttle_requests: u64,
    block: Expect,
    /// Extra lines for the provider's route (e.g. `max_retry_after = "off"`).
    route_extra: &'static str,
}

fn check(what: &str, got: &Outcome, want: &Expect, reason: &str) {
    assert!(!got.ok, "{what}: the SDK must raise");
    assert_eq!(
        (got.error.as_deref(), got.status, &got.code),
        (Some(want.error), want.status, &want.code),
        "{what}: exception class, status and code; {got:?}"
    );
    if want.explains {
        assert!(
            got.message.contains(&format!("[smsfence reason={reason} ")),
            "{what}: the error text names the reason; {got:?}"
        );
    }
}

async fn run_case(c: &Case) {
    let up = MockUpstream::with(upstream_reply).await;
    let preset = format!("preset = \"{}\"\n", c.provider);
    let config =
        all_presets_to(&up.url()).replace(&preset, &format!("{preset}{}\n", c.route_extra));
    let p = Proxy::start(&config, &[("r.toml", RULES)]).await;
    let base = p.url("");
    let number = "+447400123456";
    let (lang, provider) = (c.lang, c.provider);
    let run = |base: String, to: &str| {
        let to = to.to_owned();
        tokio::task::spawn_blocking(move || drive(lang, provider, &base, &to))
    };
    let who = format!("{lang:?} {provider}");

    // The same SDK straight at the mock: the reference request.
    let direct = run(up.url(), number).await.unwrap();
    assert!(direct.ok, "{who} direct to the mock: {direct:?}");
    let reference = up
        .requests()
        .last()
        .cloned()
        .expect("the SDK reached the mock");

    // Allowed through smsfence: succeeds; the upstream receives the same request.
    let allowed = run(base.clone(), number).await.unwrap();
    assert!(allowed.ok, "{who} allowed send: {allowed:?}");
    let got = up.requests();
    assert_eq!(got.len(), 2, "{who}: one request forwarded");
    let forwarded = got.last().unwrap();
    assert_eq!(forwarded.method, reference.method, "{who}");
    assert_eq!(forwarded.uri, reference.uri, "{who}");
    assert_eq!(forwarded.body, reference.body, "{who}: byte-identical body");
    for h in ["authorization", "content-type"] {
        assert_eq!(
            forwarded.headers.get(h),
            reference.headers.get(h),
            "{who}: {h}"
        );
    }

    // Throttled: the same number again within the cooldown.
    let before = route_requests(&p, provider, "throttled").await;
    let throttled = run(base.clone(), number).await.unwrap();
    check(
        &format!("{who} throttle"),
        &throttled,
        &c.throttle,
        "rate_limited",
    );
    let seen = route_requests(&p, provider, "throttled").await - before;
    assert_eq!(
        seen, c.throttle_requests,
        "{who}: requests for one throttled send"
    );
    // Retries wait at least the Retry-After smsfence sent (60 s, on a clock that stands
    // still), and only drivers with a virtual clock may retry: no test sleeps.
    assert_eq!(
        throttled.slept.len() as u64,
        seen - 1,
        "{who}: {throttled:?}"
    );
    assert!(
        throttled.slept.iter().all(|s| *s >= 60.0),
        "{who}: {throttled:?}"
    );

    // Blocked: exactly one request reached smsfence.
    let before = route_requests(&p, provider, "blocked").await;
    let blocked = run(base.clone(), PREMIUM).await.unwrap();
    check(&format!("{who} block"), &blocked, &c.block, "number_type");
    let seen = route_requests(&p, provider, "blocked").await - before;
    assert_eq!(
        seen, 1,
        "{who}: the SDK sent the blocked request once (no retry)"
    );
    assert!(blocked.slept.is_empty(), "{who}: {blocked:?}");

    assert_eq!(
        up.requests().len(),
        2,
        "{who}: refused sends never reach the upstream"
    );
}

async fn run(c: Case) {
    if !setup() {
        return;
    }
    tokio::time::timeout(Duration::from_secs(300), run_case(&c))
        .await
        .unwrap_or_else(|_| panic!("{:?} {} timed out", c.lang, c.provider));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_python() {
    run(Case {
        lang: Lang::Python,
        provider: "twilio",
        throttle: expect("TwilioRestException", Some(429), j!(20429)),
        throttle_requests: 1,
        block: expect("TwilioRestException", Some(400), j!(21612)),
        route_extra: "",
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_node() {
    run(Case {
        lang: Lang::Node,
        provider: "twilio",
        throttle: expect("RestException", Some(429), j!(20429)),
        throttle_requests: 1,
        block: expect("RestException", Some(400), j!(21612)),
        route_extra: "",
    })
    .await;
}

/// Telnyx's SDKs retry a 429 unless told `x-should-retry: false`, which smsfence sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telnyx_python() {
    run(Case {
        lang: Lang::Python,
        provider: "telnyx",
        throttle: expect("RateLimitError", Some(429), j!("10011")),
        throttle_requests: 1,
        block: expect("PermissionDeniedError", Some(403), j!("40300")),
        route_extra: "",
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telnyx_node() {
    run(Case {
        lang: Lang::Node,
        provider: "telnyx",
        throttle: expect("RateLimitError", Some(429), j!("10011")),
        throttle_requests: 1,
        block: expect("PermissionDeniedError", Some(403), j!("40300")),
        route_extra: "",
    })
    .await;
}

/// Plivo's exceptions carry only a message: a 400 surfaces the body's `error` text
/// (`ValidationError`), a 429 only a generic "Received status code 429".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plivo_python() {
    run(Case {
        lang: Lang::Python,
        provider: "plivo",
        throttle: Expect {
            explains: false,
            ..expect("PlivoRestError", None, Value::Null)
        },
        throttle_requests: 1,
        block: expect("ValidationError", None, Value::Null),
        route_extra: "",
    })
    .await;
}

/// Vonage's SMS API answers errors with HTTP 200 and a per-message status: "1" throttled,
/// "7" number barred. Python reads it into `SmsError`, Node into
/// `MessageSendPartialFailure` (whose error carries no HTTP status).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vonage_python() {
    run(Case {
        lang: Lang::Python,
        provider: "vonage",
        throttle: expect("SmsError", Some(200), j!("1")),
        throttle_requests: 1,
        block: expect("SmsError", Some(200), j!("7")),
        route_extra: "",
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vonage_node() {
    run(Case {
        lang: Lang::Node,
        provider: "vonage",
        throttle: expect("MessageSendPartialFailure", None, j!("1")),
        throttle_requests: 1,
        block: expect("MessageSendPartialFailure", None, j!("7")),
        route_extra: "",
    })
    .await;
}

/// The Sinch SDK retries a 429 three times, each after the Retry-After smsfence sent, so
/// by default a Sinch throttle longer than 10 s (here the 60 s cooldown) is answered as a
/// block: a 403, raised at once, with reason `rate_limited`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinch_python() {
    run(Case {
        lang: Lang::Python,
        provider: "sinch",
        throttle: expect("SmsException", Some(403), j!("forbidden")),
        throttle_requests: 1,
        block: expect("SmsException", Some(403), j!("forbidden")),
        route_extra: "",
    })
    .await;
}

/// With `max_retry_after = "off"` the throttle is the native 429, which the SDK retries
/// three times after Retry-After (on a virtual clock here) before raising.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinch_python_native_429() {
    run(Case {
        lang: Lang::Python,
        provider: "sinch",
        throttle: expect("SmsException", Some(429), j!("too_many_requests")),
        throttle_requests: 4,
        block: expect("SmsException", Some(403), j!("forbidden")),
        route_extra: "max_retry_after = \"off\"",
    })
    .await;
}

/// Infobip `/sms/3/messages`: a 403 is parsed into `ForbiddenException`; a 429 (not in
/// the SDK's response map) stays a plain `ApiException`, not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infobip_python() {
    run(Case {
        lang: Lang::Python,
        provider: "infobip",
        throttle: expect("ApiException", Some(429), j!("E429")),
        throttle_requests: 1,
        block: expect("ForbiddenException", Some(403), j!("E403")),
        route_extra: "",
    })
    .await;
}
