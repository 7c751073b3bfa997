//! `balance_transactions`: the merchant's view of the ledger, one row per ledger transaction
//! that changes the merchant's balance. Unlike the entries, a row changes once: when the
//! acquirer settles it, its status becomes `available` and it names the payout.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use super::StoreError;
use crate::domain::ids::IdKind;
use crate::domain::ledger::{BalanceStatus, BalanceTransactionType};
use crate::domain::money::Currency;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalanceTransaction {
    pub id: String,
    pub merchant_id: String,
    pub ledger_transaction_id: String,
    pub kind: BalanceTransactionType,
    pub reporting_category: String,
    /// Signed minor units, from the merchant's side: a charge is positive, a refund negative.
    pub amount: i64,
    pub fee: i64,
    pub net: i64,
    pub currency: Currency,
    pub source: String,
    pub status: BalanceStatus,
    pub payout_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// What a posting shows the merchant. `net` is always `amount - fee`.
#[derive(Debug, Clone)]
pub struct NewBalanceTransaction<'a> {
    pub kind: BalanceTransactionType,
    /// One of the reporting categories of docs/api.md (`charge`, `refund`, `dispute`, ...).
    pub reporting_category: &'static str,
    pub amount: i64,
    pub fee: i64,
    pub source: &'a str,
    pub status: BalanceStatus,
    pub payout_id: Option<&'a str>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    merchant_id: String,
    ledger_transaction_id: String,
    r#type: String,
    reporting_category: String,
    amount: i64,
    fee: i64,
    net: i64,
    currency: String,
    source: String,
    status: String,
    payout_id: Option<String>,
    created_at: DateTime<Utc>,
}

impl TryFrom<Row> for BalanceTransaction {
    type Error = StoreError;

    fn try_from(r: Row) -> Result<Self, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            id: r.id.clone(),
            reason,
        };
        Ok(BalanceTransaction {
            kind: BalanceTransactionType::parse(&r.r#type)
                .ok_or_else(|| corrupt(format!("type {}", r.r#type)))?,
            status: BalanceStatus::parse(&r.status)
                .ok_or_else(|| corrupt(format!("status {}", r.status)))?,
            currency: Currency::parse(&r.currency).map_err(|e| corrupt(e.message))?,
            id: r.id,
            merchant_id: r.merchant_id,
            ledger_transaction_id: r.ledger_transaction_id,
            reporting_category: r.reporting_category,
            amount: r.amount,
            fee: r.fee,
            net: r.net,
            source: r.source,
            payout_id: r.payout_id,
            created_at: r.created_at,
        })
    }
}

const COLUMNS: &str = "id, merchant_id, ledger_transaction_id, type, reporting_category, amount, \
    fee, net, currency, source, status, payout_id, created_at";

/// Records the merchant's view of ledger transaction `ledger_transaction_id`, in the caller's
/// transaction (the one that posted it).
pub async fn insert(
    conn: &mut PgConnection,
    merchant_id: &str,
    currency: Currency,
    ledger_transaction_id: &str,
    new: &NewBalanceTransaction<'_>,
) -> Result<BalanceTransaction, StoreError> {
    let row = sqlx::query_as::<_, Row>(&format!(
        "INSERT INTO balance_transactions (id, merchant_id, ledger_transaction_id, type,
            reporting_category, amount, fee, net, currency, source, status, payout_id, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         RETURNING {COLUMNS}"
    ))
    .bind(IdKind::BalanceTransaction.generate())
    .bind(merchant_id)
    .bind(ledger_transaction_id)
    .bind(new.kind.as_str())
    .bind(new.reporting_category)
    .bind(new.amount)
    .bind(new.fee)
    .bind(new.amount - new.fee)
    .bind(currency.code())
    .bind(new.source)
    .bind(new.status.as_str())
    .bind(new.payout_id)
    .bind(crate::domain::now())
    .fetch_one(conn)
    .await?;
    BalanceTransaction::try_from(row)
}

/// Marks a pending balance transaction settled in `payout_id`. Guarded on `pending`: answers
/// `false` when it was already settled (a report processed twice changes nothing).
pub async fn mark_available(
    conn: &mut PgConnection,
    id: &str,
    payout_id: &str,
) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE balance_transactions SET status = 'available', payout_id = $2
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(payout_id)
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

pub async fn get<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
    id: &str,
) -> Result<Option<BalanceTransaction>, StoreError> {
    sqlx::query_as::<_, Row>(&format!(
        "SELECT {COLUMNS} FROM balance_transactions WHERE id = $1 AND merchant_id = $2"
    ))
    .bind(id)
    .bind(merchant_id)
    .fetch_optional(db)
    .await?
    .map(BalanceTransaction::try_from)
    .transpose()
}

/// The merchant's balance transactions for `source` (a pi_, re_, dp_ or po_ id), oldest first.
pub async fn for_source<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
    source: &str,
) -> Result<Vec<BalanceTransaction>, StoreError> {
    sqlx::query_as::<_, Row>(&format!(
        "SELECT {COLUMNS} FROM balance_transactions WHERE merchant_id = $1 AND source = $2
         ORDER BY created_at, id"
    ))
    .bind(merchant_id)
    .bind(source)
    .fetch_all(db)
    .await?
    .into_iter()
    .map(BalanceTransaction::try_from)
    .collect()
}

/// Whether `id` is a balance transaction of this merchant: a list cursor must name one.
pub async fn exists<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
    id: &str,
) -> Result<bool, StoreError> {
    super::pages::owned_row_exists(db, "balance_transactions", merchant_id, id).await
}

/// The filters of `GET /api/balance-transactions`; `None` means any.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filter<'a> {
    pub kind: Option<BalanceTransactionType>,
    pub payout_id: Option<&'a str>,
    pub source: Option<&'a str>,
}

/// A page, newest first by (created_at, id), after the cursor row `starting_after` (checked by
/// the caller with [`exists`]), as the other lists page (store/pages.rs).
pub async fn list<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
    filter: Filter<'_>,
    starting_after: Option<&str>,
    limit: i64,
) -> Result<Vec<BalanceTransaction>, StoreError> {
    sqlx::query_as::<_, Row>(&format!(
        "SELECT {COLUMNS} FROM balance_transactions
         WHERE merchant_id = $1
           AND ($2::text IS NULL OR type = $2)
           AND ($3::text IS NULL OR payout_id = $3)
           AND ($4::text IS NULL OR source = $4)
           AND ($5::text IS NULL OR (created_at, id) < (SELECT c.created_at, c.id
                FROM balance_transactions c WHERE c.id = $5 AND c.merchant_id = $1))
         ORDER BY created_at DESC, id DESC LIMIT $6"
    ))
    .bind(merchant_id)
    .bind(filter.kind.map(BalanceTransactionType::as_str))
    .bind(filter.payout_id)
    .bind(filter.source)
    .bind(starting_after)
    .bind(limit)
    .fetch_all(db)
    .await?
    .into_iter()
    .map(BalanceTransaction::try_from)
    .collect()
}
