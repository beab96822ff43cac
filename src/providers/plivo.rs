//! Plivo: `POST /v1/Account/{auth_id}/Message/` and `…/Message/Bulk/`, JSON `dst`
//! (several numbers joined by `<`, or a list), `src` or `powerpack_uuid`, `text`.
//!
//! Errors are `{api_id, error}`; the SDKs surface `error` in their exception
//! (`PlivoRestError`, `ValidationError` for 400). A block is a 400, a throttle a 429.

use hyper::StatusCode;
use serde_json::json;

use super::{
    sandbox_id, segments, Endpoint, ExtractError, Extracted, NativeResponse, Refusal, RefusalKind,
    RequestView,
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
}

impl Op {
    /// The request kind.
    pub fn kind(self) -> super::RequestKind {
        match self {
            Op::Send => super::RequestKind::Send,
            Op::VerifySession | Op::VerifyCallerId => super::RequestKind::VerifyStart,
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
        pattern: "/v1/Account/{}/VerifiedCallerId/",
        op: super::Op::Plivo(Op::VerifyCallerId),
    },
];

/// Plivo API roots that pass through.
pub const ROOTS: &[&str] = &["/v1/Account/**"];

/// Reads a Plivo request.
pub fn extract(op: Op, req: &RequestView<'_>) -> Result<Extracted, ExtractError> {
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

/// The sandbox's Plivo answer.
pub fn sandbox(_req: &RequestView<'_>, ex: &Extracted) -> NativeResponse {
    NativeResponse::json(
        StatusCode::ACCEPTED,
        &json!({
            "api_id": uuid(),
            "message": "message(s) queued",
            "message_uuid": ex.recipients.iter().map(|_| uuid()).collect::<Vec<_>>(),
        }),
    )
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
