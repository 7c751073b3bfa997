//! CORS for `POST /vault/tokens`: a checkout page on a merchant's own origin may send a card
//! here with a publishable key. Only the origins the merchant gave that key
//! (`paystream keys create --role publishable --origin https://shop.example`) are answered:
//!
//! - a preflight (`OPTIONS`, which carries no key) is 204 with the allowed method and headers
//!   when some live publishable key lists the origin, and 403 `origin_not_allowed` otherwise;
//! - the actual request gets `Access-Control-Allow-Origin` only when the key it presents lists
//!   its `Origin`; otherwise no CORS header, so the browser keeps the answer from the page.
//!
//! No credentials (cookies) are involved, so none are allowed. Every other vault route answers
//! no CORS at all. The vault's card fields (`GET /vault/elements`, see `elements`) post to
//! this route from the vault's own origin, which needs no CORS.

use poem::http::header::{self, HeaderValue};
use poem::http::{Method, StatusCode};
use poem::{Endpoint, IntoResponse, Request, Response};

use paystream_shared::store::merchants;

use crate::error::VaultError;
use crate::State;

/// What a browser may send cross-origin: the key, JSON, and an Idempotency-Key.
const ALLOW_HEADERS: &str = "Authorization, Content-Type, Idempotency-Key";
/// What the page's script may read besides the simple response headers.
const EXPOSE_HEADERS: &str = "Idempotent-Replayed";
/// How long a browser may keep a preflight answer.
const MAX_AGE_SECS: &str = "600";

fn origin_of(req: &Request) -> Option<String> {
    req.headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Wraps the tokens endpoint: answers a preflight itself, and allows the request's origin on
/// the endpoint's answer when the presented key lists it.
pub async fn tokens<E: Endpoint>(inner: E, req: Request) -> poem::Result<Response> {
    let state = req.data::<State>().cloned();
    let origin = origin_of(&req);
    if req.method() == Method::OPTIONS {
        let allowed = match (&state, &origin) {
            (Some(state), Some(origin)) => {
                match merchants::origin_allowed_for_some_key(&state.pool, origin).await {
                    Ok(allowed) => allowed,
                    Err(e) => return Ok(VaultError::internal(&e).into_response()),
                }
            }
            _ => false,
        };
        let (Some(origin), true) = (origin, allowed) else {
            return Ok(refused());
        };
        let mut response = Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header(header::ALLOW, "OPTIONS, POST")
            .finish();
        let headers = response.headers_mut();
        allow(headers, &origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(MAX_AGE_SECS),
        );
        return Ok(response);
    }
    // Which origins the presented key allows, looked up only for a cross-origin request.
    let key_origins = match (&state, &origin) {
        (Some(state), Some(_)) => crate::http::merchant(state, req.headers())
            .await
            .map(|owner| owner.allowed_origins)
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let mut response = inner.get_response(req).await.into_response();
    if let Some(origin) = origin.filter(|o| key_origins.contains(o)) {
        let headers = response.headers_mut();
        allow(headers, &origin);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
    }
    Ok(response)
}

fn refused() -> Response {
    VaultError::new(
        StatusCode::FORBIDDEN,
        "permission_error",
        "origin_not_allowed",
        "This origin is not allowed: add it to a publishable key with `paystream keys create --role publishable --origin ...`.",
    )
    .into_response()
}

/// The request's own origin rather than `*`, with `Vary: Origin` so a shared cache never hands
/// one origin's answer to another.
fn allow(headers: &mut poem::http::HeaderMap, origin: &str) {
    if let Ok(value) = HeaderValue::from_str(origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    }
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
}
