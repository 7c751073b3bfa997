//! `payouts`: the merchant's part of each acquirer payout, recorded when its report is applied
//! (in that transaction) and finished with its totals at the end of it.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgConnection, PgExecutor};

use super::pages::{newest_first, owned_row_exists};
use super::StoreError;
use crate::domain::ids::IdKind;
use crate::settlement_views::{PayoutView, ReconciliationView};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Payout {
    pub id: String,
    pub merchant_id: String,
    pub acquirer_payout_id: String,
    pub currency: String,
    pub amount: i64,
    pub arrival_date: NaiveDate,
    pub status: String,
    pub reconciliation_status: String,
    pub lines: i32,
    pub matched: i32,
    pub discrepancies: i32,
    pub created_at: DateTime<Utc>,
}

impl Payout {
    pub fn view(&self) -> PayoutView {
        PayoutView {
            id: self.id.clone(),
            acquirer_payout_id: self.acquirer_payout_id.clone(),
            amount: self.amount,
            currency: self.currency.clone(),
            arrival_date: self.arrival_date,
            status: self.status.clone(),
            reconciliation: ReconciliationView {
                status: self.reconciliation_status.clone(),
                lines: i64::from(self.lines),
                matched: i64::from(self.matched),
                discrepancies: i64::from(self.discrepancies),
            },
            created_at: self.created_at,
        }
    }
}

const COLUMNS: &str = "id, merchant_id, acquirer_payout_id, currency, amount, arrival_date, \
    status, reconciliation_status, lines, matched, discrepancies, created_at";

/// The merchant's payout for an acquirer payout, made when its first line is applied; the
/// same row when it already exists, with `false`.
pub async fn open(
    conn: &mut PgConnection,
    merchant_id: &str,
    acquirer_payout_id: &str,
    currency: &str,
    arrival_date: NaiveDate,
) -> Result<(Payout, bool), StoreError> {
    let made = sqlx::query(
        "INSERT INTO payouts (id, merchant_id, acquirer_payout_id, currency, amount, arrival_date,
            status, reconciliation_status, lines, matched, discrepancies, created_at)
         VALUES ($1, $2, $3, $4, 0, $5, 'paid', 'matched', 0, 0, 0, $6)
         ON CONFLICT (acquirer_payout_id, merchant_id) DO NOTHING",
    )
    .bind(IdKind::Payout.generate())
    .bind(merchant_id)
    .bind(acquirer_payout_id)
    .bind(currency)
    .bind(arrival_date)
    .bind(crate::domain::now())
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    let payout = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM payouts WHERE acquirer_payout_id = $1 AND merchant_id = $2"
    ))
    .bind(acquirer_payout_id)
    .bind(merchant_id)
    .fetch_one(conn)
    .await?;
    Ok((payout, made))
}

/// Writes a payout's totals once its report has been applied.
pub async fn finish(
    conn: &mut PgConnection,
    id: &str,
    amount: i64,
    lines: i64,
    matched: i64,
    discrepancies: i64,
) -> Result<Payout, StoreError> {
    let n = |v: i64| i32::try_from(v).unwrap_or(i32::MAX);
    Ok(sqlx::query_as(&format!(
        "UPDATE payouts SET amount = $2, lines = $3, matched = $4, discrepancies = $5,
            reconciliation_status = CASE WHEN $5 = 0 THEN 'matched' ELSE 'discrepancies' END
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(amount)
    .bind(n(lines))
    .bind(n(matched))
    .bind(n(discrepancies))
    .fetch_one(conn)
    .await?)
}

pub async fn get<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
    id: &str,
) -> Result<Option<Payout>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM payouts WHERE id = $1 AND merchant_id = $2"
    ))
    .bind(id)
    .bind(merchant_id)
    .fetch_optional(db)
    .await?)
}

pub async fn exists<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
    id: &str,
) -> Result<bool, StoreError> {
    owned_row_exists(db, "payouts", merchant_id, id).await
}

/// The merchant's payouts, newest first, after `starting_after` (a payout it owns).
pub async fn list<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
    starting_after: Option<&str>,
    limit: i64,
) -> Result<Vec<Payout>, StoreError> {
    Ok(
        sqlx::query_as(&newest_first("payouts", COLUMNS, "currency"))
            .bind(merchant_id)
            .bind(None::<String>)
            .bind(starting_after)
            .bind(limit)
            .fetch_all(db)
            .await?,
    )
}
