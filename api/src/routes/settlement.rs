//! Payouts and settlement discrepancies: `GET /api/payouts`, `GET /api/payouts/{id}`,
//! `GET /api/settlement/discrepancies` and `POST /api/settlement/discrepancies/{id}/resolve`.
//! The scheduler's settlement job writes them (workers/src/settlement.rs); here they are read
//! and resolved, each merchant only its own.

use poem::http::StatusCode;
use poem::Request;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::{Deserialize, Serialize};

use paystream_shared::domain::settlement::DiscrepancyStatus;
use paystream_shared::settlement_views::{PayoutView, SettlementDiscrepancyView};
use paystream_shared::store::settlement_discrepancies::{self as discrepancies, Discrepancy};
use paystream_shared::store::{payouts, StoreError};

use crate::auth::MerchantKey;
use crate::error::ApiError;
use crate::extract::{parse_limit, JsonBody, SerdeJson};
use crate::responses::{Errors, CONFLICT, NOT_FOUND, READ, WRITE};
use crate::routes::ApiTags;
use crate::{idempotency, AppState};

/// The longest resolution note accepted.
const MAX_NOTE: usize = 1000;

#[derive(Object, Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct PayoutList {
    pub data: Vec<PayoutView>,
    pub has_more: bool,
}

#[derive(Object, Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct DiscrepancyList {
    pub data: Vec<SettlementDiscrepancyView>,
    pub has_more: bool,
}

#[derive(Debug, Default, Deserialize, Object)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[oai(rename_all = "camelCase")]
pub struct ResolveDiscrepancy {
    /// What was found and done about it (1 to 1000 characters); kept in the audit log.
    pub note: Option<String>,
}

#[derive(ApiResponse)]
pub enum PayoutResponse {
    /// The payout.
    #[oai(status = 200)]
    Ok(SerdeJson<PayoutView>),
}

#[derive(ApiResponse)]
pub enum PayoutListResponse {
    /// A page of payouts, newest first.
    #[oai(status = 200)]
    Ok(SerdeJson<PayoutList>),
}

#[derive(ApiResponse)]
pub enum DiscrepancyListResponse {
    /// A page of settlement discrepancies, newest first.
    #[oai(status = 200)]
    Ok(SerdeJson<DiscrepancyList>),
}

#[derive(ApiResponse)]
pub enum DiscrepancyResponse {
    /// The discrepancy, resolved.
    #[oai(status = 200)]
    Ok(SerdeJson<SettlementDiscrepancyView>),
}

fn unknown_cursor(what: &str) -> ApiError {
    ApiError::invalid(
        "resource_missing",
        format!("`startingAfter` names no {what} of yours"),
    )
    .with_param("startingAfter")
}

fn page<T>(mut rows: Vec<T>, limit: i64) -> (Vec<T>, bool) {
    let wanted = usize::try_from(limit).unwrap_or(usize::MAX);
    let has_more = rows.len() > wanted;
    rows.truncate(wanted);
    (rows, has_more)
}

pub struct SettlementApi;

#[OpenApi(tag = "ApiTags::Payouts")]
impl SettlementApi {
    /// List your payouts, newest first.
    #[oai(path = "/payouts", method = "get")]
    async fn list_payouts(
        &self,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        limit: Query<Option<String>>,
        #[oai(name = "startingAfter")] starting_after: Query<Option<String>>,
    ) -> Result<PayoutListResponse, Errors<READ>> {
        let limit = parse_limit(limit.0.as_deref())?;
        let merchant = &auth.0.merchant_id;
        if let Some(cursor) = starting_after.0.as_deref() {
            if !payouts::exists(&state.pool, merchant, cursor).await? {
                return Err(unknown_cursor("payout").into());
            }
        }
        let rows = payouts::list(
            &state.pool,
            merchant,
            starting_after.0.as_deref(),
            limit + 1,
        )
        .await?;
        let (rows, has_more) = page(rows, limit);
        Ok(PayoutListResponse::Ok(SerdeJson(PayoutList {
            data: rows.iter().map(payouts::Payout::view).collect(),
            has_more,
        })))
    }

    /// Retrieve a payout, with how its settlement report reconciled.
    #[oai(path = "/payouts/:id", method = "get")]
    async fn get_payout(
        &self,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        id: Path<String>,
    ) -> Result<PayoutResponse, Errors<{ READ | NOT_FOUND }>> {
        let payout = payouts::get(&state.pool, &auth.0.merchant_id, &id.0)
            .await?
            .ok_or_else(|| ApiError::not_found("payout", &id.0))?;
        Ok(PayoutResponse::Ok(SerdeJson(payout.view())))
    }

    /// List the differences reconciliation found between the acquirer's reports and your
    /// ledger, newest first.
    #[oai(path = "/settlement/discrepancies", method = "get")]
    async fn list_discrepancies(
        &self,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        #[oai(name = "payoutId")] payout_id: Query<Option<String>>,
        /// `open` or `resolved`.
        status: Query<Option<String>>,
        limit: Query<Option<String>>,
        #[oai(name = "startingAfter")] starting_after: Query<Option<String>>,
    ) -> Result<DiscrepancyListResponse, Errors<READ>> {
        let limit = parse_limit(limit.0.as_deref())?;
        let merchant = &auth.0.merchant_id;
        let status = match status.0.as_deref() {
            None => None,
            Some(raw) => Some(DiscrepancyStatus::parse(raw).ok_or_else(|| {
                ApiError::invalid("parameter_invalid", "`status` must be `open` or `resolved`")
                    .with_param("status")
            })?),
        };
        if let Some(cursor) = starting_after.0.as_deref() {
            if !discrepancies::exists(&state.pool, merchant, cursor).await? {
                return Err(unknown_cursor("settlement discrepancy").into());
            }
        }
        let filter = discrepancies::Filter {
            merchant_id: Some(merchant),
            payout_id: payout_id.0.as_deref(),
            status,
            starting_after: starting_after.0.as_deref(),
        };
        let rows = discrepancies::list(&state.pool, &filter, limit + 1).await?;
        let (rows, has_more) = page(rows, limit);
        Ok(DiscrepancyListResponse::Ok(SerdeJson(DiscrepancyList {
            data: rows.iter().map(Discrepancy::view).collect(),
            has_more,
        })))
    }

    /// Mark a discrepancy resolved, with a note saying how; audited with who did it.
    #[oai(path = "/settlement/discrepancies/:id/resolve", method = "post")]
    async fn resolve(
        &self,
        req: &Request,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        id: Path<String>,
        /// Makes the request safe to retry: the same key with the same body answers the
        /// original response (200, `Idempotent-Replayed: true`) instead of running again.
        #[oai(name = "Idempotency-Key")]
        _idempotency_key: Header<Option<String>>,
        body: JsonBody<ResolveDiscrepancy>,
    ) -> Result<DiscrepancyResponse, Errors<{ WRITE | NOT_FOUND | CONFLICT }>> {
        let note = match body.0.note.as_deref().map(str::trim) {
            None | Some("") => {
                return Err(ApiError::invalid("parameter_missing", "`note` is required")
                    .with_param("note")
                    .into())
            }
            Some(n) if n.chars().count() > MAX_NOTE => {
                return Err(ApiError::invalid(
                    "parameter_invalid",
                    format!("`note` is at most {MAX_NOTE} characters"),
                )
                .with_param("note")
                .into())
            }
            Some(n) => n.to_owned(),
        };
        let auth = &auth.0;
        let mut tx = state.pool.begin().await.map_err(ApiError::from)?;
        let resolved =
            match discrepancies::resolve(&mut tx, &auth.merchant_id, &id.0, &note, &auth.actor())
                .await
            {
                Ok(d) => d,
                Err(StoreError::NotFound(_)) => {
                    return Err(ApiError::not_found("settlement_discrepancy", &id.0).into())
                }
                Err(e) => return Err(ApiError::from(e).into()),
            };
        let view = resolved.view();
        let bytes = serde_json::to_vec(&view).map_err(|e| ApiError::internal(&e))?;
        idempotency::complete(req, &mut tx, StatusCode::OK, &bytes).await?;
        tx.commit().await.map_err(ApiError::from)?;
        Ok(DiscrepancyResponse::Ok(SerdeJson(view)))
    }
}
