//! CORS for `POST /vault/tokens`, the one route a browser calls directly: a checkout page on
//! the merchant's own origin sends the card there with a publishable key, so the card never
//! passes through the merchant's server.
//!
//! Any origin is allowed, for this route only. That is safe today because what the route
//! gives out is harmless in another site's hands: a publishable key is public by design, and a
//! token can be used only by the merchant's secret key (another merchant's use is
//! `token_invalid`). No credentials (cookies) are involved, so none are allowed. Restricting
//! origins per publishable key is planned (issue 14); it belongs here. Every other vault
//! route, and the whole API, answers no CORS at all, so browsers refuse cross-origin calls
//! to them.

use poem::http::header::{self, HeaderValue};
use poem::http::{Method, StatusCode};
use poem::{Endpoint, IntoResponse, Request, Response};

/// What a browser may send cross-origin: the key, JSON, and an Idempotency-Key.
const ALLOW_HEADERS: &str = "Authorization, Content-Type, Idempotency-Key";
/// What the page's script may read besides the simple response headers.
const EXPOSE_HEADERS: &str = "Idempotent-Replayed";
/// How long a browser may keep a preflight answer.
const MAX_AGE_SECS: &str = "600";

/// Wraps the tokens endpoint: answers a preflight (`OPTIONS`) itself, and adds
/// `Access-Control-Allow-Origin` for the request's origin to every answer of the endpoint.
pub async fn tokens<E: Endpoint>(inner: E, req: Request) -> poem::Result<Response> {
    let origin = req.headers().get(header::ORIGIN).cloned();
    if req.method() == Method::OPTIONS {
        let mut response = Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header(header::ALLOW, "OPTIONS, POST")
            .finish();
        if let Some(origin) = origin {
            let headers = response.headers_mut();
            allow(headers, origin);
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
        }
        return Ok(response);
    }
    let mut response = inner.get_response(req).await.into_response();
    if let Some(origin) = origin {
        let headers = response.headers_mut();
        allow(headers, origin);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
    }
    Ok(response)
}

/// The request's own origin rather than `*`, with `Vary: Origin` so a shared cache never hands
/// one origin's answer to another (what lets issue 14 narrow the list without changing this).
fn allow(headers: &mut poem::http::HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
}
