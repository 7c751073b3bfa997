//! What the API does for the client-side calls of a payment intent (a browser holding a
//! publishable key and one intent's client secret): the limit on failed secret checks, the
//! caller's address behind trusted proxies, CORS for the merchant's own origins, and adding
//! `clientSecret` to the answers a secret key gets (docs/api.md "Client-side confirmation").

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use poem::http::header::{self, HeaderValue};
use poem::http::{Method, StatusCode};
use poem::{Endpoint, IntoResponse, Request, Response};

use paystream_shared::client_secret::ClientSecrets;
use paystream_shared::roles;
use paystream_shared::store::merchants;

use crate::error::ApiError;
use crate::rate_limit::RateLimiter;
use crate::AppState;

/// Failed client-secret checks one client address may make per minute before every
/// client-side call from it is 429 until the bucket refills (one every 3 s).
pub const FAILURES_PER_ADDRESS_PER_MIN: u32 = 20;
/// The same, per publishable key: higher, since every shopper of the merchant shares the key.
pub const FAILURES_PER_KEY_PER_MIN: u32 = 200;

/// The two buckets of failed secret checks: per publishable key and per client address.
pub struct SecretLimits {
    by_key: RateLimiter,
    by_address: RateLimiter,
}

impl Default for SecretLimits {
    fn default() -> Self {
        Self {
            by_key: RateLimiter::per_period(FAILURES_PER_KEY_PER_MIN, Duration::from_secs(60)),
            by_address: RateLimiter::per_period(
                FAILURES_PER_ADDRESS_PER_MIN,
                Duration::from_secs(60),
            ),
        }
    }
}

/// A client-side call in flight: who makes it, so its handler can count a failed secret.
#[derive(Clone)]
pub struct ClientCall {
    limits: Arc<SecretLimits>,
    key_id: String,
    address: String,
}

impl ClientCall {
    /// Refused (429) while either bucket is empty, whatever secret it brings: otherwise a
    /// right guess would still be told apart from the wrong ones.
    pub fn admit(
        limits: Arc<SecretLimits>,
        key_id: &str,
        address: String,
    ) -> Result<Self, ApiError> {
        let now = Instant::now();
        limits
            .by_key
            .peek(key_id, now)
            .and_then(|()| limits.by_address.peek(&address, now))
            .map_err(|l| ApiError::rate_limited(l.retry_after_secs))?;
        Ok(Self {
            limits,
            key_id: key_id.to_owned(),
            address,
        })
    }

    /// Counts a wrong or missing client secret against the key and the address.
    pub fn failed(&self) {
        let now = Instant::now();
        // Both are charged even when one is already empty; the next call is refused anyway.
        let _ = self.limits.by_key.check(&self.key_id, now);
        let _ = self.limits.by_address.check(&self.address, now);
    }
}

/// The address the request came from: the peer, or, when the peer is a proxy named in
/// `PAYSTREAM_TRUSTED_PROXIES`, the last address of `X-Forwarded-For` that is not one of them
/// (what the outermost trusted proxy saw). Anything unreadable falls back to the peer.
pub fn client_address(req: &Request, state: &AppState) -> String {
    let Some(peer) = req.remote_addr().as_socket_addr().map(|a| a.ip()) else {
        return req.remote_addr().to_string();
    };
    if !state.config.tls.is_trusted_proxy(peer) {
        return peer.to_string();
    }
    let forwarded = req
        .headers()
        .get_all("X-Forwarded-For")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter_map(|s| s.parse::<IpAddr>().ok())
        .collect::<Vec<_>>();
    forwarded
        .iter()
        .rev()
        .find(|ip| !state.config.tls.is_trusted_proxy(**ip))
        .copied()
        .unwrap_or(peer)
        .to_string()
}

/// The derivation key of client secrets, from the server's sealing key (and, during a
/// rotation, the previous one, whose secrets still verify).
pub fn secrets(state: &AppState) -> ClientSecrets {
    ClientSecrets::with_previous(
        state.config.webhook_secret_key.expose(),
        state
            .config
            .webhook_secret_key_previous
            .as_ref()
            .map(|k| k.expose()),
    )
}

/// Adds its client secret to every payment intent in a JSON answer for a secret key (one
/// intent, or a list's `data`), replays included: the stored copy of an answer never holds it.
pub async fn add_client_secrets(
    state: &AppState,
    merchant_id: &str,
    mut resp: Response,
) -> Response {
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json || !resp.status().is_success() {
        return resp;
    }
    let Ok(bytes) = resp.take_body().into_vec().await else {
        return resp;
    };
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        resp.set_body(bytes);
        return resp;
    };
    let secrets = secrets(state);
    let mut decorate = |intent: &mut serde_json::Value| {
        let id = intent["id"].as_str().filter(|id| id.starts_with("pi_"));
        if let (Some(id), Some(obj)) = (id.map(str::to_owned), intent.as_object_mut()) {
            if obj.contains_key("status") {
                let secret = secrets.of(merchant_id, &id);
                obj.insert(
                    "clientSecret".into(),
                    serde_json::Value::String(secret.expose().clone()),
                );
            }
        }
    };
    match value.get_mut("data").and_then(|d| d.as_array_mut()) {
        Some(items) => items.iter_mut().for_each(&mut decorate),
        None => decorate(&mut value),
    }
    match serde_json::to_vec(&value) {
        Ok(body) => resp.set_body(body),
        Err(_) => resp.set_body(bytes),
    }
    resp
}

/// What a browser may send cross-origin to these calls.
const ALLOW_HEADERS: &str = "Authorization, Content-Type, Idempotency-Key";
const EXPOSE_HEADERS: &str = "Idempotent-Replayed, Retry-After";
const MAX_AGE_SECS: &str = "600";

/// Whether `path` (under `/api`) is one of the client-side operations, for any method.
fn client_side_path(path: &str) -> Option<&'static str> {
    let path = path.strip_prefix("/api")?;
    roles::CLIENT_SIDE
        .iter()
        .find(|(m, _)| roles::operation(m, path).is_some_and(roles::is_client_side))
        .map(|(_, p)| *p)
}

/// The methods a preflight for `path` may ask for: those of the client-side operations there.
fn client_side_methods(path: &str) -> Vec<&'static str> {
    let Some(path) = path.strip_prefix("/api") else {
        return Vec::new();
    };
    roles::CLIENT_SIDE
        .iter()
        .filter(|(m, _)| roles::operation(m, path).is_some_and(roles::is_client_side))
        .map(|(m, _)| *m)
        .collect()
}

/// Answers CORS preflights (`OPTIONS`) for the client-side calls, before authentication (a
/// preflight carries no key): 204 with the allowed methods and headers when some live
/// publishable key lists the origin, 403 otherwise. Every other path passes through, so no
/// other route ever answers a preflight.
pub async fn preflight<E: Endpoint>(ep: E, req: Request) -> poem::Result<Response> {
    if req.method() != Method::OPTIONS {
        return ep.call(req).await.map(IntoResponse::into_response);
    }
    let methods = client_side_methods(req.uri().path());
    if methods.is_empty() {
        return ep.call(req).await.map(IntoResponse::into_response);
    }
    let state = req
        .data::<AppState>()
        .cloned()
        .ok_or_else(|| ApiError::unavailable("not configured"))?;
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let allowed = match &origin {
        Some(origin) => merchants::origin_allowed_for_some_key(&state.pool, origin)
            .await
            .map_err(ApiError::from)?,
        None => false,
    };
    let (Some(origin), true) = (origin, allowed) else {
        return Err(ApiError::cors_refused().into());
    };
    let mut response = Response::builder()
        .status(StatusCode::NO_CONTENT)
        .header(header::ALLOW, format!("OPTIONS, {}", methods.join(", ")))
        .finish();
    let headers = response.headers_mut();
    allow(headers, &origin);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_str(&methods.join(", ")).unwrap_or(HeaderValue::from_static("GET")),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOW_HEADERS),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(MAX_AGE_SECS),
    );
    Ok(response)
}

/// On an answer to a client-side call: `Access-Control-Allow-Origin` when the request's
/// `Origin` is one the presenting key lists, nothing otherwise (the browser then refuses it).
pub fn allow_origin(
    req_origin: Option<&str>,
    key_origins: &[String],
    path: &str,
    resp: &mut Response,
) {
    let Some(origin) = req_origin else { return };
    if client_side_path(path).is_none() || !key_origins.iter().any(|o| o == origin) {
        return;
    }
    let headers = resp.headers_mut();
    allow(headers, origin);
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
}

fn allow(headers: &mut poem::http::HeaderMap, origin: &str) {
    if let Ok(value) = HeaderValue::from_str(origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    }
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
}
