//! Requests a provider sends an SMS for, written so that a lax reading would miss the
//! recipient: each names a premium-rate number, which the rules refuse, and none may reach
//! the upstream undecided.

mod common;

use common::*;

const RULES: &str = r#"
[[policy]]
name = "no-premium"
deny_types = ["premium_rate"]
"#;

/// A request: method, path and query, headers, body.
type Req<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

/// Sends each request and checks that it was refused and never forwarded.
async fn refused(cases: &[Req<'_>]) {
    let up = MockUpstream::with(|_| Reply::json(200, r#"{"ok":true}"#)).await;
    let p = Proxy::start(&all_presets_to(&up.url()), &[("r.toml", RULES)]).await;
    for (method, path, headers, body) in cases {
        let before = up.requests().len();
        let a = send(method, &p.url(path), headers, body.to_string()).await;
        assert_eq!(
            up.requests().len(),
            before,
            "{method} {path} {body}: forwarded ({} {})",
            a.status,
            a.text()
        );
        assert!(
            a.header("smsfence-reason").is_some() || a.header("smsfence-error").is_some(),
            "{method} {path}: {} {}",
            a.status,
            a.text()
        );
    }
}

#[tokio::test]
async fn twilio_messages_in_other_representations_are_decided() {
    let body = "To=%2B449098790123&From=%2B15005550006&Body=hi";
    refused(&[
        // The 2010 API answers XML without an extension, and `.xml` / `.csv` on request.
        (
            "POST",
            "/2010-04-01/Accounts/ACtest/Messages",
            &[FORM, BASIC],
            body,
        ),
        (
            "POST",
            "/2010-04-01/Accounts/ACtest/Messages.xml",
            &[FORM, BASIC],
            body,
        ),
        (
            "POST",
            "/2010-04-01/Accounts/ACtest/Messages.csv",
            &[FORM, BASIC],
            body,
        ),
    ])
    .await;
}

#[tokio::test]
async fn twilio_ambiguous_fields_are_refused() {
    refused(&[
        // Two `To`: smsfence read the first, a last-wins reader sends to the second.
        (
            "POST",
            "/2010-04-01/Accounts/ACtest/Messages.json",
            &[FORM, BASIC],
            "To=%2B447400123456&To=%2B449098790123&Body=hi",
        ),
        // Two `Channel`: the first said email (forwarded undecided), the last sms.
        (
            "POST",
            "/v2/Services/VAtest/Verifications",
            &[FORM, BASIC],
            "To=%2B449098790123&Channel=email&Channel=sms",
        ),
        // Two `To` on a check: smsfence counted (and credited) the first, a last-wins
        // reader checks the code of the second.
        (
            "POST",
            "/v2/Services/VAtest/VerificationCheck",
            &[FORM, BASIC],
            "To=%2B447400123456&To=%2B449098790123&Code=123456",
        ),
    ])
    .await;
}

#[tokio::test]
async fn encoded_and_dotted_paths_are_decided_or_refused() {
    let body = "To=%2B449098790123&From=%2B15005550006&Body=hi";
    refused(&[
        (
            "POST",
            "/2010-04-01/Accounts/ACtest/Messages%2Ejson",
            &[FORM, BASIC],
            body,
        ),
        (
            "POST",
            "/2010-04-01/Accounts/ACtest/%4Dessages.json",
            &[FORM, BASIC],
            body,
        ),
        (
            "POST",
            "/2010-04-01/Accounts/ACtest/x/../Messages.json",
            &[FORM, BASIC],
            body,
        ),
        (
            "POST",
            "/2010-04-01/Accounts/ACtest/x/%2E%2E/Messages.json",
            &[FORM, BASIC],
            body,
        ),
        (
            "POST",
            "/2010-04-01/Accounts/ACtest/./Messages.json",
            &[FORM, BASIC],
            body,
        ),
        (
            "POST",
            "/2010-04-01/Accounts/ACtest%2FMessages.json",
            &[FORM, BASIC],
            body,
        ),
        (
            "POST",
            "/2010-04-01/Accounts/ACtest/messages.json",
            &[FORM, BASIC],
            body,
        ),
        (
            "POST",
            "/2010-04-01/Accounts/ACtest/Messages.json;v=1",
            &[FORM, BASIC],
            body,
        ),
    ])
    .await;
}

#[tokio::test]
async fn vonage_sms_xml_and_query_parameters_are_decided() {
    refused(&[
        // `/sms/{format}`: json or xml.
        (
            "POST",
            "/sms/xml",
            &[FORM],
            "api_key=k&api_secret=s&to=449098790123&from=A&text=hi",
        ),
        // Everything in the query string, GET or POST.
        (
            "GET",
            "/sms/json?api_key=k&api_secret=s&to=449098790123&from=A&text=hi",
            &[],
            "",
        ),
        (
            "POST",
            "/sms/json?api_key=k&api_secret=s&to=449098790123&from=A&text=hi",
            &[],
            "",
        ),
        // A benign `to` in the body, another in the query.
        (
            "POST",
            "/sms/json?to=449098790123",
            &[FORM],
            "api_key=k&api_secret=s&to=447400123456&from=A&text=hi",
        ),
        // Two `to` in the body.
        (
            "POST",
            "/sms/json",
            &[FORM],
            "api_key=k&api_secret=s&to=447400123456&to=449098790123&from=A&text=hi",
        ),
    ])
    .await;
}

#[tokio::test]
async fn telnyx_other_send_endpoints_are_decided() {
    let body =
        r#"{"from":"+15005550006","messaging_profile_id":"p","to":"+449098790123","text":"hi"}"#;
    let mut cases = Vec::new();
    for path in [
        "/v2/messages/long_code",
        "/v2/messages/short_code",
        "/v2/messages/number_pool",
        "/v2/messages/alphanumeric_sender_id",
        "/v2/messages/schedule",
    ] {
        cases.push(("POST", path, &[JSON][..], body));
    }
    cases.push((
        "POST",
        "/v2/messages/group_mms",
        &[JSON],
        r#"{"from":"+15005550006","to":["+449098790123","+447400123456"],"text":"hi"}"#,
    ));
    refused(&cases).await;
}

#[tokio::test]
async fn infobip_older_send_endpoints_are_decided() {
    let adv = r#"{"messages":[{"from":"A","destinations":[{"to":"449098790123"}],"text":"hi"}]}"#;
    refused(&[
        ("POST", "/sms/1/text/advanced", &[JSON], adv),
        ("POST", "/sms/2/binary/advanced", &[JSON], adv),
        ("POST", "/sms/1/text/single", &[JSON], r#"{"from":"A","to":"449098790123","text":"hi"}"#),
        (
            "POST",
            "/sms/2/text/single",
            &[JSON],
            r#"{"from":"A","to":["447400123456","449098790123"],"text":"hi"}"#,
        ),
        (
            "POST",
            "/sms/1/text/multi",
            &[JSON],
            r#"{"messages":[{"from":"A","to":"447400123456","text":"a"},{"from":"A","to":["449098790123"],"text":"b"}]}"#,
        ),
        ("GET", "/sms/1/text/query?username=u&password=p&to=449098790123&text=hi", &[], ""),
        ("GET", "/sms/1/text/query?username=u&password=p&to=447400123456,449098790123&text=hi", &[], ""),
    ])
    .await;
}

#[tokio::test]
async fn telnyx_rcs_and_whatsapp_sends_are_decided() {
    refused(&[
        // RCS, with an SMS fallback to the same `to` (telnyx-python `messages.rcs.send`).
        (
            "POST",
            "/v2/messages/rcs",
            &[JSON],
            r#"{"agent_id":"a","messaging_profile_id":"p","to":"+449098790123","agent_message":{},"sms_fallback":{"from":"+15005550006","text":"hi"}}"#,
        ),
        // WhatsApp (telnyx-python `messages.whatsapp`), decided as Twilio's `whatsapp:` sends are.
        (
            "POST",
            "/v2/messages/whatsapp",
            &[JSON],
            r#"{"from":"+15005550006","to":"+449098790123","whatsapp_message":{}}"#,
        ),
    ])
    .await;
}

#[tokio::test]
async fn infobip_v3_outbound_and_query_sends_are_decided() {
    refused(&[
        // `POST /sms/3/messages/outbound` (infobip-api-java-client `SmsApi.sendSmsOutbound`):
        // the v2 shape, `messages[].destinations[].to`, `from`, `text`.
        (
            "POST",
            "/sms/3/messages/outbound",
            &[JSON],
            r#"{"messages":[{"from":"A","destinations":[{"to":"449098790123"}],"text":"hi"}]}"#,
        ),
        // `/sms/3/text/query`, the successor of `/sms/1/text/query`.
        (
            "GET",
            "/sms/3/text/query?username=u&password=p&to=449098790123&text=hi",
            &[],
            "",
        ),
        (
            "POST",
            "/sms/3/text/query?to=447400123456,449098790123&text=hi",
            &[],
            "",
        ),
    ])
    .await;
}

#[tokio::test]
async fn infobip_single_top_level_to_beside_messages_is_decided() {
    // `single` takes a top-level `to`; a `messages[]` beside it named a benign number
    // that smsfence read instead.
    refused(&[(
        "POST",
        "/sms/1/text/single",
        &[JSON],
        r#"{"from":"A","to":"449098790123","text":"hi","messages":[{"to":"447400123456","text":"hi"}]}"#,
    )])
    .await;
}

#[tokio::test]
async fn vonage_verify_next_workflow_is_decided_as_a_start() {
    // `POST /v2/verify/{request_id}/next_workflow` sends the code again, by the next
    // channel of the workflow (vonage-python-sdk `verify_v2.trigger_next_workflow`).
    let up = MockUpstream::with(|_| Reply::json(202, r#"{"request_id":"req-1"}"#)).await;
    let cooldown = "[[limit]]\nname = \"cooldown\"\nkey = \"number\"\nkinds = [\"verify_start\"]\nrate = \"1/60s\"\nburst = 1\n";
    let p = Proxy::start(&all_presets_to(&up.url()), &[("r.toml", cooldown)]).await;
    let start = send(
        "POST",
        &p.url("/v2/verify"),
        &[JSON, BASIC],
        r#"{"brand":"A","workflow":[{"channel":"sms","to":"447400123456"},{"channel":"voice","to":"447400123456"}]}"#,
    )
    .await;
    assert_eq!(start.status, 202, "{}", start.text());
    assert_eq!(up.requests().len(), 1);
    let next = send(
        "POST",
        &p.url("/v2/verify/req-1/next_workflow"),
        &[BASIC],
        "",
    )
    .await;
    assert_eq!(next.status, 429, "{}", next.text());
    assert_eq!(next.header("smsfence-rule"), Some("cooldown"));
    assert_eq!(up.requests().len(), 1, "the resend was forwarded undecided");
}

#[tokio::test]
async fn plivo_bulk_messages_are_decided() {
    // `POST /v1/Account/{auth_id}/Message/Bulk/`: `dst` a list of up to 1000 numbers
    // (plivo-python `BulkMessages.create`, plivo-node `BulkMessageInterface.create`).
    let url = "/v1/Account/MA123/Message/Bulk/";
    refused(&[
        (
            "POST",
            url,
            &[JSON],
            r#"{"src":"+15005550006","dst":["447400123456","449098790123"],"text":"hi"}"#,
        ),
        (
            "POST",
            url,
            &[JSON],
            r#"{"src":"+15005550006","dst":"447400123456<449098790123","text":"hi"}"#,
        ),
    ])
    .await;
}

#[tokio::test]
async fn plivo_caller_id_verification_is_decided() {
    // `POST /v1/Account/{auth_id}/VerifiedCallerId/` sends a code by SMS or call to
    // `phone_number` (plivo-python `VerifyCallerids.initiate_verify`).
    refused(&[(
        "POST",
        "/v1/Account/MA123/VerifiedCallerId/",
        &[JSON],
        r#"{"phone_number":"+449098790123","channel":"sms","alias":"a"}"#,
    )])
    .await;
}

#[tokio::test]
async fn twilio_caller_id_validation_is_decided() {
    // `POST /2010-04-01/Accounts/{sid}/OutgoingCallerIds.json` calls `PhoneNumber` to read
    // it a validation code (twilio-python `ValidationRequestList.create`).
    refused(&[
        (
            "POST",
            "/2010-04-01/Accounts/ACtest/OutgoingCallerIds.json",
            &[FORM, BASIC],
            "PhoneNumber=%2B449098790123&FriendlyName=x",
        ),
        (
            "POST",
            "/2010-04-01/Accounts/ACtest/OutgoingCallerIds",
            &[FORM, BASIC],
            "PhoneNumber=%2B447400123456&PhoneNumber=%2B449098790123",
        ),
    ])
    .await;
}

#[tokio::test]
async fn sinch_batch_replace_and_update_are_decided() {
    refused(&[
        // Replace a (scheduled) batch: a whole new batch.
        (
            "PUT",
            "/xms/v1/plan1/batches/01FC66621XXXXX119Z8PMV1QPQ",
            &[JSON],
            r#"{"from":"A","to":["449098790123"],"body":"hi"}"#,
        ),
        // Update a batch: recipients added.
        (
            "POST",
            "/xms/v1/plan1/batches/01FC66621XXXXX119Z8PMV1QPQ",
            &[JSON],
            r#"{"from":"A","to_add":["449098790123"]}"#,
        ),
    ])
    .await;
}

#[tokio::test]
async fn plivo_verify_session_is_decided() {
    refused(&[(
        "POST",
        "/v1/Account/MA123/Verify/Session/",
        &[JSON],
        r#"{"app_uuid":"a","recipient":"449098790123","channel":"sms"}"#,
    )])
    .await;
}

#[tokio::test]
async fn bodies_read_two_ways_are_refused() {
    refused(&[
        // Two Content-Types: JSON for smsfence (the first), a form for a last-wins reader.
        (
            "POST",
            "/sms/json",
            &[JSON, FORM],
            r#"{"to":"447400123456","from":"A","a":"&to=449098790123&b="}"#,
        ),
        // A key given twice: a last-wins reader and a first-wins one disagree.
        (
            "POST",
            "/v2/messages",
            &[JSON],
            r#"{"from":"+15005550006","to":"+449098790123","to":"+447400123456","text":"hi"}"#,
        ),
        (
            "POST",
            "/v2/messages",
            &[JSON],
            r#"{"from":"+15005550006","to":"+447400123456","to":"+449098790123","text":"hi"}"#,
        ),
        // …or in another letter case, which a case-blind parser (Go's) may read instead.
        (
            "POST",
            "/v2/messages",
            &[JSON],
            r#"{"from":"+15005550006","to":"+447400123456","TO":"+449098790123","text":"hi"}"#,
        ),
        (
            "POST",
            "/sms/2/text/advanced",
            &[JSON],
            r#"{"messages":[{"from":"A","destinations":[{"to":"449098790123","to":"447400123456"}],"text":"hi"}]}"#,
        ),
    ])
    .await;
}

/// Recipients that `phonenumber` reads as an allowed number and a provider that keeps
/// only the digits (or the letters' absence) reads as a premium-rate one: +66 1900 123456
/// written with an extension mark (a Thai fixed line to `phonenumber`), +49 900 1234567
/// with a letter (a German fixed line, `A` read as 2).
#[tokio::test]
async fn recipients_written_with_more_than_digits_are_refused() {
    refused(&[
        (
            "POST",
            "/2010-04-01/Accounts/ACtest/Messages.json",
            &[FORM, BASIC],
            "To=%2B6619001234%2C56&From=%2B15005550006&Body=hi",
        ),
        (
            "POST",
            "/v2/Services/VAtest/Verifications",
            &[FORM, BASIC],
            "To=%2B6619001234+ext+56&Channel=sms",
        ),
        (
            "POST",
            "/sms/json",
            &[FORM],
            "api_key=k&api_secret=s&to=6619001234%2356&from=A&text=hi",
        ),
        (
            "POST",
            "/v2/messages",
            &[JSON],
            r#"{"from":"+15005550006","to":"+499A001234567","text":"hi"}"#,
        ),
        (
            "POST",
            "/v1/Account/MA123/Message/",
            &[JSON],
            r#"{"src":"+15005550006","dst":"6619001234;56","text":"hi"}"#,
        ),
        (
            "POST",
            "/sms/3/messages",
            &[JSON],
            r#"{"messages":[{"sender":"A","destinations":[{"to":"6619001234~56"}],"content":{"text":"hi"}}]}"#,
        ),
    ])
    .await;
}

/// Digits without `+` on an E.164 route with no `default_region`: Twilio reads them in its
/// sender's country, so `6589068136` is Jamaica (+1 658) to a US sender, and smsfence read
/// it as Singapore (+65). Refused, since smsfence cannot tell which; with a region, decided.
#[tokio::test]
async fn e164_digits_without_plus_and_no_region_are_refused() {
    const NO_JM: &str = r#"
[[policy]]
name = "no-jamaica"
country_mode = "deny"
countries = ["JM"]
"#;
    let up = MockUpstream::with(|_| Reply::json(200, r#"{"ok":true}"#)).await;
    let routes = format!(
        "{}[[route]]\nname = \"twilio-us\"\npreset = \"twilio\"\nupstream = \"{}\"\ndefault_region = \"US\"\npath_prefix = \"/us\"\n",
        all_presets_to(&up.url()),
        up.url()
    );
    let p = Proxy::start(&routes, &[("r.toml", NO_JM)]).await;
    let body = "To=6589068136&From=%2B15005550006&Body=hi";
    for (path, reason) in [
        (
            "/2010-04-01/Accounts/ACtest/Messages.json",
            "invalid_number",
        ),
        (
            "/us/2010-04-01/Accounts/ACtest/Messages.json",
            "denied_country",
        ),
    ] {
        let a = send("POST", &p.url(path), &[FORM, BASIC], body.to_string()).await;
        assert_eq!(
            a.header("smsfence-reason"),
            Some(reason),
            "{path}: {}",
            a.text()
        );
    }
    let a = send(
        "POST",
        &p.url("/v2/messages"),
        &[JSON],
        r#"{"from":"+15005550006","to":"6589068136","text":"hi"}"#.to_string(),
    )
    .await;
    assert_eq!(
        a.header("smsfence-reason"),
        Some("invalid_number"),
        "{}",
        a.text()
    );
    assert!(up.requests().is_empty(), "forwarded");
}

/// A gzip body whose header comment reads, as a form, `to=447400123456`, and which
/// inflates to `to=449098790123&from=A&text=hi`.
const GZIP_POLYGLOT: &str = "1f8b08100000000000ff26746f3d343437343030313233343536266170695f6b65793d6b26002bc9b73531b134b0b430b734303432564b2bcacfb575542b49ad28b1cdc804003ed0c0921e000000";

#[tokio::test]
async fn compressed_bodies_are_refused() {
    let up = MockUpstream::with(|_| Reply::json(200, r#"{"ok":true}"#)).await;
    let p = Proxy::start(&all_presets_to(&up.url()), &[("r.toml", RULES)]).await;
    let bytes: Vec<u8> = (0..GZIP_POLYGLOT.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&GZIP_POLYGLOT[i..i + 2], 16).unwrap())
        .collect();
    let a = send(
        "POST",
        &p.url("/sms/json"),
        &[FORM, ("content-encoding", "gzip")],
        bytes,
    )
    .await;
    assert!(
        up.requests().is_empty(),
        "forwarded: {} {}",
        a.status,
        a.text()
    );
    assert_eq!(a.header("smsfence-reason"), Some("unsupported_request"));
}

#[tokio::test]
async fn ordinary_variants_are_decided_and_forwarded() {
    let up = MockUpstream::with(|_| Reply::json(200, r#"{"ok":true}"#)).await;
    let p = Proxy::start(&all_presets_to(&up.url()), &[("r.toml", RULES)]).await;
    let cases: &[Req<'_>] = &[
        (
            "GET",
            "/sms/json?api_key=k&api_secret=s&to=447400123456&from=A&text=hi",
            &[],
            "",
        ),
        (
            "POST",
            "/sms/json?api_key=k",
            &[FORM],
            "to=447400123457&to=447400123457&text=hi",
        ),
        (
            "POST",
            "/xms/v1/plan1/batches/01FC6",
            &[JSON],
            r#"{"body":"new text"}"#,
        ),
        (
            "POST",
            "/sms/1/text/single",
            &[JSON],
            r#"{"from":"A","to":"447400123458","text":"hi"}"#,
        ),
        (
            "GET",
            "/sms/1/text/query?username=u&password=p&to=447400123459&text=hi",
            &[],
            "",
        ),
        (
            "POST",
            "/v1/Account/MA1/Verify/Session/",
            &[JSON],
            r#"{"recipient":447400123460}"#,
        ),
        (
            "POST",
            "/2010-04-01/Accounts/ACtest/Messages",
            &[FORM],
            "To=%2B447400123461&Body=hi",
        ),
        (
            "POST",
            "//2010-04-01/Accounts/ACtest/Messages.json/",
            &[FORM],
            "To=%2B447400123462",
        ),
        (
            "GET",
            "/2010-04-01/Accounts/ACtest/Messages/SM1.json",
            &[],
            "",
        ),
    ];
    for (i, (method, path, headers, body)) in cases.iter().enumerate() {
        let a = send(method, &p.url(path), headers, body.to_string()).await;
        assert_eq!(a.status, 200, "{method} {path}: {}", a.text());
        assert_eq!(up.requests().len(), i + 1, "{method} {path}");
        assert_eq!(up.requests()[i].uri, *path, "forwarded unchanged");
    }
}

/// Vonage SMS reads the body and the query string: a body `to` smsfence cannot read (a
/// JSON list or object, a name in another letter case or as a list) must not leave the
/// query string's benign `to` to be decided in its place.
#[tokio::test]
async fn vonage_sms_body_to_smsfence_cannot_read_is_refused() {
    refused(&[
        (
            "POST",
            "/sms/json?to=447400123456",
            &[JSON],
            r#"{"api_key":"k","api_secret":"s","to":["449098790123"],"from":"A","text":"hi"}"#,
        ),
        (
            "POST",
            "/sms/json?to=447400123456",
            &[JSON],
            r#"{"api_key":"k","api_secret":"s","To":"449098790123","from":"A","text":"hi"}"#,
        ),
        (
            "POST",
            "/sms/json?to=447400123456",
            &[FORM],
            "api_key=k&api_secret=s&TO=449098790123&from=A&text=hi",
        ),
        (
            "POST",
            "/sms/json?to=447400123456",
            &[FORM],
            "api_key=k&api_secret=s&to%5B%5D=449098790123&from=A&text=hi",
        ),
    ])
    .await;
}
