//! Telnyx: TODO(issue 3) extraction, native errors and sandbox answers.

use hyper::StatusCode;

use super::{Endpoint, ExtractError, Extracted, NativeResponse, Refusal, RequestView};

/// Telnyx operations.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Send a message.
    Send,
}

/// Telnyx's sending endpoints.
pub const ENDPOINTS: &[Endpoint] = &[Endpoint {
    method: "POST",
    pattern: "/v2/messages",
    op: super::Op::Telnyx(Op::Send),
}];

/// Telnyx API roots that pass through.
pub const ROOTS: &[&str] = &["/v2/**"];

/// Reads a Telnyx request.
pub fn extract(_op: Op, _req: &RequestView<'_>) -> Result<Extracted, ExtractError> {
    Err(ExtractError::Unsupported("not implemented yet"))
}

/// Telnyx's native error for a refusal.
pub fn refusal(refusal: &Refusal<'_>) -> NativeResponse {
    NativeResponse::json(
        StatusCode::FORBIDDEN,
        &serde_json::json!({"error": refusal.message()}),
    )
}

/// The sandbox's Telnyx answer.
pub fn sandbox(_req: &RequestView<'_>, _ex: &Extracted) -> NativeResponse {
    NativeResponse::json(StatusCode::OK, &serde_json::json!({}))
}
