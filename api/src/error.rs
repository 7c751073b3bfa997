//! The API's error type and the contract's error shape:
//! `{"error": {"type", "code", "message", "param"}}` with the most specific status.
//! Caller mistakes carry a code from docs/errors.md; unexpected failures become an opaque 500
//! whose cause is logged, never shown.
//!
//! Messages and params often quote what the caller sent (an id, a currency, a metadata key), and
//! callers paste card numbers and keys into the wrong field, so both are scrubbed when the error
//! is built and again when it is serialized (the fields are public and may be set directly).

use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use serde::Serialize;

use paystream_shared::domain::DomainError;
use paystream_shared::store::StoreError;
use paystream_shared::telemetry::scrub;

/// PostgreSQL's SQLSTATEs for text it cannot store: `character_not_in_repertoire` (a NUL byte
/// in a `text` parameter) and `untranslatable_character` (`\u0000` inside `jsonb`). Only what a
/// caller sent can carry such a character, so they are the caller's mistake, never a 500.
const INVALID_TEXT_SQLSTATES: &[&str] = &["22021", "22P05"];

#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: String,
    pub message: String,
    pub param: Option<String>,
    pub retry_after_secs: Option<u64>,
}

/// The contract code of an error response, carried in the response's extensions.
#[derive(Debug, Clone)]
pub struct ErrorCode(pub String);

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    param: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            code: code.to_owned(),
            message: scrub(&message.into()),
            param: None,
            retry_after_secs: None,
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

    /// A CORS preflight from an origin no publishable key lists (or with no origin at all).
    pub fn cors_refused() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "origin_not_allowed",
            "This origin is not allowed: add it to a publishable key with `paystream keys create --role publishable --origin ...`.",
        )
    }

    pub fn not_found(what: &str, id: &str) -> Self {
        // Scrub before cutting, so a card number split by the cut cannot leave a fragment behind.
        let shown: String = scrub(id).chars().take(64).collect();
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "resource_missing",
            format!("No such {what}: '{shown}'"),
        )
    }

    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "invalid_request_error", code, message)
    }

    pub fn idempotency_reused() -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_error",
            "idempotency_key_reused",
            "This Idempotency-Key was already used with a different method, path or body. Use a new key for a new request.",
        )
    }

    /// The request's Idempotency-Key lock was taken over by a retry while it ran (it took
    /// longer than the lock's TTL): it was rolled back and did nothing. The retry's answer is
    /// the one that counts; sending the request again replays it.
    /// A retry that waited the lock's TTL for a request still running under its key.
    pub fn idempotency_busy() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "idempotency_error",
            "idempotency_key_in_use",
            "Another request with this Idempotency-Key is still running, so this one changed nothing. Send the request again later to get that request's answer.",
        )
    }

    pub fn idempotency_in_use() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "idempotency_error",
            "idempotency_key_in_use",
            "Another request with this Idempotency-Key took over while this one ran, so this one was rolled back and changed nothing. Send the request again to get that request's answer.",
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

    /// An unexpected failure. The cause goes to the log; the client sees only that it happened.
    pub fn internal(cause: &dyn std::error::Error) -> Self {
        tracing::error!(error = %error_chain(cause), "internal error");
        Self::opaque_internal()
    }

    /// The contract's opaque 500: it says that something failed, never what.
    fn opaque_internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "internal_error",
            "An unexpected error occurred; it has been logged. Retrying with the same Idempotency-Key is safe.",
        )
    }

    /// Over the caller's request rate; `Retry-After` says when a request will be accepted again.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        let mut err = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate_limited",
            "Too many requests with this API key; retry after the time in the Retry-After header.",
        );
        err.retry_after_secs = Some(retry_after_secs.max(1));
        err
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "service_unavailable",
            message,
        )
    }

    /// The response body bytes, as stored for idempotent replays.
    pub fn body_bytes(&self) -> Vec<u8> {
        let message = scrub(&self.message);
        let param = self.param.as_deref().map(scrub);
        let body = Body {
            error: Inner {
                kind: self.kind,
                code: &self.code,
                message: &message,
                param: param.as_deref(),
            },
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

/// What a panicking handler answers: the opaque 500, with the panic's message in the log (not
/// in the body). Used by the Idempotency-Key layer, which also frees the key, and by the guard
/// around every route.
pub fn panic_response(payload: &(dyn std::any::Any + Send)) -> Response {
    let cause = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-text payload".to_owned());
    tracing::error!(panic = %cause, "request handler panicked");
    ApiError::opaque_internal().as_response_owned()
}

/// [`panic_response`] as poem's `CatchPanic` handler.
#[derive(Debug, Clone, Copy)]
pub struct PanicAnswer;

impl poem::middleware::PanicHandler for PanicAnswer {
    type Response = Response;

    fn get_response(&self, err: Box<dyn std::any::Any + Send + 'static>) -> Response {
        panic_response(err.as_ref())
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl poem::error::ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn as_response(&self) -> Response {
        let mut resp = Response::builder()
            .status(self.status)
            .content_type("application/json")
            .body(self.body_bytes());
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut().insert("Retry-After", secs.into());
        }
        // For the request's log line (`request_id.rs`), which sees only the response.
        resp.extensions_mut().insert(ErrorCode(self.code.clone()));
        resp
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        // State conflicts are 409s; everything else a caller can get wrong is a 400.
        let err = if matches!(e.code, "invalid_state_transition" | "charge_disputed") {
            ApiError::conflict(e.code, e.message)
        } else {
            ApiError::invalid(e.code, e.message)
        };
        match e.param {
            Some(p) => err.with_param(p),
            None => err,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InvalidTransition(d) | StoreError::Rejected(d) => d.into(),
            StoreError::Conflict { object, id, expected } => ApiError::conflict(
                "invalid_state_transition",
                format!("The {object} {id} changed while this request ran; it is no longer `{expected}`"),
            ),
            StoreError::NotFound(id) => ApiError::not_found("object", &id),
            StoreError::Db(e) => e.into(),
            other => ApiError::internal(&other),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        let sqlstate = e
            .as_database_error()
            .and_then(|d| d.code())
            .filter(|code| INVALID_TEXT_SQLSTATES.contains(&code.as_ref()));
        match sqlstate {
            Some(code) => {
                tracing::info!(sqlstate = %code, "refused a parameter PostgreSQL cannot store");
                ApiError::invalid(
                    "parameter_invalid",
                    "A parameter contains a character that cannot be stored (such as U+0000)",
                )
            }
            // Every connection of the pool stayed busy past its acquire timeout: the
            // database is saturated, not broken. A 503 with Retry-After tells the client to
            // back off and retry with the same Idempotency-Key; nothing was written.
            None if matches!(e, sqlx::Error::PoolTimedOut) => {
                tracing::warn!("no database connection within the pool's timeout");
                let mut err = ApiError::unavailable(
                    "The service is overloaded; retry shortly with the same Idempotency-Key.",
                );
                err.retry_after_secs = Some(1);
                err
            }
            None => ApiError::internal(&e),
        }
    }
}

/// Maps any error that escaped a handler (poem's own parse errors, unknown routes, ...) to the
/// contract's shape, so no client ever sees a bare text error.
pub fn to_contract_response(err: poem::Error) -> Response {
    if let Some(api) = err.downcast_ref::<ApiError>() {
        return api.as_response_owned();
    }
    let status = err.status();
    let message = err.to_string();
    let api = match status {
        StatusCode::NOT_FOUND => ApiError::new(
            status,
            "invalid_request_error",
            "resource_missing",
            "Unrecognized request URL",
        ),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::new(
            status,
            "invalid_request_error",
            "method_not_allowed",
            "This method is not allowed on this URL",
        ),
        StatusCode::UNAUTHORIZED => {
            ApiError::unauthorized("A valid secret key is required: Authorization: Bearer <key>")
        }
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(crate::MAX_BODY_BYTES),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "parameter_invalid",
            "The request body must be JSON (Content-Type: application/json)",
        ),
        s if s.is_client_error() => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "parameter_invalid",
            scrub_message(&message),
        ),
        _ => {
            tracing::error!(error = %message, %status, "unhandled error");
            ApiError::opaque_internal()
        }
    };
    api.as_response_owned()
}

fn scrub_message(message: &str) -> String {
    paystream_shared::telemetry::scrub(message)
        .chars()
        .take(300)
        .collect()
}

impl ApiError {
    fn as_response_owned(&self) -> Response {
        poem::error::ResponseError::as_response(self)
    }
}

/// Lets handlers return `Result<_, ApiError>`. The error responses are documented once in the
/// API description rather than per operation.
impl poem_openapi::ApiResponse for ApiError {
    fn meta() -> poem_openapi::registry::MetaResponses {
        poem_openapi::registry::MetaResponses {
            responses: Vec::new(),
        }
    }

    fn register(_registry: &mut poem_openapi::registry::Registry) {}
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.as_response_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saturated_pool_is_a_503_with_retry_after_not_a_500() {
        let err = ApiError::from(sqlx::Error::PoolTimedOut);
        assert_eq!(err.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(err.code, "service_unavailable");
        assert_eq!(err.retry_after_secs, Some(1));
        let err = ApiError::from(sqlx::Error::RowNotFound);
        assert_eq!(err.status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn body_has_the_contract_shape() {
        let e = ApiError::invalid("parameter_invalid", "bad").with_param("amount");
        let v: serde_json::Value = serde_json::from_slice(&e.body_bytes()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"type": "invalid_request_error", "code": "parameter_invalid", "message": "bad", "param": "amount"}})
        );
    }

    #[test]
    fn domain_errors_map_to_400_or_409() {
        let d = DomainError::new("invalid_state_transition", None, "no");
        assert_eq!(ApiError::from(d).status, StatusCode::CONFLICT);
        let d = DomainError::new("currency_invalid", Some("currency".into()), "no");
        let e = ApiError::from(d);
        assert_eq!(
            (e.status, e.param.as_deref()),
            (StatusCode::BAD_REQUEST, Some("currency"))
        );
    }

    #[test]
    fn bodies_never_echo_a_card_number_or_a_key() {
        let pan = "4242424242424242";
        let key = "sk_test_0123456789abcdefghij";
        let errors = [
            ApiError::not_found("payment_intent", pan),
            // Cut at 64 characters before scrubbing, this would leave 9 digits behind.
            ApiError::not_found("refund", &format!("{} {pan}", "x".repeat(54))),
            ApiError::invalid("currency_invalid", format!("`{pan}` is no currency")),
            ApiError::invalid("metadata_invalid", "too long")
                .with_param(format!("metadata[{pan}]")),
            ApiError::invalid("parameter_invalid", format!("bad {key}")).with_param(key),
            // Fields set directly, after construction, are caught when serialized.
            ApiError {
                message: format!("raw {pan} {key}"),
                param: Some(pan.to_owned()),
                ..ApiError::invalid("parameter_invalid", "x")
            },
        ];
        for e in errors {
            let body = String::from_utf8(e.body_bytes()).unwrap();
            assert!(!body.contains("42424242"), "{body}");
            assert!(!body.contains("0123456789abcdef"), "{body}");
        }
    }

    #[test]
    fn rate_limited_is_a_429_with_retry_after() {
        let resp = ApiError::rate_limited(0).into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers().get("Retry-After").unwrap(), "1");
        let e = ApiError::rate_limited(3);
        assert_eq!(
            (e.code.as_str(), e.retry_after_secs),
            ("rate_limited", Some(3))
        );
    }

    #[test]
    fn foreign_errors_get_the_shape_too() {
        let resp = to_contract_response(poem::Error::from_status(StatusCode::NOT_FOUND));
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let resp = to_contract_response(poem::Error::from_string("boom", StatusCode::BAD_GATEWAY));
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let resp =
            to_contract_response(poem::Error::from_status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let mut too_big =
            to_contract_response(poem::Error::from_status(StatusCode::PAYLOAD_TOO_LARGE));
        assert_eq!(too_big.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let _ = too_big.take_body();
    }
}
