//! The generic extractor: TODO(issue 3).

use serde::Deserialize;

use super::{ExtractError, Extracted, NativeResponse, Refusal, RequestView};

/// `[route.generic]`: how to read any other HTTP SMS API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericConfig {
    /// The method of the send request.
    pub method: String,
    /// The path pattern of the send request.
    pub path: String,
}

/// A compiled generic extractor.
#[derive(Debug, Clone)]
pub struct Generic {
    /// The method.
    pub method: String,
    /// The path pattern.
    pub path: String,
    /// API roots that pass through.
    pub roots: Vec<String>,
}

impl GenericConfig {
    /// Checks and compiles the extractor.
    pub fn compile(&self) -> Result<Generic, String> {
        Ok(Generic {
            method: self.method.clone(),
            path: self.path.clone(),
            roots: Vec::new(),
        })
    }
}

impl Generic {
    /// Reads a request.
    pub fn extract(&self, _req: &RequestView<'_>) -> Result<Extracted, ExtractError> {
        Err(ExtractError::Unsupported("not implemented yet"))
    }
}

/// The configured refusal response.
pub fn refusal(_g: Option<&Generic>, refusal: &Refusal<'_>) -> NativeResponse {
    NativeResponse::json(
        hyper::StatusCode::FORBIDDEN,
        &serde_json::json!({"error": refusal.message()}),
    )
}
