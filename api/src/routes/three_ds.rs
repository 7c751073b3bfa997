//! `GET /api/payment-intents/{id}/3ds/callback?result=<token>`: where the acquirer sends the
//! cardholder's browser when a 3-D Secure challenge ends.
//!
//! No merchant key (the browser carries none): the acquirer's signature on the result token
//! (`paystream_shared::domain::three_ds`) authenticates it, so the route is mounted outside the
//! `/api` guard, as the acquirer's notifications are (see `crate::app`). The steps:
//! 1. **verify** the token before anything in it is trusted: signature (constant time),
//!    expiry, and that it is for this intent. A token that fails, or that names another charge
//!    or amount than the intent's, is a 400 page and nothing moves;
//! 2. **apply** the outcome through the very path the acquirer's notification of the same
//!    outcome takes (`store::payment_intents::apply_acquirer_outcome`), on the intent locked
//!    for the transaction. Whichever of the two messengers arrives first moves the intent;
//!    the second finds it moved and changes nothing;
//! 3. **redirect** (303) to the intent's `returnUrl` with `payment_intent=<id>` appended, also
//!    when the intent had already moved on.

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Html;
use poem_openapi::{ApiResponse, OpenApi};

use paystream_shared::audit::Actor;
use paystream_shared::domain::payment_intent::PaymentIntent;
use paystream_shared::domain::three_ds::ResultToken;
use paystream_shared::store::payment_intents::{self, OutcomeApplied};

use crate::error::ApiError;
use crate::responses::{Errors, INTERNAL};
use crate::routes::ApiTags;
use crate::AppState;

/// The callback moves an intent on the acquirer's signed word, like a notification.
const ACTOR: Actor = Actor::System("acquirer");

#[derive(ApiResponse)]
pub enum CallbackResponse {
    /// The outcome is recorded (or was already): back to the merchant's `returnUrl` with
    /// `payment_intent=<id>` appended to its query.
    #[oai(status = 303)]
    SeeOther(
        Html<String>,
        /// The merchant's `returnUrl` with `payment_intent=<id>`.
        #[oai(header = "Location")]
        String,
    ),
    /// The outcome is recorded but the intent has no `returnUrl` to go back to.
    #[oai(status = 200)]
    Done(Html<String>),
    /// The result token is missing, malformed, forged, expired or for another payment; the
    /// intent has not moved.
    #[oai(status = 400)]
    NotVerified(Html<String>),
}

fn page(title: &str, text: &str) -> Html<String> {
    Html(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         </head>\n<body><h1>{title}</h1>\n<p>{text}</p>\n</body></html>\n"
    ))
}

fn not_verified(why: &str) -> CallbackResponse {
    tracing::warn!(reason = why, "3-D Secure callback refused");
    CallbackResponse::NotVerified(not_verified_page())
}

/// The callback's one 400 page: a browser lands here, so every refusal of this route (the
/// card guard's included) is this HTML, never the API's JSON.
pub(crate) fn not_verified_page() -> Html<String> {
    page(
        "Authentication could not be verified",
        "The result of the 3-D Secure authentication could not be verified. The payment has \
         not changed; please return to the shop and try again.",
    )
}

/// Whether `path` is the browser-facing callback, whose answers are documented as HTML.
pub(crate) fn is_callback_path(path: &str) -> bool {
    path.starts_with("/api/payment-intents/") && path.ends_with("/3ds/callback")
}

/// `return_url` with `payment_intent=<id>` added to whatever query it has.
fn back_to(return_url: &str, id: &str) -> Option<String> {
    let mut url = url::Url::parse(return_url).ok()?;
    url.query_pairs_mut().append_pair("payment_intent", id);
    Some(url.into())
}

fn redirect(intent: &PaymentIntent) -> CallbackResponse {
    match intent
        .return_url
        .as_deref()
        .and_then(|u| back_to(u, &intent.id))
    {
        Some(location) => {
            CallbackResponse::SeeOther(page("Redirecting", "Returning to the shop."), location)
        }
        None => CallbackResponse::Done(page(
            "Authentication complete",
            "You may close this window.",
        )),
    }
}

pub struct ThreeDsApi;

#[OpenApi(tag = "ApiTags::PaymentIntents")]
impl ThreeDsApi {
    /// Where the acquirer sends the cardholder's browser after a 3-D Secure challenge.
    /// Authenticated by the acquirer-signed `result` token, not by an API key. Moves the
    /// intent as the acquirer's notification of the same outcome would, then redirects to
    /// `returnUrl?payment_intent=<id>`.
    #[oai(path = "/payment-intents/:id/3ds/callback", method = "get")]
    async fn callback(
        &self,
        state: poem::web::Data<&AppState>,
        /// The payment intent id.
        id: Path<String>,
        /// The acquirer-signed result of the challenge.
        result: Query<Option<String>>,
    ) -> Result<CallbackResponse, Errors<{ INTERNAL }>> {
        callback(&state, &id, result.0.as_deref(), chrono::Utc::now())
            .await
            .map_err(Errors)
    }
}

/// Verifies and applies one callback; see the module documentation.
pub async fn callback(
    state: &AppState,
    id: &str,
    result: Option<&str>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<CallbackResponse, ApiError> {
    let secret = state.config.acquirer_webhook_secret.expose().as_bytes();
    let token = match ResultToken::verify(secret, result, id, now) {
        Ok(token) => token,
        Err(e) => return Ok(not_verified(&e.to_string())),
    };
    let mut tx = state.pool.begin().await?;
    let Some(found) = payment_intents::get_any(&mut *tx, id).await? else {
        return Ok(not_verified("the token names no payment intent we have"));
    };
    let Some(intent) = payment_intents::get_for_update(&mut tx, &found.merchant_id, id).await?
    else {
        return Ok(not_verified("the payment intent vanished"));
    };
    let other_charge = intent
        .acquirer_charge_id
        .as_deref()
        .is_some_and(|known| known != token.charge);
    if other_charge || intent.amount.minor_units() != token.amount {
        return Ok(not_verified(
            "the token's charge or amount is not the payment intent's",
        ));
    }
    let outcome = token.charge_outcome();
    let applied = payment_intents::apply_acquirer_outcome(
        &mut tx,
        intent,
        &outcome,
        token.issued_at(),
        &ACTOR,
    )
    .await?;
    tx.commit().await?;
    let intent = match applied {
        OutcomeApplied::Applied(intent) => {
            tracing::info!(payment_intent = %intent.id, status = %intent.status, "3-D Secure callback applied");
            intent
        }
        OutcomeApplied::Unchanged(intent) => intent,
        OutcomeApplied::Ignored { intent, reason } => {
            // The notification of the same outcome records this in the audit log (and returns
            // an orphaned charge's money); the browser only needs to get back to the shop.
            tracing::warn!(payment_intent = %intent.id, reason, "3-D Secure callback changed nothing");
            intent
        }
    };
    Ok(redirect(&intent))
}
