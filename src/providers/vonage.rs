//! Vonage: TODO(issue 3) extraction, native errors and sandbox answers.

use hyper::StatusCode;

use super::{
    ConversionSignal, Endpoint, ExtractError, Extracted, NativeResponse, Refusal, RequestKind,
    RequestView,
};

/// Vonage operations.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `/sms/json`.
    Sms,
    /// `/v2/verify` start.
    VerifyStart,
    /// `/v2/verify/{request_id}` check.
    VerifyCheck,
}

impl Op {
    /// The request kind.
    pub fn kind(self) -> RequestKind {
        match self {
            Op::Sms => RequestKind::Send,
            Op::VerifyStart => RequestKind::VerifyStart,
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
];

/// Vonage API roots that pass through.
pub const ROOTS: &[&str] = &["/sms/**", "/v2/verify/**"];

/// Reads a Vonage request.
pub fn extract(_op: Op, _req: &RequestView<'_>) -> Result<Extracted, ExtractError> {
    Err(ExtractError::Unsupported("not implemented yet"))
}

/// Vonage's native error for a refusal.
pub fn refusal(_op: Op, refusal: &Refusal<'_>) -> NativeResponse {
    NativeResponse::json(
        StatusCode::FORBIDDEN,
        &serde_json::json!({"error": refusal.message()}),
    )
}

/// The sandbox's Vonage answer.
pub fn sandbox(_op: Op, _req: &RequestView<'_>, _ex: &Extracted) -> NativeResponse {
    NativeResponse::json(StatusCode::OK, &serde_json::json!({}))
}

/// Whether Vonage's answer starts or approves a verification.
pub fn conversion(
    _op: Op,
    _req: &RequestView<'_>,
    _ex: &Extracted,
    _status: StatusCode,
    _body: &[u8],
) -> ConversionSignal {
    ConversionSignal::None
}
