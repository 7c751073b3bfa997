//! Payouts and settlement discrepancies as clients see them (docs/api.md "Payouts and
//! settlement discrepancies"): the API answers with these and the `payout.paid` and
//! `settlement.discrepancy_found` events carry them. Beside `views.rs`, in the same style.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

#[cfg(feature = "openapi")]
use poem_openapi::Object;

/// How a payout's report compared with the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "camelCase"))]
#[serde(rename_all = "camelCase")]
pub struct ReconciliationView {
    /// `matched` or `discrepancies`.
    pub status: String,
    /// Lines of the acquirer's report that concern this merchant.
    pub lines: i64,
    pub matched: i64,
    pub discrepancies: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "camelCase"))]
#[serde(rename_all = "camelCase")]
pub struct PayoutView {
    /// `po_...`
    pub id: String,
    /// The acquirer's payout this is the merchant's part of.
    pub acquirer_payout_id: String,
    /// What is paid to the merchant, by our books, in minor units: the net of every balance
    /// transaction the report settled.
    pub amount: i64,
    pub currency: String,
    pub arrival_date: NaiveDate,
    /// `paid`.
    pub status: String,
    pub reconciliation: ReconciliationView,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "camelCase"))]
#[serde(rename_all = "camelCase")]
pub struct SettlementDiscrepancyView {
    /// `sd_...`
    pub id: String,
    /// The payout whose report showed it (for `missing_in_report`, the first report of the
    /// merchant's currency that should have held the charge and did not).
    #[cfg_attr(feature = "openapi", oai(nullable))]
    pub payout_id: Option<String>,
    /// `missing_in_report`, `unknown_in_report`, `amount_mismatch`, `fee_mismatch`,
    /// `currency_mismatch` or `duplicate_in_report`.
    pub kind: String,
    /// Our object the line names (a `pi_` or `re_` id), as the report wrote it.
    #[cfg_attr(feature = "openapi", oai(nullable))]
    pub reference: Option<String>,
    /// What our ledger holds (an amount in minor units, a currency, an acquirer id).
    #[cfg_attr(feature = "openapi", oai(nullable))]
    pub expected: Option<String>,
    /// What the report says.
    #[cfg_attr(feature = "openapi", oai(nullable))]
    pub actual: Option<String>,
    /// `open` or `resolved`.
    pub status: String,
    #[cfg_attr(feature = "openapi", oai(nullable))]
    pub resolution_note: Option<String>,
    pub created_at: DateTime<Utc>,
}
