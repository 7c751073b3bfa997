//! The vault's errors, in the contract's shape `{"error": {"type", "code", "message", "param"}}`.
//! Messages and params are scrubbed when built and again when serialized: a caller who pastes a
//! card number into the wrong field must not get it echoed back.

use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use serde_json::json;

use paystream_shared::telemetry::scrub;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct VaultError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: String,
    pub message: String,
    pub param: Option<String>,
}

impl VaultError {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: &str,
        message: impl Into<String>,
    ) -> Self {
        VaultError {
            status,
            kind,
            code: code.to_owned(),
            message: scrub(&message.into()),
            param: None,
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(scrub(&param.into()));
        self
    }

    pub fn invalid(code: &str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            code,
            message,
        )
    }

    /// A card the issuer's rules refuse before anyone is asked (Stripe's `card_error`).
    pub fn card(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "card_error", code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "unauthorized",
            message,
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "role_not_allowed",
            message,
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "resource_missing",
            message,
        )
    }

    pub fn token_invalid() -> Self {
        Self::invalid(
            "token_invalid",
            "The token is unknown, expired, already used or belongs to another merchant.",
        )
        .with_param("token")
    }

    pub fn idempotency_reused() -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_error",
            "idempotency_key_reused",
            "This Idempotency-Key was already used with a different body. Use a new key for a new request.",
        )
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "body_too_large",
            format!("The request body exceeds {limit} bytes"),
        )
    }

    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "invalid_request_error", code, message)
    }

    pub fn bad_gateway(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "api_error", code, message)
    }

    /// An unexpected failure: the cause goes to the log (scrubbed like every line), the caller
    /// learns only that it happened.
    pub fn internal(cause: &dyn std::error::Error) -> Self {
        let mut chain = cause.to_string();
        let mut source = cause.source();
        while let Some(s) = source {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            source = s.source();
        }
        tracing::error!(error = %chain, "vault internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "internal_error",
            "An unexpected error occurred; it has been logged.",
        )
    }

    pub fn body(&self) -> serde_json::Value {
        let mut inner = json!({
            "type": self.kind,
            "code": self.code,
            "message": scrub(&self.message),
        });
        if let Some(param) = &self.param {
            inner["param"] = scrub(param).into();
        }
        json!({ "error": inner })
    }
}

impl From<sqlx::Error> for VaultError {
    fn from(e: sqlx::Error) -> Self {
        VaultError::internal(&e)
    }
}

impl From<crate::crypto::CryptoError> for VaultError {
    fn from(e: crate::crypto::CryptoError) -> Self {
        VaultError::internal(&e)
    }
}

impl IntoResponse for VaultError {
    fn into_response(self) -> Response {
        Response::builder()
            .status(self.status)
            .content_type("application/json")
            .body(self.body().to_string())
    }
}
