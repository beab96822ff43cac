//! Infobip 2FA through the preset: starts and resends decided as verify starts (a resend
//! counted against the number its `pinId` was started for), checks decided as verify
//! checks, `verified: true` recorded as a conversion, refusals in Infobip's v2 error shape.

mod common;

use common::*;

const RULES: &str = r#"
[[policy]]
name = "no-premium"
deny_types = ["premium_rate"]

[[limit]]
name = "otp-per-number"
key = "number"
kinds = ["verify_start"]
rate = "2/10m"
burst = 2
"#;

const PIN_ID: &str = "9C817C6F8AF3D48F9FE553282AFA2B67";

/// An Infobip 2FA upstream: starts and resends answer `PIN_ID`, checks verify.
async fn tfa_upstream() -> MockUpstream {
    MockUpstream::with(|r| {
        let path = r.uri.split('?').next().unwrap_or("");
        if path.ends_with("/verify") {
            Reply::json(
                200,
                &format!(r#"{{"pinId":"{PIN_ID}","msisdn":"447400123456","verified":true,"attemptsRemaining":0}}"#),
            )
        } else {
            Reply::json(
                200,
                &format!(r#"{{"pinId":"{PIN_ID}","to":"447400123456","ncStatus":"NC_DESTINATION_REACHABLE","smsStatus":"MESSAGE_SENT"}}"#),
            )
        }
    })
    .await
}

fn start_body(to: &str) -> String {
    format!(r#"{{"applicationId":"APP1","messageId":"MSG1","from":"ACME","to":"{to}"}}"#)
}

const APP_KEY: (&str, &str) = ("authorization", "App 003026bbc133714df1834b8638bb496e");

#[tokio::test]
async fn infobip_2fa_starts_and_resends_are_decided() {
    let up = tfa_upstream().await;
    let p = Proxy::start(&all_presets_to(&up.url()), &[("r.toml", RULES)]).await;

    // A premium-rate number: refused in the v2 shape, never forwarded, on both channels.
    for path in ["/2fa/2/pin?ncNeeded=false", "/2fa/2/pin/voice"] {
        let a = send(
            "POST",
            &p.url(path),
            &[JSON, APP_KEY],
            start_body("449098790123"),
        )
        .await;
        assert_eq!(a.status, 403, "{path}: {}", a.text());
        assert_eq!(
            a.json()["requestError"]["serviceException"]["messageId"],
            "REJECTED"
        );
        assert_eq!(a.header("smsfence-reason"), Some("number_type"));
    }
    assert!(up.requests().is_empty(), "a refused start reached Infobip");

    // A mobile number: forwarded as sent, its pinId remembered.
    let a = send(
        "POST",
        &p.url("/2fa/2/pin?ncNeeded=true"),
        &[JSON, APP_KEY],
        start_body("447400123456"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["pinId"], PIN_ID);
    let got = up.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].uri, "/2fa/2/pin?ncNeeded=true");
    assert_eq!(got[0].body, start_body("447400123456").as_bytes());

    // A resend names only the pinId: decided as a start for that number, so it is the
    // second of the number's two starts, and the next one is throttled.
    let resend = |path: &'static str| {
        let url = p.url(&format!("/2fa/2/pin/{PIN_ID}{path}"));
        async move { send("POST", &url, &[JSON, APP_KEY], "{}".to_owned()).await }
    };
    let a = resend("/resend").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(up.requests().len(), 2);
    let t = resend("/resend/voice").await;
    assert_eq!(t.status, 429, "{}", t.text());
    assert_eq!(
        t.json()["requestError"]["serviceException"]["messageId"],
        "TOO_MANY_REQUESTS"
    );
    assert_eq!(t.header("smsfence-rule"), Some("otp-per-number"));
    assert!(t.header("retry-after").is_some());
    assert_eq!(up.requests().len(), 2, "a throttled resend reached Infobip");

    // Another number has its own limit; a pinId smsfence never saw start passes undecided.
    let a = send(
        "POST",
        &p.url("/2fa/2/pin/voice"),
        &[JSON, APP_KEY],
        start_body("447400123457"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let a = send(
        "POST",
        &p.url("/2fa/2/pin/UNKNOWN/resend"),
        &[JSON, APP_KEY],
        "{}".to_owned(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(up.requests().len(), 4);
    // Other 2FA calls (applications, templates, email) pass through under the root.
    let a = send(
        "GET",
        &p.url("/2fa/2/applications"),
        &[APP_KEY],
        String::new(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(up.requests().len(), 5);
}

#[tokio::test]
async fn infobip_2fa_verify_is_a_counted_check_and_a_conversion() {
    let up = tfa_upstream().await;
    let guard = "[[limit]]\nname = \"guess\"\nkey = \"number\"\nkinds = [\"verify_check\"]\nrate = \"1/10m\"\nburst = 1\n";
    let p = Proxy::start(&all_presets_to(&up.url()), &[("r.toml", guard)]).await;
    let a = send(
        "POST",
        &p.url("/2fa/2/pin"),
        &[JSON, APP_KEY],
        start_body("447400123456"),
    )
    .await;
    assert_eq!(a.status, 200);
    let verify = || {
        let url = p.url(&format!("/2fa/2/pin/{PIN_ID}/verify"));
        async move {
            send(
                "POST",
                &url,
                &[JSON, APP_KEY],
                r#"{"pin":"1598"}"#.to_owned(),
            )
            .await
        }
    };
    let a = verify().await;
    assert_eq!(a.json()["verified"], true, "{}", a.text());
    let m = send("GET", &p.admin("/metrics"), &[], "").await.text();
    assert!(
        m.contains(
            r#"smsfence_conversions_total{country="GB",outcome="verified",source="verify_check"} 1"#
        ),
        "{m}"
    );
    // The check was counted against the number the pinId went to.
    let t = verify().await;
    assert_eq!(t.status, 429, "{}", t.text());
    assert_eq!(t.header("smsfence-rule"), Some("guess"));
    assert_eq!(up.requests().len(), 2);
}

#[tokio::test]
async fn infobip_2fa_sandbox_answers() {
    let p = Proxy::start(&all_presets_to("sandbox"), &[]).await;
    let a = send(
        "POST",
        &p.url("/2fa/2/pin"),
        &[JSON, APP_KEY],
        start_body("447400123456"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let v = a.json();
    assert_eq!(
        (&v["to"], &v["smsStatus"]),
        (&"447400123456".into(), &"MESSAGE_SENT".into())
    );
    let pin_id = v["pinId"].as_str().unwrap().to_owned();
    assert_eq!(pin_id.len(), 32);
    let a = send(
        "POST",
        &p.url("/2fa/2/pin/voice"),
        &[JSON, APP_KEY],
        start_body("447400123457"),
    )
    .await;
    assert_eq!(a.json()["callStatus"], "PENDING_ACCEPTED");
    let a = send(
        "POST",
        &p.url(&format!("/2fa/2/pin/{pin_id}/resend")),
        &[JSON, APP_KEY],
        "{}".to_owned(),
    )
    .await;
    assert_eq!(
        (a.status.as_u16(), a.json()["pinId"].as_str()),
        (200, Some(pin_id.as_str()))
    );
    let check = |pin: &'static str| {
        let url = p.url(&format!("/2fa/2/pin/{pin_id}/verify"));
        async move {
            send(
                "POST",
                &url,
                &[JSON, APP_KEY],
                format!(r#"{{"pin":"{pin}"}}"#),
            )
            .await
        }
    };
    let wrong = check("000000").await;
    assert_eq!(
        (
            wrong.json()["verified"].clone(),
            wrong.json()["pinError"].clone()
        ),
        (false.into(), "WRONG_PIN".into())
    );
    let metrics = || async { send("GET", &p.admin("/metrics"), &[], "").await.text() };
    assert!(!metrics().await.contains("source=\"verify_check\""));
    assert_eq!(check("1598").await.json()["verified"], true);
    let m = metrics().await;
    assert!(
        m.contains(
            r#"smsfence_conversions_total{country="GB",outcome="verified",source="verify_check"} 1"#
        ),
        "{m}"
    );
}
