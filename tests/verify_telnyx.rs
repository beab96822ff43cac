//! Telnyx Verify through the telnyx preset: starts on every channel decided like sends,
//! a second start to the same number (Telnyx's way to send the code again) counted against
//! it, checks by phone number and by verification id counted as `verify_check` against the
//! number, accepted checks recorded as conversions, refusals in Telnyx's error shape, and
//! the sandbox answering starts and checks.

mod common;

use common::*;

const RULES: &str = r#"
[[limit]]
name = "cooldown"
key = "number"
kinds = ["verify_start"]
rate = "1/60s"
burst = 1

[[limit]]
name = "guess"
key = "number"
kinds = ["verify_check"]
rate = "2/10m"
burst = 2

[[policy]]
name = "no-premium"
deny_types = ["premium_rate"]
"#;

/// A premium-rate number: the `no-premium` policy blocks it.
const PREMIUM: &str = "+449098790123";

/// Every start path: the current SDKs' four `trigger_*`, PSD2 (2.x SDKs), DTMF
/// confirmation, and the legacy start with a `type`.
const STARTS: &[&str] = &[
    "/v2/verifications/sms",
    "/v2/verifications/call",
    "/v2/verifications/flashcall",
    "/v2/verifications/whatsapp",
    "/v2/verifications/psd2",
    "/v2/verifications/dtmf_confirm",
    "/v2/verifications",
];

fn start_body(number: &str) -> String {
    format!(
        r#"{{"phone_number":"{number}","verify_profile_id":"12ade33a-21c0-473b-b055-b3c836e1c292","type":"sms"}}"#
    )
}

const BEARER: (&str, &str) = ("authorization", "Bearer KEYtest");

/// A Telnyx-like upstream: starts answer `data.id` = `ver-` and the number's last digits,
/// checks answer `accepted` unless the code is "000000", with the number when it knows it.
async fn telnyx_upstream() -> MockUpstream {
    MockUpstream::with(|r| {
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        if r.uri.ends_with("/actions/verify") {
            let code = if body["code"] == "000000" {
                "rejected"
            } else {
                "accepted"
            };
            let number = r
                .uri
                .split("/by_phone_number/")
                .nth(1)
                .and_then(|rest| rest.split('/').next())
                .map(|n| n.replace("%2B", "+"))
                .unwrap_or_else(|| "+447400123456".into());
            return Reply::json(
                200,
                &format!(r#"{{"data":{{"phone_number":"{number}","response_code":"{code}"}}}}"#),
            );
        }
        let number = body["phone_number"].as_str().unwrap_or("");
        let id = format!("ver-{}", &number[number.len().saturating_sub(4)..]);
        Reply::json(
            200,
            &format!(
                r#"{{"data":{{"id":"{id}","record_type":"verification","phone_number":"{number}","status":"pending"}}}}"#
            ),
        )
    })
    .await
}

fn route(upstream: &str) -> String {
    format!("[[route]]\nname = \"telnyx\"\npreset = \"telnyx\"\nupstream = \"{upstream}\"\n")
}

#[tokio::test]
async fn starts_on_every_channel_are_decided() {
    let up = telnyx_upstream().await;
    let p = Proxy::start(&route(&up.url()), &[("r.toml", RULES)]).await;
    for (i, path) in STARTS.iter().enumerate() {
        // A premium-rate number: refused in Telnyx's shape, never forwarded.
        let before = up.requests().len();
        let a = send("POST", &p.url(path), &[JSON, BEARER], start_body(PREMIUM)).await;
        assert_eq!(a.status, 403, "{path}: {}", a.text());
        let e = &a.json()["errors"][0];
        assert_eq!(e["code"], "40300", "{path}");
        assert!(
            e["detail"]
                .as_str()
                .is_some_and(|d| d.contains("reason=number_type")),
            "{path}: {e}"
        );
        assert_eq!(a.header("x-should-retry"), Some("false"));
        assert_eq!(a.header("smsfence-reason"), Some("number_type"));
        assert_eq!(up.requests().len(), before, "{path}: forwarded");

        // A mobile number: forwarded byte for byte.
        let body = start_body(&format!("+4474001234{i:02}"));
        let a = send("POST", &p.url(path), &[JSON, BEARER], body.clone()).await;
        assert_eq!(a.status, 200, "{path}: {}", a.text());
        let got = up.requests();
        assert_eq!(got.len(), before + 1, "{path}");
        let last = got.last().unwrap();
        assert_eq!(
            (last.uri.as_str(), &last.body[..]),
            (*path, body.as_bytes())
        );
    }
    // An invalid number: Telnyx's "Invalid phone number", an UnprocessableEntityError.
    let a = send(
        "POST",
        &p.url("/v2/verifications/sms"),
        &[JSON, BEARER],
        start_body("+44 74 abc"),
    )
    .await;
    assert_eq!(a.status, 422, "{}", a.text());
    assert_eq!(a.json()["errors"][0]["code"], "10002");
    // Look-ups under the Verify roots pass through undecided.
    let a = send("GET", &p.url("/v2/verifications/ver-1"), &[BEARER], "").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(up.requests().last().unwrap().uri, "/v2/verifications/ver-1");
}

#[tokio::test]
async fn a_second_start_to_the_same_number_is_counted_against_it() {
    let up = telnyx_upstream().await;
    let p = Proxy::start(&route(&up.url()), &[("r.toml", RULES)]).await;
    let number = "+447400123456";
    let a = send(
        "POST",
        &p.url("/v2/verifications/sms"),
        &[JSON, BEARER],
        start_body(number),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    // Telnyx has no resend endpoint: the code again, by SMS or by another channel, is
    // another start, and the number's limit holds it.
    for path in ["/v2/verifications/sms", "/v2/verifications/call"] {
        let t = send("POST", &p.url(path), &[JSON, BEARER], start_body(number)).await;
        assert_eq!(t.status, 429, "{path}: {}", t.text());
        assert_eq!(t.json()["errors"][0]["code"], "10011");
        assert_eq!(t.header("retry-after"), Some("60"));
        assert_eq!(t.header("x-should-retry"), Some("false"));
        assert_eq!(t.header("smsfence-rule"), Some("cooldown"));
    }
    assert_eq!(up.requests().len(), 1);
    p.advance(std::time::Duration::from_secs(60));
    let a = send(
        "POST",
        &p.url("/v2/verifications/call"),
        &[JSON, BEARER],
        start_body(number),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(up.requests().len(), 2);
}

#[tokio::test]
async fn checks_are_counted_against_the_number_and_accepted_ones_are_conversions() {
    let up = telnyx_upstream().await;
    let p = Proxy::start(&route(&up.url()), &[("r.toml", RULES)]).await;
    let a = send(
        "POST",
        &p.url("/v2/verifications/sms"),
        &[JSON, BEARER],
        start_body("+447400123456"),
    )
    .await;
    assert_eq!(a.json()["data"]["id"], "ver-3456");
    assert_eq!(verify_check_conversions(&p).await, "0");

    // By id: the number comes from the start's answer.
    let a = send(
        "POST",
        &p.url("/v2/verifications/ver-3456/actions/verify"),
        &[JSON, BEARER],
        r#"{"code":"17686"}"#,
    )
    .await;
    assert_eq!(
        a.json()["data"]["response_code"],
        "accepted",
        "{}",
        a.text()
    );
    assert_eq!(verify_check_conversions(&p).await, "1");
    // By phone number, `+` encoded as the Node SDK does: the same number's second check.
    let a = send(
        "POST",
        &p.url("/v2/verifications/by_phone_number/%2B447400123456/actions/verify"),
        &[JSON, BEARER],
        r#"{"code":"17686","verify_profile_id":"12ade33a-21c0-473b-b055-b3c836e1c292"}"#,
    )
    .await;
    assert_eq!(
        a.json()["data"]["response_code"],
        "accepted",
        "{}",
        a.text()
    );
    assert_eq!(verify_check_conversions(&p).await, "2");
    assert_eq!(up.requests().len(), 3);
    // The third check of that number, by id or by number (`+` as the Python SDK sends
    // it), is over the guess limit: refused, never forwarded.
    for path in [
        "/v2/verifications/ver-3456/actions/verify",
        "/v2/verifications/by_phone_number/+447400123456/actions/verify",
    ] {
        let t = send("POST", &p.url(path), &[JSON, BEARER], r#"{"code":"1"}"#).await;
        assert_eq!(t.status, 429, "{path}: {}", t.text());
        assert_eq!(t.json()["errors"][0]["code"], "10011");
        assert_eq!(t.header("smsfence-rule"), Some("guess"));
    }
    assert_eq!(up.requests().len(), 3);

    // A rejected code is no conversion.
    let a = send(
        "POST",
        &p.url("/v2/verifications/by_phone_number/+447400123999/actions/verify"),
        &[JSON, BEARER],
        r#"{"code":"000000","verify_profile_id":"vp"}"#,
    )
    .await;
    assert_eq!(a.json()["data"]["response_code"], "rejected");
    assert_eq!(verify_check_conversions(&p).await, "2");
    // A check by an id smsfence never saw start passes undecided; its accepted answer
    // names the number, which is credited.
    let a = send(
        "POST",
        &p.url("/v2/verifications/ver-unknown/actions/verify"),
        &[JSON, BEARER],
        r#"{"code":"17686"}"#,
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(verify_check_conversions(&p).await, "3");
}

#[tokio::test]
async fn the_sandbox_answers_starts_and_checks() {
    let p = Proxy::start(&route("sandbox"), &[("r.toml", RULES)]).await;
    let a = send(
        "POST",
        &p.url("/v2/verifications/whatsapp"),
        &[JSON, BEARER],
        start_body("+447400123456"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let data = &a.json()["data"];
    assert_eq!(
        (&data["type"], &data["status"], &data["record_type"]),
        (
            &serde_json::json!("whatsapp"),
            &serde_json::json!("pending"),
            &serde_json::json!("verification")
        )
    );
    assert_eq!(data["phone_number"], "+447400123456");
    let id = data["id"].as_str().unwrap().to_owned();

    let a = send(
        "POST",
        &p.url("/v2/verifications/by_phone_number/+447400123456/actions/verify"),
        &[JSON, BEARER],
        r#"{"code":"000000","verify_profile_id":"vp"}"#,
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["data"]["response_code"], "rejected");
    assert_eq!(verify_check_conversions(&p).await, "0");
    let a = send(
        "POST",
        &p.url(&format!("/v2/verifications/{id}/actions/verify")),
        &[JSON, BEARER],
        r#"{"code":"123456"}"#,
    )
    .await;
    assert_eq!(a.json()["data"]["response_code"], "accepted");
    assert_eq!(verify_check_conversions(&p).await, "1");
    // The sandbox still refuses as Telnyx does.
    let a = send(
        "POST",
        &p.url("/v2/verifications/sms"),
        &[JSON, BEARER],
        start_body(PREMIUM),
    )
    .await;
    assert_eq!(a.status, 403);
    assert_eq!(a.json()["errors"][0]["code"], "40300");
}
