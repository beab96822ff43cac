//! Plivo: `POST /v1/Account/{auth_id}/Message/` and `…/Message/Bulk/`, JSON `dst`
//! (several numbers joined by `<`, or a list), `src` or `powerpack_uuid`, `text`.
//!
//! Errors are `{api_id, error}`; the SDKs surface `error` in their exception
//! (`PlivoRestError`, `ValidationError` for 400). A block is a 400, a throttle a 429.
//!
//! Verify: `POST /v1/Account/{auth_id}/Verify/Session/` starts a session (JSON
//! `recipient`; the answer's `session_uuid` is remembered), `POST
//! …/Verify/Session/{session_uuid}/` validates it (JSON `otp`, never read but by the
//! sandbox), answered `"message": "session validated successfully."` on success. A
//! `GET` of a session or of the list passes through.

use hyper::StatusCode;
use serde_json::json;

use super::{
    sandbox_id, segments, ConversionSignal, Endpoint, ExtractError, Extracted, NativeResponse,
    Refusal, RefusalKind, RequestView,
};

/// Plivo operations.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Send a message.
    Send,
    /// Start a Verify session (an OTP by SMS or voice): JSON `recipient`.
    VerifySession,
    /// Verify a caller id (an OTP by SMS or voice): JSON `phone_number`.
    VerifyCallerId,
    /// Validate a Verify session's code: the number the `session_uuid` in the path was
    /// started for.
    VerifyValidate,
    /// Complete a caller-id verification (JSON `otp`): the number the `verification_uuid`
    /// in the path was started for.
    VerifyCallerIdCheck,
}

impl Op {
    /// The request kind.
    pub fn kind(self) -> super::RequestKind {
        match self {
            Op::Send => super::RequestKind::Send,
            Op::VerifySession | Op::VerifyCallerId => super::RequestKind::VerifyStart,
            Op::VerifyValidate | Op::VerifyCallerIdCheck => super::RequestKind::VerifyCheck,
        }
    }
}

/// Plivo's sending endpoints.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: "POST",
        pattern: "/v1/Account/{}/Message/",
        op: super::Op::Plivo(Op::Send),
    },
    // The same send to up to 1000 numbers, `dst` a list.
    Endpoint {
        method: "POST",
        pattern: "/v1/Account/{}/Message/Bulk/",
        op: super::Op::Plivo(Op::Send),
    },
    Endpoint {
        method: "POST",
        pattern: "/v1/Account/{}/Verify/Session/",
        op: super::Op::Plivo(Op::VerifySession),
    },
    Endpoint {
        method: "POST",
        pattern: "/v1/Account/{}/Verify/Session/{}/",
        op: super::Op::Plivo(Op::VerifyValidate),
    },
    Endpoint {
        method: "POST",
        pattern: "/v1/Account/{}/VerifiedCallerId/",
        op: super::Op::Plivo(Op::VerifyCallerId),
    },
    Endpoint {
        method: "POST",
        pattern: "/v1/Account/{}/VerifiedCallerId/Verification/{}/",
        op: super::Op::Plivo(Op::VerifyCallerIdCheck),
    },
];

/// Plivo API roots that pass through.
pub const ROOTS: &[&str] = &["/v1/Account/**"];

/// Reads a Plivo request.
pub fn extract(op: Op, req: &RequestView<'_>) -> Result<Extracted, ExtractError> {
    if matches!(op, Op::VerifyValidate | Op::VerifyCallerIdCheck) {
        // The number is the one the session was started for; the body holds only the
        // code, which smsfence never reads.
        return Ok(Extracted {
            verify_ref: req.param(1).filter(|id| !id.trim().is_empty()),
            account: req.param(0),
            segments: 1,
            ..Extracted::default()
        });
    }
    if !req.is_json() {
        return Err(ExtractError::MalformedBody("Plivo takes a JSON body"));
    }
    let v = req.json()?;
    if op == Op::VerifyCallerId {
        // `phone_number` (Python SDK), `phoneNumber` (as the Node SDK names it): both read.
        let mut recipients = Vec::new();
        for key in ["phone_number", "phoneNumber"] {
            match v.get(key) {
                None => {}
                Some(serde_json::Value::String(s)) if !s.trim().is_empty() => {
                    recipients.push(s.trim().to_owned())
                }
                Some(_) => return Err(ExtractError::MissingRecipient("phone_number")),
            }
        }
        if recipients.is_empty() {
            return Err(ExtractError::MissingRecipient("phone_number"));
        }
        return Ok(Extracted {
            recipients,
            number_format: Some(crate::phone::NumberFormat::InternationalDigits),
            account: req.param(0),
            segments: 1,
            ..Extracted::default()
        });
    }
    if op == Op::VerifySession {
        // The SDKs send the number as a string or an integer.
        let recipient = match v.get("recipient") {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => return Err(ExtractError::MissingRecipient("recipient")),
        };
        return Ok(Extracted {
            recipients: vec![recipient],
            number_format: Some(crate::phone::NumberFormat::InternationalDigits),
            sender: super::json_str(&v, "app_uuid").map(str::to_owned),
            account: req.param(0),
            segments: 1,
            ..Extracted::default()
        });
    }
    // `dst`: numbers joined by `<`, or (the bulk send) a list of them.
    let dst: Vec<&str> = match v.get("dst") {
        Some(serde_json::Value::String(s)) => vec![s.as_str()],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|d| d.as_str().ok_or(ExtractError::MissingRecipient("dst")))
            .collect::<Result<_, _>>()?,
        _ => return Err(ExtractError::MissingRecipient("dst")),
    };
    let recipients: Vec<String> = dst
        .iter()
        .flat_map(|d| d.split('<'))
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect();
    if recipients.is_empty() {
        return Err(ExtractError::MissingRecipient("dst"));
    }
    Ok(Extracted {
        recipients,
        number_format: Some(crate::phone::NumberFormat::InternationalDigits),
        sender: super::json_str(&v, "src")
            .or_else(|| super::json_str(&v, "powerpack_uuid"))
            .map(str::to_owned),
        account: req.param(0),
        segments: super::json_str(&v, "text").map_or(1, segments::count),
        ..Extracted::default()
    })
}

/// Plivo's native error for a refusal.
pub fn refusal(refusal: &Refusal<'_>) -> NativeResponse {
    let status = match refusal.kind {
        RefusalKind::Throttle { .. } => StatusCode::TOO_MANY_REQUESTS,
        RefusalKind::Block => StatusCode::BAD_REQUEST,
    };
    /// Plivo's error body.
    #[derive(serde::Serialize)]
    struct Error {
        api_id: String,
        error: String,
    }
    let body = Error {
        api_id: uuid(),
        error: refusal.message(),
    };
    NativeResponse::json(status, &body).with_retry_after(refusal)
}

fn uuid() -> String {
    let h = sandbox_id("", 32);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The sandbox's Plivo answer: a queued message, or Verify's answers. A validation whose
/// `otp` is `000000` fails (as Plivo answers a wrong code: a 400 with `error`), any other
/// succeeds.
pub fn sandbox(op: Op, req: &RequestView<'_>, ex: &Extracted) -> NativeResponse {
    match op {
        Op::VerifySession => {
            return NativeResponse::json(
                StatusCode::OK,
                &json!({
                    "api_id": uuid(),
                    "message": "Session initiated",
                    "session_uuid": uuid(),
                }),
            )
        }
        Op::VerifyCallerId => {
            return NativeResponse::json(
                StatusCode::OK,
                &json!({
                    "api_id": uuid(),
                    "message": "Verification code is sent to the number, valid for 15 minutes",
                    "verification_uuid": uuid(),
                }),
            )
        }
        Op::VerifyValidate | Op::VerifyCallerIdCheck => {
            let v = req.json().unwrap_or_default();
            let otp = match v.get("otp") {
                Some(serde_json::Value::String(s)) => Some(s.trim().to_owned()),
                Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            let accepted = otp.is_some_and(|otp| !otp.is_empty() && otp != "000000");
            return match accepted {
                true if op == Op::VerifyCallerIdCheck => NativeResponse::json(
                    StatusCode::OK,
                    &json!({
                        "api_id": uuid(),
                        "phone_number": null,
                        "alias": null,
                        "country": null,
                        "verification_uuid": req.param(1),
                        "created_at": "2024-01-01T00:00:00Z",
                    }),
                ),
                true => NativeResponse::json(
                    StatusCode::OK,
                    &json!({"api_id": uuid(), "message": VALIDATED}),
                ),
                _ => NativeResponse::json(
                    StatusCode::BAD_REQUEST,
                    &json!({"api_id": uuid(), "error": "Invalid OTP"}),
                ),
            };
        }
        Op::Send => {}
    }
    NativeResponse::json(
        StatusCode::ACCEPTED,
        &json!({
            "api_id": uuid(),
            "message": "message(s) queued",
            "message_uuid": ex.recipients.iter().map(|_| uuid()).collect::<Vec<_>>(),
        }),
    )
}

/// Plivo's `message` when a session's code is validated.
const VALIDATED: &str = "session validated successfully.";

/// Whether Plivo's answer starts a Verify session or a caller-id verification, or says
/// its code was right.
pub fn conversion(
    op: Op,
    req: &RequestView<'_>,
    status: StatusCode,
    body: &[u8],
) -> ConversionSignal {
    if op == Op::Send {
        return ConversionSignal::None;
    }
    let Some(v) = super::success_json(status, body) else {
        return ConversionSignal::None;
    };
    let started = |key| match super::json_str(&v, key) {
        Some(id) if !id.is_empty() => ConversionSignal::Started {
            reference: id.to_owned(),
        },
        _ => ConversionSignal::None,
    };
    let verified = || ConversionSignal::Verified {
        number: None,
        reference: req.param(1),
    };
    match op {
        Op::Send => ConversionSignal::None,
        Op::VerifySession => started("session_uuid"),
        Op::VerifyCallerId => started("verification_uuid"),
        // Only Plivo's own success sentence: a 2xx saying anything else is no verification.
        Op::VerifyValidate
            if super::json_str(&v, "message").is_some_and(|m| {
                m.trim()
                    .trim_end_matches('.')
                    .eq_ignore_ascii_case(VALIDATED.trim_end_matches('.'))
            }) =>
        {
            verified()
        }
        // A verified caller id answers with the caller-id object, its verification's id
        // included.
        Op::VerifyCallerIdCheck
            if req.param(1).is_some()
                && super::json_str(&v, "verification_uuid") == req.param(1).as_deref() =>
        {
            verified()
        }
        Op::VerifyValidate | Op::VerifyCallerIdCheck => ConversionSignal::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Reason;
    use crate::providers::tests::{json_headers, view};

    #[test]
    fn several_recipients_joined_by_lt() {
        let h = json_headers();
        let ex = extract(
            Op::Send,
            &view(
                &h,
                &["MA1"],
                br#"{"src":"+15005550006","dst":"+447400123456<447400123457","text":"hi"}"#,
            ),
        )
        .unwrap();
        assert_eq!(ex.recipients, vec!["+447400123456", "447400123457"]);
        assert_eq!(ex.account.as_deref(), Some("MA1"));
        assert_eq!(
            extract(Op::Send, &view(&h, &["MA1"], br#"{"dst":"<"}"#)),
            Err(ExtractError::MissingRecipient("dst"))
        );
    }

    #[test]
    fn verify_validate_keeps_the_session_and_credits_only_plivos_success() {
        use crate::providers::RequestKind;
        let h = json_headers();
        const SESSION: &str = "8e712097-8090-4644-81e7-8f4265d8354e";
        let ex = extract(
            Op::VerifyValidate,
            &view(&h, &["MA1", SESSION], br#"{"otp":"123456"}"#),
        )
        .unwrap();
        assert_eq!(ex.verify_ref.as_deref(), Some(SESSION));
        assert!(ex.recipients.is_empty());
        assert_eq!(ex.account.as_deref(), Some("MA1"));
        assert_eq!(Op::VerifyValidate.kind(), RequestKind::VerifyCheck);
        // The code is never needed to decide: any body, or none, is read the same.
        for body in [&b""[..], b"not json", br#"{"otp":123456}"#] {
            let other = extract(Op::VerifyValidate, &view(&h, &["MA1", SESSION], body));
            assert_eq!(other.as_ref(), Ok(&ex), "{body:?}");
        }

        let start = view(&h, &["MA1"], br#"{"recipient":"447400123456"}"#);
        assert_eq!(
            conversion(
                Op::VerifySession,
                &start,
                StatusCode::OK,
                format!(
                    r#"{{"api_id":"a","message":"Session initiated","session_uuid":"{SESSION}"}}"#
                )
                .as_bytes(),
            ),
            ConversionSignal::Started {
                reference: SESSION.into()
            }
        );
        let validate = view(&h, &["MA1", SESSION], br#"{"otp":"123456"}"#);
        for ok in [
            &br#"{"api_id":"a","message":"session validated successfully."}"#[..],
            br#"{"api_id":"a","message":"Session validated successfully"}"#,
        ] {
            assert_eq!(
                conversion(Op::VerifyValidate, &validate, StatusCode::OK, ok),
                ConversionSignal::Verified {
                    number: None,
                    reference: Some(SESSION.into())
                },
                "{ok:?}"
            );
        }
        for (status, body) in [
            (
                StatusCode::BAD_REQUEST,
                &br#"{"api_id":"a","error":"Invalid OTP"}"#[..],
            ),
            (
                StatusCode::BAD_REQUEST,
                br#"{"api_id":"a","message":"session validated successfully."}"#,
            ),
            (
                StatusCode::OK,
                br#"{"api_id":"a","message":"The passcode entered is incorrect."}"#,
            ),
            (StatusCode::OK, br#"{"api_id":"a"}"#),
            (StatusCode::OK, b"<html>"),
        ] {
            assert_eq!(
                conversion(Op::VerifyValidate, &validate, status, body),
                ConversionSignal::None,
                "{status} {body:?}"
            );
        }
        // Sends and caller-id checks say nothing.
        assert_eq!(
            conversion(
                Op::Send,
                &start,
                StatusCode::OK,
                br#"{"message":"session validated successfully.","session_uuid":"x"}"#
            ),
            ConversionSignal::None
        );
    }

    #[test]
    fn a_caller_id_check_credits_only_its_own_verification() {
        use crate::providers::RequestKind;
        let h = json_headers();
        const ID: &str = "f87836bd-f3c0-41bb-9498-125e6faaa4d4";
        let check = view(&h, &["MA1", ID], br#"{"otp":"123456"}"#);
        let ex = extract(Op::VerifyCallerIdCheck, &check).unwrap();
        assert_eq!(ex.verify_ref.as_deref(), Some(ID));
        assert_eq!(Op::VerifyCallerIdCheck.kind(), RequestKind::VerifyCheck);
        let start = view(&h, &["MA1"], br#"{"phone_number":"+447400123456"}"#);
        let started = format!(r#"{{"api_id":"a","message":"sent","verification_uuid":"{ID}"}}"#);
        assert_eq!(
            conversion(
                Op::VerifyCallerId,
                &start,
                StatusCode::OK,
                started.as_bytes()
            ),
            ConversionSignal::Started {
                reference: ID.into()
            }
        );
        let verified = format!(r#"{{"phone_number":"+447400123456","verification_uuid":"{ID}"}}"#);
        assert_eq!(
            conversion(
                Op::VerifyCallerIdCheck,
                &check,
                StatusCode::OK,
                verified.as_bytes()
            ),
            ConversionSignal::Verified {
                number: None,
                reference: Some(ID.into())
            }
        );
        for (status, body) in [
            (StatusCode::BAD_REQUEST, verified.as_str()),
            (StatusCode::OK, r#"{"api_id":"a","error":"Invalid OTP"}"#),
            (StatusCode::OK, r#"{"verification_uuid":"another-one"}"#),
        ] {
            assert_eq!(
                conversion(Op::VerifyCallerIdCheck, &check, status, body.as_bytes()),
                ConversionSignal::None,
                "{status} {body}"
            );
        }
    }

    #[test]
    fn verify_sandbox_answers_in_plivos_shapes() {
        let h = json_headers();
        let ex = Extracted::default();
        let start = sandbox(
            Op::VerifySession,
            &view(&h, &["MA1"], br#"{"recipient":"447400123456"}"#),
            &ex,
        );
        assert_eq!(start.status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_slice(&start.body).unwrap();
        assert_eq!(v["message"], "Session initiated");
        assert_eq!(v["session_uuid"].as_str().map(str::len), Some(36));
        let ok = sandbox(
            Op::VerifyValidate,
            &view(&h, &["MA1", "s"], br#"{"otp":"123456"}"#),
            &ex,
        );
        assert_eq!(ok.status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_slice(&ok.body).unwrap();
        assert_eq!(v["message"], VALIDATED);
        let wrong = sandbox(
            Op::VerifyValidate,
            &view(&h, &["MA1", "s"], br#"{"otp":"000000"}"#),
            &ex,
        );
        assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
        let v: serde_json::Value = serde_json::from_slice(&wrong.body).unwrap();
        assert!(v["error"].as_str().is_some() && v.get("message").is_none());
    }

    #[test]
    fn block_is_400_with_error_text() {
        let r = refusal(&Refusal {
            kind: RefusalKind::Block,
            reason: Reason::DeniedPrefix,
            rule: "r",
            recipient: Some(1),
            recipients: 2,
        });
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert!(v["error"].as_str().unwrap().contains("recipient 2 of 2"));
    }
}
