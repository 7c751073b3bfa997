//! The merchant's money: `GET /api/balance` (what it is owed, pending and available, per
//! currency) and `GET /api/balance-transactions` (every movement behind it, with its fee).
//! Both read the ledger (`paystream_shared::ledger`), scoped to the caller's merchant.

use poem_openapi::param::Query;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde::Serialize;

use chrono::{DateTime, Utc};
use paystream_shared::domain::ledger::{BalanceStatus, BalanceTransactionType};
use paystream_shared::ledger;
use paystream_shared::store::balance_transactions::{self as store, BalanceTransaction, Filter};

use crate::auth::MerchantKey;
use crate::error::ApiError;
use crate::extract::{parse_limit, SerdeJson};
use crate::responses::{Errors, READ};
use crate::routes::ApiTags;
use crate::AppState;

/// An amount in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Object)]
pub struct BalanceAmount {
    /// Integer count of the currency's minor unit; negative when refunds or fees exceed what
    /// came in.
    pub amount: i64,
    /// ISO 4217 code, lowercase.
    pub currency: String,
}

/// What the merchant is owed, per currency.
#[derive(Debug, Clone, Serialize, Object)]
pub struct BalanceView {
    /// Settled by the acquirer, not yet paid out.
    pub available: Vec<BalanceAmount>,
    /// Captured (net of fees and refunds), not yet settled by the acquirer.
    pub pending: Vec<BalanceAmount>,
}

/// What moved the balance.
#[derive(Debug, Clone, Copy, Serialize, Enum)]
#[serde(rename_all = "snake_case")]
#[oai(rename_all = "snake_case")]
pub enum BalanceTransactionTypeView {
    Charge,
    Refund,
    Adjustment,
    Payout,
}

impl From<BalanceTransactionType> for BalanceTransactionTypeView {
    fn from(t: BalanceTransactionType) -> Self {
        match t {
            BalanceTransactionType::Charge => Self::Charge,
            BalanceTransactionType::Refund => Self::Refund,
            BalanceTransactionType::Adjustment => Self::Adjustment,
            BalanceTransactionType::Payout => Self::Payout,
        }
    }
}

/// Whether the net is still pending or settled.
#[derive(Debug, Clone, Copy, Serialize, Enum)]
#[serde(rename_all = "snake_case")]
#[oai(rename_all = "snake_case")]
pub enum BalanceStatusView {
    Pending,
    Available,
}

/// How the movement is reported.
#[derive(Debug, Clone, Copy, Serialize, Enum)]
#[serde(rename_all = "snake_case")]
#[oai(rename_all = "snake_case")]
pub enum ReportingCategoryView {
    Charge,
    Refund,
    Dispute,
    DisputeReversal,
    Fee,
    Payout,
}

impl ReportingCategoryView {
    fn of(raw: &str) -> Option<Self> {
        Some(match raw {
            "charge" => Self::Charge,
            "refund" => Self::Refund,
            "dispute" => Self::Dispute,
            "dispute_reversal" => Self::DisputeReversal,
            "fee" => Self::Fee,
            "payout" => Self::Payout,
            _ => return None,
        })
    }
}

/// One movement of the merchant's balance. `net = amount - fee`.
#[derive(Debug, Clone, Serialize, Object)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct BalanceTransactionView {
    /// `txn_...`
    pub id: String,
    /// Signed minor units: a charge is positive, a refund or payout negative.
    pub amount: i64,
    /// What the movement cost, in minor units (the fee schedule's, for a charge).
    pub fee: i64,
    pub net: i64,
    pub currency: String,
    pub r#type: BalanceTransactionTypeView,
    pub reporting_category: ReportingCategoryView,
    /// The object that moved the money: a `pi_`, `re_`, `dp_` or `po_` id.
    pub source: String,
    pub status: BalanceStatusView,
    /// The payout that settled it; `null` while pending.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payout_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl BalanceTransactionView {
    fn of(bt: &BalanceTransaction) -> Self {
        Self {
            id: bt.id.clone(),
            amount: bt.amount,
            fee: bt.fee,
            net: bt.net,
            currency: bt.currency.code().to_owned(),
            r#type: bt.kind.into(),
            // The column's CHECK allows only the contract's categories.
            reporting_category: ReportingCategoryView::of(&bt.reporting_category)
                .unwrap_or(ReportingCategoryView::Charge),
            source: bt.source.clone(),
            status: match bt.status {
                BalanceStatus::Pending => BalanceStatusView::Pending,
                BalanceStatus::Available => BalanceStatusView::Available,
            },
            payout_id: bt.payout_id.clone(),
            created_at: bt.created_at,
        }
    }
}

#[derive(Object, Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct BalanceTransactionList {
    pub data: Vec<BalanceTransactionView>,
    pub has_more: bool,
}

#[derive(ApiResponse)]
pub enum BalanceResponse {
    /// The balance, one entry per currency the merchant has moved money in.
    #[oai(status = 200)]
    Ok(SerdeJson<BalanceView>),
}

#[derive(ApiResponse)]
pub enum BalanceTransactionListResponse {
    /// A page of balance transactions, newest first.
    #[oai(status = 200)]
    Ok(SerdeJson<BalanceTransactionList>),
}

fn filter_value<'a>(raw: &'a Option<String>, param: &str) -> Result<Option<&'a str>, ApiError> {
    match raw.as_deref() {
        None => Ok(None),
        // Ids are short ASCII; anything else can match nothing and is a mistake.
        Some(v)
            if !v.is_empty()
                && v.len() <= 64
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
        {
            Ok(Some(v))
        }
        Some(_) => Err(ApiError::invalid(
            "parameter_invalid",
            format!("`{param}` must be an object id"),
        )
        .with_param(param)),
    }
}

pub struct BalanceApi;

#[OpenApi(tag = "ApiTags::Balance")]
impl BalanceApi {
    /// What the merchant is owed: `pending` until the acquirer settles it, then `available`
    /// until it is paid out.
    #[oai(path = "/balance", method = "get")]
    async fn balance(
        &self,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
    ) -> Result<BalanceResponse, Errors<READ>> {
        let b = ledger::balance(&state.pool, &auth.0.merchant_id)
            .await
            .map_err(ApiError::from)?;
        auth.0
            .record_read(
                &state,
                "balance",
                &format!("balance:{}", auth.0.merchant_id),
                serde_json::json!([]),
            )
            .await?;
        let list = |m: &std::collections::BTreeMap<String, i64>| {
            m.iter()
                .map(|(currency, amount)| BalanceAmount {
                    amount: *amount,
                    currency: currency.clone(),
                })
                .collect()
        };
        Ok(BalanceResponse::Ok(SerdeJson(BalanceView {
            available: list(&b.available),
            pending: list(&b.pending),
        })))
    }

    /// The movements behind the balance, newest first, optionally of one type, payout or
    /// source object.
    #[oai(path = "/balance-transactions", method = "get")]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        /// `charge`, `refund`, `adjustment` or `payout`.
        r#type: Query<Option<String>>,
        /// Only what this payout (`po_...`) settled.
        #[oai(name = "payoutId")]
        payout_id: Query<Option<String>>,
        /// Only what this object (`pi_`, `re_`, `dp_` or `po_`) moved.
        source: Query<Option<String>>,
        limit: Query<Option<String>>,
        #[oai(name = "startingAfter")] starting_after: Query<Option<String>>,
    ) -> Result<BalanceTransactionListResponse, Errors<READ>> {
        let limit = parse_limit(limit.0.as_deref())?;
        let kind = match r#type.0.as_deref() {
            None => None,
            Some(raw) => Some(BalanceTransactionType::parse(raw).ok_or_else(|| {
                ApiError::invalid(
                    "parameter_invalid",
                    "`type` must be one of charge, refund, adjustment, payout",
                )
                .with_param("type")
            })?),
        };
        let filter = Filter {
            kind,
            payout_id: filter_value(&payout_id.0, "payoutId")?,
            source: filter_value(&source.0, "source")?,
        };
        // An unknown cursor would otherwise read as an empty last page; another merchant's
        // balance transaction is unknown here too.
        if let Some(cursor) = starting_after.0.as_deref() {
            if !store::exists(&state.pool, &auth.0.merchant_id, cursor).await? {
                return Err(ApiError::invalid(
                    "resource_missing",
                    "`startingAfter` names no balance transaction of yours",
                )
                .with_param("startingAfter")
                .into());
            }
        }
        let mut rows = store::list(
            &state.pool,
            &auth.0.merchant_id,
            filter,
            starting_after.0.as_deref(),
            limit + 1,
        )
        .await?;
        let wanted = usize::try_from(limit).unwrap_or(usize::MAX);
        let has_more = rows.len() > wanted;
        rows.truncate(wanted);
        let seen: Vec<&str> = rows.iter().map(|t| t.id.as_str()).collect();
        auth.0
            .record_read(
                &state,
                "balance_transaction_list",
                &format!("balance_transactions:{}", auth.0.merchant_id),
                serde_json::json!(seen),
            )
            .await?;
        Ok(BalanceTransactionListResponse::Ok(SerdeJson(
            BalanceTransactionList {
                data: rows.iter().map(BalanceTransactionView::of).collect(),
                has_more,
            },
        )))
    }
}
