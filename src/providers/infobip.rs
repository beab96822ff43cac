//! Infobip SMS: `POST /sms/3/messages` (`messages[].destinations[].to`, `sender`,
//! `content.text`), `POST /sms/3/messages/outbound` and the older
//! `POST /sms/2/text/advanced` (`messages[].destinations[].to`, `from`, `text`), and the
//! older `single`, `multi` and `text/query` sends.
//!
//! 2FA: `POST /2fa/2/pin` and `/2fa/2/pin/voice` start a verification (JSON `to`, digits,
//! `applicationId`, `messageId`, `from`; the answer's `pinId` is remembered so that later
//! calls naming it are counted against the number); `POST /2fa/2/pin/{pinId}/resend` and
//! `…/resend/voice` send the code again and are decided as a start for that number;
//! `POST /2fa/2/pin/{pinId}/verify` (JSON `pin`) is the check, answered
//! `{pinId, msisdn, verified, attemptsRemaining, pinError}`: `verified: true` is a
//! conversion. The email channel (`/2fa/2/pin/email`, `…/resend/email`) passes undecided.
//! 2FA errors are the v2 shape.
//!
//! Errors: v2 answers `{requestError: {serviceException: {messageId, text}}}`, v3
//! `{errorCode, description, action}`; the Python SDK raises `ApiException` with the status
//! and does not retry. The API key (`Authorization: App …`) is a credential and never read.

use hyper::StatusCode;
use serde_json::json;

use super::{
    sandbox_id, segments, ConversionSignal, Endpoint, ExtractError, Extracted, NativeResponse,
    Refusal, RefusalKind, RequestKind, RequestView,
};

/// Infobip operations.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `/sms/3/messages`.
    SendV3,
    /// `/sms/2/text/advanced` (and the v1 and binary `advanced` sends, of the same shape).
    SendV2,
    /// The older `single` and `multi` sends: `to` (a string or a list) at the top or in
    /// each of `messages[]`.
    Single,
    /// `GET /sms/1/text/query`: everything in the query string, `to` repeated or
    /// comma-separated.
    Query,
    /// `/sms/3/messages/outbound`: the v2 shape (`from`, `text`), answered as v3.
    OutboundV3,
    /// `/sms/3/text/query`: the query send, answered as v3.
    QueryV3,
    /// `/2fa/2/pin`: a 2FA PIN sent over SMS to JSON `to`.
    PinSms,
    /// `/2fa/2/pin/voice`: a 2FA PIN read out in a call to JSON `to`.
    PinVoice,
    /// `/2fa/2/pin/{pinId}/resend` (and `…/resend/voice`): the same PIN again, to the
    /// number the `pinId` was started for.
    PinResend,
    /// `/2fa/2/pin/{pinId}/verify`: the check of a PIN the user typed.
    PinVerify,
}

impl Op {
    /// The request kind.
    pub fn kind(self) -> RequestKind {
        match self {
            Op::PinSms | Op::PinVoice | Op::PinResend => RequestKind::VerifyStart,
            Op::PinVerify => RequestKind::VerifyCheck,
            Op::SendV3 | Op::SendV2 | Op::Single | Op::Query | Op::OutboundV3 | Op::QueryV3 => {
                RequestKind::Send
            }
        }
    }

    /// Whether the endpoint is of the v3 API, which answers errors in its own shape.
    fn v3(self) -> bool {
        matches!(self, Op::SendV3 | Op::OutboundV3 | Op::QueryV3)
    }
}

/// Infobip's sending endpoints.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: "POST",
        pattern: "/sms/3/messages",
        op: super::Op::Infobip(Op::SendV3),
    },
    // `SmsApi.sendSmsOutbound` of the official clients.
    Endpoint {
        method: "POST",
        pattern: "/sms/3/messages/outbound",
        op: super::Op::Infobip(Op::OutboundV3),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/2/text/advanced",
        op: super::Op::Infobip(Op::SendV2),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/1/text/advanced",
        op: super::Op::Infobip(Op::SendV2),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/1/binary/advanced",
        op: super::Op::Infobip(Op::SendV2),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/2/binary/advanced",
        op: super::Op::Infobip(Op::SendV2),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/1/text/single",
        op: super::Op::Infobip(Op::Single),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/1/text/multi",
        op: super::Op::Infobip(Op::Single),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/1/binary/single",
        op: super::Op::Infobip(Op::Single),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/1/binary/multi",
        op: super::Op::Infobip(Op::Single),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/2/text/single",
        op: super::Op::Infobip(Op::Single),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/2/text/multi",
        op: super::Op::Infobip(Op::Single),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/2/binary/single",
        op: super::Op::Infobip(Op::Single),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/2/binary/multi",
        op: super::Op::Infobip(Op::Single),
    },
    Endpoint {
        method: "GET",
        pattern: "/sms/1/text/query",
        op: super::Op::Infobip(Op::Query),
    },
    Endpoint {
        method: "GET",
        pattern: "/sms/2/text/query",
        op: super::Op::Infobip(Op::Query),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/1/text/query",
        op: super::Op::Infobip(Op::Query),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/2/text/query",
        op: super::Op::Infobip(Op::Query),
    },
    // The successor of `/sms/1/text/query`, with the same parameters.
    Endpoint {
        method: "GET",
        pattern: "/sms/3/text/query",
        op: super::Op::Infobip(Op::QueryV3),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/3/text/query",
        op: super::Op::Infobip(Op::QueryV3),
    },
    // 2FA: `TfaApi` of the official clients.
    Endpoint {
        method: "POST",
        pattern: "/2fa/2/pin",
        op: super::Op::Infobip(Op::PinSms),
    },
    Endpoint {
        method: "POST",
        pattern: "/2fa/2/pin/voice",
        op: super::Op::Infobip(Op::PinVoice),
    },
    Endpoint {
        method: "POST",
        pattern: "/2fa/2/pin/{}/resend",
        op: super::Op::Infobip(Op::PinResend),
    },
    Endpoint {
        method: "POST",
        pattern: "/2fa/2/pin/{}/resend/voice",
        op: super::Op::Infobip(Op::PinResend),
    },
    Endpoint {
        method: "POST",
        pattern: "/2fa/2/pin/{}/verify",
        op: super::Op::Infobip(Op::PinVerify),
    },
];

/// Infobip API roots that pass through.
pub const ROOTS: &[&str] = &["/sms/1/**", "/sms/2/**", "/sms/3/**", "/2fa/2/**"];

/// Reads an Infobip request.
pub fn extract(op: Op, req: &RequestView<'_>) -> Result<Extracted, ExtractError> {
    match op {
        Op::Single => return extract_single(req),
        Op::Query | Op::QueryV3 => return extract_query(req),
        Op::PinSms | Op::PinVoice => return extract_pin(req),
        // The number is the one the `pinId` was started for; the body (placeholders, the
        // PIN) names none.
        Op::PinResend | Op::PinVerify => {
            return Ok(Extracted {
                verify_ref: req.param(0).filter(|p| !p.is_empty()),
                segments: 1,
                ..Extracted::default()
            })
        }
        Op::SendV2 | Op::SendV3 | Op::OutboundV3 => {}
    }
    if !req.is_json() {
        return Err(ExtractError::MalformedBody("Infobip takes a JSON body"));
    }
    let v = req.json()?;
    let messages = v
        .get("messages")
        .and_then(serde_json::Value::as_array)
        .ok_or(ExtractError::MissingRecipient(
            "messages[].destinations[].to",
        ))?;
    let mut out = Extracted {
        number_format: Some(crate::phone::NumberFormat::InternationalDigits),
        segments: 1,
        ..Extracted::default()
    };
    for m in messages {
        let destinations = m
            .get("destinations")
            .and_then(serde_json::Value::as_array)
            .ok_or(ExtractError::MissingRecipient(
                "messages[].destinations[].to",
            ))?;
        for d in destinations {
            let to = super::json_str(d, "to").ok_or(ExtractError::MissingRecipient(
                "messages[].destinations[].to",
            ))?;
            out.recipients.push(to.to_owned());
        }
        let (sender, text) = match op {
            Op::SendV3 => (
                super::json_str(m, "sender"),
                m.get("content").and_then(|c| super::json_str(c, "text")),
            ),
            Op::SendV2
            | Op::OutboundV3
            | Op::Single
            | Op::Query
            | Op::QueryV3
            | Op::PinSms
            | Op::PinVoice
            | Op::PinResend
            | Op::PinVerify => (super::json_str(m, "from"), super::json_str(m, "text")),
        };
        if out.sender.is_none() {
            out.sender = sender.map(str::to_owned);
        }
        out.segments = out.segments.max(text.map_or(1, segments::count));
    }
    if out.recipients.is_empty() {
        return Err(ExtractError::MissingRecipient(
            "messages[].destinations[].to",
        ));
    }
    Ok(out)
}

const ANY_TO: &str = "to";

/// A `to` of the older sends: one number or a list of them.
fn push_to(v: &serde_json::Value, out: &mut Vec<String>) -> Result<(), ExtractError> {
    match v.get("to") {
        Some(serde_json::Value::String(s)) => out.push(s.clone()),
        Some(serde_json::Value::Array(a)) => {
            for t in a {
                out.push(
                    t.as_str()
                        .ok_or(ExtractError::MissingRecipient(ANY_TO))?
                        .to_owned(),
                );
            }
        }
        _ => return Err(ExtractError::MissingRecipient(ANY_TO)),
    }
    Ok(())
}

/// Reads `/sms/{1,2}/{text,binary}/{single,multi}`.
fn extract_single(req: &RequestView<'_>) -> Result<Extracted, ExtractError> {
    if !req.is_json() {
        return Err(ExtractError::MalformedBody("Infobip takes a JSON body"));
    }
    let v = req.json()?;
    let mut out = Extracted {
        number_format: Some(crate::phone::NumberFormat::InternationalDigits),
        segments: 1,
        ..Extracted::default()
    };
    // `single` reads a top-level `to`, `multi` each of `messages[]`: a body with both is
    // read both ways, so that every number either endpoint may send to is decided.
    let mut messages: Vec<&serde_json::Value> = match v.get("messages") {
        Some(serde_json::Value::Array(m)) => m.iter().collect(),
        Some(_) => return Err(ExtractError::MissingRecipient(ANY_TO)),
        None => Vec::new(),
    };
    if messages.is_empty() || v.get("to").is_some() {
        messages.insert(0, &v);
    }
    for m in messages {
        push_to(m, &mut out.recipients)?;
        if out.sender.is_none() {
            out.sender = super::json_str(m, "from").map(str::to_owned);
        }
        let text = super::json_str(m, "text");
        out.segments = out.segments.max(text.map_or(1, segments::count));
    }
    if out.recipients.is_empty() {
        return Err(ExtractError::MissingRecipient(ANY_TO));
    }
    Ok(out)
}

/// Reads a 2FA start: one `to` (digits), `from` overriding the template's sender.
fn extract_pin(req: &RequestView<'_>) -> Result<Extracted, ExtractError> {
    if !req.is_json() {
        return Err(ExtractError::MalformedBody("Infobip 2FA takes a JSON body"));
    }
    let v = req.json()?;
    let to = match v.get("to") {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s.clone(),
        // Infobip's parser may read a number where smsfence expects a string.
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(serde_json::Value::String(_)) | Some(serde_json::Value::Null) | None => {
            return Err(ExtractError::MissingRecipient(ANY_TO))
        }
        Some(_) => return Err(ExtractError::Unsupported("a 2FA `to` that is not a number")),
    };
    Ok(Extracted {
        recipients: vec![to],
        number_format: Some(crate::phone::NumberFormat::InternationalDigits),
        sender: super::json_str(&v, "from")
            .or_else(|| super::json_str(&v, "applicationId"))
            .map(str::to_owned),
        segments: 1,
        ..Extracted::default()
    })
}

/// Reads `GET /sms/1/text/query`.
fn extract_query(req: &RequestView<'_>) -> Result<Extracted, ExtractError> {
    let query = req.query.unwrap_or("").as_bytes();
    let recipients: Vec<String> = super::form_values(query, "to")
        .iter()
        .flat_map(|t| t.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    if recipients.is_empty() {
        return Err(ExtractError::MissingRecipient(ANY_TO));
    }
    Ok(Extracted {
        recipients,
        number_format: Some(crate::phone::NumberFormat::InternationalDigits),
        sender: super::form_value(query, "from"),
        segments: super::form_value(query, "text").map_or(1, |t| segments::count(&t)),
        ..Extracted::default()
    })
}

/// Infobip's native error for a refusal.
pub fn refusal(op: Op, refusal: &Refusal<'_>) -> NativeResponse {
    let (status, id) = match refusal.kind {
        RefusalKind::Throttle { .. } => (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS"),
        RefusalKind::Block => (StatusCode::FORBIDDEN, "REJECTED"),
    };
    let message = refusal.message();
    let resp = if !op.v3() {
        NativeResponse::json(
            status,
            &V2 {
                request_error: RequestError {
                    service_exception: ServiceException {
                        message_id: id,
                        text: message,
                    },
                },
            },
        )
    } else {
        NativeResponse::json(
            status,
            &V3 {
                error_code: format!("E{}", status.as_u16()),
                description: message,
                action: if status == StatusCode::TOO_MANY_REQUESTS {
                    "Retry later."
                } else {
                    "Do not retry: the destination is refused by policy."
                },
                violations: [],
                resources: [],
            },
        )
    };
    resp.with_retry_after(refusal)
}

/// The v2 API's error body.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct V2 {
    request_error: RequestError,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestError {
    service_exception: ServiceException,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceException {
    message_id: &'static str,
    text: String,
}

/// The v3 API's error body.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct V3 {
    error_code: String,
    description: String,
    action: &'static str,
    violations: [(); 0],
    resources: [(); 0],
}

/// The sandbox's Infobip answer.
pub fn sandbox(op: Op, req: &RequestView<'_>, ex: &Extracted) -> NativeResponse {
    match op {
        Op::PinSms | Op::PinVoice | Op::PinResend | Op::PinVerify => {
            return sandbox_pin(op, req, ex)
        }
        Op::SendV2 | Op::SendV3 | Op::OutboundV3 | Op::Single | Op::Query | Op::QueryV3 => {}
    }
    let status = json!({"groupId": 1, "groupName": "PENDING", "id": 26, "name": "PENDING_ACCEPTED", "description": "Message sent to next instance"});
    let messages: Vec<serde_json::Value> = ex
        .recipients
        .iter()
        .map(|to| match op {
            Op::SendV3 | Op::QueryV3 => {
                json!({"messageId": sandbox_id("", 20), "status": status, "destination": to})
            }
            Op::SendV2
            | Op::OutboundV3
            | Op::Single
            | Op::Query
            | Op::PinSms
            | Op::PinVoice
            | Op::PinResend
            | Op::PinVerify => {
                json!({"messageId": sandbox_id("", 20), "status": status, "to": to})
            }
        })
        .collect();
    NativeResponse::json(
        StatusCode::OK,
        &json!({"bulkId": sandbox_id("", 20), "messages": messages}),
    )
}

/// The sandbox's 2FA answers. A check with the PIN `000000` is answered as a wrong PIN,
/// any other as verified.
fn sandbox_pin(op: Op, req: &RequestView<'_>, ex: &Extracted) -> NativeResponse {
    let to = ex.recipients.first();
    let pin_id = || req.param(0).unwrap_or_default();
    let body = match op {
        Op::PinSms => json!({
            "pinId": sandbox_id("", 32).to_uppercase(),
            "to": to,
            "ncStatus": "NC_DESTINATION_REACHABLE",
            "smsStatus": "MESSAGE_SENT",
        }),
        Op::PinVoice => json!({
            "pinId": sandbox_id("", 32).to_uppercase(),
            "to": to,
            "callStatus": "PENDING_ACCEPTED",
        }),
        // The number is smsfence's, from the `pinId`: not in this answer.
        Op::PinResend if req.path.to_ascii_lowercase().ends_with("/voice") => {
            json!({"pinId": pin_id(), "callStatus": "PENDING_ACCEPTED"})
        }
        Op::PinResend => json!({"pinId": pin_id(), "smsStatus": "MESSAGE_SENT"}),
        Op::PinVerify => {
            let pin = req
                .json()
                .ok()
                .and_then(|v| super::json_str(&v, "pin").map(str::to_owned));
            match pin.as_deref() {
                Some(p) if p != "000000" => json!({
                    "pinId": pin_id(),
                    "verified": true,
                    "attemptsRemaining": 0,
                    "pinError": "NO_ERROR",
                }),
                _ => json!({
                    "pinId": pin_id(),
                    "verified": false,
                    "attemptsRemaining": 2,
                    "pinError": "WRONG_PIN",
                }),
            }
        }
        Op::SendV2 | Op::SendV3 | Op::OutboundV3 | Op::Single | Op::Query | Op::QueryV3 => {
            json!({})
        }
    };
    NativeResponse::json(StatusCode::OK, &body)
}

/// Whether Infobip's answer starts or verifies a 2FA PIN.
pub fn conversion(
    op: Op,
    req: &RequestView<'_>,
    _ex: &Extracted,
    status: StatusCode,
    body: &[u8],
) -> ConversionSignal {
    if !matches!(op, Op::PinSms | Op::PinVoice | Op::PinVerify) {
        return ConversionSignal::None;
    }
    let Some(v) = super::success_json(status, body) else {
        return ConversionSignal::None;
    };
    match op {
        Op::PinSms | Op::PinVoice => match super::json_str(&v, "pinId") {
            Some(id) if !id.is_empty() => ConversionSignal::Started {
                reference: id.to_owned(),
            },
            _ => ConversionSignal::None,
        },
        Op::PinVerify if v.get("verified") == Some(&serde_json::Value::Bool(true)) => {
            ConversionSignal::Verified {
                // International digits: read as E.164 with the `+` they lack.
                number: super::json_str(&v, "msisdn")
                    .filter(|m| !m.is_empty())
                    .map(|m| format!("+{}", m.trim_start_matches('+'))),
                reference: req.param(0),
            }
        }
        _ => ConversionSignal::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Reason;
    use crate::providers::tests::{json_headers, view};

    #[test]
    fn v3_and_v2_destinations() {
        let h = json_headers();
        let v3 = br#"{"messages":[{"sender":"ACME","destinations":[{"to":"447400123456"},{"to":"447400123457"}],"content":{"text":"hi"}}]}"#;
        let ex = extract(Op::SendV3, &view(&h, &[], v3)).unwrap();
        assert_eq!(ex.recipients, vec!["447400123456", "447400123457"]);
        assert_eq!(ex.sender.as_deref(), Some("ACME"));
        let v2 =
            br#"{"messages":[{"from":"ACME","destinations":[{"to":"447400123456"}],"text":"hi"}]}"#;
        assert_eq!(
            extract(Op::SendV2, &view(&h, &[], v2)).unwrap().recipients,
            vec!["447400123456"]
        );
        assert!(matches!(
            extract(Op::SendV3, &view(&h, &[], br#"{"messages":[{}]}"#)),
            Err(ExtractError::MissingRecipient(_))
        ));
    }

    #[test]
    fn error_shapes() {
        let t = Refusal {
            kind: RefusalKind::Throttle {
                retry_after: std::time::Duration::from_secs(1),
            },
            reason: Reason::RateLimited,
            rule: "r",
            recipient: None,
            recipients: 1,
        };
        let r = refusal(Op::SendV2, &t);
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            v["requestError"]["serviceException"]["messageId"],
            "TOO_MANY_REQUESTS"
        );
        let r = refusal(
            Op::SendV3,
            &Refusal {
                kind: RefusalKind::Block,
                ..t
            },
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["errorCode"], "E403");
    }

    #[test]
    fn tfa_start_resend_and_verify() {
        let h = json_headers();
        let body =
            br#"{"applicationId":"APP1","messageId":"MSG1","from":"ACME","to":"447400123456"}"#;
        let ex = extract(Op::PinSms, &view(&h, &[], body)).unwrap();
        assert_eq!(ex.recipients, vec!["447400123456"]);
        assert_eq!(ex.sender.as_deref(), Some("ACME"));
        assert_eq!(
            ex.number_format,
            Some(crate::phone::NumberFormat::InternationalDigits)
        );
        let voice = br#"{"applicationId":"APP1","messageId":"MSG1","to":447400123456}"#;
        let ex = extract(Op::PinVoice, &view(&h, &[], voice)).unwrap();
        assert_eq!(ex.recipients, vec!["447400123456"]);
        assert_eq!(ex.sender.as_deref(), Some("APP1"));
        for bad in [
            &br#"{"applicationId":"A"}"#[..],
            br#"{"to":""}"#,
            br#"{"to":null}"#,
        ] {
            assert_eq!(
                extract(Op::PinSms, &view(&h, &[], bad)),
                Err(ExtractError::MissingRecipient("to"))
            );
        }
        assert!(matches!(
            extract(Op::PinSms, &view(&h, &[], br#"{"to":["447400123456"]}"#)),
            Err(ExtractError::Unsupported(_))
        ));
        assert!(matches!(
            extract(
                Op::PinSms,
                &view(&crate::providers::tests::form_headers(), &[], b"to=1")
            ),
            Err(ExtractError::MalformedBody(_))
        ));
        for op in [Op::PinResend, Op::PinVerify] {
            let ex = extract(op, &view(&h, &["PIN1"], br#"{"pin":"1234"}"#)).unwrap();
            assert_eq!(ex.verify_ref.as_deref(), Some("PIN1"));
            assert!(ex.recipients.is_empty());
        }
        assert_eq!(Op::PinResend.kind(), RequestKind::VerifyStart);
        assert_eq!(Op::PinVerify.kind(), RequestKind::VerifyCheck);
    }

    #[test]
    fn tfa_answers_are_conversion_signals() {
        let h = json_headers();
        let ex = Extracted::default();
        let started = conversion(
            Op::PinSms,
            &view(&h, &[], b""),
            &ex,
            StatusCode::OK,
            br#"{"pinId":"9C81","to":"41793026727","ncStatus":"NC_DESTINATION_REACHABLE","smsStatus":"MESSAGE_SENT"}"#,
        );
        assert_eq!(
            started,
            ConversionSignal::Started {
                reference: "9C81".into()
            }
        );
        let verified = conversion(
            Op::PinVerify,
            &view(&h, &["9C81"], b""),
            &ex,
            StatusCode::OK,
            br#"{"pinId":"9C81","msisdn":"41793026727","verified":true,"attemptsRemaining":0}"#,
        );
        assert_eq!(
            verified,
            ConversionSignal::Verified {
                number: Some("+41793026727".into()),
                reference: Some("9C81".into())
            }
        );
        for (status, body) in [
            (
                StatusCode::OK,
                &br#"{"pinId":"9C81","msisdn":"41793026727","verified":false,"pinError":"WRONG_PIN"}"#[..],
            ),
            (StatusCode::OK, br#"{"verified":"true"}"#),
            (StatusCode::BAD_REQUEST, br#"{"verified":true}"#),
            (StatusCode::OK, b"not json"),
        ] {
            assert_eq!(
                conversion(Op::PinVerify, &view(&h, &["9C81"], b""), &ex, status, body),
                ConversionSignal::None
            );
        }
        // A resend answers the same pinId: nothing new to remember.
        assert_eq!(
            conversion(
                Op::PinResend,
                &view(&h, &["9C81"], b""),
                &ex,
                StatusCode::OK,
                br#"{"pinId":"9C81"}"#
            ),
            ConversionSignal::None
        );
    }

    #[test]
    fn tfa_refusals_are_the_v2_shape() {
        let r = refusal(
            Op::PinSms,
            &Refusal {
                kind: RefusalKind::Block,
                reason: Reason::NumberType,
                rule: "r",
                recipient: None,
                recipients: 1,
            },
        );
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            v["requestError"]["serviceException"]["messageId"],
            "REJECTED"
        );
    }
}
