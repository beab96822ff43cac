//! Sinch SMS (XMS): `POST /xms/v1/{service_plan_id}/batches`, JSON `to` (an array),
//! `from`, `body`.
//!
//! `to` entries may also be group ids, which smsfence cannot check: such a batch is an
//! unsupported request. Errors are `{code, text}`. The Python SDK retries a 429 three
//! times by itself, so a block is a 403, never a 429.

use hyper::StatusCode;
use serde_json::json;

use super::{
    sandbox_id, segments, Endpoint, ExtractError, Extracted, NativeResponse, Refusal, RefusalKind,
    RequestView,
};
use crate::decide::Reason;

/// Sinch operations.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Send a batch (or replace a scheduled one: `PUT`, a whole new batch).
    Send,
    /// Update a scheduled batch: `to_add` are new recipients.
    Update,
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
];

/// Sinch API roots that pass through.
pub const ROOTS: &[&str] = &["/xms/**"];

/// Reads a Sinch request.
pub fn extract(op: Op, req: &RequestView<'_>) -> Result<Extracted, ExtractError> {
    if !req.is_json() {
        return Err(ExtractError::MalformedBody("Sinch takes a JSON body"));
    }
    let v = req.json()?;
    let to = match op {
        Op::Send => v.get("to"),
        // An update that adds no one (text, schedule, removals; or a dry run, which sends
        // nothing) has nothing to decide.
        Op::Update => match v.get("to_add") {
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

/// Sinch's native error for a refusal.
pub fn refusal(refusal: &Refusal<'_>) -> NativeResponse {
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

/// The sandbox's Sinch answer: the created batch.
pub fn sandbox(req: &RequestView<'_>, ex: &Extracted) -> NativeResponse {
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
        let r = refusal(&Refusal {
            kind: RefusalKind::Block,
            reason: Reason::PrefixVelocity,
            rule: "r",
            recipient: None,
            recipients: 1,
        });
        assert_eq!(r.status, StatusCode::FORBIDDEN);
    }
}
