//! Every built-in preset through the real proxy: allowed sends forwarded byte for byte,
//! blocks and throttles answered in the provider's own format, multi-recipient requests
//! refused whole, the sandbox answering natively, and Verify conversions recorded.

mod common;

use common::*;

const RULES: &str = r#"
[[limit]]
name = "cooldown"
key = "number"
rate = "1/60s"
burst = 1

[[policy]]
name = "no-premium"
deny_types = ["premium_rate"]
"#;

struct Case {
    preset: &'static str,
    path: &'static str,
    content_type: (&'static str, &'static str),
    /// Body for one recipient: `{to}` is replaced by the digits.
    body: &'static str,
    block_status: u16,
    throttle_status: u16,
}

const CASES: &[Case] = &[
    Case {
        preset: "twilio",
        path: "/2010-04-01/Accounts/ACtest/Messages.json",
        content_type: FORM,
        body: "To=%2B{to}&From=%2B15005550006&Body=Your+code+is+123456",
        block_status: 400,
        throttle_status: 429,
    },
    Case {
        preset: "vonage",
        path: "/sms/json",
        content_type: FORM,
        body: "api_key=k&api_secret=s&to={to}&from=ACME&text=Your+code+is+123456",
        block_status: 200,
        throttle_status: 200,
    },
    Case {
        preset: "telnyx",
        path: "/v2/messages",
        content_type: JSON,
        body: r#"{"from":"+15005550006","to":"+{to}","text":"Your code is 123456"}"#,
        block_status: 403,
        throttle_status: 429,
    },
    Case {
        preset: "plivo",
        path: "/v1/Account/MA123/Message/",
        content_type: JSON,
        body: r#"{"src":"+15005550006","dst":"{to}","text":"Your code is 123456"}"#,
        block_status: 400,
        throttle_status: 429,
    },
    Case {
        preset: "sinch",
        path: "/xms/v1/plan1/batches",
        content_type: JSON,
        body: r#"{"from":"ACME","to":["{to}"],"body":"Your code is 123456"}"#,
        block_status: 403,
        throttle_status: 429,
    },
    Case {
        preset: "infobip",
        path: "/sms/3/messages",
        content_type: JSON,
        body: r#"{"messages":[{"sender":"ACME","destinations":[{"to":"{to}"}],"content":{"text":"Your code is 123456"}}]}"#,
        block_status: 403,
        throttle_status: 429,
    },
];

fn body(c: &Case, to: &str) -> String {
    // Templates carry their own `+` (or `%2B`) where the provider writes one.
    c.body.replace("{to}", to.trim_start_matches('+'))
}

#[tokio::test]
async fn every_preset_forwards_blocks_and_throttles_natively() {
    let up = MockUpstream::with(|_| Reply::json(200, r#"{"ok":true}"#)).await;
    // Every preset's native throttle, Sinch's included (by default a Sinch throttle over
    // 10 s is a block: `long_sinch_throttles_are_blocks`).
    let config = all_presets_to(&up.url()).replace(
        "preset = \"sinch\"\n",
        "preset = \"sinch\"\nmax_retry_after = \"off\"\n",
    );
    let p = Proxy::start(&config, &[("r.toml", RULES)]).await;
    for (i, c) in CASES.iter().enumerate() {
        let number = format!("+4474001234{i:02}");
        let send_body = body(c, &number);
        let a = send(
            "POST",
            &p.url(c.path),
            &[c.content_type, BASIC],
            send_body.clone(),
        )
        .await;
        assert_eq!(a.status, 200, "{}: {}", c.preset, a.text());
        let got = up.requests();
        let last = got.last().unwrap();
        assert_eq!(
            last.body,
            send_body.as_bytes(),
            "{}: forwarded byte for byte",
            c.preset
        );
        assert_eq!(last.uri, c.path);
        let before = got.len();

        // Throttle: the same number again.
        let t = send(
            "POST",
            &p.url(c.path),
            &[c.content_type, BASIC],
            send_body.clone(),
        )
        .await;
        assert_eq!(
            t.status.as_u16(),
            c.throttle_status,
            "{}: {}",
            c.preset,
            t.text()
        );
        assert_eq!(
            t.header("smsfence-reason"),
            Some("rate_limited"),
            "{}",
            c.preset
        );
        assert_eq!(t.header("retry-after"), Some("60"), "{}", c.preset);

        // Block: a premium-rate number.
        let b = send(
            "POST",
            &p.url(c.path),
            &[c.content_type, BASIC],
            body(c, "+449098790123"),
        )
        .await;
        assert_eq!(
            b.status.as_u16(),
            c.block_status,
            "{}: {}",
            c.preset,
            b.text()
        );
        assert_eq!(
            b.header("smsfence-reason"),
            Some("number_type"),
            "{}",
            c.preset
        );
        assert!(
            b.text().contains("reason=number_type"),
            "{}: {}",
            c.preset,
            b.text()
        );
        assert_eq!(
            up.requests().len(),
            before,
            "{}: refusals never reach the upstream",
            c.preset
        );
    }
}

#[tokio::test]
async fn native_error_shapes() {
    let p = Proxy::start(&all_presets_to("sandbox"), &[("r.toml", RULES)]).await;
    let prem = "+449098790123";
    let get = |i: usize| &CASES[i];
    let a = send(
        "POST",
        &p.url(get(0).path),
        &[FORM, BASIC],
        body(get(0), prem),
    )
    .await;
    assert_eq!(a.json()["code"], 21612);
    let a = send("POST", &p.url(get(1).path), &[FORM], body(get(1), prem)).await;
    assert_eq!(a.json()["messages"][0]["status"], "7");
    let a = send("POST", &p.url(get(2).path), &[JSON], body(get(2), prem)).await;
    assert_eq!(a.json()["errors"][0]["code"], "40300");
    assert_eq!(a.header("x-should-retry"), Some("false"));
    let a = send("POST", &p.url(get(3).path), &[JSON], body(get(3), prem)).await;
    assert!(a.json()["error"].as_str().unwrap().contains("number_type"));
    let a = send("POST", &p.url(get(4).path), &[JSON], body(get(4), prem)).await;
    assert_eq!(a.json()["code"], "forbidden");
    let a = send("POST", &p.url(get(5).path), &[JSON], body(get(5), prem)).await;
    assert_eq!(a.json()["errorCode"], "E403");
    let a = send(
        "POST",
        &p.url("/sms/2/text/advanced"),
        &[JSON],
        r#"{"messages":[{"from":"A","destinations":[{"to":"449098790123"}],"text":"x"}]}"#,
    )
    .await;
    assert_eq!(
        a.json()["requestError"]["serviceException"]["messageId"],
        "REJECTED"
    );
}

#[tokio::test]
async fn multi_recipient_requests_are_refused_whole() {
    let up = MockUpstream::with(|_| Reply::json(202, r#"{"message":"queued"}"#)).await;
    let p = Proxy::start(&all_presets_to(&up.url()), &[("r.toml", RULES)]).await;
    // Plivo: second of three recipients is premium rate.
    let a = send(
        "POST",
        &p.url("/v1/Account/MA1/Message/"),
        &[JSON],
        r#"{"src":"+15005550006","dst":"447400123456<449098790123<447400123457","text":"hi"}"#,
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(
        a.json()["error"]
            .as_str()
            .unwrap()
            .contains("recipient 2 of 3"),
        "{}",
        a.text()
    );
    // Sinch: a group id is not something smsfence can check.
    let a = send(
        "POST",
        &p.url("/xms/v1/plan1/batches"),
        &[JSON],
        r#"{"from":"A","to":["01FC66621VHDBN119Z8Y0FAKE"],"body":"x"}"#,
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.header("smsfence-reason"), Some("unsupported_request"));
    assert!(up.requests().is_empty());
    // The good recipients were not consumed by the refused request.
    let a = send(
        "POST",
        &p.url("/v1/Account/MA1/Message/"),
        &[JSON],
        r#"{"src":"+15005550006","dst":"447400123456<447400123457","text":"hi"}"#,
    )
    .await;
    assert_eq!(a.status, 202);
}

#[tokio::test]
async fn the_sandbox_answers_every_preset_with_its_success_shape() {
    let p = Proxy::start(&all_presets_to("sandbox"), &[]).await;
    let to = "+447400123456";
    let a = send(
        "POST",
        &p.url(CASES[0].path),
        &[FORM, BASIC],
        body(&CASES[0], to),
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), a.json()["status"].as_str()),
        (201, Some("queued"))
    );
    let a = send("POST", &p.url(CASES[1].path), &[FORM], body(&CASES[1], to)).await;
    assert_eq!(a.json()["messages"][0]["status"], "0");
    assert_eq!(a.json()["messages"][0]["to"], "447400123456");
    let a = send("POST", &p.url(CASES[2].path), &[JSON], body(&CASES[2], to)).await;
    assert_eq!(a.json()["data"]["to"][0]["status"], "queued");
    let a = send("POST", &p.url(CASES[3].path), &[JSON], body(&CASES[3], to)).await;
    assert_eq!(a.status, 202);
    assert_eq!(a.json()["message_uuid"].as_array().unwrap().len(), 1);
    let a = send("POST", &p.url(CASES[4].path), &[JSON], body(&CASES[4], to)).await;
    assert_eq!(a.status, 201);
    assert_eq!(a.json()["type"], "mt_text");
    let a = send("POST", &p.url(CASES[5].path), &[JSON], body(&CASES[5], to)).await;
    assert_eq!(a.json()["messages"][0]["status"]["groupName"], "PENDING");
}

#[tokio::test]
async fn verify_checks_are_counted_against_the_number_and_record_conversions() {
    let guard = "[[limit]]\nname = \"guess\"\nkey = \"number\"\nkinds = [\"verify_check\"]\nrate = \"2/10m\"\nburst = 2\n";
    let p = Proxy::start(&all_presets_to("sandbox"), &[("r.toml", guard)]).await;
    // Vonage: start, then checks by request_id only.
    let a = send(
        "POST",
        &p.url("/v2/verify"),
        &[JSON],
        r#"{"brand":"ACME","workflow":[{"channel":"sms","to":"447400123456"}]}"#,
    )
    .await;
    assert_eq!(a.status, 202);
    let id = a.json()["request_id"].as_str().unwrap().to_owned();
    let check = |code: &'static str| {
        let url = p.url(&format!("/v2/verify/{id}"));
        async move { send("POST", &url, &[JSON], format!("{{\"code\":\"{code}\"}}")).await }
    };
    assert_eq!(check("000000").await.status, 400, "wrong code");
    assert_eq!(check("123456").await.status, 200);
    let third = check("123456").await;
    assert_eq!(
        third.status,
        429,
        "the brute-force guard counts checks per number: {}",
        third.text()
    );
    // Twilio Verify: start and approve.
    let a = send(
        "POST",
        &p.url("/v2/Services/VA1/Verifications"),
        &[FORM, BASIC],
        "To=%2B447400123999&Channel=sms",
    )
    .await;
    assert_eq!(a.status, 201);
    let a = send(
        "POST",
        &p.url("/v2/Services/VA1/VerificationCheck"),
        &[FORM, BASIC],
        "To=%2B447400123999&Code=123456",
    )
    .await;
    assert_eq!(a.json()["status"], "approved");
    let m = send("GET", &p.admin("/metrics"), &[], "").await.text();
    assert!(
        m.contains(
            r#"smsfence_conversions_total{country="GB",outcome="verified",source="verify_check"} 2"#
        ),
        "{m}"
    );
}

#[tokio::test]
async fn long_sinch_throttles_are_blocks() {
    let up = MockUpstream::with(|_| Reply::json(201, r#"{"id":"01"}"#)).await;
    let short = "[[limit]]\nname = \"burst\"\nkey = \"number\"\nrate = \"1/5s\"\nburst = 1\n";
    for (rules, status, retry_after) in [(RULES, 403, None), (short, 429, Some("5"))] {
        let p = Proxy::start(&all_presets_to(&up.url()), &[("r.toml", rules)]).await;
        let c = CASES.iter().find(|c| c.preset == "sinch").unwrap();
        let body = body(c, "+447400123456");
        let url = p.url(c.path);
        let first = send("POST", &url, &[c.content_type, BASIC], body.clone()).await;
        assert_eq!(first.status, 201);
        let t = send("POST", &url, &[c.content_type, BASIC], body).await;
        // 60 s is longer than Sinch's default max_retry_after (10 s): a 403 the SDK does
        // not sleep on; 5 s stays the native 429.
        assert_eq!(t.status.as_u16(), status, "{}", t.text());
        assert_eq!(t.header("smsfence-reason"), Some("rate_limited"));
        assert_eq!(t.header("retry-after"), retry_after);
    }
}
