//! Infobip: TODO(issue 3) extraction, native errors and sandbox answers.

use hyper::StatusCode;

use super::{Endpoint, ExtractError, Extracted, NativeResponse, Refusal, RequestView};

/// Infobip operations.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `/sms/3/messages`.
    SendV3,
    /// `/sms/2/text/advanced`.
    SendV2,
}

/// Infobip's sending endpoints.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: "POST",
        pattern: "/sms/3/messages",
        op: super::Op::Infobip(Op::SendV3),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/2/text/advanced",
        op: super::Op::Infobip(Op::SendV2),
    },
];

/// Infobip API roots that pass through.
pub const ROOTS: &[&str] = &["/sms/1/**", "/sms/2/**", "/sms/3/**"];

/// Reads an Infobip request.
pub fn extract(_op: Op, _req: &RequestView<'_>) -> Result<Extracted, ExtractError> {
    Err(ExtractError::Unsupported("not implemented yet"))
}

/// Infobip's native error for a refusal.
pub fn refusal(refusal: &Refusal<'_>) -> NativeResponse {
    NativeResponse::json(
        StatusCode::FORBIDDEN,
        &serde_json::json!({"error": refusal.message()}),
    )
}

/// The sandbox's Infobip answer.
pub fn sandbox(_op: Op, _req: &RequestView<'_>, _ex: &Extracted) -> NativeResponse {
    NativeResponse::json(StatusCode::OK, &serde_json::json!({}))
}
