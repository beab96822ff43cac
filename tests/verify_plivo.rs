//! Plivo Verify through the plivo preset: a session start's `session_uuid` remembered, the
//! validation (`POST …/Verify/Session/{session_uuid}/`) decided as a `verify_check` on the
//! number the session went to, Plivo's "session validated successfully." recorded as a
//! conversion (a wrong code is not), refusals in Plivo's `{api_id, error}` shape, session
//! look-ups passed through, the sandbox answering both, and the code kept out of metrics.

mod common;

use common::*;

const RULES: &str = r#"
[[limit]]
name = "guess"
key = "number"
kinds = ["verify_check"]
rate = "2/10m"
burst = 2
"#;

const AUTH: &str = "MAXXXXXXXXXXXXXXXXXX";
/// Basic MAXXXXXXXXXXXXXXXXXX:token.
const BASIC_PLIVO: (&str, &str) = (
    "authorization",
    "Basic TUFYWFhYWFhYWFhYWFhYWFhYWFg6dG9rZW4=",
);

/// A code no test sends in the clear anywhere but to the upstream.
const OTP: &str = "824613";

fn start_path() -> String {
    format!("/v1/Account/{AUTH}/Verify/Session/")
}

fn session_path(session: &str) -> String {
    format!("/v1/Account/{AUTH}/Verify/Session/{session}/")
}

fn start_body(recipient: &str) -> String {
    format!(r#"{{"recipient":"{recipient}","channel":"sms","app_uuid":"app-1"}}"#)
}

fn otp_body(otp: &str) -> String {
    format!(r#"{{"otp":"{otp}"}}"#)
}

/// The session a start to `recipient` gets from the mock: its last four digits in a UUID.
fn session_for(recipient: &str) -> String {
    format!(
        "8e712097-8090-4644-81e7-8f426500{}",
        &recipient[recipient.len() - 4..]
    )
}

/// A Plivo-like upstream: starts answer "Session initiated" with a `session_uuid`,
/// validations answer "session validated successfully." unless the code is "000000",
/// which Plivo refuses with a 400; a GET of a session answers its details.
async fn plivo_upstream() -> MockUpstream {
    MockUpstream::with(|r| {
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        if r.method == "GET" {
            return Reply::json(
                200,
                r#"{"api_id":"g","session_uuid":"s","recipient":"447400123456","status":"verified"}"#,
            );
        }
        if r.uri.trim_end_matches('/').ends_with("/Verify/Session") {
            let recipient = body["recipient"].as_str().unwrap_or("0000");
            return Reply::json(
                200,
                &format!(
                    r#"{{"api_id":"s","message":"Session initiated","session_uuid":"{}"}}"#,
                    session_for(recipient)
                ),
            );
        }
        if body["otp"] == "000000" {
            return Reply::json(400, r#"{"api_id":"v","error":"Invalid OTP"}"#);
        }
        Reply::json(
            200,
            r#"{"api_id":"v","message":"session validated successfully."}"#,
        )
    })
    .await
}

fn route(upstream: &str) -> String {
    format!("[[route]]\nname = \"plivo\"\npreset = \"plivo\"\nupstream = \"{upstream}\"\n")
}

async fn start(p: &Proxy, recipient: &str) -> Answer {
    send(
        "POST",
        &p.url(&start_path()),
        &[JSON, BASIC_PLIVO],
        start_body(recipient),
    )
    .await
}

async fn validate(p: &Proxy, session: &str, otp: &str) -> Answer {
    send(
        "POST",
        &p.url(&session_path(session)),
        &[JSON, BASIC_PLIVO],
        otp_body(otp),
    )
    .await
}

#[tokio::test]
async fn a_validated_session_is_a_conversion_of_the_number_it_started_for() {
    let up = plivo_upstream().await;
    let p = Proxy::start(&route(&up.url()), &[("r.toml", RULES)]).await;
    let a = start(&p, "447400123456").await;
    assert_eq!(a.status, 200, "{}", a.text());
    let session = a.json()["session_uuid"].as_str().unwrap().to_owned();
    assert_eq!(session, session_for("447400123456"));
    assert_eq!(verify_check_conversions(&p).await, "0");

    let a = validate(&p, &session, OTP).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["message"], "session validated successfully.");
    assert_eq!(verify_check_conversions(&p).await, "1");
    // Forwarded as sent: the path and the code reach Plivo unchanged.
    let got = up.requests();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].uri, session_path(&session));
    assert_eq!(got[1].body, otp_body(OTP).as_bytes());
    // The code is nowhere in smsfence's metrics.
    let m = send("GET", &p.admin("/metrics"), &[], "").await.text();
    assert!(!m.contains(OTP), "the code leaked into the metrics");

    // A session's details and the list pass through undecided, and credit nothing.
    for path in [session_path(&session), start_path()] {
        let a = send("GET", &p.url(&path), &[BASIC_PLIVO], "").await;
        assert_eq!(a.status, 200, "{path}");
        assert_eq!(a.json()["status"], "verified");
    }
    assert_eq!(up.requests().len(), 4);
    assert_eq!(verify_check_conversions(&p).await, "1");
}

#[tokio::test]
async fn a_wrong_code_is_no_conversion_and_validations_are_counted_against_the_number() {
    let up = plivo_upstream().await;
    let p = Proxy::start(&route(&up.url()), &[("r.toml", RULES)]).await;
    let session = start(&p, "447400123456").await.json()["session_uuid"]
        .as_str()
        .unwrap()
        .to_owned();

    // Plivo refuses a wrong code with a 400: passed on as it is, nothing credited.
    let a = validate(&p, &session, "000000").await;
    assert_eq!(a.status, 400, "{}", a.text());
    assert_eq!(a.json()["error"], "Invalid OTP");
    assert!(a.header("smsfence-reason").is_none());
    assert_eq!(verify_check_conversions(&p).await, "0");

    // The second guess for that number is within the limit and right; the third is
    // refused in Plivo's own shape and never reaches Plivo.
    assert_eq!(validate(&p, &session, OTP).await.status, 200);
    assert_eq!(verify_check_conversions(&p).await, "1");
    assert_eq!(up.requests().len(), 3);
    let t = validate(&p, &session, OTP).await;
    assert_eq!(t.status, 429, "{}", t.text());
    assert_eq!(t.header("smsfence-rule"), Some("guess"));
    assert!(t.header("retry-after").is_some());
    let v = t.json();
    assert_eq!(v.as_object().map(|o| o.len()), Some(2), "{v}");
    assert_eq!(v["api_id"].as_str().map(str::len), Some(36));
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains("[smsfence reason=rate_limited rule=guess]"));
    assert_eq!(up.requests().len(), 3);
    assert_eq!(verify_check_conversions(&p).await, "1");

    // Another number's session is counted on its own.
    let other = start(&p, "447400123457").await.json()["session_uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(validate(&p, &other, OTP).await.status, 200);
    assert_eq!(verify_check_conversions(&p).await, "2");
}

#[tokio::test]
async fn a_session_smsfence_never_saw_start_passes_undecided_and_credits_nothing() {
    let up = plivo_upstream().await;
    // One check per number: a validation that was decided could not pass twice.
    let once = "[[limit]]\nname = \"once\"\nkey = \"number\"\nkinds = [\"verify_check\"]\nrate = \"1/10m\"\nburst = 1\n";
    let p = Proxy::start(&route(&up.url()), &[("r.toml", once)]).await;
    for _ in 0..2 {
        let a = validate(&p, "0b7ab9b4-7c62-4a61-b2a8-1f0e9c2d3e4f", OTP).await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.json()["message"], "session validated successfully.");
    }
    assert_eq!(up.requests().len(), 2);
    // Plivo's answer names no number: nothing to credit.
    assert_eq!(verify_check_conversions(&p).await, "0");
    assert!(!send("GET", &p.admin("/metrics"), &[], "")
        .await
        .text()
        .contains("source=\"verify_check\""));

    // A known session under the same rules is decided: its second validation refused.
    let session = start(&p, "447400123456").await.json()["session_uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(validate(&p, &session, OTP).await.status, 200);
    assert_eq!(verify_check_conversions(&p).await, "1");
    let t = validate(&p, &session, OTP).await;
    assert_eq!(t.header("smsfence-rule"), Some("once"), "{}", t.text());
    assert_eq!(up.requests().len(), 4);
}

#[tokio::test]
async fn the_sandbox_answers_starts_and_validations() {
    let p = Proxy::start(&route("sandbox"), &[("r.toml", RULES)]).await;
    let a = start(&p, "447400123456").await;
    assert_eq!(a.status, 200, "{}", a.text());
    let v = a.json();
    assert_eq!(v["message"], "Session initiated");
    let session = v["session_uuid"].as_str().unwrap().to_owned();

    let wrong = validate(&p, &session, "000000").await;
    assert_eq!(wrong.status, 400, "{}", wrong.text());
    assert!(wrong.json()["error"].as_str().is_some());
    assert_eq!(verify_check_conversions(&p).await, "0");
    let right = validate(&p, &session, OTP).await;
    assert_eq!(right.status, 200, "{}", right.text());
    assert_eq!(right.json()["message"], "session validated successfully.");
    assert_eq!(verify_check_conversions(&p).await, "1");
    // The sandbox still refuses as Plivo does.
    let t = validate(&p, &session, OTP).await;
    assert_eq!(t.status, 429);
    assert!(t.json()["error"].as_str().unwrap().contains("rule=guess"));
}

/// A Plivo-like upstream for caller-id verifications: a start answers its
/// `verification_uuid`, a right code the verified caller id (its `verification_uuid`
/// included), "000000" a 400.
async fn caller_id_upstream() -> MockUpstream {
    MockUpstream::with(|r| {
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        if r.uri.trim_end_matches('/').ends_with("/VerifiedCallerId") {
            return Reply::json(
                200,
                r#"{"api_id":"s","message":"Verification code is sent to number +447400123456 which is valid for 15 minutes","verification_uuid":"f87836bd-f3c0-41bb-9498-125e6faaa4d4"}"#,
            );
        }
        if body["otp"] == "000000" {
            return Reply::json(400, r#"{"api_id":"v","error":"Invalid OTP"}"#);
        }
        let id = r.uri.trim_end_matches('/').rsplit('/').next().unwrap_or("");
        Reply::json(
            200,
            &format!(
                r#"{{"api_id":"v","phone_number":"+447400123456","alias":"a","country":"GB","verification_uuid":"{id}","created_at":"2024-02-09T03:52:22Z"}}"#
            ),
        )
    })
    .await
}

/// A caller-id verification (`VerifiedCallerId/`, then `VerifiedCallerId/Verification/
/// {verification_uuid}/`): its checks count against the number the start went to, a
/// right code is a conversion, a wrong one is not.
#[tokio::test]
async fn a_verified_caller_id_is_a_conversion_and_its_checks_are_counted() {
    let up = caller_id_upstream().await;
    let p = Proxy::start(&route(&up.url()), &[("r.toml", RULES)]).await;
    let a = send(
        "POST",
        &p.url(&format!("/v1/Account/{AUTH}/VerifiedCallerId/")),
        &[JSON, BASIC_PLIVO],
        r#"{"phone_number":"+447400123456","channel":"sms"}"#,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let id = a.json()["verification_uuid"].as_str().unwrap().to_owned();
    let check = |otp: &'static str| {
        let url = p.url(&format!(
            "/v1/Account/{AUTH}/VerifiedCallerId/Verification/{id}/"
        ));
        async move { send("POST", &url, &[JSON, BASIC_PLIVO], otp_body(otp)).await }
    };

    let wrong = check("000000").await;
    assert_eq!(wrong.status, 400, "{}", wrong.text());
    assert_eq!(verify_check_conversions(&p).await, "0");
    let right = check(OTP).await;
    assert_eq!(right.status, 200, "{}", right.text());
    assert_eq!(verify_check_conversions(&p).await, "1");
    // The third check of that number within the limit's window is refused, in Plivo's
    // shape, and not forwarded.
    let third = check(OTP).await;
    assert_eq!(third.status, 429, "{}", third.text());
    assert!(third.json()["error"].as_str().is_some(), "{}", third.text());
    assert_eq!(up.requests().len(), 3);
}

/// A session validated two hours after its start: past the default hour its id is
/// forgotten (the validation passes undecided, credits nothing); with
/// `store.verify_ref_ttl = "3h"` it is still matched to its number.
#[tokio::test]
async fn a_late_validation_is_matched_while_the_id_is_remembered() {
    for (store, credited) in [("", "0"), ("[store]\nverify_ref_ttl = \"3h\"\n", "1")] {
        let up = plivo_upstream().await;
        let cfg = format!("{store}{}", route(&up.url()));
        let p = Proxy::start(&cfg, &[("r.toml", RULES)]).await;
        let a = start(&p, "447400123456").await;
        let session = a.json()["session_uuid"].as_str().unwrap().to_owned();
        p.advance(std::time::Duration::from_secs(2 * 3600));
        assert_eq!(validate(&p, &session, OTP).await.status, 200);
        assert_eq!(verify_check_conversions(&p).await, credited, "{store:?}");
    }
}
