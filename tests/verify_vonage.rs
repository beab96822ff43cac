//! Vonage Verify v1 (`/verify/{json,xml}`, `/verify/psd2/json`, `/verify/check/…`,
//! `/verify/control/…`) and the Messages API (`/v1/messages`) through the vonage preset:
//! starts and resends decided, checks counted and turned into conversions, refusals in
//! each API's own shape, sandbox answers.

mod common;

use common::*;

const RULES: &str = r#"
[[policy]]
name = "no-premium"
deny_types = ["premium_rate"]

[[limit]]
name = "cooldown"
key = "number"
kinds = ["verify_start"]
rate = "1/60s"
burst = 1
"#;

/// A mock Vonage: Verify v1 starts answer `request_id` "req-1", checks approve, control
/// commands succeed, messages are accepted.
async fn vonage() -> MockUpstream {
    MockUpstream::with(|r| {
        let path = r.uri.split('?').next().unwrap_or("");
        match path {
            "/verify/json" | "/verify/psd2/json" => {
                Reply::json(200, r#"{"request_id":"req-1","status":"0"}"#)
            }
            "/verify/check/json" => Reply::json(
                200,
                r#"{"request_id":"req-1","event_id":"0A00000012345678","status":"0","price":"0.10000000","currency":"EUR"}"#,
            ),
            "/verify/control/json" => Reply::json(200, r#"{"status":"0","command":"x"}"#),
            "/v1/messages" => Reply::json(202, r#"{"message_uuid":"aaaaaaaa-bbbb-cccc-dddd-0123456789ab"}"#),
            _ => Reply::json(404, "{}"),
        }
    })
    .await
}

#[tokio::test]
async fn verify_v1_starts_are_decided_and_refused_in_verify_v1s_shape() {
    let up = vonage().await;
    let p = Proxy::start(&all_presets_to(&up.url()), &[("r.toml", RULES)]).await;
    // A premium-rate number: HTTP 200, status "7", no request_id, never forwarded.
    for (path, body) in [
        (
            "/verify/json",
            "api_key=k&api_secret=s&number=449098790123&brand=ACME",
        ),
        (
            "/verify/psd2/json",
            "api_key=k&api_secret=s&number=449098790123&payee=ACME&amount=10.5",
        ),
        (
            "/verify/json",
            "api_key=k&api_secret=s&number=09098790123&country=GB&brand=ACME",
        ),
    ] {
        let a = send("POST", &p.url(path), &[FORM], body).await;
        assert_eq!(a.status, 200, "{path}");
        let v = a.json();
        assert_eq!(v["status"], "7", "{path} {v}");
        assert_eq!(v["request_id"], "");
        assert!(v["error_text"]
            .as_str()
            .unwrap()
            .contains("rule=no-premium"));
        assert_eq!(a.header("smsfence-rule"), Some("no-premium"));
    }
    // A GET with the parameters in the query string, and a JSON body (the Node SDK).
    let a = send(
        "GET",
        &p.url("/verify/json?api_key=k&api_secret=s&number=449098790123&brand=ACME"),
        &[],
        "",
    )
    .await;
    assert_eq!(a.json()["status"], "7");
    let a = send(
        "POST",
        &p.url("/verify/json"),
        &[JSON],
        r#"{"api_key":"k","api_secret":"s","number":"449098790123","brand":"ACME","workflow_id":6}"#,
    )
    .await;
    assert_eq!(a.json()["status"], "7");
    // The XML variant is refused in XML.
    let a = send(
        "POST",
        &p.url("/verify/xml"),
        &[FORM],
        "api_key=k&api_secret=s&number=449098790123&brand=ACME",
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("text/xml"));
    assert!(a.text().contains("<status>7</status>"), "{}", a.text());
    assert!(up.requests().is_empty(), "a refused start was forwarded");

    // A mobile number is forwarded as it was sent.
    let body = "api_key=k&api_secret=s&number=447400123456&brand=ACME&workflow_id=6";
    let a = send("POST", &p.url("/verify/json"), &[FORM], body).await;
    assert_eq!(a.json()["request_id"], "req-1");
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/verify/json");
    assert_eq!(&seen[0].body[..], body.as_bytes());
    // The same number again within the cooldown: status "1" (Throttled), Retry-After.
    let again = send("POST", &p.url("/verify/json"), &[FORM], body).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["status"], "1", "{}", again.text());
    assert_eq!(again.header("retry-after"), Some("60"));
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn verify_v1_trigger_next_event_is_a_start_for_the_request_ids_number() {
    let up = vonage().await;
    let p = Proxy::start(&all_presets_to(&up.url()), &[("r.toml", RULES)]).await;
    let start = send(
        "POST",
        &p.url("/verify/json"),
        &[FORM],
        "api_key=k&api_secret=s&number=447400123456&brand=ACME",
    )
    .await;
    assert_eq!(start.json()["status"], "0");
    // The resend counts against the same number's cooldown: refused, not forwarded.
    let next = send(
        "POST",
        &p.url("/verify/control/json"),
        &[FORM],
        "api_key=k&api_secret=s&request_id=req-1&cmd=trigger_next_event",
    )
    .await;
    assert_eq!(next.status, 200);
    assert_eq!(next.json()["status"], "1", "{}", next.text());
    assert_eq!(next.header("smsfence-rule"), Some("cooldown"));
    assert_eq!(up.requests().len(), 1, "the resend was forwarded undecided");
    // A minute later it is allowed, and forwarded.
    p.advance(std::time::Duration::from_secs(61));
    let next = send(
        "POST",
        &p.url("/verify/control/json"),
        &[FORM],
        "api_key=k&api_secret=s&request_id=req-1&cmd=trigger_next_event",
    )
    .await;
    assert_eq!(next.json()["status"], "0", "{}", next.text());
    assert_eq!(up.requests().len(), 2);
    // `cancel` sends nothing: it passes, even inside the cooldown.
    let cancel = send(
        "POST",
        &p.url("/verify/control/json"),
        &[FORM],
        "api_key=k&api_secret=s&request_id=req-1&cmd=cancel",
    )
    .await;
    assert_eq!(cancel.json()["status"], "0");
    assert_eq!(up.requests().len(), 3);
}

#[tokio::test]
async fn verify_v1_checks_are_counted_and_approvals_are_conversions() {
    let up = vonage().await;
    let guard = "[[limit]]\nname = \"guess\"\nkey = \"number\"\nkinds = [\"verify_check\"]\nrate = \"2/10m\"\nburst = 2\n";
    let p = Proxy::start(&all_presets_to(&up.url()), &[("r.toml", guard)]).await;
    send(
        "POST",
        &p.url("/verify/json"),
        &[FORM],
        "api_key=k&api_secret=s&number=447400123456&brand=ACME",
    )
    .await;
    let check = || async {
        send(
            "POST",
            &p.url("/verify/check/json"),
            &[FORM],
            "api_key=k&api_secret=s&request_id=req-1&code=1234",
        )
        .await
    };
    assert_eq!(check().await.json()["status"], "0");
    let m = send("GET", &p.admin("/metrics"), &[], "").await.text();
    assert!(
        m.contains(
            r#"smsfence_conversions_total{country="GB",outcome="verified",source="verify_check"} 1"#
        ),
        "{m}"
    );
    assert_eq!(check().await.json()["status"], "0");
    // The number's third check in ten minutes: the brute-force guard, status "1".
    let third = check().await;
    assert_eq!(third.json()["status"], "1", "{}", third.text());
    assert_eq!(third.header("smsfence-rule"), Some("guess"));
    assert_eq!(up.requests().len(), 3);
}

#[tokio::test]
async fn verify_v1_sandbox_answers_start_check_and_control() {
    let p = Proxy::start(&all_presets_to("sandbox"), &[]).await;
    let a = send(
        "POST",
        &p.url("/verify/json"),
        &[FORM],
        "api_key=k&api_secret=s&number=447400123456&brand=ACME",
    )
    .await;
    assert_eq!(a.status, 200);
    let v = a.json();
    assert_eq!(v["status"], "0");
    let id = v["request_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    let check = |code: &str| {
        let body = format!("api_key=k&api_secret=s&request_id={id}&code={code}");
        let url = p.url("/verify/check/json");
        async move { send("POST", &url, &[FORM], body).await.json() }
    };
    let wrong = check("000000").await;
    assert_eq!(
        (&wrong["status"], &wrong["request_id"]),
        (&"16".into(), &id.clone().into())
    );
    let right = check("1234").await;
    assert_eq!(right["status"], "0");
    assert_eq!(right["request_id"], id.as_str());
    let m = send("GET", &p.admin("/metrics"), &[], "").await.text();
    assert!(
        m.contains(
            r#"smsfence_conversions_total{country="GB",outcome="verified",source="verify_check"} 1"#
        ),
        "{m}"
    );
    // A resend of the sandbox's own verification is decided and answered.
    let c = send(
        "POST",
        &p.url("/verify/control/json"),
        &[FORM],
        format!("api_key=k&api_secret=s&request_id={id}&cmd=trigger_next_event"),
    )
    .await
    .json();
    assert_eq!(
        (&c["status"], &c["command"]),
        (&"0".into(), &"trigger_next_event".into())
    );
    let x = send(
        "POST",
        &p.url("/verify/xml"),
        &[FORM],
        "api_key=k&api_secret=s&number=447400123457&brand=ACME",
    )
    .await;
    assert!(x.text().starts_with("<?xml"), "{}", x.text());
    assert!(x.text().contains("<status>0</status>"));
}

#[tokio::test]
async fn messages_api_sends_are_decided_with_their_failovers() {
    let up = vonage().await;
    let p = Proxy::start(&all_presets_to(&up.url()), &[("r.toml", RULES)]).await;
    let refused = [
        r#"{"to":"449098790123","from":"ACME","channel":"sms","message_type":"text","text":"hi"}"#,
        r#"{"to":"449098790123","from":"ACME","channel":"whatsapp","message_type":"text","text":"hi"}"#,
        // A failover to another number, at the top level (API reference) …
        r#"{"to":"447400123456","from":"A","channel":"rcs","message_type":"text","text":"hi","failover":[{"to":"449098790123","from":"A","channel":"sms","message_type":"text","text":"hi"}]}"#,
        // … and under `message` as vonage-python-sdk sends it.
        r#"{"message":{"to":"447400123456","from":"A","channel":"viber_service","message_type":"text","text":"hi"},"failover":[{"to":"449098790123","from":"A","channel":"mms","message_type":"image","image":{"url":"https://example.com/a.jpg"}}]}"#,
        // A Messenger id is not a number, but its SMS failover is decided.
        r#"{"to":"10152368852405295","from":"1234","channel":"messenger","message_type":"text","text":"hi","failover":[{"to":"449098790123","from":"A","channel":"sms","message_type":"text","text":"hi"}]}"#,
    ];
    for body in refused {
        let a = send("POST", &p.url("/v1/messages"), &[JSON, BASIC], body).await;
        assert_eq!(a.status, 403, "{body}: {}", a.text());
        assert_eq!(a.header("content-type"), Some("application/problem+json"));
        let v = a.json();
        assert_eq!(v["title"], "Forbidden");
        assert!(v["detail"].as_str().unwrap().contains("rule=no-premium"));
    }
    // A channel smsfence cannot read is refused, not forwarded undecided.
    let a = send(
        "POST",
        &p.url("/v1/messages"),
        &[JSON, BASIC],
        r#"{"to":"449098790123","from":"A","channel":"carrier_pigeon","message_type":"text","text":"hi"}"#,
    )
    .await;
    assert_eq!(a.header("smsfence-reason"), Some("unsupported_request"));
    assert!(up.requests().is_empty(), "a refused message was forwarded");

    let ok =
        r#"{"to":"447400123456","from":"ACME","channel":"sms","message_type":"text","text":"hi"}"#;
    let a = send("POST", &p.url("/v1/messages"), &[JSON, BASIC], ok).await;
    assert_eq!(a.status, 202, "{}", a.text());
    let messenger = r#"{"to":"10152368852405295","from":"1234","channel":"messenger","message_type":"text","text":"hi"}"#;
    let a = send("POST", &p.url("/v1/messages"), &[JSON, BASIC], messenger).await;
    assert_eq!(a.status, 202, "{}", a.text());
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(&seen[0].body[..], ok.as_bytes());
    assert_eq!(&seen[1].body[..], messenger.as_bytes());
}

#[tokio::test]
async fn messages_api_sandbox_answers() {
    let p = Proxy::start(&all_presets_to("sandbox"), &[]).await;
    let a = send(
        "POST",
        &p.url("/v1/messages"),
        &[JSON, BASIC],
        r#"{"to":"447400123456","from":"ACME","channel":"sms","message_type":"text","text":"hi"}"#,
    )
    .await;
    assert_eq!(a.status, 202);
    assert_eq!(a.json()["message_uuid"].as_str().map(str::len), Some(36));
}

/// `country` with digits that are a valid number both as international digits and as a
/// national number of that country: Vonage formats the number in `country`, smsfence read
/// it as international. Such a start names two numbers and is refused, never forwarded.
#[tokio::test]
async fn verify_v1_number_that_country_reads_as_another_number_is_refused() {
    let up = vonage().await;
    let p = Proxy::start(&all_presets_to(&up.url()), &[("r.toml", RULES)]).await;
    // +352 2345678 (Luxembourg) as digits, +1 352-234-5678 (Florida) in the US.
    for (path, body, query) in [
        (
            "/verify/json",
            "api_key=k&api_secret=s&number=3522345678&country=US&brand=ACME",
            "",
        ),
        (
            "/verify/psd2/json",
            "api_key=k&api_secret=s&number=3522345678&payee=ACME&amount=1",
            "?country=US",
        ),
    ] {
        let a = send("POST", &p.url(&format!("{path}{query}")), &[FORM], body).await;
        assert_eq!(a.status, 200, "{path}");
        let v = a.json();
        assert_eq!(v["status"], "3", "{path} {v}");
        assert_eq!(v["request_id"], "");
    }
    let a = send(
        "POST",
        &p.url("/verify/json"),
        &[JSON],
        r#"{"api_key":"k","api_secret":"s","number":"4312345678","country":"US","brand":"ACME"}"#,
    )
    .await;
    assert_eq!(a.json()["status"], "3", "{}", a.text());
    assert!(up.requests().is_empty(), "an ambiguous start was forwarded");
    // The same digits with a country that reads them as themselves, or none, pass.
    let a = send(
        "POST",
        &p.url("/verify/json"),
        &[FORM],
        "api_key=k&api_secret=s&number=13522345678&country=US&brand=ACME",
    )
    .await;
    assert_eq!(a.json()["request_id"], "req-1", "{}", a.text());
    assert_eq!(up.requests().len(), 1);
}

/// A JSON body whose `number` (or `country`, `request_id`) is not a string or a number:
/// smsfence cannot read it, and must not decide the query string's value in its place
/// while Vonage may read the body's.
#[tokio::test]
async fn verify_v1_json_fields_smsfence_cannot_read_are_refused() {
    let up = vonage().await;
    let p = Proxy::start(&all_presets_to(&up.url()), &[("r.toml", RULES)]).await;
    for (path, body) in [
        (
            "/verify/json?number=447400123456",
            r#"{"api_key":"k","api_secret":"s","number":["449098790123"],"brand":"ACME"}"#,
        ),
        (
            "/verify/json?number=447400123456",
            r#"{"api_key":"k","api_secret":"s","number":{"value":"449098790123"},"brand":"ACME"}"#,
        ),
        (
            "/verify/json?number=447400123456",
            r#"{"api_key":"k","api_secret":"s","country":["US"],"brand":"ACME"}"#,
        ),
        (
            "/verify/control/json?request_id=req-1",
            r#"{"api_key":"k","api_secret":"s","request_id":["req-2"],"cmd":"trigger_next_event"}"#,
        ),
    ] {
        let a = send("POST", &p.url(path), &[JSON], body).await;
        assert_eq!(a.status, 200, "{path}");
        assert_eq!(a.json()["status"], "3", "{path} {}", a.text());
    }
    assert!(
        up.requests().is_empty(),
        "an unreadable start was forwarded"
    );
}

/// A body naming a field in another letter case (`NUMBER`), or as a list (`number[]`),
/// beside the field in the query string: smsfence read the query's, a server that binds
/// names ignoring case (or PHP-style lists) reads the body's.
#[tokio::test]
async fn verify_v1_lookalike_field_names_are_refused() {
    let up = vonage().await;
    let p = Proxy::start(&all_presets_to(&up.url()), &[("r.toml", RULES)]).await;
    for (ct, body) in [
        (
            FORM,
            "api_key=k&api_secret=s&NUMBER=449098790123&brand=ACME",
        ),
        (
            FORM,
            "api_key=k&api_secret=s&number%5B%5D=449098790123&brand=ACME",
        ),
        (FORM, "api_key=k&api_secret=s&Country=US&brand=ACME"),
        (
            JSON,
            r#"{"api_key":"k","api_secret":"s","Number":"449098790123","brand":"ACME"}"#,
        ),
    ] {
        let a = send(
            "POST",
            &p.url("/verify/json?number=447400123456"),
            &[ct],
            body,
        )
        .await;
        assert_eq!(a.status, 200, "{body}");
        assert_eq!(a.json()["status"], "3", "{body} {}", a.text());
    }
    assert!(
        up.requests().is_empty(),
        "a start with a lookalike field was forwarded"
    );
}

/// A `country` smsfence does not know (`UK`, `USA`): the number cannot be read in it, and
/// Vonage may know it, so the start is refused rather than decided on the bare digits.
#[tokio::test]
async fn verify_v1_unknown_country_is_refused() {
    let up = vonage().await;
    let p = Proxy::start(&all_presets_to(&up.url()), &[("r.toml", RULES)]).await;
    for country in ["UK", "USA", "1"] {
        let body = format!("api_key=k&api_secret=s&number=3522345678&country={country}&brand=A");
        let a = send("POST", &p.url("/verify/json"), &[FORM], body).await;
        assert_eq!(a.json()["status"], "3", "{country} {}", a.text());
    }
    assert!(
        up.requests().is_empty(),
        "a start in an unknown country was forwarded"
    );
}
