//! Authentication, the per-key rate limit and the role check, in front of every `/api` route.

use std::sync::Arc;
use std::time::Instant;

use poem::http::Method;
use poem::{Endpoint, IntoResponse, Request, Response};
use poem_openapi::auth::Bearer;
use poem_openapi::SecurityScheme;

use paystream_shared::audit::Actor;
use paystream_shared::audit::{self, NewEntry};
use paystream_shared::roles::{self, Access};
use paystream_shared::store::merchants::{KeyOwner, Role};

use crate::client_side::{self, ClientCall, SecretLimits};
use crate::error::ApiError;
use crate::key_cache::KeyCache;
use crate::rate_limit::RateLimiter;
use crate::{idempotency, AppState};

/// Who is calling: put in the request's extensions once the key checks out.
#[derive(Debug, Clone)]
pub struct AuthContext {
    pub merchant_id: String,
    pub key_id: String,
    pub role: Role,
    /// Set for a publishable key's client-side call: the handler checks the client secret
    /// and counts a wrong one here.
    pub client: Option<ClientCall>,
}

impl std::fmt::Debug for ClientCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientCall(..)")
    }
}

impl AuthContext {
    pub fn actor(&self) -> Actor {
        Actor::ApiKey(self.key_id.clone())
    }

    /// Records this key's read of payment data in the audit log (see
    /// [`audit::record_read`]); every handler that serves payment data calls it before
    /// answering. Dispute evidence downloads, when they land, call it the same way with
    /// object type `dispute_evidence`.
    pub async fn record_read(
        &self,
        state: &AppState,
        object_type: &str,
        object_id: &str,
        seen: serde_json::Value,
    ) -> Result<(), ApiError> {
        audit::record_read(
            &state.pool,
            &self.merchant_id,
            &self.actor(),
            object_type,
            object_id,
            seen,
        )
        .await
        .map_err(ApiError::from)
    }
}

/// Your secret API key, `Authorization: Bearer sk_...`. Keys belong to one merchant.
// The real check happened in `guard`; this only hands the handler what the guard found.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", checker = "from_guard")]
pub struct MerchantKey(pub AuthContext);

async fn from_guard(req: &Request, _bearer: Bearer) -> Option<AuthContext> {
    req.extensions().get::<AuthContext>().cloned()
}

/// The secret key a request presents: `Authorization: Bearer <key>`, or HTTP Basic with the
/// key as the user name and no password (`curl -u sk_...:`), as Stripe's clients send it.
/// `None` when there is no usable key; a malformed header is no key at all (401).
fn presented_key(req: &Request) -> Option<String> {
    let value = req.headers().get("Authorization")?.to_str().ok()?;
    let (scheme, credentials) = value.trim().split_once(' ')?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(credentials.to_owned()).filter(|k| !k.is_empty());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        // The key is the user name; Stripe ignores the password, and so do we.
        let (user, _password) = decoded.split_once(':').unwrap_or((&decoded, ""));
        return Some(user.to_owned()).filter(|k| !k.is_empty());
    }
    None
}

/// Authenticates, applies the key's rate limit, enforces the role, then runs POSTs under their
/// Idempotency-Key.
pub async fn guard<E: Endpoint>(
    ep: E,
    mut req: Request,
    limiter: Arc<RateLimiter>,
    keys: Arc<KeyCache>,
    secret_limits: Arc<SecretLimits>,
) -> poem::Result<Response> {
    let state = req
        .data::<AppState>()
        .cloned()
        .ok_or_else(|| ApiError::unavailable("not configured"))?;
    let Some(secret) = presented_key(&req) else {
        return Err(ApiError::unauthorized(
            "No API key provided. Send Authorization: Bearer <secret key>, or HTTP Basic with the key as the user name.",
        )
        .into());
    };
    let owner = keys
        .authenticate(&state.pool, &secret)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::unauthorized("Invalid API key provided."))?;
    // Limited by key id, after authentication: a made-up key cannot drain a real key's bucket.
    // Before the Idempotency-Key is taken, so a 429 leaves the key free for the retry.
    if let Err(limited) = limiter.check(&owner.key_id, Instant::now()) {
        return Err(ApiError::rate_limited(limited.retry_after_secs).into());
    }
    // Fail closed: a path the role table does not list is refused to every role but admin
    // (which may do everything, and so gets the router's own 404 or 405).
    let path = req.uri().path();
    let path = path.strip_prefix("/api").unwrap_or(path);
    // A publishable key is admitted to the client-side calls only (shared/src/roles.rs).
    let allowed = match roles::operation(req.method().as_str(), path) {
        Some(o) if matches!(o.access, Access::Key(_)) => roles::admits(owner.role, o),
        Some(_) | None => owner.role == Role::Admin,
    };
    if !allowed {
        let (method, path) = (req.method().to_string(), path.to_owned());
        refused(&state, &owner, &method, &path).await?;
        return Err(ApiError::forbidden(format!(
            "A `{}` key may not call {method} {path}.",
            owner.role.as_str()
        ))
        .into());
    }
    let full_path = req.original_uri().path().to_owned();
    let origin = req
        .headers()
        .get(poem::http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let client = if owner.role == Role::Publishable {
        let address = client_side::client_address(&req, &state);
        match ClientCall::admit(secret_limits, &owner.key_id, address) {
            Ok(call) => Some(call),
            Err(limited) => {
                let mut resp = crate::error::to_contract_response(limited.into());
                let origins = &owner.allowed_origins;
                client_side::allow_origin(origin.as_deref(), origins, &full_path, &mut resp);
                return Ok(resp);
            }
        }
    } else {
        None
    };
    let ctx = AuthContext {
        merchant_id: owner.merchant_id.clone(),
        key_id: owner.key_id.clone(),
        role: owner.role,
        client,
    };
    let merchant_id = ctx.merchant_id.clone();
    req.extensions_mut().insert(ctx);
    // The routes' security scheme reads a bearer token; a key that came as HTTP Basic is
    // handed on in that form, so both reach the same handler.
    if let Ok(value) = poem::http::HeaderValue::from_str(&format!("Bearer {secret}")) {
        req.headers_mut()
            .insert(poem::http::header::AUTHORIZATION, value);
    }
    let answered = if req.method() == Method::POST {
        idempotency::around(&ep, req, &state, &merchant_id).await
    } else {
        ep.call(req).await.map(IntoResponse::into_response)
    };
    if owner.role == Role::Publishable {
        // The error in its contract shape now, so the browser may read it under CORS too.
        let mut resp = answered.unwrap_or_else(crate::error::to_contract_response);
        client_side::allow_origin(
            origin.as_deref(),
            &owner.allowed_origins,
            &full_path,
            &mut resp,
        );
        return Ok(resp);
    }
    if full_path.starts_with("/api/payment-intents") {
        return Ok(client_side::add_client_secrets(&state, &merchant_id, answered?).await);
    }
    answered
}

/// A refused call is audit-logged against the key that made it, before the 403 goes out; if
/// the entry cannot be written the call fails as the store does, never silently.
async fn refused(state: &AppState, owner: &KeyOwner, method: &str, path: &str) -> poem::Result<()> {
    let mut conn = state.pool.acquire().await.map_err(ApiError::from)?;
    let actor = Actor::ApiKey(owner.key_id.clone());
    audit::append(
        &mut conn,
        NewEntry {
            merchant_id: Some(&owner.merchant_id),
            object_type: "api_key",
            object_id: &owner.key_id,
            action: audit::ACCESS_REFUSED,
            actor: &actor,
            before: None,
            after: Some(serde_json::json!({
                "method": method,
                "path": path,
                "role": owner.role.as_str(),
            })),
        },
    )
    .await
    .map_err(ApiError::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(header: &str) -> Option<String> {
        presented_key(&Request::builder().header("Authorization", header).finish())
    }

    #[test]
    fn bearer_and_basic_parsing() {
        assert_eq!(key("Bearer sk_abc").as_deref(), Some("sk_abc"));
        assert_eq!(key("bearer  sk_abc ").as_deref(), Some("sk_abc"));
        assert_eq!(key("Bearer "), None);
        assert_eq!(presented_key(&Request::builder().finish()), None);
        // base64("sk_abc:"), as `curl -u sk_abc:` sends it; a password is ignored.
        assert_eq!(key("Basic c2tfYWJjOg==").as_deref(), Some("sk_abc"));
        assert_eq!(key("basic c2tfYWJj").as_deref(), Some("sk_abc"));
        assert_eq!(key("Basic c2tfYWJjOnB3").as_deref(), Some("sk_abc"));
        // Not base64, no user name, not UTF-8, another scheme: no key.
        assert_eq!(key("Basic xyz!"), None);
        assert_eq!(key("Basic OnB3"), None);
        assert_eq!(key("Basic /w=="), None);
        assert_eq!(key("Digest c2tfYWJjOg=="), None);
    }
}
