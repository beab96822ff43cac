//! Sinch: TODO(issue 3) extraction, native errors and sandbox answers.

use hyper::StatusCode;

use super::{Endpoint, ExtractError, Extracted, NativeResponse, Refusal, RequestView};

/// Sinch operations.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Send a message.
    Send,
}

/// Sinch's sending endpoints.
pub const ENDPOINTS: &[Endpoint] = &[Endpoint {
    method: "POST",
    pattern: "/xms/v1/{}/batches",
    op: super::Op::Sinch(Op::Send),
}];

/// Sinch API roots that pass through.
pub const ROOTS: &[&str] = &["/xms/**"];

/// Reads a Sinch request.
pub fn extract(_op: Op, _req: &RequestView<'_>) -> Result<Extracted, ExtractError> {
    Err(ExtractError::Unsupported("not implemented yet"))
}

/// Sinch's native error for a refusal.
pub fn refusal(refusal: &Refusal<'_>) -> NativeResponse {
    NativeResponse::json(
        StatusCode::FORBIDDEN,
        &serde_json::json!({"error": refusal.message()}),
    )
}

/// The sandbox's Sinch answer.
pub fn sandbox(_req: &RequestView<'_>, _ex: &Extracted) -> NativeResponse {
    NativeResponse::json(StatusCode::OK, &serde_json::json!({}))
}
