//! `settlement_reports`: each payout the acquirer published, as fetched, and how processing
//! its report went (`pending` until applied, `reconciled` once applied in full, `failed` when
//! it could not be read: applied not at all, retried next round, an operator alert).
//! Also what our books hold for a batch of report lines, the reconciliation's one read.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgConnection, PgExecutor};

use super::StoreError;
use crate::domain::money::Currency;
use crate::domain::settlement::Booked;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SettlementReport {
    pub acquirer_payout_id: String,
    pub currency: String,
    pub amount: i64,
    pub arrival_date: NaiveDate,
    pub status: String,
    pub lines: i32,
    pub failure_reason: Option<String>,
    pub attempts: i32,
    pub acquirer_created_at: DateTime<Utc>,
}

const COLUMNS: &str = "acquirer_payout_id, currency, amount, arrival_date, status, lines, \
    failure_reason, attempts, acquirer_created_at";

/// Records a payout the acquirer listed; `false` when it was already known.
pub async fn record<'e>(
    db: impl PgExecutor<'e>,
    acquirer_payout_id: &str,
    currency: &str,
    amount: i64,
    arrival_date: NaiveDate,
    acquirer_created_at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO settlement_reports (acquirer_payout_id, currency, amount, arrival_date,
            status, acquirer_created_at)
         VALUES ($1, $2, $3, $4, 'pending', $5) ON CONFLICT DO NOTHING",
    )
    .bind(acquirer_payout_id)
    .bind(currency)
    .bind(amount)
    .bind(arrival_date)
    .bind(acquirer_created_at)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The newest payout we know of: where the next look at the acquirer's list starts.
pub async fn newest<'e>(db: impl PgExecutor<'e>) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT acquirer_payout_id FROM settlement_reports ORDER BY seq DESC LIMIT 1",
    )
    .fetch_optional(db)
    .await?)
}

/// Reports not yet applied, oldest first.
pub async fn unfinished<'e>(
    db: impl PgExecutor<'e>,
    limit: i64,
) -> Result<Vec<SettlementReport>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM settlement_reports WHERE status <> 'reconciled' ORDER BY seq LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(db)
    .await?)
}

pub async fn get<'e>(
    db: impl PgExecutor<'e>,
    acquirer_payout_id: &str,
) -> Result<Option<SettlementReport>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM settlement_reports WHERE acquirer_payout_id = $1"
    ))
    .bind(acquirer_payout_id)
    .fetch_optional(db)
    .await?)
}

/// Takes the report for applying, in the caller's transaction: `None` when it is already
/// reconciled. The row lock makes a second applier (an old leader still finishing) wait and
/// then find it done.
pub async fn lock_unfinished(
    conn: &mut PgConnection,
    acquirer_payout_id: &str,
) -> Result<Option<SettlementReport>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM settlement_reports
         WHERE acquirer_payout_id = $1 AND status <> 'reconciled' FOR UPDATE"
    ))
    .bind(acquirer_payout_id)
    .fetch_optional(conn)
    .await?)
}

/// The report was applied in full, in the caller's transaction.
pub async fn mark_reconciled(
    conn: &mut PgConnection,
    acquirer_payout_id: &str,
    lines: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE settlement_reports SET status = 'reconciled', lines = $2, failure_reason = NULL,
            attempts = attempts + 1, updated_at = now()
         WHERE acquirer_payout_id = $1",
    )
    .bind(acquirer_payout_id)
    .bind(i32::try_from(lines).unwrap_or(i32::MAX))
    .execute(conn)
    .await?;
    Ok(())
}

/// The report could not be read or applied; nothing of it was.
pub async fn mark_failed<'e>(
    db: impl PgExecutor<'e>,
    acquirer_payout_id: &str,
    reason: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE settlement_reports SET status = 'failed', failure_reason = $2,
            attempts = attempts + 1, updated_at = now()
         WHERE acquirer_payout_id = $1 AND status <> 'reconciled'",
    )
    .bind(acquirer_payout_id)
    .bind(reason)
    .execute(db)
    .await?;
    Ok(())
}

/// What our books hold for one report line's reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookedLine {
    /// Whose object the reference names; `None` when it names nothing of ours.
    pub merchant_id: Option<String>,
    pub balance_transaction_id: Option<String>,
    /// The payout that settled the balance transaction, when one has.
    pub settled_in: Option<String>,
    pub booked: Option<Booked>,
}

#[derive(sqlx::FromRow)]
struct BookedRow {
    ord: i64,
    merchant_id: Option<String>,
    bt_id: Option<String>,
    amount: Option<i64>,
    fee: Option<i64>,
    currency: Option<String>,
    status: Option<String>,
    payout_id: Option<String>,
    acquirer_id: Option<String>,
}

/// For each `(reference, reporting category, acquirer id)`, in order: the balance transaction
/// it settles, with the acquirer's id we recorded for its object. A charge or refund line names
/// its object by reference; a chargeback or its reversal names the intent and the acquirer's
/// dispute id, and settles that dispute's withdrawal or reinstatement (sourced by our `dp_...`).
/// Read in one query per batch so a long report is matched without loading the merchant's
/// history, and in the applying transaction, so a line settled earlier in the same report
/// shows as settled.
pub async fn booked_for(
    conn: &mut PgConnection,
    lines: &[(&str, &str, &str)],
) -> Result<Vec<BookedLine>, StoreError> {
    let references: Vec<&str> = lines.iter().map(|(r, _, _)| *r).collect();
    let categories: Vec<&str> = lines.iter().map(|(_, c, _)| *c).collect();
    let acquirer_ids: Vec<&str> = lines.iter().map(|(_, _, a)| *a).collect();
    let rows: Vec<BookedRow> = sqlx::query_as(
        "SELECT l.ord, COALESCE(bt.merchant_id, pi.merchant_id, r.merchant_id) AS merchant_id,
                bt.id AS bt_id, bt.amount, bt.fee, bt.currency, bt.status, bt.payout_id,
                CASE WHEN d.id IS NOT NULL THEN d.acquirer_dispute_id
                     WHEN l.category IN ('dispute', 'dispute_reversal') THEN NULL
                     ELSE COALESCE(pi.acquirer_charge_id, r.acquirer_refund_id) END AS acquirer_id
         FROM unnest($1::text[], $2::text[], $3::text[])
              WITH ORDINALITY AS l(reference, category, acquirer_id, ord)
         LEFT JOIN disputes d
              ON l.category IN ('dispute', 'dispute_reversal')
             AND d.payment_intent_id = l.reference AND d.acquirer_dispute_id = l.acquirer_id
         LEFT JOIN LATERAL (
             SELECT b.id, b.merchant_id, b.amount, b.fee, b.currency, b.status, b.payout_id
             FROM balance_transactions b
             WHERE b.source = COALESCE(d.id, l.reference) AND b.reporting_category = l.category
             ORDER BY b.created_at LIMIT 1
         ) bt ON true
         LEFT JOIN payment_intents pi ON pi.id = l.reference
         LEFT JOIN refunds r ON r.id = l.reference
         ORDER BY l.ord",
    )
    .bind(&references)
    .bind(&categories)
    .bind(&acquirer_ids)
    .fetch_all(conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let booked = match (row.amount, row.fee, row.currency, row.status) {
            (Some(amount), Some(fee), Some(currency), Some(status)) => Some(Booked {
                amount,
                fee,
                currency: Currency::parse(&currency).map_err(|e| StoreError::Corrupt {
                    id: row.bt_id.clone().unwrap_or_default(),
                    reason: e.message,
                })?,
                acquirer_id: row.acquirer_id,
                settled: status != "pending",
            }),
            _ => None,
        };
        debug_assert_eq!(usize::try_from(row.ord).ok(), Some(out.len() + 1));
        out.push(BookedLine {
            merchant_id: row.merchant_id,
            balance_transaction_id: row.bt_id,
            settled_in: row.payout_id,
            booked,
        });
    }
    Ok(out)
}
