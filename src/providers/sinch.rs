//! Sinch SMS (XMS): `POST /xms/v1/{service_plan_id}/batches`, JSON `to` (an array),
//! `from`, `body`.
//!
//! `to` entries may also be group ids, which smsfence cannot check: such a batch is an
//! unsupported request. Errors are `{code, text}`. The Python SDK retries a 429 three
//! times by itself, so a block is a 403, never a 429.
//!
//! Sinch Verification (on its own host, `verification.api.sinch.com`: a second route,
//! told apart by its `path_prefix`): `POST /verification/v1/verifications` starts one
//! (JSON `identity: {type: "number", endpoint}`, `method` `sms`, `callout`, `flashCall`
//! or `seamless`; the answer's `id` is remembered); a report (the check) is
//! `PUT /verification/v1/verifications/number/{endpoint}` (the number in the path) or
//! `PUT /verification/v1/verifications/id/{id}` (the number the `id` was started for),
//! answered `status: "SUCCESSFUL"` on success. Errors are `{errorCode, message,
//! reference}`; the Python SDK raises `VerificationException` with the `message`.

use hyper::StatusCode;
use serde_json::json;

use super::{
    sandbox_id, segments, ConversionSignal, Endpoint, ExtractError, Extracted, NativeResponse,
    Refusal, RefusalKind, RequestKind, RequestView,
};
use crate::decide::Reason;

/// Sinch operations.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Send a batch (or replace a scheduled one: `PUT`, a whole new batch).
    Send,
    /// Update a scheduled batch: `to_add` are new recipients.
    Update,
    /// Start a verification: `identity.endpoint`.
    VerifyStart,
    /// Report a code for the number in the path.
    ReportByNumber,
    /// Report a code for the verification `id` in the path.
    ReportById,
}

impl Op {
    /// The request kind.
    pub fn kind(self) -> RequestKind {
        match self {
            Op::Send | Op::Update => RequestKind::Send,
            Op::VerifyStart => RequestKind::VerifyStart,
            Op::ReportByNumber | Op::ReportById => RequestKind::VerifyCheck,
        }
    }

    /// Whether the operation is of the Verification API, which answers errors in its own
    /// shape.
    fn verification(self) -> bool {
        !matches!(self, Op::Send | Op::Update)
    }
}

/// Sinch's sending endpoints.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: "POST",
        pattern: "/xms/v1/{}/batches",
        op: super::Op::Sinch(Op::Send),
    },
    Endpoint {
        method: "PUT",
        pattern: "/xms/v1/{}/batches/{}",
        op: super::Op::Sinch(Op::Send),
    },
    Endpoint {
        method: "POST",
        pattern: "/xms/v1/{}/batches/{}",
        op: super::Op::Sinch(Op::Update),
    },
    Endpoint {
        method: "POST",
        pattern: "/verification/v1/verifications",
        op: super::Op::Sinch(Op::VerifyStart),
    },
    Endpoint {
        method: "PUT",
        pattern: "/verification/v1/verifications/number/{}",
        op: super::Op::Sinch(Op::ReportByNumber),
    },
    Endpoint {
        method: "PUT",
        pattern: "/verification/v1/verifications/id/{}",
        op: super::Op::Sinch(Op::ReportById),
    },
];

/// Sinch API roots that pass through: SMS batches, and the Verification API (status
/// look-ups), each on its own host.
pub const ROOTS: &[&str] = &["/xms/**", "/verification/v1/**"];

/// Reads a Sinch request.
pub fn extract(op: Op, req: &RequestView<'_>) -> Result<Extracted, ExtractError> {
    match op {
        Op::Send => extract_batch(false, req),
        Op::Update => extract_batch(true, req),
        Op::VerifyStart => extract_start(req),
        Op::ReportByNumber => {
            let number = req
                .param(0)
                .filter(|n| !n.trim().is_empty())
                .ok_or(ExtractError::MissingRecipient("the number in the path"))?;
            Ok(Extracted {
                recipients: vec![number.trim().to_owned()],
                number_format: Some(crate::phone::NumberFormat::InternationalDigits),
                segments: 1,
                ..Extracted::default()
            })
        }
        Op::ReportById => Ok(Extracted {
            verify_ref: req.param(0).filter(|id| !id.is_empty()),
            segments: 1,
            ..Extracted::default()
        }),
    }
}

/// Reads a batch send (`update`: an update of a scheduled batch).
fn extract_batch(update: bool, req: &RequestView<'_>) -> Result<Extracted, ExtractError> {
    if !req.is_json() {
        return Err(ExtractError::MalformedBody("Sinch takes a JSON body"));
    }
    let v = req.json()?;
    let to = match update {
        false => v.get("to"),
        // An update that adds no one (text, schedule, removals; or a dry run, which sends
        // nothing) has nothing to decide.
        true => match v.get("to_add") {
            None | Some(serde_json::Value::Null) => {
                return Ok(Extracted {
                    no_phone: true,
                    account: req.param(0),
                    segments: 1,
                    ..Extracted::default()
                })
            }
            to_add => to_add,
        },
    };
    let to = to
        .and_then(serde_json::Value::as_array)
        .ok_or(ExtractError::MissingRecipient("to"))?;
    let mut recipients = Vec::with_capacity(to.len());
    for t in to {
        let s = t.as_str().ok_or(ExtractError::Unsupported(
            "a Sinch recipient that is not a string",
        ))?;
        // A phone number is digits with an optional leading +; anything else is a group id.
        let digits = s.trim().trim_start_matches('+');
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ExtractError::Unsupported("Sinch group ids"));
        }
        recipients.push(s.trim().to_owned());
    }
    if recipients.is_empty() {
        return Err(ExtractError::MissingRecipient("to"));
    }
    Ok(Extracted {
        recipients,
        number_format: Some(crate::phone::NumberFormat::InternationalDigits),
        sender: super::json_str(&v, "from").map(str::to_owned),
        account: req.param(0),
        segments: super::json_str(&v, "body").map_or(1, segments::count),
        ..Extracted::default()
    })
}

/// Reads a verification start: `identity.endpoint` of `type: "number"`.
fn extract_start(req: &RequestView<'_>) -> Result<Extracted, ExtractError> {
    if !req.is_json() {
        return Err(ExtractError::MalformedBody(
            "Sinch Verification takes a JSON body",
        ));
    }
    let v = req.json()?;
    const WHAT: &str = "identity.endpoint";
    let identity = v
        .get("identity")
        .ok_or(ExtractError::MissingRecipient(WHAT))?;
    // The API knows one identity type; another would be read by rules smsfence does not
    // know.
    if super::json_str(identity, "type") != Some("number") {
        return Err(ExtractError::Unsupported(
            "a Sinch identity whose type is not \"number\"",
        ));
    }
    let endpoint = super::json_str(identity, "endpoint")
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .ok_or(ExtractError::MissingRecipient(WHAT))?;
    Ok(Extracted {
        recipients: vec![endpoint.to_owned()],
        number_format: Some(crate::phone::NumberFormat::InternationalDigits),
        segments: 1,
        ..Extracted::default()
    })
}

/// Sinch's native error for a refusal.
pub fn refusal(op: Op, refusal: &Refusal<'_>) -> NativeResponse {
    if op.verification() {
        return verification_refusal(refusal);
    }
    let (status, code) = match (refusal.kind, refusal.reason) {
        (RefusalKind::Throttle { .. }, _) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
        (_, Reason::InvalidNumber | Reason::UnsupportedRequest) => {
            (StatusCode::BAD_REQUEST, "syntax_invalid_parameter_format")
        }
        _ => (StatusCode::FORBIDDEN, "forbidden"),
    };
    /// Sinch's error body.
    #[derive(serde::Serialize)]
    struct Error {
        code: &'static str,
        text: String,
    }
    let body = Error {
        code,
        text: refusal.message(),
    };
    NativeResponse::json(status, &body).with_retry_after(refusal)
}

/// The Verification API's error for a refusal: `{errorCode, message}` (its optional
/// `reference` is Sinch's support id, which smsfence has none of), the code the HTTP
/// status and two digits, as Sinch's own (`40001`: an invalid number).
fn verification_refusal(refusal: &Refusal<'_>) -> NativeResponse {
    let (status, code) = match (refusal.kind, refusal.reason) {
        (RefusalKind::Throttle { .. }, _) => (StatusCode::TOO_MANY_REQUESTS, 42900),
        (_, Reason::InvalidNumber | Reason::UnsupportedRequest) => (StatusCode::BAD_REQUEST, 40001),
        _ => (StatusCode::FORBIDDEN, 40300),
    };
    /// The Verification API's error body.
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Error {
        error_code: u32,
        message: String,
    }
    let body = Error {
        error_code: code,
        message: refusal.message(),
    };
    NativeResponse::json(status, &body).with_retry_after(refusal)
}

/// The sandbox's Sinch answer: the created batch, or the Verification API's answer.
pub fn sandbox(op: Op, req: &RequestView<'_>, ex: &Extracted) -> NativeResponse {
    if op.verification() {
        return verification_sandbox(op, req);
    }
    let v = req.json().unwrap_or_default();
    NativeResponse::json(
        StatusCode::CREATED,
        &json!({
            "id": sandbox_id("01", 24).to_uppercase(),
            "to": ex.recipients,
            "from": super::json_str(&v, "from"),
            "canceled": false,
            "body": super::json_str(&v, "body"),
            "type": "mt_text",
            "created_at": "2024-01-01T00:00:00.000Z",
            "modified_at": "2024-01-01T00:00:00.000Z",
            "delivery_report": "none",
            "expire_at": "2024-01-04T00:00:00.000Z",
            "flash_message": false,
        }),
    )
}

/// The sandbox's Verification answers. A report whose code is `000000` fails, any other
/// succeeds.
fn verification_sandbox(op: Op, req: &RequestView<'_>) -> NativeResponse {
    let v = req.json().unwrap_or_default();
    let method = super::json_str(&v, "method").unwrap_or("sms").to_owned();
    match op {
        Op::VerifyStart => {
            let id = sandbox_id("", 16);
            let details = match method.as_str() {
                "sms" => {
                    json!({"template": "Your verification code is {{CODE}}", "interceptionTimeout": 298})
                }
                "flashCall" | "flashcall" => {
                    json!({"cliFilter": "(.*)5312(.*)", "interceptionTimeout": 45, "reportTimeout": 75, "denyCallAfter": 0})
                }
                _ => json!({}),
            };
            let mut body = json!({
                "id": id,
                "method": method,
                "_links": [{"rel": "status", "href": format!("https://verification.api.sinch.com/verification/v1/verifications/id/{id}"), "method": "GET"}],
            });
            body[method.as_str()] = details;
            NativeResponse::json(StatusCode::OK, &body)
        }
        Op::ReportByNumber | Op::ReportById => {
            let code = ["sms", "callout", "flashCall", "flashcall"]
                .iter()
                .filter_map(|m| v.get(*m))
                .find_map(|o| super::json_str(o, "code").or_else(|| super::json_str(o, "cli")));
            let id = match op {
                Op::ReportById => req.param(0).unwrap_or_default(),
                _ => sandbox_id("", 16),
            };
            let body = match code {
                Some(c) if c != "000000" => {
                    json!({"id": id, "method": method, "status": "SUCCESSFUL"})
                }
                _ => {
                    json!({"id": id, "method": method, "status": "FAIL", "reason": "Invalid code"})
                }
            };
            NativeResponse::json(StatusCode::OK, &body)
        }
        Op::Send | Op::Update => NativeResponse::json(StatusCode::OK, &json!({})),
    }
}

/// Whether the Verification API's answer starts or approves a verification.
pub fn conversion(
    op: Op,
    req: &RequestView<'_>,
    ex: &Extracted,
    status: StatusCode,
    body: &[u8],
) -> ConversionSignal {
    if !op.verification() {
        return ConversionSignal::None;
    }
    let Some(v) = super::success_json(status, body) else {
        return ConversionSignal::None;
    };
    match op {
        Op::VerifyStart => match super::json_str(&v, "id") {
            Some(id) if !id.is_empty() => ConversionSignal::Started {
                reference: id.to_owned(),
            },
            _ => ConversionSignal::None,
        },
        Op::ReportByNumber | Op::ReportById
            if super::json_str(&v, "status") == Some("SUCCESSFUL") =>
        {
            let answered = v
                .get("identity")
                .and_then(|i| super::json_str(i, "endpoint"))
                .map(str::to_owned);
            ConversionSignal::Verified {
                number: ex.recipients.first().cloned().or(answered),
                reference: match op {
                    Op::ReportById => req.param(0),
                    _ => super::json_str(&v, "id").map(str::to_owned),
                },
            }
        }
        _ => ConversionSignal::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::tests::{json_headers, view};

    #[test]
    fn to_array_and_group_ids() {
        let h = json_headers();
        let ex = extract(
            Op::Send,
            &view(
                &h,
                &["plan1"],
                br#"{"from":"ACME","to":["+447400123456","447400123457"],"body":"hi"}"#,
            ),
        )
        .unwrap();
        assert_eq!(ex.recipients.len(), 2);
        assert_eq!(ex.account.as_deref(), Some("plan1"));
        assert_eq!(
            extract(
                Op::Send,
                &view(
                    &h,
                    &["p"],
                    br#"{"to":["01FC66621VHDBN119Z8Y0FAKE"],"body":"x"}"#
                )
            ),
            Err(ExtractError::Unsupported("Sinch group ids"))
        );
        assert_eq!(
            extract(Op::Send, &view(&h, &["p"], br#"{"to":[],"body":"x"}"#)),
            Err(ExtractError::MissingRecipient("to"))
        );
    }

    #[test]
    fn block_is_403() {
        let r = refusal(
            Op::Send,
            &Refusal {
                kind: RefusalKind::Block,
                reason: Reason::PrefixVelocity,
                rule: "r",
                recipient: None,
                recipients: 1,
            },
        );
        assert_eq!(r.status, StatusCode::FORBIDDEN);
    }

    #[test]
    fn verification_start_and_reports() {
        let h = json_headers();
        let start =
            br#"{"identity":{"type":"number","endpoint":"+447400123456"},"method":"flashCall"}"#;
        let ex = extract(Op::VerifyStart, &view(&h, &[], start)).unwrap();
        assert_eq!(ex.recipients, vec!["+447400123456"]);
        assert_eq!(Op::VerifyStart.kind(), RequestKind::VerifyStart);
        for (body, want) in [
            (
                &br#"{"identity":{"type":"email","endpoint":"a@b.c"},"method":"sms"}"#[..],
                "unsupported",
            ),
            (
                br#"{"identity":{"endpoint":"+447400123456"}}"#,
                "unsupported",
            ),
            (
                br#"{"identity":{"type":"number","endpoint":" "}}"#,
                "missing",
            ),
            (br#"{"method":"sms"}"#, "missing"),
        ] {
            let got = extract(Op::VerifyStart, &view(&h, &[], body));
            assert!(
                matches!(
                    (&got, want),
                    (Err(ExtractError::Unsupported(_)), "unsupported")
                        | (Err(ExtractError::MissingRecipient(_)), "missing")
                ),
                "{got:?}"
            );
        }
        let by_number = extract(
            Op::ReportByNumber,
            &view(
                &h,
                &["+447400123456"],
                br#"{"method":"sms","sms":{"code":"1"}}"#,
            ),
        )
        .unwrap();
        assert_eq!(by_number.recipients, vec!["+447400123456"]);
        let by_id = extract(Op::ReportById, &view(&h, &["1234"], b"{}")).unwrap();
        assert_eq!(by_id.verify_ref.as_deref(), Some("1234"));
        assert!(by_id.recipients.is_empty());
        assert_eq!(Op::ReportById.kind(), RequestKind::VerifyCheck);

        let started = conversion(
            Op::VerifyStart,
            &view(&h, &[], start),
            &ex,
            StatusCode::OK,
            br#"{"id":"1234","method":"sms","sms":{"template":"x"}}"#,
        );
        assert_eq!(
            started,
            ConversionSignal::Started {
                reference: "1234".into()
            }
        );
        let ok = br#"{"id":"1234","method":"sms","status":"SUCCESSFUL"}"#;
        assert_eq!(
            conversion(
                Op::ReportById,
                &view(&h, &["1234"], b""),
                &by_id,
                StatusCode::OK,
                ok
            ),
            ConversionSignal::Verified {
                number: None,
                reference: Some("1234".into())
            }
        );
        assert_eq!(
            conversion(
                Op::ReportByNumber,
                &view(&h, &["+447400123456"], b""),
                &by_number,
                StatusCode::OK,
                ok
            ),
            ConversionSignal::Verified {
                number: Some("+447400123456".into()),
                reference: Some("1234".into())
            }
        );
        for (status, body) in [
            (
                StatusCode::OK,
                &br#"{"id":"1234","status":"FAIL","reason":"Invalid code"}"#[..],
            ),
            (StatusCode::BAD_REQUEST, ok),
            (StatusCode::OK, b"<html>"),
        ] {
            assert_eq!(
                conversion(
                    Op::ReportById,
                    &view(&h, &["1234"], b""),
                    &by_id,
                    status,
                    body
                ),
                ConversionSignal::None
            );
        }
    }

    #[test]
    fn verification_refusals_are_its_error_shape() {
        let throttle = Refusal {
            kind: RefusalKind::Throttle {
                retry_after: std::time::Duration::from_secs(2),
            },
            reason: Reason::RateLimited,
            rule: "r",
            recipient: None,
            recipients: 1,
        };
        let r = refusal(Op::VerifyStart, &throttle);
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["errorCode"], 42900);
        assert_eq!(v["message"], throttle.message());
        let invalid = Refusal {
            kind: RefusalKind::Block,
            reason: Reason::InvalidNumber,
            ..throttle.clone()
        };
        let r = refusal(Op::ReportByNumber, &invalid);
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["errorCode"], 40001);
        let blocked = Refusal {
            kind: RefusalKind::Block,
            reason: Reason::NumberType,
            ..throttle
        };
        assert_eq!(
            refusal(Op::ReportById, &blocked).status,
            StatusCode::FORBIDDEN
        );
    }
}
