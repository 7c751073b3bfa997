//! Refunds: `POST /api/refunds` and its alias `POST /api/payment-intents/{id}/refund`, get and
//! list. The over-refund check runs with the intent's row locked, inside the transaction that
//! inserts the refund (`paystream_shared::store::refunds::create`).

use poem::http::StatusCode;
use poem::Request;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde::{Deserialize, Serialize};

use paystream_shared::domain::ids::IdKind;
use paystream_shared::domain::money::Amount;
use paystream_shared::domain::refund::parse_reason;
use paystream_shared::store::refunds::{self as store, Refund};
use paystream_shared::views::RefundView;

use crate::auth::{AuthContext, MerchantKey};
use crate::error::ApiError;
use crate::extract::{parse_limit, JsonBody, SerdeJson};
use crate::responses::{Errors, CONFLICT, NOT_FOUND, READ, WRITE};
use crate::routes::ApiTags;
use crate::{idempotency, AppState};

#[derive(Debug, Deserialize, Object)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[oai(rename_all = "camelCase")]
pub struct CreateRefund {
    /// The succeeded payment intent (`pi_...`) to refund.
    pub payment_intent_id: String,
    /// Minor units; defaults to everything not yet refunded.
    pub amount: Option<i64>,
    pub reason: Option<RefundReason>,
}

/// Why the money goes back.
#[derive(Debug, Clone, Copy, Deserialize, Enum)]
#[serde(rename_all = "snake_case")]
#[oai(rename_all = "snake_case")]
pub enum RefundReason {
    Duplicate,
    Fraudulent,
    RequestedByCustomer,
}

impl RefundReason {
    fn as_str(self) -> &'static str {
        match self {
            RefundReason::Duplicate => "duplicate",
            RefundReason::Fraudulent => "fraudulent",
            RefundReason::RequestedByCustomer => "requested_by_customer",
        }
    }
}

#[derive(Debug, Default, Deserialize, Object)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[oai(rename_all = "camelCase")]
pub struct RefundIntent {
    /// Minor units; defaults to everything not yet refunded.
    pub amount: Option<i64>,
    pub reason: Option<RefundReason>,
}

#[derive(Object, Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct RefundList {
    pub data: Vec<RefundView>,
    pub has_more: bool,
}

#[derive(ApiResponse)]
pub enum RefundCreated {
    /// The refund was created, `pending`; the refund worker settles it.
    #[oai(status = 201)]
    Created(SerdeJson<RefundView>),
    /// A replay of an earlier request with this Idempotency-Key, with
    /// `Idempotent-Replayed: true`.
    #[oai(status = 200)]
    Replayed(SerdeJson<RefundView>),
}

#[derive(ApiResponse)]
pub enum RefundResponse {
    /// The refund.
    #[oai(status = 200)]
    Ok(SerdeJson<RefundView>),
}

#[derive(ApiResponse)]
pub enum RefundListResponse {
    /// A page of refunds, newest first.
    #[oai(status = 200)]
    Ok(SerdeJson<RefundList>),
}

/// A refund names an intent that may not exist, or may not be refundable (409).
const CREATE: u32 = WRITE | NOT_FOUND | CONFLICT;

async fn create_refund(
    req: &Request,
    state: &AppState,
    auth: &AuthContext,
    intent_id: &str,
    param: &str,
    amount: Option<i64>,
    reason: Option<RefundReason>,
) -> Result<RefundCreated, ApiError> {
    let amount = amount
        .map(|a| Amount::parse_charge(a, "amount"))
        .transpose()?;
    let reason = parse_reason(reason.map(|r| r.as_str().to_owned()))?;
    if IdKind::PaymentIntent.parse(intent_id, param).is_err() {
        return Err(ApiError::not_found("payment_intent", intent_id).with_param(param));
    }
    let mut tx = state.pool.begin().await?;
    let intent = paystream_shared::store::payment_intents::get_for_update(
        &mut tx,
        &auth.merchant_id,
        intent_id,
    )
    .await?
    .ok_or_else(|| ApiError::not_found("payment_intent", intent_id).with_param(param))?;
    let refund = store::create(&mut tx, &intent, amount, reason, &auth.actor()).await?;
    let view = refund.view();
    let body = serde_json::to_vec(&view).map_err(|e| ApiError::internal(&e))?;
    idempotency::complete(req, &mut tx, StatusCode::CREATED, &body).await?;
    tx.commit().await?;
    Ok(RefundCreated::Created(SerdeJson(view)))
}

pub struct RefundsApi;

#[OpenApi(tag = "ApiTags::Refunds")]
impl RefundsApi {
    /// Refund a succeeded payment intent, in full or in part.
    #[oai(path = "/refunds", method = "post")]
    async fn create(
        &self,
        req: &Request,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        /// Makes the request safe to retry: the same key with the same body answers the
        /// original response (200, `Idempotent-Replayed: true`) instead of running again.
        #[oai(name = "Idempotency-Key")]
        _idempotency_key: Header<Option<String>>,
        body: JsonBody<CreateRefund, true>,
    ) -> Result<RefundCreated, Errors<CREATE>> {
        let b = body.0;
        create_refund(
            req,
            &state,
            &auth.0,
            &b.payment_intent_id,
            "paymentIntentId",
            b.amount,
            b.reason,
        )
        .await
        .map_err(Errors)
    }

    /// The same as `POST /refunds` for this payment intent.
    #[oai(path = "/payment-intents/:id/refund", method = "post")]
    async fn refund_intent(
        &self,
        req: &Request,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        id: Path<String>,
        /// Makes the request safe to retry: the same key with the same body answers the
        /// original response (200, `Idempotent-Replayed: true`) instead of running again.
        #[oai(name = "Idempotency-Key")]
        _idempotency_key: Header<Option<String>>,
        body: JsonBody<RefundIntent>,
    ) -> Result<RefundCreated, Errors<CREATE>> {
        let b = body.0;
        create_refund(req, &state, &auth.0, &id.0, "id", b.amount, b.reason)
            .await
            .map_err(Errors)
    }

    /// Retrieve a refund.
    #[oai(path = "/refunds/:id", method = "get")]
    async fn get(
        &self,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        id: Path<String>,
    ) -> Result<RefundResponse, Errors<{ READ | NOT_FOUND }>> {
        let refund = store::get(&state.pool, &auth.0.merchant_id, &id.0)
            .await?
            .ok_or_else(|| ApiError::not_found("refund", &id.0))?;
        Ok(RefundResponse::Ok(SerdeJson(refund.view())))
    }

    /// List refunds, newest first, optionally of one payment intent.
    #[oai(path = "/refunds", method = "get")]
    async fn list(
        &self,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        #[oai(name = "paymentIntentId")] payment_intent_id: Query<Option<String>>,
        limit: Query<Option<String>>,
        #[oai(name = "startingAfter")] starting_after: Query<Option<String>>,
    ) -> Result<RefundListResponse, Errors<READ>> {
        let limit = parse_limit(limit.0.as_deref())?;
        // An unknown cursor would otherwise read as an empty last page; answer as the other
        // lists do. Another merchant's refund is unknown here too.
        if let Some(cursor) = starting_after.0.as_deref() {
            if !store::exists(&state.pool, &auth.0.merchant_id, cursor).await? {
                return Err(ApiError::invalid(
                    "resource_missing",
                    "`startingAfter` names no refund of yours",
                )
                .with_param("startingAfter")
                .into());
            }
        }
        let mut rows = store::list(
            &state.pool,
            &auth.0.merchant_id,
            payment_intent_id.0.as_deref(),
            starting_after.0.as_deref(),
            limit + 1,
        )
        .await?;
        let wanted = usize::try_from(limit).unwrap_or(usize::MAX);
        let has_more = rows.len() > wanted;
        rows.truncate(wanted);
        Ok(RefundListResponse::Ok(SerdeJson(RefundList {
            data: rows.iter().map(Refund::view).collect(),
            has_more,
        })))
    }
}
