//! What the API document says about errors: for each operation, the error statuses it can
//! answer, each with the one error body. The errors themselves are [`ApiError`]s; an operation
//! names its set in its return type, `Result<_, Errors<{ READ | NOT_FOUND }>>`, so the document
//! is derived from the signature and cannot drift from a table kept elsewhere.

use poem::Response;
use poem_openapi::registry::{
    MetaHeader, MetaMediaType, MetaResponse, MetaResponses, MetaSchema, MetaSchemaRef, Registry,
};
use poem_openapi::types::Type;
use poem_openapi::{ApiResponse, Object};

use paystream_shared::domain::DomainError;
use paystream_shared::store::StoreError;

use crate::error::ApiError;

/// The body of every error answer.
#[derive(Object)]
#[oai(rename = "Error")]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Object)]
#[oai(rename = "ErrorDetail")]
pub struct ErrorDetail {
    /// The class of error: `invalid_request_error`, `authentication_error`,
    /// `permission_error`, `idempotency_error`, `rate_limit_error` or `api_error`.
    #[oai(rename = "type")]
    pub kind: String,
    /// A stable, machine-readable code, e.g. `parameter_invalid`, `resource_missing`,
    /// `invalid_state_transition`, `idempotency_key_reused`.
    pub code: String,
    /// A human-readable explanation; never contains a card number or a key.
    pub message: String,
    /// The request parameter the error is about, when there is one (e.g. `amount`).
    pub param: Option<String>,
}

/// One bit per error status an operation may answer.
pub const BAD_REQUEST: u32 = 1;
pub const UNAUTHORIZED: u32 = 1 << 1;
pub const FORBIDDEN: u32 = 1 << 2;
pub const NOT_FOUND: u32 = 1 << 3;
pub const CONFLICT: u32 = 1 << 4;
pub const TOO_LARGE: u32 = 1 << 5;
pub const IDEMPOTENCY_REUSED: u32 = 1 << 6;
pub const RATE_LIMITED: u32 = 1 << 7;
pub const INTERNAL: u32 = 1 << 8;
pub const UNAVAILABLE: u32 = 1 << 9;

/// Every authenticated call: bad query or path values, no or a bad key, a role the call is not
/// open to (see `paystream_shared::roles`), the key's rate limit, an unexpected failure, and a
/// database too busy to lend a connection in time (503).
pub const READ: u32 =
    BAD_REQUEST | UNAUTHORIZED | FORBIDDEN | RATE_LIMITED | INTERNAL | UNAVAILABLE;
/// Every authenticated POST with a JSON body: the body has a size limit, and it runs under its
/// Idempotency-Key.
pub const WRITE: u32 = READ | TOO_LARGE | IDEMPOTENCY_REUSED;

const STATUSES: &[(u32, u16, &str)] = &[
    (BAD_REQUEST, 400, "Invalid input: a missing, unknown or malformed parameter (`param` names it)."),
    (UNAUTHORIZED, 401, "No API key, or an invalid one."),
    (FORBIDDEN, 403, "The key's role does not allow this call (`role_not_allowed`)."),
    (NOT_FOUND, 404, "No such object for this merchant (`resource_missing`)."),
    (CONFLICT, 409, "The object's state does not allow this (e.g. `invalid_state_transition`)."),
    (TOO_LARGE, 413, "The request body is too large (`body_too_large`)."),
    (IDEMPOTENCY_REUSED, 422, "The Idempotency-Key was used before with a different method, path or body (`idempotency_key_reused`)."),
    (RATE_LIMITED, 429, "Too many requests with this key (`rate_limited`); retry after `Retry-After` seconds."),
    (INTERNAL, 500, "An unexpected failure; it has been logged. Retrying with the same Idempotency-Key is safe."),
    (UNAVAILABLE, 503, "A service this call needs (the database, the vault) did not answer in time (`service_unavailable`); retry after `Retry-After` seconds, or later, with the same Idempotency-Key."),
];

/// An [`ApiError`] as an operation whose possible error statuses are `SET` answers it.
#[derive(Debug)]
pub struct Errors<const SET: u32>(pub ApiError);

impl<const SET: u32> ApiResponse for Errors<SET> {
    fn meta() -> MetaResponses {
        let responses = STATUSES
            .iter()
            .filter(|(bit, _, _)| SET & bit != 0)
            .map(|&(_, status, description)| MetaResponse {
                description,
                status: Some(status),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: "application/json",
                    schema: ErrorBody::schema_ref(),
                }],
                headers: if status == 429 {
                    vec![MetaHeader {
                        name: "Retry-After".to_owned(),
                        description: Some("Seconds to wait before retrying.".to_owned()),
                        required: true,
                        deprecated: false,
                        schema: MetaSchemaRef::Inline(Box::new(MetaSchema::new_with_format(
                            "integer", "int64",
                        ))),
                    }]
                } else {
                    Vec::new()
                },
            })
            .collect();
        MetaResponses { responses }
    }

    fn register(registry: &mut Registry) {
        ErrorBody::register(registry);
    }
}

impl<const SET: u32> From<Errors<SET>> for poem::Error {
    fn from(e: Errors<SET>) -> Self {
        e.0.into()
    }
}

impl<const SET: u32> poem::IntoResponse for Errors<SET> {
    fn into_response(self) -> Response {
        poem::IntoResponse::into_response(self.0)
    }
}

impl<const SET: u32> From<ApiError> for Errors<SET> {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl<const SET: u32> From<DomainError> for Errors<SET> {
    fn from(e: DomainError) -> Self {
        Self(e.into())
    }
}

impl<const SET: u32> From<StoreError> for Errors<SET> {
    fn from(e: StoreError) -> Self {
        Self(e.into())
    }
}

impl<const SET: u32> From<sqlx::Error> for Errors<SET> {
    fn from(e: sqlx::Error) -> Self {
        Self(e.into())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    fn document() -> Value {
        serde_json::from_str(&crate::openapi_service().spec()).unwrap()
    }

    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                out.push((method.clone(), path.clone(), op.clone()));
            }
        }
        out
    }

    #[test]
    fn every_operation_documents_its_errors_with_the_error_body() {
        let doc = document();
        for (method, path, op) in operations(&doc) {
            let responses = op["responses"].as_object().unwrap();
            // The 3-D Secure callback is a page for the cardholder's browser: no key, and its
            // refusals (a 400, also for an unknown intent) are HTML, not the error body.
            let browser_page = path.ends_with("/3ds/callback");
            let authenticated = !path.starts_with("/provider") && !browser_page;
            let mut expected = vec!["400", "500"];
            if authenticated {
                expected.extend(["401", "429"]);
            }
            if browser_page {
                assert!(
                    responses["400"]["content"]["text/html; charset=utf-8"].is_object(),
                    "{method} {path}: its 400 is a page"
                );
                expected = vec!["500"];
            }
            if method == "post" && authenticated {
                expected.extend(["403", "413", "422"]);
            }
            if path.contains("{id}") && !browser_page {
                expected.push("404");
            }
            for status in expected {
                let r = &responses
                    .get(status)
                    .unwrap_or_else(|| panic!("{method} {path} does not document {status}"));
                assert_eq!(
                    r["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/Error",
                    "{method} {path} {status}"
                );
                assert!(!r["description"].as_str().unwrap().is_empty());
            }
            for (status, r) in responses {
                assert!(
                    !r["description"].as_str().unwrap_or("").is_empty(),
                    "{method} {path} {status} has no description"
                );
            }
            // Success: exactly one of 200/201/202, plus 200 for an idempotent replay of a
            // POST that creates or accepts.
            let successes: Vec<&String> = responses.keys().filter(|s| s.starts_with('2')).collect();
            assert!(
                !(responses.contains_key("201") && responses.contains_key("202")),
                "{method} {path}: {successes:?}"
            );
            assert!(
                !op["tags"].as_array().unwrap().is_empty(),
                "{method} {path} has no tag"
            );
            if method == "post" && authenticated {
                let params = op["parameters"].as_array().unwrap();
                assert!(
                    params
                        .iter()
                        .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header"),
                    "{method} {path} does not document Idempotency-Key"
                );
            }
        }
    }

    #[test]
    fn fields_answered_as_null_are_nullable_and_enums_are_enums() {
        let doc = document();
        let intent = &doc["components"]["schemas"]["PaymentIntentView"]["properties"];
        for field in [
            "paymentMethodId",
            "description",
            "lastPaymentError",
            "nextAction",
            "authorizationExpiresAt",
            "canceledAt",
            "cancellationReason",
        ] {
            assert_eq!(intent[field]["nullable"], true, "{field}");
        }
        assert!(intent["paymentMethodId"]["description"].is_string());
        let status = &doc["components"]["schemas"]["PaymentIntentStatusView"];
        assert_eq!(status["enum"].as_array().unwrap().len(), 9);
        let create = &doc["components"]["schemas"]["CreatePaymentIntent"]["properties"];
        assert!(create["captureMethod"]
            .to_string()
            .contains("#/components/schemas/CaptureMethodView"));
        let refund = &doc["components"]["schemas"]["RefundView"]["properties"];
        assert_eq!(refund["failureReason"]["nullable"], true);
    }

    #[test]
    fn create_needs_its_body_and_the_key_scheme_speaks_to_clients() {
        let doc = document();
        assert_eq!(
            doc["paths"]["/payment-intents"]["post"]["requestBody"]["required"],
            true
        );
        let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
        for scheme in schemes.values() {
            let description = scheme["description"].as_str().unwrap_or("");
            assert!(!description.contains("guard"), "{description}");
            assert!(description.contains("Bearer"), "{description}");
        }
    }
}
