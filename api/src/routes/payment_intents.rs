//! Payment intents: create, read, list, confirm, capture and cancel. Every change goes through
//! the state machine in `paystream_shared::store::payment_intents::transition` and commits with
//! its audit entry, its events and its outbox command in one transaction.

use std::collections::BTreeMap;

use poem::http::StatusCode;
use poem::Request;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde::{Deserialize, Serialize};

use paystream_shared::commands::PaymentCommand;
use paystream_shared::domain::ids::IdKind;
use paystream_shared::domain::money::{Amount, Currency};
use paystream_shared::domain::payment_intent::{
    is_test_payment_method, may_require_action, validate_metadata, CaptureMethod, PaymentIntent,
    PaymentIntentStatus,
};
use paystream_shared::outbox;
use paystream_shared::store::payment_intents::{self as store, ListFilter};
use paystream_shared::views::{
    CaptureMethodView, IntentView, PaymentIntentView, PaymentMethodType,
};

use crate::auth::{AuthContext, MerchantKey};
use crate::error::ApiError;
use crate::extract::{parse_limit, JsonBody, SerdeJson};
use crate::responses::{Errors, CONFLICT, NOT_FOUND, READ, UNAVAILABLE, WRITE};
use crate::routes::ApiTags;
use crate::{idempotency, AppState};

#[derive(Debug, Deserialize, Object)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[oai(rename_all = "camelCase")]
pub struct CreatePaymentIntent {
    /// Integer count of the currency's minor unit, 1..=99999999.
    pub amount: i64,
    /// ISO 4217 code, lowercase (`usd`, `eur`, `jpy`, ...).
    pub currency: String,
    /// Your own customer reference; not checked.
    pub customer_id: String,
    /// The payment method to charge. Test methods: `pm_card_visa`, `pm_card_mastercard`,
    /// `pm_card_chargeDeclined`, `pm_card_insufficientFunds`, `pm_card_threeDSecureRequired`,
    /// `pm_card_processingError`. With one the intent starts in `requires_confirmation`.
    pub payment_method_id: Option<String>,
    /// `automatic` (the default) or `manual`.
    pub capture_method: Option<CaptureMethodView>,
    /// Confirm at once (requires `paymentMethodId`).
    pub confirm: Option<bool>,
    /// Where the cardholder returns after a 3-D Secure challenge; required to confirm a card
    /// that may need one.
    pub return_url: Option<String>,
    /// At most 1000 characters.
    pub description: Option<String>,
    /// Your own key-value pairs: at most 50 keys of at most 40 characters, values of at most
    /// 500.
    pub metadata: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize, Object)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[oai(rename_all = "camelCase")]
pub struct ConfirmPaymentIntent {
    /// The payment method to charge, if the intent has none yet or it should change.
    pub payment_method_id: Option<String>,
    /// Or a vault token to charge (instead of `paymentMethodId`): it becomes a payment method
    /// of the intent's customer.
    pub payment_method: Option<TokenPaymentMethod>,
    /// If given, must equal the intent's currency.
    pub currency: Option<String>,
    pub return_url: Option<String>,
    /// The intent's client secret: required with a publishable key (a wrong or missing one is
    /// 404, as for an intent that does not exist), ignored with a secret key.
    pub client_secret: Option<String>,
}

/// A vault token to charge, as a browser confirms with it.
#[derive(Debug, Deserialize, Object)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[oai(rename_all = "camelCase")]
pub struct TokenPaymentMethod {
    #[serde(rename = "type")]
    #[oai(rename = "type")]
    pub method_type: PaymentMethodType,
    /// A `tok_...` from `POST /vault/tokens`.
    pub token: String,
}

#[derive(Debug, Default, Deserialize, Object)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[oai(rename_all = "camelCase")]
pub struct CapturePaymentIntent {
    /// Defaults to everything capturable.
    pub amount_to_capture: Option<i64>,
}

#[derive(Debug, Default, Deserialize, Object)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[oai(rename_all = "camelCase")]
pub struct CancelPaymentIntent {
    /// Defaults to `requested_by_customer`.
    pub cancellation_reason: Option<CancellationReason>,
}

/// Why the merchant cancels.
#[derive(Debug, Clone, Copy, Deserialize, Enum)]
#[serde(rename_all = "snake_case")]
#[oai(rename_all = "snake_case")]
pub enum CancellationReason {
    Duplicate,
    Fraudulent,
    RequestedByCustomer,
    Abandoned,
}

impl CancellationReason {
    fn as_str(self) -> &'static str {
        match self {
            CancellationReason::Duplicate => "duplicate",
            CancellationReason::Fraudulent => "fraudulent",
            CancellationReason::RequestedByCustomer => "requested_by_customer",
            CancellationReason::Abandoned => "abandoned",
        }
    }
}

#[derive(Object, Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct PaymentIntentList {
    pub data: Vec<PaymentIntentView>,
    pub has_more: bool,
}

#[derive(ApiResponse)]
pub enum CreatedResponse {
    /// The payment intent was created (and, with `confirm: true`, is `processing`).
    #[oai(status = 201)]
    Created(SerdeJson<PaymentIntentView>),
    /// A replay: this Idempotency-Key already created it; the original body, with
    /// `Idempotent-Replayed: true`.
    #[oai(status = 200)]
    Replayed(SerdeJson<PaymentIntentView>),
}

#[derive(ApiResponse)]
pub enum AcceptedResponse {
    /// Accepted: the intent is `processing` and the confirm worker finishes it.
    #[oai(status = 202)]
    Accepted(SerdeJson<PaymentIntentView>),
    /// A replay of an earlier request with this Idempotency-Key, with
    /// `Idempotent-Replayed: true`.
    #[oai(status = 200)]
    Replayed(SerdeJson<PaymentIntentView>),
}

#[derive(ApiResponse)]
pub enum IntentResponse {
    /// The payment intent.
    #[oai(status = 200)]
    Ok(SerdeJson<PaymentIntentView>),
}

#[derive(ApiResponse)]
pub enum ListResponse {
    /// A page of payment intents, newest first.
    #[oai(status = 200)]
    Ok(SerdeJson<PaymentIntentList>),
}

/// Errors of a POST on one intent: it may not exist, or its state may not allow the call.
const ON_INTENT: u32 = WRITE | NOT_FOUND | CONFLICT;
/// Confirming may also reach the vault, to use a token.
const CONFIRM: u32 = ON_INTENT | UNAVAILABLE;

const MAX_TEXT: usize = 1000;

fn bounded_text(
    value: Option<String>,
    param: &str,
    max: usize,
) -> Result<Option<String>, ApiError> {
    match value {
        Some(v) if v.chars().count() > max => Err(ApiError::invalid(
            "parameter_invalid",
            format!("`{param}` may be at most {max} characters long"),
        )
        .with_param(param)),
        other => Ok(other),
    }
}

fn parse_return_url(value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        None => Ok(None),
        Some(url) => {
            let ok = (url.starts_with("https://") || url.starts_with("http://"))
                && url.len() <= 2048
                && url.len() > "http://".len()
                && !url.chars().any(char::is_whitespace);
            if ok {
                Ok(Some(url))
            } else {
                Err(ApiError::invalid(
                    "url_invalid",
                    "`returnUrl` must be an http(s) URL of at most 2048 characters",
                )
                .with_param("returnUrl"))
            }
        }
    }
}

fn no_such_method(pm: &str) -> ApiError {
    let shown: String = paystream_shared::telemetry::scrub(pm)
        .chars()
        .take(64)
        .collect();
    ApiError::invalid(
        "resource_missing",
        format!("No such PaymentMethod: '{shown}'"),
    )
    .with_param("paymentMethodId")
}

/// Test payment methods always exist; others must at least look like a `pm_` id (checked
/// against the store by [`resolve_payment_method`]). Anything else is a 400 naming the field.
fn parse_payment_method(raw: Option<String>) -> Result<Option<String>, ApiError> {
    match raw {
        None => Ok(None),
        Some(pm) if is_test_payment_method(&pm) => Ok(Some(pm)),
        Some(pm) if IdKind::PaymentMethod.parse(&pm, "paymentMethodId").is_ok() => Ok(Some(pm)),
        Some(pm) => Err(no_such_method(&pm)),
    }
}

/// A `paymentMethodId` an intent may use: a test method, or a stored, attached method of the
/// merchant. The one place confirm and create-with-confirm decide that.
struct UsableMethod {
    id: String,
    bank_account: bool,
    /// Whether the issuer may ask for 3-D Secure, so that confirming needs a `returnUrl`. The
    /// API cannot know a stored card's issuer's mind, so every stored card may (docs/api.md).
    may_need_3ds: bool,
}

impl UsableMethod {
    /// A stored (or about to be stored) method of this type: what its type allows is all the
    /// API knows of it.
    fn of_type(id: String, method_type: PaymentMethodType) -> Self {
        Self {
            bank_account: method_type == PaymentMethodType::BankAccount,
            may_need_3ds: method_type == PaymentMethodType::Card,
            id,
        }
    }
}

async fn resolve_payment_method(
    db: &sqlx::PgPool,
    auth: &AuthContext,
    pm: String,
) -> Result<UsableMethod, ApiError> {
    if is_test_payment_method(&pm) {
        return Ok(UsableMethod {
            bank_account: pm == "pm_bank_account",
            may_need_3ds: may_require_action(&pm),
            id: pm,
        });
    }
    let stored = paystream_shared::store::payment_methods::get(db, &auth.merchant_id, &pm)
        .await?
        .ok_or_else(|| no_such_method(&pm))?;
    if stored.detached_at.is_some() {
        return Err(super::payment_methods::detached_error("paymentMethodId"));
    }
    Ok(UsableMethod::of_type(pm, stored.method_type))
}

/// Bank account debits settle later and cannot be held for a later capture.
fn check_capture_method(pm: &UsableMethod, capture: CaptureMethod) -> Result<(), ApiError> {
    if pm.bank_account && capture == CaptureMethod::Manual {
        return Err(ApiError::invalid(
            "parameter_invalid",
            "A bank account cannot use `captureMethod: manual`",
        )
        .with_param("captureMethod"));
    }
    Ok(())
}

fn require_return_url_for(pm: &UsableMethod, return_url: &Option<String>) -> Result<(), ApiError> {
    if pm.may_need_3ds && return_url.is_none() {
        return Err(ApiError::invalid(
            "parameter_missing",
            "`returnUrl` is required to confirm a card that may need 3-D Secure authentication",
        )
        .with_param("returnUrl"));
    }
    Ok(())
}

async fn load(state: &AppState, auth: &AuthContext, id: &str) -> Result<PaymentIntent, ApiError> {
    if IdKind::PaymentIntent.parse(id, "id").is_err() {
        return Err(ApiError::not_found("payment_intent", id));
    }
    store::get(&state.pool, &auth.merchant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("payment_intent", id))
}

/// For a publishable key's client-side call: the intent, only when `client_secret` is its
/// secret. A missing or wrong secret (or another intent's, or another merchant's key) is the
/// same 404 as an intent that does not exist, and counts against the caller's limit. A secret
/// key passes through: its calls are checked by role alone.
async fn check_client_secret(
    state: &AppState,
    auth: &AuthContext,
    id: &str,
    client_secret: Option<&str>,
) -> Result<(), ApiError> {
    let Some(call) = &auth.client else {
        return Ok(());
    };
    let secrets = crate::client_side::secrets(state);
    let found = match client_secret {
        Some(presented) => load(state, auth, id)
            .await
            .ok()
            .filter(|pi| secrets.verify(&auth.merchant_id, &pi.id, presented)),
        None => None,
    };
    if found.is_none() {
        call.failed();
        return Err(ApiError::not_found("payment_intent", id));
    }
    Ok(())
}

/// The intent as `auth` may see it: a publishable key gets no metadata (the merchant's own
/// data, not the shopper's), and nobody gets `clientSecret` here (the guard adds it for secret
/// keys, so a stored idempotent copy never holds it).
fn shown(auth: &AuthContext, intent: &PaymentIntent) -> PaymentIntentView {
    let mut view = intent.view();
    if auth.client.is_some() {
        view.metadata = BTreeMap::new();
    }
    view
}

/// Reads the intent again inside the transaction, locked, so the state machine decides on the
/// row as it is now rather than as it was when the request started.
async fn lock(
    conn: &mut sqlx::PgConnection,
    auth: &AuthContext,
    id: &str,
) -> Result<PaymentIntent, ApiError> {
    store::get_for_update(conn, &auth.merchant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("payment_intent", id))
}

/// Moves a locked intent to `processing` and queues the confirm command, in `conn`'s transaction.
async fn start_confirm(
    conn: &mut sqlx::PgConnection,
    intent: PaymentIntent,
    auth: &AuthContext,
    payment_method_id: String,
    return_url: Option<String>,
) -> Result<PaymentIntent, ApiError> {
    let actor = auth.actor();
    let intent = if intent.status == PaymentIntentStatus::RequiresPaymentMethod {
        store::transition(
            conn,
            &intent,
            PaymentIntentStatus::RequiresConfirmation,
            &actor,
            None,
            |pi| {
                pi.payment_method_id = Some(payment_method_id.clone());
            },
        )
        .await?
    } else {
        intent
    };
    let command = PaymentCommand::ConfirmV1 {
        payment_intent_id: intent.id.clone(),
        merchant_id: intent.merchant_id.clone(),
        // Queued with the transition below, so it is for the version that transition writes.
        intent_version: Some(store::next_version(&intent)),
    };
    let processing = store::transition_queueing(
        conn,
        &intent,
        PaymentIntentStatus::Processing,
        &actor,
        Some("payment_intent.processing"),
        Some((command.subject(), command.to_json())),
        |pi| {
            pi.payment_method_id = Some(payment_method_id);
            if return_url.is_some() {
                pi.return_url = return_url;
            }
            pi.last_payment_error = None;
        },
    )
    .await?;
    Ok(processing)
}

/// Serializes the view, stores it for the Idempotency-Key in `tx`, commits, and answers.
async fn finish(
    req: &Request,
    auth: &AuthContext,
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    status: StatusCode,
    intent: &PaymentIntent,
) -> Result<PaymentIntentView, ApiError> {
    let view = shown(auth, intent);
    let body = serde_json::to_vec(&view).map_err(|e| ApiError::internal(&e))?;
    idempotency::complete(req, &mut tx, status, &body).await?;
    tx.commit().await?;
    Ok(view)
}

pub struct PaymentIntentsApi;

#[OpenApi(tag = "ApiTags::PaymentIntents")]
impl PaymentIntentsApi {
    /// Create a payment intent.
    #[oai(path = "/payment-intents", method = "post")]
    async fn create(
        &self,
        req: &Request,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        /// Makes the request safe to retry: the same key with the same body answers the
        /// original response (200, `Idempotent-Replayed: true`) instead of running again.
        #[oai(name = "Idempotency-Key")]
        _idempotency_key: Header<Option<String>>,
        body: JsonBody<CreatePaymentIntent, true>,
    ) -> Result<CreatedResponse, Errors<WRITE>> {
        let auth = auth.0;
        let b = body.0;
        let amount = Amount::parse_charge(b.amount, "amount")?;
        let currency = Currency::parse(&b.currency)?;
        let customer_id = b.customer_id.trim().to_owned();
        if customer_id.is_empty() || customer_id.len() > 255 {
            return Err(ApiError::invalid(
                "parameter_invalid",
                "`customerId` must be 1 to 255 characters",
            )
            .with_param("customerId")
            .into());
        }
        let capture_method = b
            .capture_method
            .map_or(CaptureMethod::Automatic, CaptureMethod::from);
        let metadata = b.metadata.unwrap_or_default();
        validate_metadata(&metadata)?;
        let description = bounded_text(b.description, "description", MAX_TEXT)?;
        let return_url = parse_return_url(b.return_url)?;
        let usable = match parse_payment_method(b.payment_method_id)? {
            Some(pm) => {
                let usable = resolve_payment_method(&state.pool, &auth, pm).await?;
                check_capture_method(&usable, capture_method)?;
                Some(usable)
            }
            None => None,
        };
        let confirm = b.confirm.unwrap_or(false);
        if confirm {
            let Some(pm) = &usable else {
                return Err(ApiError::invalid(
                    "parameter_missing",
                    "`confirm: true` needs a `paymentMethodId`",
                )
                .with_param("paymentMethodId")
                .into());
            };
            require_return_url_for(pm, &return_url)?;
        }
        let payment_method_id = usable.map(|u| u.id);

        let now = paystream_shared::domain::now();
        let intent = PaymentIntent {
            id: IdKind::PaymentIntent.generate(),
            merchant_id: auth.merchant_id.clone(),
            amount,
            currency,
            status: if payment_method_id.is_some() {
                PaymentIntentStatus::RequiresConfirmation
            } else {
                PaymentIntentStatus::RequiresPaymentMethod
            },
            amount_capturable: Amount::ZERO,
            amount_received: Amount::ZERO,
            amount_refunded: Amount::ZERO,
            customer_id,
            payment_method_id: payment_method_id.clone(),
            capture_method,
            description,
            metadata,
            last_payment_error: None,
            next_action: None,
            return_url: return_url.clone(),
            authorization_expires_at: None,
            canceled_at: None,
            cancellation_reason: None,
            acquirer_charge_id: None,
            version: 0,
            amount_to_capture: None,
            void_confirmed_at: None,
            created_at: now,
            updated_at: now,
        };
        let mut tx = idempotency::begin(req, &state.pool).await?;
        store::insert(&mut tx, &intent, &auth.actor())
            .await
            .map_err(ApiError::from)?;
        let intent = match (confirm, payment_method_id) {
            (true, Some(pm)) => start_confirm(&mut tx, intent, &auth, pm, return_url).await?,
            _ => intent,
        };
        let view = finish(req, &auth, tx, StatusCode::CREATED, &intent).await?;
        Ok(CreatedResponse::Created(SerdeJson(view)))
    }

    /// Retrieve a payment intent.
    #[oai(path = "/payment-intents/:id", method = "get")]
    async fn get(
        &self,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        id: Path<String>,
        /// The intent's client secret: required with a publishable key (then the answer has
        /// no `metadata`); a wrong or missing one is 404. Ignored with a secret key.
        #[oai(name = "clientSecret")]
        client_secret: Query<Option<String>>,
    ) -> Result<IntentResponse, Errors<{ READ | NOT_FOUND }>> {
        let auth = auth.0;
        check_client_secret(&state, &auth, &id.0, client_secret.0.as_deref()).await?;
        let intent = load(&state, &auth, &id.0).await?;
        Ok(IntentResponse::Ok(SerdeJson(shown(&auth, &intent))))
    }

    /// List payment intents, newest first.
    #[oai(path = "/payment-intents", method = "get")]
    async fn list(
        &self,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        #[oai(name = "customerId")] customer_id: Query<Option<String>>,
        status: Query<Option<String>>,
        limit: Query<Option<String>>,
        #[oai(name = "startingAfter")] starting_after: Query<Option<String>>,
    ) -> Result<ListResponse, Errors<READ>> {
        let auth = auth.0;
        let limit = parse_limit(limit.0.as_deref())?;
        let status = status
            .0
            .as_deref()
            .map(str::parse::<PaymentIntentStatus>)
            .transpose()?;
        if let Some(cursor) = &starting_after.0 {
            if !store::exists(&state.pool, &auth.merchant_id, cursor)
                .await
                .map_err(ApiError::from)?
            {
                return Err(ApiError::invalid(
                    "resource_missing",
                    "`startingAfter` names no payment intent of yours",
                )
                .with_param("startingAfter")
                .into());
            }
        }
        let filter = ListFilter {
            customer_id: customer_id.0,
            status,
            starting_after: starting_after.0,
            limit: limit + 1,
        };
        let mut rows = store::list(&state.pool, &auth.merchant_id, &filter)
            .await
            .map_err(ApiError::from)?;
        let wanted = usize::try_from(limit).unwrap_or(usize::MAX);
        let has_more = rows.len() > wanted;
        rows.truncate(wanted);
        Ok(ListResponse::Ok(SerdeJson(PaymentIntentList {
            data: rows.iter().map(IntentView::view).collect(),
            has_more,
        })))
    }

    /// Confirm a payment intent: it moves to `processing` and the confirm worker finishes it.
    ///
    /// With a publishable key (from the browser) `clientSecret` is required, and the payment
    /// method is a `paymentMethod` token, a test method, or a stored method of the intent's
    /// customer.
    #[oai(path = "/payment-intents/:id/confirm", method = "post")]
    async fn confirm(
        &self,
        req: &Request,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        id: Path<String>,
        /// Makes the request safe to retry: the same key with the same body answers the
        /// original response (200, `Idempotent-Replayed: true`) instead of running again.
        #[oai(name = "Idempotency-Key")]
        _idempotency_key: Header<Option<String>>,
        body: JsonBody<ConfirmPaymentIntent>,
    ) -> Result<AcceptedResponse, Errors<CONFIRM>> {
        let auth = auth.0;
        let b = body.0;
        check_client_secret(&state, &auth, &id.0, b.client_secret.as_deref()).await?;
        let currency = b.currency.as_deref().map(Currency::parse).transpose()?;
        let return_url = parse_return_url(b.return_url)?;
        let mut requested_pm = parse_payment_method(b.payment_method_id)?;
        // The Idempotency-Key is claimed before the token is spent: a retry of a confirm that
        // used the token waits for it and replays its answer, instead of finding the token
        // used up and answering an error for a confirm that worked.
        let mut tx = idempotency::begin(req, &state.pool).await?;
        let from_token = match b.payment_method {
            Some(_) if requested_pm.is_some() => {
                return Err(ApiError::invalid(
                    "parameter_invalid",
                    "Pass `paymentMethodId` or `paymentMethod`, not both",
                )
                .with_param("paymentMethod")
                .into());
            }
            Some(token) => {
                // Confirmable first, so a token is not used up on an intent that cannot use it.
                let intent = load(&state, &auth, &id.0).await?;
                intent.status.confirmable()?;
                // And the checks of the method's kind, which need no vault: a confirm refused
                // for a missing `returnUrl` must leave the token usable for the one that follows.
                let kind = UsableMethod::of_type(String::new(), token.method_type);
                check_capture_method(&kind, intent.capture_method)?;
                require_return_url_for(
                    &kind,
                    &return_url.clone().or_else(|| intent.return_url.clone()),
                )?;
                // The vault's client is the application's data, as for `POST /payment-methods`.
                let no_vault = super::payment_methods::Vault(None);
                let vault = req
                    .data::<super::payment_methods::Vault>()
                    .unwrap_or(&no_vault);
                let pm = super::payment_methods::from_token(
                    vault,
                    &auth,
                    token.method_type,
                    &token.token,
                    &intent.customer_id,
                )
                .await?;
                requested_pm = Some(pm.id.clone());
                Some(pm)
            }
            None => None,
        };
        if let Some(pm) = &from_token {
            paystream_shared::store::payment_methods::insert(&mut tx, pm, &auth.actor())
                .await
                .map_err(ApiError::from)?;
        }
        let intent = lock(&mut tx, &auth, &id.0).await?;
        if let Some(c) = currency {
            if c != intent.currency {
                return Err(ApiError::invalid(
                    "currency_mismatch",
                    format!(
                        "`currency` {c} differs from the payment intent's currency {}",
                        intent.currency
                    ),
                )
                .with_param("currency")
                .into());
            }
        }
        intent.status.confirmable()?;
        let Some(pm) = requested_pm.or_else(|| intent.payment_method_id.clone()) else {
            return Err(ApiError::invalid(
                "parameter_missing",
                "This payment intent has no payment method; pass `paymentMethodId`",
            )
            .with_param("paymentMethodId")
            .into());
        };
        // Checked again even when the intent already names it: it may have been detached since.
        let usable = match &from_token {
            Some(stored) => UsableMethod::of_type(pm, stored.method_type),
            None => resolve_payment_method(&state.pool, &auth, pm).await?,
        };
        if auth.client.is_some() && from_token.is_none() && !is_test_payment_method(&usable.id) {
            // From the browser, only a method of this intent's own customer: a shopper must
            // not charge a card the merchant stored for someone else.
            let stored = paystream_shared::store::payment_methods::get(
                &state.pool,
                &auth.merchant_id,
                &usable.id,
            )
            .await
            .map_err(ApiError::from)?;
            if stored.is_none_or(|m| m.customer_id.as_deref() != Some(intent.customer_id.as_str()))
            {
                return Err(no_such_method(&usable.id).into());
            }
        }
        check_capture_method(&usable, intent.capture_method)?;
        require_return_url_for(
            &usable,
            &return_url.clone().or_else(|| intent.return_url.clone()),
        )?;
        let pm = usable.id;
        let intent = start_confirm(&mut tx, intent, &auth, pm, return_url).await?;
        let view = finish(req, &auth, tx, StatusCode::ACCEPTED, &intent).await?;
        Ok(AcceptedResponse::Accepted(SerdeJson(view)))
    }

    /// Capture an authorized (manual-capture) payment intent.
    #[oai(path = "/payment-intents/:id/capture", method = "post")]
    async fn capture(
        &self,
        req: &Request,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        id: Path<String>,
        /// Makes the request safe to retry: the same key with the same body answers the
        /// original response (200, `Idempotent-Replayed: true`) instead of running again.
        #[oai(name = "Idempotency-Key")]
        _idempotency_key: Header<Option<String>>,
        body: JsonBody<CapturePaymentIntent>,
    ) -> Result<AcceptedResponse, Errors<ON_INTENT>> {
        let auth = auth.0;
        let mut tx = idempotency::begin(req, &state.pool).await?;
        let intent = lock(&mut tx, &auth, &id.0).await?;
        intent.status.capturable()?;
        // The authorization is held until it expires, not until the scheduler's next round
        // cancels it: past the deadline it is refused here, and the scheduler voids it.
        if let Some(expired_at) = intent
            .authorization_expires_at
            .filter(|at| *at <= paystream_shared::domain::now())
        {
            return Err(ApiError::conflict(
                "charge_expired_for_capture",
                format!(
                    "The authorization expired at {}; it can no longer be captured",
                    expired_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            )
            .into());
        }
        let amount = match body.0.amount_to_capture {
            None => intent.amount_capturable,
            Some(raw) => {
                let a = Amount::parse_charge(raw, "amountToCapture")?;
                if a > intent.amount_capturable {
                    return Err(ApiError::invalid(
                        "amount_too_large",
                        format!(
                            "`amountToCapture` exceeds the capturable {}",
                            intent.amount_capturable
                        ),
                    )
                    .with_param("amountToCapture")
                    .into());
                }
                a
            }
        };
        let intent = store::transition(
            &mut tx,
            &intent,
            PaymentIntentStatus::Processing,
            &auth.actor(),
            None,
            // Recorded with the transition, so whoever finishes the capture later (the worker,
            // reconciliation, a replayed dead letter) captures this and not the whole hold.
            |pi| pi.amount_to_capture = Some(amount),
        )
        .await
        .map_err(ApiError::from)?;
        let command = PaymentCommand::CaptureV1 {
            payment_intent_id: intent.id.clone(),
            merchant_id: intent.merchant_id.clone(),
            amount_to_capture: amount.minor_units(),
            intent_version: Some(intent.version),
        };
        outbox::enqueue(&mut tx, command.subject(), &command.to_json())
            .await
            .map_err(ApiError::from)?;
        let view = finish(req, &auth, tx, StatusCode::ACCEPTED, &intent).await?;
        Ok(AcceptedResponse::Accepted(SerdeJson(view)))
    }

    /// Cancel a payment intent. Canceling an authorization voids it at the acquirer.
    #[oai(path = "/payment-intents/:id/cancel", method = "post")]
    async fn cancel(
        &self,
        req: &Request,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        id: Path<String>,
        /// Makes the request safe to retry: the same key with the same body answers the
        /// original response (200, `Idempotent-Replayed: true`) instead of running again.
        #[oai(name = "Idempotency-Key")]
        _idempotency_key: Header<Option<String>>,
        body: JsonBody<CancelPaymentIntent>,
    ) -> Result<IntentResponse, Errors<ON_INTENT>> {
        let auth = auth.0;
        // The enum is the list of reasons a merchant may give; `expired` is the scheduler's.
        let reason = body.0.cancellation_reason.map(|r| r.as_str().to_owned());
        let mut tx = idempotency::begin(req, &state.pool).await?;
        let intent = lock(&mut tx, &auth, &id.0).await?;
        // The void is queued in the same statement as the transition, so only the cancel
        // that wins sends it.
        let void = PaymentCommand::void_for(&intent);
        let intent = store::transition_queueing(
            &mut tx,
            &intent,
            PaymentIntentStatus::Canceled,
            &auth.actor(),
            Some("payment_intent.canceled"),
            void.as_ref().map(PaymentCommand::message),
            |pi| {
                pi.canceled_at = Some(paystream_shared::domain::now());
                pi.cancellation_reason =
                    reason.or_else(|| Some("requested_by_customer".to_owned()));
                pi.amount_capturable = Amount::ZERO;
                pi.next_action = None;
            },
        )
        .await
        .map_err(ApiError::from)?;
        let view = finish(req, &auth, tx, StatusCode::OK, &intent).await?;
        Ok(IntentResponse::Ok(SerdeJson(view)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_urls() {
        assert!(parse_return_url(Some("https://shop.example/done".into())).is_ok());
        assert!(parse_return_url(Some("javascript:alert(1)".into())).is_err());
        assert!(parse_return_url(Some("https://a b".into())).is_err());
        assert!(parse_return_url(None).unwrap().is_none());
    }

    #[test]
    fn payment_methods_and_3ds() {
        assert!(parse_payment_method(Some("pm_card_visa".into())).is_ok());
        let e = parse_payment_method(Some("4242424242424242".into())).unwrap_err();
        assert!(!e.message.contains("4242424242424242"));
        let method = |id: &str, may_need_3ds| UsableMethod {
            id: id.into(),
            bank_account: false,
            may_need_3ds,
        };
        assert!(
            require_return_url_for(&method("pm_card_threeDSecureRequired", true), &None).is_err()
        );
        assert!(require_return_url_for(&method("pm_card_visa", false), &None).is_ok());
        assert!(require_return_url_for(
            &method("pm_stored", true),
            &Some("https://shop.example".into())
        )
        .is_ok());
    }

    #[test]
    fn text_bounds() {
        assert!(bounded_text(Some("x".repeat(1001)), "description", MAX_TEXT).is_err());
        assert!(bounded_text(Some("x".repeat(1000)), "description", MAX_TEXT).is_ok());
    }
}
