//! Telnyx Messaging v2 and Verify.
//!
//! - `POST /v2/messages` (and its variants by sender, schedule, group MMS, RCS with SMS
//!   fallback, WhatsApp), JSON `to` (one number), `from` or `messaging_profile_id`, `text`;
//! - Verify starts, `POST /v2/verifications/{sms,call,flashcall,whatsapp}` (the current
//!   SDKs' `trigger_*`), `/v2/verifications/psd2` (the 2.x SDKs),
//!   `/v2/verifications/dtmf_confirm` (a call that asks for a keypress) and the legacy
//!   `POST /v2/verifications` with a `type`: JSON `phone_number` (+E.164),
//!   `verify_profile_id`. Telnyx has no resend: sending the code again is another
//!   start, decided as one.
//!
//! Errors are `{errors: [{code, title, detail}]}`. Both official SDKs retry a 429 (and
//! 5xx) up to three times unless the response says `x-should-retry: false`, so every
//! refusal carries that header, and a block is a 403/422, never a 429.

use hyper::StatusCode;
use serde_json::json;

use super::{
    sandbox_id, segments, Endpoint, ExtractError, Extracted, NativeResponse, Refusal, RefusalKind,
    RequestKind, RequestView,
};
use crate::decide::Reason;

/// Telnyx operations.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Send a message.
    Send,
    /// Start a Verify verification (a code by SMS, call, flash call, WhatsApp …).
    VerifyStart,
}

impl Op {
    /// The request kind.
    pub fn kind(self) -> RequestKind {
        match self {
            Op::Send => RequestKind::Send,
            Op::VerifyStart => RequestKind::VerifyStart,
        }
    }

    fn is_verify(self) -> bool {
        self != Op::Send
    }
}

/// Telnyx's sending endpoints.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: "POST",
        pattern: "/v2/messages",
        op: super::Op::Telnyx(Op::Send),
    },
    // The same send, with the sender chosen another way or later (`to` the same field;
    // group MMS takes a list, which is unsupported).
    Endpoint {
        method: "POST",
        pattern: "/v2/messages/long_code",
        op: super::Op::Telnyx(Op::Send),
    },
    Endpoint {
        method: "POST",
        pattern: "/v2/messages/short_code",
        op: super::Op::Telnyx(Op::Send),
    },
    Endpoint {
        method: "POST",
        pattern: "/v2/messages/number_pool",
        op: super::Op::Telnyx(Op::Send),
    },
    Endpoint {
        method: "POST",
        pattern: "/v2/messages/alphanumeric_sender_id",
        op: super::Op::Telnyx(Op::Send),
    },
    Endpoint {
        method: "POST",
        pattern: "/v2/messages/schedule",
        op: super::Op::Telnyx(Op::Send),
    },
    Endpoint {
        method: "POST",
        pattern: "/v2/messages/group_mms",
        op: super::Op::Telnyx(Op::Send),
    },
    // RCS, which falls back to SMS (`sms_fallback`) to the same `to`, and WhatsApp
    // (decided as Twilio's `whatsapp:` sends are): one `to` each.
    Endpoint {
        method: "POST",
        pattern: "/v2/messages/rcs",
        op: super::Op::Telnyx(Op::Send),
    },
    Endpoint {
        method: "POST",
        pattern: "/v2/messages/whatsapp",
        op: super::Op::Telnyx(Op::Send),
    },
    // Verify starts, one path per channel (`VERIFY_CHANNELS`), and the legacy start that
    // names its channel in `type`.
    Endpoint {
        method: "POST",
        pattern: "/v2/verifications/sms",
        op: super::Op::Telnyx(Op::VerifyStart),
    },
    Endpoint {
        method: "POST",
        pattern: "/v2/verifications/call",
        op: super::Op::Telnyx(Op::VerifyStart),
    },
    Endpoint {
        method: "POST",
        pattern: "/v2/verifications/flashcall",
        op: super::Op::Telnyx(Op::VerifyStart),
    },
    Endpoint {
        method: "POST",
        pattern: "/v2/verifications/whatsapp",
        op: super::Op::Telnyx(Op::VerifyStart),
    },
    Endpoint {
        method: "POST",
        pattern: "/v2/verifications/psd2",
        op: super::Op::Telnyx(Op::VerifyStart),
    },
    Endpoint {
        method: "POST",
        pattern: "/v2/verifications/dtmf_confirm",
        op: super::Op::Telnyx(Op::VerifyStart),
    },
    Endpoint {
        method: "POST",
        pattern: "/v2/verifications",
        op: super::Op::Telnyx(Op::VerifyStart),
    },
];

/// Telnyx API roots that pass through (Verify: look-ups of a verification, lists by
/// number, Verify profiles).
pub const ROOTS: &[&str] = &[
    "/v2/messages/**",
    "/v2/messaging_profiles/**",
    "/v2/number_lookup/**",
    "/v2/verifications/**",
    "/v2/verify_profiles/**",
];

/// Reads a Telnyx request.
pub fn extract(op: Op, req: &RequestView<'_>) -> Result<Extracted, ExtractError> {
    match op {
        Op::Send => extract_send(req),
        Op::VerifyStart => extract_verify_start(req),
    }
}

/// A Verify start: JSON `phone_number`, `verify_profile_id`.
fn extract_verify_start(req: &RequestView<'_>) -> Result<Extracted, ExtractError> {
    if !req.is_json() {
        return Err(ExtractError::MalformedBody(
            "Telnyx Verify takes a JSON body",
        ));
    }
    let v = req.json()?;
    let number = match v.get("phone_number") {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => return Err(ExtractError::MissingRecipient("phone_number")),
    };
    Ok(Extracted {
        recipients: vec![number],
        sender: super::json_str(&v, "verify_profile_id").map(str::to_owned),
        segments: 1,
        ..Extracted::default()
    })
}

/// A Messaging send: JSON `to`.
fn extract_send(req: &RequestView<'_>) -> Result<Extracted, ExtractError> {
    if !req.is_json() {
        return Err(ExtractError::MalformedBody("Telnyx takes a JSON body"));
    }
    let v = req.json()?;
    let to = match v.get("to") {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(serde_json::Value::Array(_)) => {
            return Err(ExtractError::Unsupported("Telnyx `to` as a list"))
        }
        _ => return Err(ExtractError::MissingRecipient("to")),
    };
    Ok(Extracted {
        recipients: vec![to],
        sender: super::json_str(&v, "from")
            .or_else(|| super::json_str(&v, "messaging_profile_id"))
            .map(str::to_owned),
        // An RCS send counts the segments of its SMS fallback.
        segments: super::json_str(&v, "text")
            .or_else(|| {
                v.get("sms_fallback")
                    .and_then(|f| super::json_str(f, "text"))
            })
            .map_or(1, segments::count),
        ..Extracted::default()
    })
}

/// Telnyx's native error for a refusal: the same statuses (and so the same SDK errors)
/// for sends and Verify, an invalid Verify `phone_number` under Telnyx's general code.
pub fn refusal(op: Op, refusal: &Refusal<'_>) -> NativeResponse {
    let (status, code, title) = match (refusal.kind, refusal.reason) {
        (RefusalKind::Throttle { .. }, _) => {
            (StatusCode::TOO_MANY_REQUESTS, "10011", "Too many requests")
        }
        // 10002: "Invalid phone number" (Telnyx's API error codes).
        (_, Reason::InvalidNumber) if op.is_verify() => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "10002",
            "Invalid phone number",
        ),
        (_, Reason::InvalidNumber) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "40310",
            "Invalid 'to' address",
        ),
        (_, Reason::UnsupportedRequest) => {
            (StatusCode::UNPROCESSABLE_ENTITY, "10015", "Invalid request")
        }
        _ if op.is_verify() => (StatusCode::FORBIDDEN, "40300", "Verification blocked"),
        _ => (StatusCode::FORBIDDEN, "40300", "Message blocked"),
    };
    /// Telnyx's error list (one error).
    #[derive(serde::Serialize)]
    struct Errors {
        errors: [Error; 1],
    }
    #[derive(serde::Serialize)]
    struct Error {
        code: &'static str,
        title: &'static str,
        detail: String,
    }
    let error = Error {
        code,
        title,
        detail: refusal.message(),
    };
    NativeResponse::json(status, &Errors { errors: [error] })
        .with_retry_after(refusal)
        .with_header("x-should-retry", "false")
}

/// The sandbox's Telnyx answer.
pub fn sandbox(req: &RequestView<'_>, ex: &Extracted) -> NativeResponse {
    let v = req.json().unwrap_or_default();
    let id = sandbox_id("", 32);
    NativeResponse::json(
        StatusCode::OK,
        &json!({"data": {
            "record_type": "message",
            "direction": "outbound",
            "id": format!("{}-{}-{}-{}-{}", &id[..8], &id[8..12], &id[12..16], &id[16..20], &id[20..]),
            "type": "SMS",
            "from": {"phone_number": super::json_str(&v, "from"), "carrier": "", "line_type": ""},
            "to": ex.recipients.iter().map(|t| json!({"phone_number": t, "status": "queued", "carrier": "", "line_type": ""})).collect::<Vec<_>>(),
            "text": super::json_str(&v, "text"),
            "messaging_profile_id": super::json_str(&v, "messaging_profile_id"),
            "parts": ex.segments,
            "encoding": "GSM-7",
            "errors": [],
        }}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::tests::{form_headers, json_headers, view};

    #[test]
    fn reads_to_from_and_text() {
        let h = json_headers();
        let ex = extract(
            Op::Send,
            &view(
                &h,
                &[],
                br#"{"from":"+15005550006","to":"+447400123456","text":"hi"}"#,
            ),
        )
        .unwrap();
        assert_eq!(ex.recipients, vec!["+447400123456"]);
        assert_eq!(ex.sender.as_deref(), Some("+15005550006"));
        assert_eq!(
            extract(Op::Send, &view(&h, &[], br#"{"text":"x"}"#)),
            Err(ExtractError::MissingRecipient("to"))
        );
        assert!(matches!(
            extract(Op::Send, &view(&h, &[], b"\xff\xfe")),
            Err(ExtractError::MalformedBody(_))
        ));
        let f = form_headers();
        assert!(matches!(
            extract(Op::Send, &view(&f, &[], b"to=1")),
            Err(ExtractError::MalformedBody(_))
        ));
    }

    #[test]
    fn refusals_never_invite_a_retry() {
        for kind in [
            RefusalKind::Block,
            RefusalKind::Throttle {
                retry_after: std::time::Duration::from_secs(3),
            },
        ] {
            let r = refusal(
                Op::Send,
                &Refusal {
                    kind,
                    reason: Reason::RateLimited,
                    rule: "r",
                    recipient: None,
                    recipients: 1,
                },
            );
            assert!(r
                .headers
                .iter()
                .any(|(n, v)| n == "x-should-retry" && v == "false"));
            assert_eq!(
                r.status == StatusCode::TOO_MANY_REQUESTS,
                kind != RefusalKind::Block
            );
        }
    }

    #[test]
    fn verify_starts_read_phone_number_and_profile() {
        let h = json_headers();
        let body = br#"{"phone_number":"+13035551234","verify_profile_id":"12ade33a-21c0-473b-b055-b3c836e1c292","timeout_secs":300}"#;
        let ex = extract(Op::VerifyStart, &view(&h, &[], body)).unwrap();
        assert_eq!(ex.recipients, vec!["+13035551234"]);
        assert_eq!(
            ex.sender.as_deref(),
            Some("12ade33a-21c0-473b-b055-b3c836e1c292")
        );
        assert_eq!(Op::VerifyStart.kind(), RequestKind::VerifyStart);
        for body in [
            &br#"{"verify_profile_id":"p"}"#[..],
            br#"{"phone_number":" "}"#,
            br#"{"phone_number":13035551234}"#,
        ] {
            assert_eq!(
                extract(Op::VerifyStart, &view(&h, &[], body)),
                Err(ExtractError::MissingRecipient("phone_number")),
                "{body:?}"
            );
        }
        assert!(matches!(
            extract(
                Op::VerifyStart,
                &view(&h, &[], br#"{"phone_number":"+1","phone_number":"+2"}"#)
            ),
            Err(ExtractError::MalformedBody(_))
        ));
        let f = form_headers();
        assert!(matches!(
            extract(Op::VerifyStart, &view(&f, &[], b"phone_number=%2B1")),
            Err(ExtractError::MalformedBody(_))
        ));
    }

    #[test]
    fn verify_refusals_keep_the_sdk_statuses() {
        let r = |op, kind, reason| {
            let r = refusal(
                op,
                &Refusal {
                    kind,
                    reason,
                    rule: "r",
                    recipient: None,
                    recipients: 1,
                },
            );
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            (
                r.status.as_u16(),
                v["errors"][0]["code"].as_str().unwrap().to_owned(),
            )
        };
        let throttle = RefusalKind::Throttle {
            retry_after: std::time::Duration::from_secs(5),
        };
        assert_eq!(
            r(Op::VerifyStart, throttle, Reason::RateLimited),
            (429, "10011".into())
        );
        assert_eq!(
            r(Op::VerifyStart, RefusalKind::Block, Reason::NumberType),
            (403, "40300".into())
        );
        assert_eq!(
            r(Op::VerifyStart, RefusalKind::Block, Reason::InvalidNumber),
            (422, "10002".into())
        );
        assert_eq!(
            r(Op::Send, RefusalKind::Block, Reason::InvalidNumber),
            (422, "40310".into())
        );
    }
}
