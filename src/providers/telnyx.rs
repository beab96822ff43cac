//! Telnyx Messaging v2 and Verify.
//!
//! - `POST /v2/messages` (and its variants by sender, schedule, group MMS, RCS with SMS
//!   fallback, WhatsApp), JSON `to` (one number), `from` or `messaging_profile_id`, `text`;
//! - Verify starts, `POST /v2/verifications/{sms,call,flashcall,whatsapp}` (the current
//!   SDKs' `trigger_*`), `/v2/verifications/psd2` (the 2.x SDKs),
//!   `/v2/verifications/dtmf_confirm` (a call that asks for a keypress) and the legacy
//!   `POST /v2/verifications` with a `type`: JSON `phone_number` (+E.164),
//!   `verify_profile_id`. The answer's `data.id` is remembered so that a check by id can
//!   be counted against the number. Telnyx has no resend: sending the code again is
//!   another start, decided as one;
//! - Verify checks, `POST /v2/verifications/by_phone_number/{phone_number}/actions/verify`
//!   (the number in the path, JSON `code`, `verify_profile_id`) and
//!   `POST /v2/verifications/{verification_id}/actions/verify` (JSON `code`, or `status`
//!   for a custom code): answered `{"data": {"phone_number", "response_code"}}`, a
//!   conversion when `response_code` is `"accepted"`.
//!
//! Errors are `{errors: [{code, title, detail}]}`. Both official SDKs retry a 429 (and
//! 5xx) up to three times unless the response says `x-should-retry: false`, so every
//! refusal carries that header, and a block is a 403/422, never a 429.

use hyper::StatusCode;
use serde_json::json;

use super::{
    sandbox_id, segments, ConversionSignal, Endpoint, ExtractError, Extracted, NativeResponse,
    Refusal, RefusalKind, RequestKind, RequestView,
};
use crate::decide::Reason;

/// Telnyx operations.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Send a message.
    Send,
    /// Start a Verify verification (a code by SMS, call, flash call, WhatsApp …).
    VerifyStart,
    /// Check a Verify code by phone number: the number is in the path.
    VerifyCheck,
    /// Check a Verify code by verification id: the number is the one the id was started for.
    VerifyCheckById,
}

impl Op {
    /// The request kind.
    pub fn kind(self) -> RequestKind {
        match self {
            Op::Send => RequestKind::Send,
            Op::VerifyStart => RequestKind::VerifyStart,
            Op::VerifyCheck | Op::VerifyCheckById => RequestKind::VerifyCheck,
        }
    }

    fn is_verify(self) -> bool {
        self != Op::Send
    }
}

/// The Verify start channels, the last segment of `/v2/verifications/{channel}`: every one
/// reaches the phone number (`dtmf_confirm` calls it; `psd2` texts it a code).
const VERIFY_CHANNELS: [&str; 6] = [
    "sms",
    "call",
    "flashcall",
    "whatsapp",
    "psd2",
    "dtmf_confirm",
];

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
    Endpoint {
        method: "POST",
        pattern: "/v2/verifications/by_phone_number/{}/actions/verify",
        op: super::Op::Telnyx(Op::VerifyCheck),
    },
    Endpoint {
        method: "POST",
        pattern: "/v2/verifications/{}/actions/verify",
        op: super::Op::Telnyx(Op::VerifyCheckById),
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
        Op::VerifyCheck | Op::VerifyCheckById => extract_verify_check(op, req),
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

/// A Verify check: the number from the path, or the verification id to look it up by.
fn extract_verify_check(op: Op, req: &RequestView<'_>) -> Result<Extracted, ExtractError> {
    let mut out = Extracted {
        segments: 1,
        ..Extracted::default()
    };
    // The body only names the profile; a body smsfence cannot read is the provider's to
    // refuse, not a reason to leave the check uncounted.
    if req.is_json() {
        if let Ok(v) = req.json() {
            out.sender = super::json_str(&v, "verify_profile_id").map(str::to_owned);
        }
    }
    let param = req.param(0).filter(|p| !p.trim().is_empty());
    match op {
        Op::VerifyCheck => out
            .recipients
            .push(param.ok_or(ExtractError::MissingRecipient("phone_number"))?),
        _ => out.verify_ref = param,
    }
    Ok(out)
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

/// A UUID-shaped sandbox id.
fn uuid_like() -> String {
    let id = sandbox_id("", 32);
    format!(
        "{}-{}-{}-{}-{}",
        &id[..8],
        &id[8..12],
        &id[12..16],
        &id[16..20],
        &id[20..]
    )
}

/// The sandbox's Telnyx answer.
pub fn sandbox(op: Op, req: &RequestView<'_>, ex: &Extracted) -> NativeResponse {
    let v = req.json().unwrap_or_default();
    match op {
        Op::Send => {}
        Op::VerifyStart => {
            // The channel is the path's last segment; the legacy start names it in `type`.
            let last = req.path.rsplit('/').next().unwrap_or("");
            let channel = VERIFY_CHANNELS
                .into_iter()
                .find(|c| last.eq_ignore_ascii_case(c))
                .or_else(|| super::json_str(&v, "type"))
                .unwrap_or("sms");
            let now = "2024-01-01T00:00:00.000000";
            return NativeResponse::json(
                StatusCode::OK,
                &json!({"data": {
                    "id": uuid_like(),
                    "type": channel,
                    "record_type": "verification",
                    "phone_number": ex.recipients.first(),
                    "verify_profile_id": super::json_str(&v, "verify_profile_id"),
                    "custom_code": super::json_str(&v, "custom_code"),
                    "timeout_secs": v.get("timeout_secs").and_then(serde_json::Value::as_u64).unwrap_or(300),
                    "status": "pending",
                    "created_at": now,
                    "updated_at": now,
                }}),
            );
        }
        Op::VerifyCheck | Op::VerifyCheckById => {
            // The sandbox accepts any code except "000000" (and a custom code's verdict
            // as given); a check by id names no number it could answer with.
            let accepted = match super::json_str(&v, "code") {
                Some(code) => code != "000000",
                None => super::json_str(&v, "status") == Some("accepted"),
            };
            return NativeResponse::json(
                StatusCode::OK,
                &json!({"data": {
                    "phone_number": ex.recipients.first(),
                    "response_code": if accepted { "accepted" } else { "rejected" },
                }}),
            );
        }
    }
    NativeResponse::json(
        StatusCode::OK,
        &json!({"data": {
            "record_type": "message",
            "direction": "outbound",
            "id": uuid_like(),
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

/// Whether Telnyx's answer starts or accepts a verification.
pub fn conversion(
    op: Op,
    req: &RequestView<'_>,
    ex: &Extracted,
    status: StatusCode,
    body: &[u8],
) -> ConversionSignal {
    let Some(v) = super::success_json(status, body) else {
        return ConversionSignal::None;
    };
    let data = v.get("data").unwrap_or(&serde_json::Value::Null);
    match op {
        Op::Send => ConversionSignal::None,
        Op::VerifyStart => match super::json_str(data, "id") {
            Some(id) => ConversionSignal::Started {
                reference: id.to_owned(),
            },
            None => ConversionSignal::None,
        },
        Op::VerifyCheck | Op::VerifyCheckById => {
            if super::json_str(data, "response_code") != Some("accepted") {
                return ConversionSignal::None;
            }
            ConversionSignal::Verified {
                number: ex
                    .recipients
                    .first()
                    .cloned()
                    .or_else(|| super::json_str(data, "phone_number").map(str::to_owned)),
                reference: match op {
                    Op::VerifyCheckById => req.param(0),
                    _ => None,
                },
            }
        }
    }
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
    fn verify_checks_read_the_number_from_the_path_or_keep_the_id() {
        let h = json_headers();
        let body = br#"{"code":"17686","verify_profile_id":"vp"}"#;
        // The Python SDK puts the `+` in the path as it is, the Node SDK encodes it.
        for param in ["+13035551234", "%2B13035551234"] {
            let ex = extract(Op::VerifyCheck, &view(&h, &[param], body)).unwrap();
            assert_eq!(ex.recipients, vec!["+13035551234"]);
            assert_eq!(ex.sender.as_deref(), Some("vp"));
            assert_eq!(ex.verify_ref, None);
        }
        let ex = extract(
            Op::VerifyCheckById,
            &view(&h, &["ver-1"], br#"{"code":"1"}"#),
        )
        .unwrap();
        assert!(ex.recipients.is_empty());
        assert_eq!(ex.verify_ref.as_deref(), Some("ver-1"));
        assert_eq!(Op::VerifyCheckById.kind(), RequestKind::VerifyCheck);
        // A body smsfence cannot read still counts the check against the number.
        let ex = extract(Op::VerifyCheck, &view(&h, &["+13035551234"], b"{")).unwrap();
        assert_eq!(ex.recipients, vec!["+13035551234"]);
    }

    #[test]
    fn conversions_from_starts_and_accepted_checks() {
        let h = json_headers();
        let start = extract(
            Op::VerifyStart,
            &view(&h, &[], br#"{"phone_number":"+13035551234"}"#),
        )
        .unwrap();
        let started = conversion(
            Op::VerifyStart,
            &view(&h, &[], b""),
            &start,
            StatusCode::OK,
            br#"{"data":{"id":"ver-1","record_type":"verification","status":"pending"}}"#,
        );
        assert_eq!(
            started,
            ConversionSignal::Started {
                reference: "ver-1".into()
            }
        );
        let by_number = extract(Op::VerifyCheck, &view(&h, &["+13035551234"], b"")).unwrap();
        let accepted = br#"{"data":{"phone_number":"+13035551234","response_code":"accepted"}}"#;
        assert_eq!(
            conversion(
                Op::VerifyCheck,
                &view(&h, &["+13035551234"], b""),
                &by_number,
                StatusCode::OK,
                accepted
            ),
            ConversionSignal::Verified {
                number: Some("+13035551234".into()),
                reference: None
            }
        );
        let by_id = extract(Op::VerifyCheckById, &view(&h, &["ver-1"], b"")).unwrap();
        assert_eq!(
            conversion(
                Op::VerifyCheckById,
                &view(&h, &["ver-1"], b""),
                &by_id,
                StatusCode::OK,
                accepted
            ),
            ConversionSignal::Verified {
                number: Some("+13035551234".into()),
                reference: Some("ver-1".into())
            }
        );
        // Rejected codes, errors and other bodies say nothing.
        for (status, body) in [
            (
                StatusCode::OK,
                &br#"{"data":{"phone_number":"+13035551234","response_code":"rejected"}}"#[..],
            ),
            (StatusCode::BAD_REQUEST, accepted),
            (StatusCode::OK, br#"{"response_code":"accepted"}"#),
            (StatusCode::OK, b"not json"),
        ] {
            assert_eq!(
                conversion(
                    Op::VerifyCheck,
                    &view(&h, &["+13035551234"], b""),
                    &by_number,
                    status,
                    body
                ),
                ConversionSignal::None
            );
        }
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
            r(Op::VerifyCheck, throttle, Reason::RateLimited),
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

    #[test]
    fn verify_sandbox_answers() {
        let h = json_headers();
        let body = br#"{"phone_number":"+13035551234","verify_profile_id":"vp"}"#;
        let ex = extract(Op::VerifyStart, &view(&h, &[], body)).unwrap();
        for (path, channel) in [
            ("/v2/verifications/call", "call"),
            ("/v2/verifications/dtmf_confirm", "dtmf_confirm"),
            ("/v2/verifications", "sms"),
        ] {
            let mut req = view(&h, &[], body);
            req.path = path;
            let a = sandbox(Op::VerifyStart, &req, &ex);
            assert_eq!(a.status, StatusCode::OK);
            let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
            assert_eq!(v["data"]["type"], channel);
            assert_eq!(v["data"]["phone_number"], "+13035551234");
            assert_eq!(v["data"]["record_type"], "verification");
            assert_eq!(v["data"]["id"].as_str().map(str::len), Some(36));
        }
        let check = extract(Op::VerifyCheck, &view(&h, &["+13035551234"], b"")).unwrap();
        for (code, verdict) in [("123456", "accepted"), ("000000", "rejected")] {
            let body = format!(r#"{{"code":"{code}"}}"#);
            let a = sandbox(
                Op::VerifyCheck,
                &view(&h, &["+13035551234"], body.as_bytes()),
                &check,
            );
            let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
            assert_eq!(v["data"]["response_code"], verdict);
            assert_eq!(v["data"]["phone_number"], "+13035551234");
        }
    }
}
