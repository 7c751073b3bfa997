//! Disputes: list, get, submit and close. Disputes are created only by the acquirer's
//! chargeback notifications (`workers/src/dispute_events.rs`); here the merchant answers them.
//! Submit and close lock the dispute, ask its state machine, and write the move, its audit
//! entry, events and (for submit) the outbox command that sends the evidence to the acquirer,
//! in one transaction.

use poem::http::StatusCode;
use poem::Request;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Serialize;

use paystream_shared::commands::PaymentCommand;
use paystream_shared::domain::dispute::DisputeStatus;
use paystream_shared::domain::ids::IdKind;
use paystream_shared::outbox;
use paystream_shared::store::disputes::{self as store, Dispute, Move};
use paystream_shared::views::DisputeView;

use crate::auth::{AuthContext, MerchantKey};
use crate::error::ApiError;
use crate::extract::{parse_limit, SerdeJson};
use crate::responses::{Errors, CONFLICT, NOT_FOUND, READ, WRITE};
use crate::routes::ApiTags;
use crate::{idempotency, AppState};

#[derive(Object, Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct DisputeList {
    pub data: Vec<DisputeView>,
    pub has_more: bool,
}

#[derive(ApiResponse)]
pub enum DisputeResponse {
    /// The dispute.
    #[oai(status = 200)]
    Ok(SerdeJson<DisputeView>),
}

#[derive(ApiResponse)]
pub enum DisputeListResponse {
    /// A page of disputes, newest first.
    #[oai(status = 200)]
    Ok(SerdeJson<DisputeList>),
}

/// The dispute code a refused edit answers with.
pub const NOT_EDITABLE: &str = "dispute_not_editable";

pub(crate) fn not_found(id: &str) -> ApiError {
    ApiError::not_found("dispute", id).with_param("id")
}

/// Locks one of this merchant's disputes in `tx`.
pub(crate) async fn lock(
    tx: &mut sqlx::PgConnection,
    auth: &AuthContext,
    id: &str,
) -> Result<Dispute, ApiError> {
    if IdKind::Dispute.parse(id, "id").is_err() {
        return Err(not_found(id));
    }
    store::get_for_update(tx, &auth.merchant_id, id)
        .await?
        .ok_or_else(|| not_found(id))
}

/// Refuses a change to a dispute that no longer takes evidence: not `needs_response`, or its
/// deadline passed.
pub(crate) fn check_editable(dispute: &Dispute) -> Result<(), ApiError> {
    if dispute.status != DisputeStatus::NeedsResponse {
        return Err(ApiError::conflict(
            NOT_EDITABLE,
            format!(
                "The dispute is `{}`; evidence can only change while it is `needs_response`",
                dispute.status
            ),
        ));
    }
    if dispute.evidence_due_by <= paystream_shared::domain::now() {
        return Err(ApiError::conflict(
            NOT_EDITABLE,
            "The dispute's evidenceDueBy has passed",
        ));
    }
    Ok(())
}

async fn answer(
    req: &Request,
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    dispute: &Dispute,
) -> Result<DisputeResponse, ApiError> {
    let view = store::view(&mut tx, dispute).await?;
    let body = serde_json::to_vec(&view).map_err(|e| ApiError::internal(&e))?;
    idempotency::complete(req, &mut tx, StatusCode::OK, &body).await?;
    tx.commit().await?;
    Ok(DisputeResponse::Ok(SerdeJson(view)))
}

pub struct DisputesApi;

#[OpenApi(tag = "ApiTags::Disputes")]
impl DisputesApi {
    /// List disputes, newest first, optionally of one status or payment intent.
    #[oai(path = "/disputes", method = "get")]
    async fn list(
        &self,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        /// `needs_response`, `under_review`, `won` or `lost`.
        status: Query<Option<String>>,
        #[oai(name = "paymentIntentId")] payment_intent_id: Query<Option<String>>,
        limit: Query<Option<String>>,
        #[oai(name = "startingAfter")] starting_after: Query<Option<String>>,
    ) -> Result<DisputeListResponse, Errors<READ>> {
        let limit = parse_limit(limit.0.as_deref())?;
        let status = status
            .0
            .as_deref()
            .map(str::parse::<DisputeStatus>)
            .transpose()?;
        if let Some(cursor) = starting_after.0.as_deref() {
            if !store::exists(&state.pool, &auth.0.merchant_id, cursor).await? {
                return Err(ApiError::invalid(
                    "resource_missing",
                    "`startingAfter` names no dispute of yours",
                )
                .with_param("startingAfter")
                .into());
            }
        }
        let mut rows = store::list(
            &state.pool,
            &auth.0.merchant_id,
            status,
            payment_intent_id.0.as_deref(),
            starting_after.0.as_deref(),
            limit + 1,
        )
        .await?;
        let wanted = usize::try_from(limit).unwrap_or(usize::MAX);
        let has_more = rows.len() > wanted;
        rows.truncate(wanted);
        let mut conn = state.pool.acquire().await.map_err(ApiError::from)?;
        let mut data = Vec::with_capacity(rows.len());
        for d in &rows {
            data.push(store::view(&mut conn, d).await?);
        }
        Ok(DisputeListResponse::Ok(SerdeJson(DisputeList {
            data,
            has_more,
        })))
    }

    /// Retrieve a dispute.
    #[oai(path = "/disputes/:id", method = "get")]
    async fn get(
        &self,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        id: Path<String>,
    ) -> Result<DisputeResponse, Errors<{ READ | NOT_FOUND }>> {
        let dispute = store::get(&state.pool, &auth.0.merchant_id, &id.0)
            .await?
            .ok_or_else(|| not_found(&id.0))?;
        let mut conn = state.pool.acquire().await.map_err(ApiError::from)?;
        Ok(DisputeResponse::Ok(SerdeJson(
            store::view(&mut conn, &dispute).await?,
        )))
    }

    /// Submit the dispute's evidence to the acquirer: `under_review` until it decides. Once
    /// only; 409 afterwards, or once `evidenceDueBy` has passed.
    #[oai(path = "/disputes/:id/submit", method = "post")]
    async fn submit(
        &self,
        req: &Request,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        id: Path<String>,
        /// Makes the request safe to retry: the same key answers the original response.
        #[oai(name = "Idempotency-Key")]
        _idempotency_key: Header<Option<String>>,
    ) -> Result<DisputeResponse, Errors<{ WRITE | NOT_FOUND | CONFLICT }>> {
        let mut tx = state.pool.begin().await.map_err(ApiError::from)?;
        let dispute = lock(&mut tx, &auth.0, &id.0).await?;
        check_editable(&dispute)?;
        let next = store::transition(
            &mut tx,
            &dispute,
            DisputeStatus::UnderReview,
            Move::Submit,
            &auth.0.actor(),
        )
        .await?;
        let command = PaymentCommand::SubmitDisputeEvidenceV1 {
            payment_intent_id: next.payment_intent_id.clone(),
            merchant_id: next.merchant_id.clone(),
            dispute_id: next.id.clone(),
        };
        outbox::enqueue(&mut tx, command.subject(), &command.to_json())
            .await
            .map_err(ApiError::from)?;
        Ok(answer(req, tx, &next).await?)
    }

    /// Accept the loss: the dispute ends `lost` and its withdrawal stands.
    #[oai(path = "/disputes/:id/close", method = "post")]
    async fn close(
        &self,
        req: &Request,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        id: Path<String>,
        /// Makes the request safe to retry: the same key answers the original response.
        #[oai(name = "Idempotency-Key")]
        _idempotency_key: Header<Option<String>>,
    ) -> Result<DisputeResponse, Errors<{ WRITE | NOT_FOUND | CONFLICT }>> {
        let mut tx = state.pool.begin().await.map_err(ApiError::from)?;
        let dispute = lock(&mut tx, &auth.0, &id.0).await?;
        if dispute.status != DisputeStatus::NeedsResponse {
            return Err(ApiError::conflict(
                NOT_EDITABLE,
                format!(
                    "The dispute is `{}`; only a `needs_response` dispute can be closed",
                    dispute.status
                ),
            )
            .into());
        }
        let next = store::transition(
            &mut tx,
            &dispute,
            DisputeStatus::Lost,
            Move::Close,
            &auth.0.actor(),
        )
        .await?;
        Ok(answer(req, tx, &next).await?)
    }
}
