//! Authentication, the per-key rate limit and the role check, in front of every `/api` route.

use std::sync::Arc;
use std::time::Instant;

use poem::http::Method;
use poem::{Endpoint, IntoResponse, Request, Response};
use poem_openapi::auth::Bearer;
use poem_openapi::SecurityScheme;

use paystream_shared::audit::Actor;
use paystream_shared::store::merchants::{self, Role};

use crate::error::ApiError;
use crate::rate_limit::RateLimiter;
use crate::{idempotency, AppState};

/// Who is calling: put in the request's extensions once the key checks out.
#[derive(Debug, Clone)]
pub struct AuthContext {
    pub merchant_id: String,
    pub key_id: String,
    pub role: Role,
}

impl AuthContext {
    pub fn actor(&self) -> Actor {
        Actor::ApiKey(self.key_id.clone())
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

fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get("Authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// Authenticates, applies the key's rate limit, enforces the role, then runs POSTs under their
/// Idempotency-Key.
pub async fn guard<E: Endpoint>(
    ep: E,
    mut req: Request,
    limiter: Arc<RateLimiter>,
) -> poem::Result<Response> {
    let state = req
        .data::<AppState>()
        .cloned()
        .ok_or_else(|| ApiError::unavailable("not configured"))?;
    let Some(secret) = bearer(&req) else {
        return Err(ApiError::unauthorized(
            "No API key provided. Send Authorization: Bearer <secret key>.",
        )
        .into());
    };
    let owner = merchants::authenticate(&state.pool, secret)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::unauthorized("Invalid API key provided."))?;
    // Limited by key id, after authentication: a made-up key cannot drain a real key's bucket.
    // Before the Idempotency-Key is taken, so a 429 leaves the key free for the retry.
    if let Err(limited) = limiter.check(&owner.key_id, Instant::now()) {
        return Err(ApiError::rate_limited(limited.retry_after_secs).into());
    }
    if req.method() != Method::GET && !owner.role.may_write() {
        return Err(
            ApiError::forbidden(format!("A `{}` key may only read.", owner.role.as_str())).into(),
        );
    }
    let ctx = AuthContext {
        merchant_id: owner.merchant_id,
        key_id: owner.key_id,
        role: owner.role,
    };
    let merchant_id = ctx.merchant_id.clone();
    req.extensions_mut().insert(ctx);
    if req.method() == Method::POST {
        idempotency::around(&ep, req, &state, &merchant_id).await
    } else {
        ep.call(req).await.map(IntoResponse::into_response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        let req = Request::builder()
            .header("Authorization", "Bearer sk_abc")
            .finish();
        assert_eq!(bearer(&req), Some("sk_abc"));
        let req = Request::builder()
            .header("Authorization", "bearer  sk_abc ")
            .finish();
        assert_eq!(bearer(&req), Some("sk_abc"));
        let req = Request::builder()
            .header("Authorization", "Basic xyz")
            .finish();
        assert_eq!(bearer(&req), None);
        let req = Request::builder()
            .header("Authorization", "Bearer ")
            .finish();
        assert_eq!(bearer(&req), None);
        assert_eq!(bearer(&Request::builder().finish()), None);
    }
}
