//! Sinch Verification through the preset, on its own host: a second Sinch route with a
//! `path_prefix`. Starts decided as verify starts, reports (checks) by number or by id
//! decided as verify checks on the number, `status: "SUCCESSFUL"` recorded as a
//! conversion, refusals in the Verification API's `{errorCode, message}` shape.

mod common;

use common::*;

const VERIFY_ID: &str = "1234567890abcdef";

/// The Verification API: starts answer `VERIFY_ID`, reports succeed.
async fn verification_upstream() -> MockUpstream {
    MockUpstream::with(|r| {
        if r.method == "PUT" {
            Reply::json(
                200,
                &format!(r#"{{"id":"{VERIFY_ID}","method":"sms","status":"SUCCESSFUL"}}"#),
            )
        } else {
            Reply::json(
                200,
                &format!(r#"{{"id":"{VERIFY_ID}","method":"sms","sms":{{"template":"Your code is {{{{CODE}}}}","interceptionTimeout":298}}}}"#),
            )
        }
    })
    .await
}

/// SMS batches on one host, Verification on another, as Sinch serves them.
fn two_hosts(sms: &str, verification: &str) -> String {
    format!(
        "[[route]]\nname = \"sinch-sms\"\npreset = \"sinch\"\nupstream = \"{sms}\"\n\n\
         [[route]]\nname = \"sinch-verification\"\npreset = \"sinch\"\nupstream = \"{verification}\"\n\
         path_prefix = \"/sinch-verification\"\nmax_retry_after = \"off\"\n"
    )
}

fn start_body(number: &str, method: &str) -> String {
    format!(r#"{{"identity":{{"type":"number","endpoint":"{number}"}},"method":"{method}"}}"#)
}

const SIGNED: (&str, &str) = ("authorization", "Application key1:c2lnbmF0dXJl");
const START: &str = "/sinch-verification/verification/v1/verifications";

#[tokio::test]
async fn sinch_verification_starts_are_decided_on_their_own_host() {
    let sms = MockUpstream::with(|_| Reply::json(201, r#"{"id":"01"}"#)).await;
    let ver = verification_upstream().await;
    let rules = "[[policy]]\nname = \"no-premium\"\ndeny_types = [\"premium_rate\"]\n\
                 [[limit]]\nname = \"otp-per-number\"\nkey = \"number\"\nkinds = [\"verify_start\"]\nrate = \"1/10m\"\nburst = 1\n";
    let p = Proxy::start(&two_hosts(&sms.url(), &ver.url()), &[("r.toml", rules)]).await;

    // A premium-rate number: refused in the Verification API's shape, never forwarded.
    for method in ["sms", "callout", "flashCall", "seamless"] {
        let a = send(
            "POST",
            &p.url(START),
            &[JSON, SIGNED],
            start_body("+449098790123", method),
        )
        .await;
        assert_eq!(a.status, 403, "{method}: {}", a.text());
        assert_eq!(a.json()["errorCode"], 40300);
        assert!(a.json()["message"]
            .as_str()
            .unwrap()
            .contains("reason=number_type"));
    }
    assert!(ver.requests().is_empty() && sms.requests().is_empty());

    // A mobile number: forwarded to the Verification host, the prefix stripped.
    let a = send(
        "POST",
        &p.url(START),
        &[JSON, SIGNED],
        start_body("+447400123456", "sms"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["id"], VERIFY_ID);
    let got = ver.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].uri, "/verification/v1/verifications");
    assert_eq!(got[0].body, start_body("+447400123456", "sms").as_bytes());

    // The same number again: the native 429 (the route has max_retry_after = "off").
    let t = send(
        "POST",
        &p.url(START),
        &[JSON, SIGNED],
        start_body("+447400123456", "callout"),
    )
    .await;
    assert_eq!(t.status, 429, "{}", t.text());
    assert_eq!(t.json()["errorCode"], 42900);
    assert!(t.header("retry-after").is_some());
    assert_eq!(ver.requests().len(), 1);

    // A status look-up passes through to the Verification host; SMS batches go to theirs.
    let a = send(
        "GET",
        &p.url(&format!(
            "/sinch-verification/verification/v1/verifications/id/{VERIFY_ID}"
        )),
        &[SIGNED],
        String::new(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(ver.requests().len(), 2);
    let a = send(
        "POST",
        &p.url("/xms/v1/plan1/batches"),
        &[JSON, BASIC],
        r#"{"from":"ACME","to":["447400123999"],"body":"hi"}"#.to_owned(),
    )
    .await;
    assert_eq!(a.status, 201);
    assert_eq!(sms.requests().len(), 1);
    assert_eq!(ver.requests().len(), 2);
}

#[tokio::test]
async fn sinch_verification_reports_are_counted_checks_and_conversions() {
    let ver = verification_upstream().await;
    let guard = "[[limit]]\nname = \"guess\"\nkey = \"number\"\nkinds = [\"verify_check\"]\nrate = \"1/10m\"\nburst = 1\n";
    let p = Proxy::start(&two_hosts("sandbox", &ver.url()), &[("r.toml", guard)]).await;
    let a = send(
        "POST",
        &p.url(START),
        &[JSON, SIGNED],
        start_body("+447400123456", "sms"),
    )
    .await;
    assert_eq!(a.status, 200);
    let report = r#"{"method":"sms","sms":{"code":"2302"}}"#;
    let a = send(
        "PUT",
        &p.url(&format!(
            "/sinch-verification/verification/v1/verifications/id/{VERIFY_ID}"
        )),
        &[JSON, SIGNED],
        report.to_owned(),
    )
    .await;
    assert_eq!(a.json()["status"], "SUCCESSFUL", "{}", a.text());
    let m = send("GET", &p.admin("/metrics"), &[], "").await.text();
    assert!(
        m.contains(
            r#"smsfence_conversions_total{country="GB",outcome="verified",source="verify_check"} 1"#
        ),
        "{m}"
    );
    // A report by number (as the SDK writes it, `+` in the path) is the same number's
    // second check: throttled, not forwarded.
    let t = send(
        "PUT",
        &p.url("/sinch-verification/verification/v1/verifications/number/+447400123456"),
        &[JSON, SIGNED],
        report.to_owned(),
    )
    .await;
    assert_eq!(t.status, 429, "{}", t.text());
    assert_eq!(t.json()["errorCode"], 42900);
    assert_eq!(t.header("smsfence-rule"), Some("guess"));
    assert_eq!(ver.requests().len(), 2);
    // Another number, by number: counted on its own and recorded.
    let a = send(
        "PUT",
        &p.url("/sinch-verification/verification/v1/verifications/number/%2B447400123457"),
        &[JSON, SIGNED],
        report.to_owned(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let m = send("GET", &p.admin("/metrics"), &[], "").await.text();
    assert!(
        m.contains(
            r#"smsfence_conversions_total{country="GB",outcome="verified",source="verify_check"} 2"#
        ),
        "{m}"
    );
}

#[tokio::test]
async fn sinch_verification_sandbox_answers() {
    let p = Proxy::start(&all_presets_to("sandbox"), &[]).await;
    let a = send(
        "POST",
        &p.url("/verification/v1/verifications"),
        &[JSON, SIGNED],
        start_body("+447400123456", "sms"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let v = a.json();
    assert_eq!(v["method"], "sms");
    assert!(v["sms"]["template"].as_str().is_some());
    let id = v["id"].as_str().unwrap().to_owned();
    let a = send(
        "POST",
        &p.url("/verification/v1/verifications"),
        &[JSON, SIGNED],
        start_body("+447400123457", "flashCall"),
    )
    .await;
    assert!(a.json()["flashCall"]["cliFilter"].as_str().is_some());
    let report = |code: &'static str| {
        let url = p.url(&format!("/verification/v1/verifications/id/{id}"));
        async move {
            send(
                "PUT",
                &url,
                &[JSON, SIGNED],
                format!(r#"{{"method":"sms","sms":{{"code":"{code}"}}}}"#),
            )
            .await
        }
    };
    let metrics = || async { send("GET", &p.admin("/metrics"), &[], "").await.text() };
    let wrong = report("000000").await;
    assert_eq!(wrong.json()["status"], "FAIL");
    assert!(!metrics().await.contains("source=\"verify_check\""));
    let right = report("2302").await;
    assert_eq!(
        (right.json()["status"].as_str(), right.json()["id"].as_str()),
        (Some("SUCCESSFUL"), Some(id.as_str()))
    );
    let a = send(
        "PUT",
        &p.url("/verification/v1/verifications/number/+447400123457"),
        &[JSON, SIGNED],
        r#"{"method":"flashCall","flashCall":{"cli":"+46000005312"}}"#.to_owned(),
    )
    .await;
    assert_eq!(a.json()["status"], "SUCCESSFUL");
    let m = metrics().await;
    assert!(
        m.contains(
            r#"smsfence_conversions_total{country="GB",outcome="verified",source="verify_check"} 2"#
        ),
        "{m}"
    );
}
