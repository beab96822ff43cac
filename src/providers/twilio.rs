//! Twilio: Programmable Messaging and Verify v2.
//!
//! - `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`, form `To`, `From` or
//!   `MessagingServiceSid`, `Body`;
//! - `POST /2010-04-01/Accounts/{AccountSid}/OutgoingCallerIds.json`, form `PhoneNumber`
//!   (a caller-id validation: Twilio calls the number to read it a code);
//! - `POST /v2/Services/{ServiceSid}/Verifications`, form `To`, `Channel`;
//! - `POST /v2/Services/{ServiceSid}/VerificationCheck`, form `To` + `Code`, or
//!   `VerificationSid` + `Code`.
//!
//! Errors are Twilio's JSON `{code, message, more_info, status}`, which both the Python and
//! the Node SDK raise as their `RestException` carrying `.code` and `.status`. Neither SDK
//! retries a 429 by default.

use hyper::StatusCode;
use serde_json::json;

use super::{
    sandbox_id, segments, ConversionSignal, Endpoint, ExtractError, Extracted, NativeResponse,
    Refusal, RefusalKind, RequestKind, RequestView,
};
use crate::decide::Reason;

/// Twilio operations.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create a Message.
    Message,
    /// Start a Verify verification.
    VerifyStart,
    /// Check a Verify code.
    VerifyCheck,
    /// Validate a caller id: Twilio calls `PhoneNumber` to read it a code.
    ValidationRequest,
}

impl Op {
    /// The request kind.
    pub fn kind(self) -> RequestKind {
        match self {
            Op::Message => RequestKind::Send,
            Op::VerifyStart | Op::ValidationRequest => RequestKind::VerifyStart,
            Op::VerifyCheck => RequestKind::VerifyCheck,
        }
    }
}

/// Twilio's sending endpoints.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: "POST",
        pattern: "/2010-04-01/Accounts/{}/Messages.json",
        op: super::Op::Twilio(Op::Message),
    },
    // The 2010 API answers XML without an extension, and XML or CSV on request: the same
    // send.
    Endpoint {
        method: "POST",
        pattern: "/2010-04-01/Accounts/{}/Messages",
        op: super::Op::Twilio(Op::Message),
    },
    Endpoint {
        method: "POST",
        pattern: "/2010-04-01/Accounts/{}/Messages.xml",
        op: super::Op::Twilio(Op::Message),
    },
    Endpoint {
        method: "POST",
        pattern: "/2010-04-01/Accounts/{}/Messages.csv",
        op: super::Op::Twilio(Op::Message),
    },
    // A caller-id validation: a call to any number, in every representation.
    Endpoint {
        method: "POST",
        pattern: "/2010-04-01/Accounts/{}/OutgoingCallerIds.json",
        op: super::Op::Twilio(Op::ValidationRequest),
    },
    Endpoint {
        method: "POST",
        pattern: "/2010-04-01/Accounts/{}/OutgoingCallerIds",
        op: super::Op::Twilio(Op::ValidationRequest),
    },
    Endpoint {
        method: "POST",
        pattern: "/2010-04-01/Accounts/{}/OutgoingCallerIds.xml",
        op: super::Op::Twilio(Op::ValidationRequest),
    },
    Endpoint {
        method: "POST",
        pattern: "/2010-04-01/Accounts/{}/OutgoingCallerIds.csv",
        op: super::Op::Twilio(Op::ValidationRequest),
    },
    Endpoint {
        method: "POST",
        pattern: "/v2/Services/{}/Verifications",
        op: super::Op::Twilio(Op::VerifyStart),
    },
    Endpoint {
        method: "POST",
        pattern: "/v2/Services/{}/VerificationCheck",
        op: super::Op::Twilio(Op::VerifyCheck),
    },
];

/// Twilio API roots that pass through (message look-ups, lists, …).
pub const ROOTS: &[&str] = &["/2010-04-01/**", "/v2/Services/**"];

/// Reads a Twilio request.
pub fn extract(op: Op, req: &RequestView<'_>) -> Result<Extracted, ExtractError> {
    if !req.is_form() {
        return Err(ExtractError::MalformedBody(
            "Twilio takes application/x-www-form-urlencoded bodies",
        ));
    }
    let mut out = Extracted {
        segments: 1,
        ..Extracted::default()
    };
    let present = |t: Option<String>| t.filter(|t| !t.trim().is_empty());
    match op {
        Op::Message => {
            // A send reads four fields: one pass over the body.
            let [to, from, service, body] = super::form_first_unique(
                req.body,
                ["To", "From", "MessagingServiceSid", "Body"],
                [true, false, false, false],
            )
            .map_err(|_| ExtractError::Unsupported("several different `To`"))?;
            let to = present(to).ok_or(ExtractError::MissingRecipient("To"))?;
            match super::phone_part(&to) {
                Some(number) => out.recipients.push(number.into_owned()),
                None => return Err(ExtractError::Unsupported("a non-phone Twilio address")),
            }
            out.account = req.param(0);
            out.sender = from.or(service);
            out.segments = body.map_or(1, |b| segments::count(&b));
        }
        Op::VerifyStart => {
            let to = super::single_value(req.form_values("To"), "several different `To`")?;
            let to = present(to).ok_or(ExtractError::MissingRecipient("To"))?;
            let channel =
                super::single_value(req.form_values("Channel"), "several different `Channel`")?
                    .unwrap_or_default();
            out.account = req.basic_user();
            out.sender = req.param(0);
            match channel.as_str() {
                "email" | "auto" if to.contains('@') => out.no_phone = true,
                "email" => out.no_phone = true,
                _ => match super::phone_part(&to) {
                    Some(number) => out.recipients.push(number.into_owned()),
                    None => return Err(ExtractError::Unsupported("a non-phone Twilio address")),
                },
            }
        }
        Op::ValidationRequest => {
            let number = super::single_value(
                req.form_values("PhoneNumber"),
                "several different `PhoneNumber`",
            )?;
            let number = present(number).ok_or(ExtractError::MissingRecipient("PhoneNumber"))?;
            out.recipients.push(number);
            out.account = req.param(0);
        }
        Op::VerifyCheck => {
            out.account = req.basic_user();
            out.sender = req.param(0);
            // One pass over the body; a second, different `To` or `VerificationSid` is a
            // check of another number than the one smsfence would count and credit.
            let [to, sid] =
                super::form_first_unique(req.body, ["To", "VerificationSid"], [true, true])
                    .map_err(|key| {
                        ExtractError::Unsupported(if key == "To" {
                            "several different `To`"
                        } else {
                            "several different `VerificationSid`"
                        })
                    })?;
            match (present(to), sid) {
                (Some(to), _) if to.contains('@') => out.no_phone = true,
                (Some(to), _) => out.recipients.push(
                    super::phone_part(&to)
                        .ok_or(ExtractError::Unsupported("a non-phone Twilio address"))?
                        .into_owned(),
                ),
                (None, Some(sid)) => out.verify_ref = Some(sid),
                (None, None) => {
                    return Err(ExtractError::MissingRecipient("To or VerificationSid"))
                }
            }
        }
    }
    Ok(out)
}

/// Twilio's error code and HTTP status for a refusal.
fn code_for(op: Op, refusal: &Refusal<'_>) -> (StatusCode, u32) {
    let verify = matches!(op, Op::VerifyStart | Op::VerifyCheck);
    match (refusal.kind, verify) {
        (RefusalKind::Throttle { .. }, false) => (StatusCode::TOO_MANY_REQUESTS, 20429),
        // 60203: "Max send attempts reached".
        (RefusalKind::Throttle { .. }, true) => (StatusCode::TOO_MANY_REQUESTS, 60203),
        (RefusalKind::Block, false) => match refusal.reason {
            // 21211: "Invalid 'To' Phone Number".
            Reason::InvalidNumber => (StatusCode::BAD_REQUEST, 21211),
            // 21408: "Permission to send an SMS has not been enabled for the region".
            Reason::DeniedCountry | Reason::CountryNotAllowed => (StatusCode::BAD_REQUEST, 21408),
            // 21612: "The 'To' phone number is not currently reachable via SMS".
            Reason::NumberType => (StatusCode::BAD_REQUEST, 21612),
            Reason::UnsupportedRequest => (StatusCode::BAD_REQUEST, 21604),
            // 30007: "Message filtered" — the closest meaning for a fraud block.
            _ => (StatusCode::FORBIDDEN, 30007),
        },
        (RefusalKind::Block, true) => match refusal.reason {
            // 60200: "Invalid parameter".
            Reason::InvalidNumber | Reason::UnsupportedRequest => (StatusCode::BAD_REQUEST, 60200),
            // 60605: "Verification delivery attempt blocked" (geo permissions).
            Reason::DeniedCountry | Reason::CountryNotAllowed => (StatusCode::FORBIDDEN, 60605),
            // 60410: "Verification delivery attempt blocked" (fraud guard).
            _ => (StatusCode::FORBIDDEN, 60410),
        },
    }
}

/// Twilio's native error for a refusal.
pub fn refusal(op: Op, refusal: &Refusal<'_>) -> NativeResponse {
    /// Twilio's REST error body.
    #[derive(serde::Serialize)]
    struct Error {
        code: u32,
        message: String,
        more_info: String,
        status: u16,
    }
    let (status, code) = code_for(op, refusal);
    NativeResponse::json(
        status,
        &Error {
            code,
            message: refusal.message(),
            more_info: format!("https://www.twilio.com/docs/errors/{code}"),
            status: status.as_u16(),
        },
    )
    .with_retry_after(refusal)
}

/// The sandbox's Twilio answer.
pub fn sandbox(op: Op, req: &RequestView<'_>, ex: &Extracted) -> NativeResponse {
    let to = req.form_value("To").unwrap_or_default();
    let now = "Mon, 01 Jan 2024 00:00:00 +0000";
    match op {
        Op::Message => {
            let account = req.param(0).unwrap_or_default();
            let sid = sandbox_id("SM", 32);
            NativeResponse::json(
                StatusCode::CREATED,
                &json!({
                    "account_sid": account,
                    "api_version": "2010-04-01",
                    "body": req.form_value("Body").unwrap_or_default(),
                    "date_created": now,
                    "date_sent": null,
                    "date_updated": now,
                    "direction": "outbound-api",
                    "error_code": null,
                    "error_message": null,
                    "from": req.form_value("From"),
                    "messaging_service_sid": req.form_value("MessagingServiceSid"),
                    "num_media": "0",
                    "num_segments": ex.segments.to_string(),
                    "price": null,
                    "price_unit": "USD",
                    "sid": sid,
                    "status": "queued",
                    "subresource_uris": {"media": format!("/2010-04-01/Accounts/{account}/Messages/{sid}/Media.json")},
                    "to": to,
                    "uri": format!("/2010-04-01/Accounts/{account}/Messages/{sid}.json"),
                }),
            )
        }
        Op::ValidationRequest => NativeResponse::json(
            StatusCode::CREATED,
            &json!({
                "account_sid": req.param(0),
                "call_sid": sandbox_id("CA", 32),
                "friendly_name": req.form_value("FriendlyName"),
                "phone_number": req.form_value("PhoneNumber"),
                "validation_code": "123456",
            }),
        ),
        Op::VerifyStart => NativeResponse::json(
            StatusCode::CREATED,
            &json!({
                "sid": sandbox_id("VE", 32),
                "service_sid": req.param(0),
                "account_sid": ex.account,
                "to": to,
                "channel": req.form_value("Channel").unwrap_or_else(|| "sms".into()),
                "status": "pending",
                "valid": false,
                "lookup": {},
                "amount": null,
                "payee": null,
                "send_code_attempts": [],
                "date_created": "2024-01-01T00:00:00Z",
                "date_updated": "2024-01-01T00:00:00Z",
                "url": "https://verify.twilio.com/v2/Services/sandbox/Verifications/sandbox",
            }),
        ),
        Op::VerifyCheck => {
            // The sandbox approves any code except "000000", which stays pending.
            let approved = req.form_value("Code").is_some_and(|c| c != "000000");
            NativeResponse::json(
                StatusCode::OK,
                &json!({
                    "sid": req.form_value("VerificationSid").unwrap_or_else(|| sandbox_id("VE", 32)),
                    "service_sid": req.param(0),
                    "account_sid": ex.account,
                    "to": to,
                    "channel": "sms",
                    "status": if approved { "approved" } else { "pending" },
                    "valid": approved,
                    "amount": null,
                    "payee": null,
                    "date_created": "2024-01-01T00:00:00Z",
                    "date_updated": "2024-01-01T00:00:00Z",
                }),
            )
        }
    }
}

/// Whether Twilio's answer starts or approves a verification.
pub fn conversion(
    op: Op,
    _req: &RequestView<'_>,
    ex: &Extracted,
    status: StatusCode,
    body: &[u8],
) -> ConversionSignal {
    let Some(v) = super::success_json(status, body) else {
        return ConversionSignal::None;
    };
    match op {
        Op::Message | Op::ValidationRequest => ConversionSignal::None,
        Op::VerifyStart => match super::json_str(&v, "sid") {
            Some(sid) => ConversionSignal::Started {
                reference: sid.to_owned(),
            },
            None => ConversionSignal::None,
        },
        Op::VerifyCheck => {
            if super::json_str(&v, "status") != Some("approved") {
                return ConversionSignal::None;
            }
            let number = ex
                .recipients
                .first()
                .cloned()
                .or_else(|| super::json_str(&v, "to").map(str::to_owned));
            ConversionSignal::Verified {
                number,
                reference: super::json_str(&v, "sid")
                    .map(str::to_owned)
                    .or_else(|| ex.verify_ref.clone()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderMap, HeaderValue};
    use hyper::Method;

    fn view<'a>(headers: &'a HeaderMap, params: &'a [&'a str], body: &'a [u8]) -> RequestView<'a> {
        RequestView {
            method: &Method::POST,
            path: "/",
            params,
            query: None,
            headers,
            body,
        }
    }

    fn form_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        h
    }

    #[test]
    fn message_python_and_node_encodings() {
        let h = form_headers();
        for body in [
            &b"To=%2B14155550123&From=%2B15005550006&Body=Your+code+is+123456"[..],
            &b"To=%2B14155550123&From=%2B15005550006&Body=Your%20code%20is%20123456"[..],
        ] {
            let ex = extract(Op::Message, &view(&h, &["AC123"], body)).unwrap();
            assert_eq!(ex.recipients, vec!["+14155550123"]);
            assert_eq!(ex.account.as_deref(), Some("AC123"));
            assert_eq!(ex.sender.as_deref(), Some("+15005550006"));
            assert_eq!(ex.segments, 1);
        }
    }

    #[test]
    fn message_whatsapp_prefix_and_missing_to() {
        let h = form_headers();
        let ex = extract(
            Op::Message,
            &view(&h, &["AC1"], b"To=whatsapp%3A%2B447700900123&Body=x"),
        )
        .unwrap();
        assert_eq!(ex.recipients, vec!["+447700900123"]);
        assert_eq!(
            extract(Op::Message, &view(&h, &["AC1"], b"Body=x")),
            Err(ExtractError::MissingRecipient("To"))
        );
    }

    #[test]
    fn wrong_content_type_and_invalid_utf8() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        assert!(matches!(
            extract(Op::Message, &view(&h, &["AC1"], b"{\"To\":\"+1\"}")),
            Err(ExtractError::MalformedBody(_))
        ));
        let h = form_headers();
        // Invalid UTF-8 is decoded lossily, so the number is simply not valid.
        let ex = extract(Op::Message, &view(&h, &["AC1"], b"To=\xff\xfe&Body=\xff")).unwrap();
        assert_eq!(ex.recipients.len(), 1);
    }

    #[test]
    fn verify_start_and_check() {
        let h = form_headers();
        let ex = extract(
            Op::VerifyStart,
            &view(&h, &["VA1"], b"To=%2B14155550123&Channel=sms"),
        )
        .unwrap();
        assert_eq!(ex.recipients, vec!["+14155550123"]);
        let email = extract(
            Op::VerifyStart,
            &view(&h, &["VA1"], b"To=a%40b.com&Channel=email"),
        )
        .unwrap();
        assert!(email.no_phone);
        let by_sid = extract(
            Op::VerifyCheck,
            &view(&h, &["VA1"], b"VerificationSid=VE1&Code=1234"),
        )
        .unwrap();
        assert_eq!(by_sid.verify_ref.as_deref(), Some("VE1"));
        assert!(by_sid.recipients.is_empty());
    }

    /// A check names its number (or verification) once: smsfence would count and credit
    /// the first `To`, and a last-wins reader check the code of the other.
    #[test]
    fn check_with_two_different_numbers_or_sids_is_unsupported() {
        let h = form_headers();
        for body in [
            &b"To=%2B447400123456&To=%2B447400123457&Code=123456"[..],
            b"VerificationSid=VE1&VerificationSid=VE2&Code=123456",
        ] {
            assert!(
                matches!(
                    extract(Op::VerifyCheck, &view(&h, &["VAxxx"], body)),
                    Err(ExtractError::Unsupported(_))
                ),
                "{body:?}"
            );
        }
        let same = extract(
            Op::VerifyCheck,
            &view(
                &h,
                &["VAxxx"],
                b"To=%2B447400123456&To=%2B447400123456&Code=1",
            ),
        )
        .unwrap();
        assert_eq!(same.recipients, vec!["+447400123456"]);
    }

    #[test]
    fn approved_check_is_a_conversion() {
        let h = form_headers();
        let v = view(&h, &["VA1"], b"To=%2B14155550123&Code=1234");
        let ex = extract(Op::VerifyCheck, &v).unwrap();
        let sig = conversion(
            Op::VerifyCheck,
            &v,
            &ex,
            StatusCode::OK,
            br#"{"status":"approved","sid":"VE9"}"#,
        );
        assert_eq!(
            sig,
            ConversionSignal::Verified {
                number: Some("+14155550123".into()),
                reference: Some("VE9".into())
            }
        );
        let pending = conversion(
            Op::VerifyCheck,
            &v,
            &ex,
            StatusCode::OK,
            br#"{"status":"pending"}"#,
        );
        assert_eq!(pending, ConversionSignal::None);
    }

    #[test]
    fn block_is_not_a_429_and_throttle_is() {
        let block = Refusal {
            kind: RefusalKind::Block,
            reason: Reason::NumberType,
            rule: "deny-types",
            recipient: None,
            recipients: 1,
        };
        let r = refusal(Op::Message, &block);
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["code"], 21612);
        let throttle = Refusal {
            kind: RefusalKind::Throttle {
                retry_after: std::time::Duration::from_millis(1500),
            },
            ..block
        };
        let r = refusal(Op::Message, &throttle);
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(r
            .headers
            .iter()
            .any(|(n, v)| n == "retry-after" && v == "2"));
    }
}
