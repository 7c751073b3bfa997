//! `GET /api/audit-log`: every state transition and operator action on the caller's objects.

use poem_openapi::param::Query;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Serialize;

use paystream_shared::audit;

use crate::auth::MerchantKey;
use crate::error::ApiError;
use crate::extract::{parse_limit, SerdeJson};
use crate::responses::{Errors, READ};
use crate::routes::ApiTags;
use crate::AppState;

#[derive(Object, Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct AuditList {
    /// Entries, newest first: {id, objectType, objectId, action, actor, before, after, createdAt, hash}.
    pub data: Vec<serde_json::Value>,
    pub has_more: bool,
}

#[derive(ApiResponse)]
pub enum AuditListResponse {
    /// A page of audit entries, newest first.
    #[oai(status = 200)]
    Ok(SerdeJson<AuditList>),
}

pub struct AuditApi;

#[OpenApi(tag = "ApiTags::AuditLog")]
impl AuditApi {
    /// The audit log of your objects, newest first.
    #[oai(path = "/audit-log", method = "get")]
    async fn list(
        &self,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        #[oai(name = "objectId")] object_id: Query<Option<String>>,
        /// Only what this actor did, as entries name it: `api_key:key_...` (reads of payment
        /// data are entries with action `access.read`).
        actor: Query<Option<String>>,
        limit: Query<Option<String>>,
        #[oai(name = "startingAfter")] starting_after: Query<Option<String>>,
    ) -> Result<AuditListResponse, Errors<READ>> {
        let limit = parse_limit(limit.0.as_deref())?;
        // An unknown cursor would otherwise read as an empty last page; answer as the other
        // lists do. Another merchant's entry is unknown here too.
        if let Some(cursor) = starting_after.0.as_deref() {
            if !audit::exists(&state.pool, &auth.0.merchant_id, cursor).await? {
                return Err(ApiError::invalid(
                    "resource_missing",
                    "`startingAfter` names no audit log entry of yours",
                )
                .with_param("startingAfter")
                .into());
            }
        }
        let mut rows = audit::list(
            &state.pool,
            &auth.0.merchant_id,
            object_id.0.as_deref(),
            actor.0.as_deref(),
            limit + 1,
            starting_after.0.as_deref(),
        )
        .await
        .map_err(ApiError::from)?;
        let has_more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
        rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let data = rows
            .iter()
            .map(|e| serde_json::to_value(e).unwrap_or_default())
            .collect();
        Ok(AuditListResponse::Ok(SerdeJson(AuditList {
            data,
            has_more,
        })))
    }
}
