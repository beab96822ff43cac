//! Vonage (Nexmo): the SMS API and Verify v2.
//!
//! - `POST /sms/json`: form (Python SDK) or JSON (Node SDK), `to` as international digits
//!   without `+`, `from`, `text`; the account is `api_key` in the body or the Basic user.
//!   Vonage's SMS API answers errors with HTTP 200 and a per-message `status`
//!   (`"1"` throttled, `"7"` number barred …), which is what its SDKs read: `SmsError`
//!   (Python), `MessageSendPartialFailure` (Node). A throttle here is therefore a 200 with
//!   status `"1"` plus a `Retry-After` header, not a 429.
//! - `POST /v2/verify`: JSON `workflow[].to`; the answer (202 `{request_id}`) is
//!   remembered so that `POST /v2/verify/{request_id}` (JSON `{"code"}`, no number) can be
//!   counted against the number and its success recorded as a conversion;
//!   `POST /v2/verify/{request_id}/next_workflow` (no body) sends the code again and is
//!   decided as a start for that number.
//!   Errors are RFC 7807 problem documents (`RateLimitedError` for a 429 in Python).
//!
//! Never read: `api_secret`, `sig`, the JWT.

use hyper::StatusCode;
use serde_json::json;

use super::{
    sandbox_id, segments, ConversionSignal, Endpoint, ExtractError, Extracted, NativeResponse,
    Refusal, RefusalKind, RequestKind, RequestView,
};
use crate::decide::Reason;
use crate::phone::NumberFormat;

/// Vonage operations.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `/sms/json`.
    Sms,
    /// `/v2/verify` start.
    VerifyStart,
    /// `/v2/verify/{request_id}` check.
    VerifyCheck,
    /// `/v2/verify/{request_id}/next_workflow`: the code sent again, by the workflow's
    /// next channel — a start again, for the number the `request_id` was started for.
    VerifyNext,
}

impl Op {
    /// The request kind.
    pub fn kind(self) -> RequestKind {
        match self {
            Op::Sms => RequestKind::Send,
            Op::VerifyStart | Op::VerifyNext => RequestKind::VerifyStart,
            Op::VerifyCheck => RequestKind::VerifyCheck,
        }
    }
}

/// Vonage's sending endpoints.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: "POST",
        pattern: "/sms/json",
        op: super::Op::Vonage(Op::Sms),
    },
    // `/sms/{format}`, json or xml; every parameter may also be in the query string, of a
    // GET too.
    Endpoint {
        method: "POST",
        pattern: "/sms/xml",
        op: super::Op::Vonage(Op::Sms),
    },
    Endpoint {
        method: "GET",
        pattern: "/sms/json",
        op: super::Op::Vonage(Op::Sms),
    },
    Endpoint {
        method: "GET",
        pattern: "/sms/xml",
        op: super::Op::Vonage(Op::Sms),
    },
    Endpoint {
        method: "POST",
        pattern: "/v2/verify",
        op: super::Op::Vonage(Op::VerifyStart),
    },
    Endpoint {
        method: "POST",
        pattern: "/v2/verify/{}",
        op: super::Op::Vonage(Op::VerifyCheck),
    },
    Endpoint {
        method: "POST",
        pattern: "/v2/verify/{}/next_workflow",
        op: super::Op::Vonage(Op::VerifyNext),
    },
];

/// Vonage API roots that pass through.
pub const ROOTS: &[&str] = &["/sms/**", "/v2/verify/**"];

/// A field from a form or JSON body.
fn field(req: &RequestView<'_>, json: Option<&serde_json::Value>, key: &str) -> Option<String> {
    match json {
        Some(v) => v.get(key).and_then(|x| match x {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }),
        None => req.form_value(key),
    }
}

/// Reads a Vonage request.
pub fn extract(op: Op, req: &RequestView<'_>) -> Result<Extracted, ExtractError> {
    let mut out = Extracted {
        segments: 1,
        number_format: Some(NumberFormat::InternationalDigits),
        ..Extracted::default()
    };
    match op {
        Op::Sms => {
            let json = if req.is_json() {
                Some(req.json()?)
            } else if req.is_form() || req.body.is_empty() {
                None
            } else {
                return Err(ExtractError::MalformedBody(
                    "Vonage SMS takes a form or JSON body",
                ));
            };
            // Vonage reads the query string as well as the body: every `to` in either.
            let query = req.query.unwrap_or("").as_bytes();
            let mut tos = match &json {
                Some(_) => field(req, json.as_ref(), "to").into_iter().collect(),
                None => req.form_values("to"),
            };
            tos.extend(super::form_values(query, "to"));
            let to = super::single_value(tos, "several different `to`")?
                .filter(|t| !t.trim().is_empty());
            out.recipients
                .push(to.ok_or(ExtractError::MissingRecipient("to"))?);
            let field =
                |key| field(req, json.as_ref(), key).or_else(|| super::form_value(query, key));
            out.sender = field("from");
            out.account = field("api_key").or_else(|| req.basic_user());
            out.segments = field("text").map_or(1, |t| segments::count(&t));
        }
        Op::VerifyStart => {
            if !req.is_json() {
                return Err(ExtractError::MalformedBody(
                    "Vonage Verify takes a JSON body",
                ));
            }
            let v = req.json()?;
            let workflow = v
                .get("workflow")
                .and_then(serde_json::Value::as_array)
                .ok_or(ExtractError::MissingRecipient("workflow[].to"))?;
            let mut email_only = true;
            for step in workflow {
                let channel = super::json_str(step, "channel").unwrap_or("");
                if channel == "email" {
                    continue;
                }
                email_only = false;
                match super::json_str(step, "to") {
                    Some(to) if !out.recipients.iter().any(|r| r == to) => {
                        out.recipients.push(to.to_owned())
                    }
                    Some(_) => {}
                    None => return Err(ExtractError::MissingRecipient("workflow[].to")),
                }
            }
            if workflow.is_empty() {
                return Err(ExtractError::MissingRecipient("workflow[].to"));
            }
            out.no_phone = email_only;
            out.sender = super::json_str(&v, "brand").map(str::to_owned);
            out.account = req.basic_user();
        }
        // No body: the number is the one the `request_id` was started for.
        Op::VerifyCheck | Op::VerifyNext => {
            out.verify_ref = req.param(0);
            out.account = req.basic_user();
        }
    }
    Ok(out)
}

/// Vonage's native error for a refusal.
pub fn refusal(op: Op, refusal: &Refusal<'_>) -> NativeResponse {
    match op {
        Op::Sms => {
            let (status, text) = match (refusal.kind, refusal.reason) {
                (RefusalKind::Throttle { .. }, _) => ("1", "Throttled"),
                (_, Reason::InvalidNumber | Reason::UnsupportedRequest) => ("3", "Invalid Message"),
                _ => ("7", "Number Barred"),
            };
            /// The SMS API's answer: HTTP 200, the error in the message's status.
            #[derive(serde::Serialize)]
            struct Answer {
                #[serde(rename = "message-count")]
                count: &'static str,
                messages: [Message; 1],
            }
            #[derive(serde::Serialize)]
            struct Message {
                status: &'static str,
                #[serde(rename = "error-text")]
                error_text: String,
            }
            NativeResponse::json(
                StatusCode::OK,
                &Answer {
                    count: "1",
                    messages: [Message {
                        status,
                        error_text: format!("{text}: {}", refusal.message()),
                    }],
                },
            )
            .with_retry_after(refusal)
        }
        Op::VerifyStart | Op::VerifyCheck | Op::VerifyNext => {
            let (status, kind, title) = match (refusal.kind, refusal.reason) {
                (RefusalKind::Throttle { .. }, _) => {
                    (StatusCode::TOO_MANY_REQUESTS, "throttled", "Rate Limit Hit")
                }
                (_, Reason::InvalidNumber | Reason::UnsupportedRequest) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid-params",
                    "Invalid params",
                ),
                _ => (StatusCode::FORBIDDEN, "fraud-check", "Forbidden"),
            };
            /// An RFC 7807 problem, as Vonage's newer APIs answer.
            #[derive(serde::Serialize)]
            struct Problem {
                #[serde(rename = "type")]
                kind: String,
                title: &'static str,
                detail: String,
                instance: String,
            }
            let mut r = NativeResponse::json(
                status,
                &Problem {
                    kind: format!("https://developer.vonage.com/api-errors#{kind}"),
                    title,
                    detail: refusal.message(),
                    instance: sandbox_id("", 32),
                },
            )
            .with_retry_after(refusal);
            r.content_type = "application/problem+json";
            r
        }
    }
}

/// The sandbox's Vonage answer.
pub fn sandbox(op: Op, req: &RequestView<'_>, ex: &Extracted) -> NativeResponse {
    match op {
        Op::Sms => {
            let to = ex
                .recipients
                .first()
                .map(|t| t.trim_start_matches('+').to_owned())
                .unwrap_or_default();
            NativeResponse::json(
                StatusCode::OK,
                &json!({
                    "message-count": "1",
                    "messages": [{
                        "to": to,
                        "message-id": sandbox_id("", 32),
                        "status": "0",
                        "remaining-balance": "10.00000000",
                        "message-price": "0.03330000",
                        "network": "12345",
                    }],
                }),
            )
        }
        Op::VerifyStart => {
            let id = uuid_like();
            NativeResponse::json(
                StatusCode::ACCEPTED,
                &json!({"request_id": id, "check_url": format!("https://api-eu.vonage.com/v2/verify/{id}/silent-auth/redirect")}),
            )
        }
        Op::VerifyNext => NativeResponse::json(StatusCode::OK, &json!({})),
        Op::VerifyCheck => {
            let code = req
                .json()
                .ok()
                .and_then(|v| super::json_str(&v, "code").map(str::to_owned));
            let id = req.param(0).unwrap_or_default();
            match code.as_deref() {
                Some(c) if c != "000000" => NativeResponse::json(
                    StatusCode::OK,
                    &json!({"request_id": id, "status": "completed"}),
                ),
                _ => {
                    let mut r = NativeResponse::json(
                        StatusCode::BAD_REQUEST,
                        &json!({
                            "type": "https://developer.vonage.com/api-errors/verify#invalid-code",
                            "title": "Invalid Code",
                            "detail": "The code you provided does not match the expected value.",
                            "instance": sandbox_id("", 32),
                        }),
                    );
                    r.content_type = "application/problem+json";
                    r
                }
            }
        }
    }
}

/// A UUID-shaped sandbox id.
fn uuid_like() -> String {
    let h = sandbox_id("", 32);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Whether Vonage's answer starts or approves a verification.
pub fn conversion(
    op: Op,
    req: &RequestView<'_>,
    _ex: &Extracted,
    status: StatusCode,
    body: &[u8],
) -> ConversionSignal {
    if !status.is_success() {
        return ConversionSignal::None;
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return ConversionSignal::None;
    };
    match op {
        Op::Sms | Op::VerifyNext => ConversionSignal::None,
        Op::VerifyStart => match super::json_str(&v, "request_id") {
            Some(id) => ConversionSignal::Started {
                reference: id.to_owned(),
            },
            None => ConversionSignal::None,
        },
        Op::VerifyCheck => match super::json_str(&v, "status") {
            Some("completed") => ConversionSignal::Verified {
                number: None,
                reference: req.param(0),
            },
            _ => ConversionSignal::None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::tests::{form_headers, json_headers, view};

    #[test]
    fn sms_form_and_json() {
        let h = form_headers();
        let ex = extract(
            Op::Sms,
            &view(
                &h,
                &[],
                b"api_key=abc&api_secret=s3cr3t&from=ACME&to=447400123456&text=Code+1234",
            ),
        )
        .unwrap();
        assert_eq!(ex.recipients, vec!["447400123456"]);
        assert_eq!(ex.account.as_deref(), Some("abc"));
        assert_eq!(ex.number_format, Some(NumberFormat::InternationalDigits));
        let h = json_headers();
        let ex = extract(
            Op::Sms,
            &view(
                &h,
                &[],
                br#"{"api_key":"abc","to":"447400123456","from":"ACME","text":"hi"}"#,
            ),
        )
        .unwrap();
        assert_eq!(ex.recipients, vec!["447400123456"]);
        assert_eq!(
            extract(Op::Sms, &view(&h, &[], b"{")),
            Err(ExtractError::MalformedBody("the body is not valid JSON"))
        );
        assert_eq!(
            extract(Op::Sms, &view(&h, &[], br#"{"text":"x"}"#)),
            Err(ExtractError::MissingRecipient("to"))
        );
    }

    #[test]
    fn verify_start_and_check() {
        let h = json_headers();
        let body = br#"{"brand":"ACME","workflow":[{"channel":"sms","to":"447400123456"},{"channel":"voice","to":"447400123456"}]}"#;
        let ex = extract(Op::VerifyStart, &view(&h, &[], body)).unwrap();
        assert_eq!(ex.recipients, vec!["447400123456"]);
        let email = extract(
            Op::VerifyStart,
            &view(
                &h,
                &[],
                br#"{"brand":"A","workflow":[{"channel":"email","to":"a@b.c"}]}"#,
            ),
        )
        .unwrap();
        assert!(email.no_phone);
        let check = extract(
            Op::VerifyCheck,
            &view(&h, &["req-1"], br#"{"code":"1234"}"#),
        )
        .unwrap();
        assert_eq!(check.verify_ref.as_deref(), Some("req-1"));
        let started = conversion(
            Op::VerifyStart,
            &view(&h, &[], body),
            &ex,
            StatusCode::ACCEPTED,
            br#"{"request_id":"req-1"}"#,
        );
        assert_eq!(
            started,
            ConversionSignal::Started {
                reference: "req-1".into()
            }
        );
        let done = conversion(
            Op::VerifyCheck,
            &view(&h, &["req-1"], b""),
            &check,
            StatusCode::OK,
            br#"{"status":"completed"}"#,
        );
        assert_eq!(
            done,
            ConversionSignal::Verified {
                number: None,
                reference: Some("req-1".into())
            }
        );
    }

    #[test]
    fn sms_refusals_are_200_with_status() {
        let r = refusal(
            Op::Sms,
            &Refusal {
                kind: RefusalKind::Throttle {
                    retry_after: std::time::Duration::from_secs(9),
                },
                reason: Reason::RateLimited,
                rule: "r",
                recipient: None,
                recipients: 1,
            },
        );
        assert_eq!(r.status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["messages"][0]["status"], "1");
        assert!(r
            .headers
            .iter()
            .any(|(n, v)| n == "retry-after" && v == "9"));
        let b = refusal(
            Op::VerifyStart,
            &Refusal {
                kind: RefusalKind::Block,
                reason: Reason::NumberType,
                rule: "r",
                recipient: None,
                recipients: 1,
            },
        );
        assert_eq!(b.status, StatusCode::FORBIDDEN);
        assert_eq!(b.content_type, "application/problem+json");
    }
}
