//! `settlement_discrepancies`: every difference reconciliation finds between a report and the
//! ledger, filed once (a unique `key` per kind and report line, or per charge for
//! `missing_in_report`) with its `settlement.discrepancy_found` event and audit entry in the
//! applying transaction; resolved by an operator or the merchant with a note, audited.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use super::pages::owned_row_exists;
use super::StoreError;
use crate::audit::{self, Actor, NewEntry};
use crate::domain::ids::IdKind;
use crate::domain::settlement::{DiscrepancyKind, DiscrepancyStatus};
use crate::outbox;
use crate::settlement_views::SettlementDiscrepancyView;

pub const EVENT_FOUND: &str = "settlement.discrepancy_found";

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Discrepancy {
    pub id: String,
    pub key: String,
    pub merchant_id: Option<String>,
    pub payout_id: Option<String>,
    pub acquirer_payout_id: Option<String>,
    pub kind: String,
    pub reference: Option<String>,
    pub acquirer_id: Option<String>,
    pub expected: Option<String>,
    pub actual: Option<String>,
    pub status: String,
    pub resolution_note: Option<String>,
    pub resolved_by: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl Discrepancy {
    pub fn view(&self) -> SettlementDiscrepancyView {
        SettlementDiscrepancyView {
            id: self.id.clone(),
            payout_id: self.payout_id.clone(),
            kind: self.kind.clone(),
            reference: self.reference.clone(),
            expected: self.expected.clone(),
            actual: self.actual.clone(),
            status: self.status.clone(),
            resolution_note: self.resolution_note.clone(),
            created_at: self.created_at,
        }
    }
}

const COLUMNS: &str = "id, key, merchant_id, payout_id, acquirer_payout_id, kind, reference, \
    acquirer_id, expected, actual, status, resolution_note, resolved_by, resolved_at, created_at";

/// A discrepancy to file.
#[derive(Debug, Clone)]
pub struct NewDiscrepancy<'a> {
    /// What makes it the same discrepancy when seen again.
    pub key: String,
    pub kind: DiscrepancyKind,
    pub merchant_id: Option<&'a str>,
    pub payout_id: Option<&'a str>,
    pub acquirer_payout_id: Option<&'a str>,
    pub reference: Option<&'a str>,
    pub acquirer_id: Option<&'a str>,
    pub expected: Option<String>,
    pub actual: Option<String>,
}

/// Files a discrepancy, with its audit entry and (when it has a merchant to tell) its event, in
/// the caller's transaction. `None` when it was filed before: nothing is written.
pub async fn file(
    conn: &mut PgConnection,
    new: &NewDiscrepancy<'_>,
    actor: &Actor,
) -> Result<Option<Discrepancy>, StoreError> {
    let filed: Option<Discrepancy> = sqlx::query_as(&format!(
        "INSERT INTO settlement_discrepancies (id, key, merchant_id, payout_id, acquirer_payout_id,
            kind, reference, acquirer_id, expected, actual, status, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'open', $11)
         ON CONFLICT (key) DO NOTHING RETURNING {COLUMNS}"
    ))
    .bind(IdKind::SettlementDiscrepancy.generate())
    .bind(&new.key)
    .bind(new.merchant_id)
    .bind(new.payout_id)
    .bind(new.acquirer_payout_id)
    .bind(new.kind.as_str())
    .bind(new.reference)
    .bind(new.acquirer_id)
    .bind(&new.expected)
    .bind(&new.actual)
    .bind(crate::domain::now())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(filed) = filed else {
        return Ok(None);
    };
    let view = serde_json::to_value(filed.view()).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    audit::append(
        &mut *conn,
        NewEntry {
            merchant_id: filed.merchant_id.as_deref(),
            object_type: "settlement_discrepancy",
            object_id: &filed.id,
            action: "filed",
            actor,
            before: None,
            after: Some(view.clone()),
        },
    )
    .await?;
    if let Some(merchant_id) = filed.merchant_id.as_deref() {
        outbox::record_event(conn, merchant_id, EVENT_FOUND, &filed.id, view).await?;
    }
    Ok(Some(filed))
}

pub async fn get<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
    id: &str,
) -> Result<Option<Discrepancy>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM settlement_discrepancies WHERE id = $1 AND merchant_id = $2"
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
    owned_row_exists(db, "settlement_discrepancies", merchant_id, id).await
}

/// A list's filters; `merchant_id: None` is the operator's view of every merchant, and of the
/// lines that name nobody.
#[derive(Debug, Clone, Default)]
pub struct Filter<'a> {
    pub merchant_id: Option<&'a str>,
    pub payout_id: Option<&'a str>,
    pub status: Option<DiscrepancyStatus>,
    pub starting_after: Option<&'a str>,
}

/// Newest first.
pub async fn list<'e>(
    db: impl PgExecutor<'e>,
    filter: &Filter<'_>,
    limit: i64,
) -> Result<Vec<Discrepancy>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM settlement_discrepancies
         WHERE ($1::text IS NULL OR merchant_id = $1)
           AND ($2::text IS NULL OR payout_id = $2)
           AND ($3::text IS NULL OR status = $3)
           AND ($4::text IS NULL OR (created_at, id) < (SELECT c.created_at, c.id
                FROM settlement_discrepancies c WHERE c.id = $4))
         ORDER BY created_at DESC, id DESC LIMIT $5"
    ))
    .bind(filter.merchant_id)
    .bind(filter.payout_id)
    .bind(filter.status.map(DiscrepancyStatus::as_str))
    .bind(filter.starting_after)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// Resolves an open discrepancy with a note, audited with who did it. `NotFound` when the
/// merchant has no such discrepancy; `InvalidTransition` when it is already resolved.
pub async fn resolve(
    conn: &mut PgConnection,
    merchant_id: &str,
    id: &str,
    note: &str,
    actor: &Actor,
) -> Result<Discrepancy, StoreError> {
    let before: Discrepancy = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM settlement_discrepancies WHERE id = $1 AND merchant_id = $2 FOR UPDATE"
    ))
    .bind(id)
    .bind(merchant_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
    let status = DiscrepancyStatus::parse(&before.status).ok_or_else(|| StoreError::Corrupt {
        id: id.to_owned(),
        reason: format!("status {}", before.status),
    })?;
    let next = status.resolve().map_err(StoreError::InvalidTransition)?;
    let after: Discrepancy = sqlx::query_as(&format!(
        "UPDATE settlement_discrepancies SET status = $2, resolution_note = $3, resolved_by = $4,
            resolved_at = now()
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(next.as_str())
    .bind(note)
    .bind(actor.render())
    .fetch_one(&mut *conn)
    .await?;
    let json = |d: &Discrepancy| serde_json::to_value(d.view()).ok();
    audit::append(
        conn,
        NewEntry {
            merchant_id: Some(merchant_id),
            object_type: "settlement_discrepancy",
            object_id: id,
            action: "resolved",
            actor,
            before: json(&before),
            after: json(&after),
        },
    )
    .await?;
    Ok(after)
}

/// A capture the acquirer should have settled by now.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Unsettled {
    pub merchant_id: String,
    pub source: String,
    pub amount: i64,
}

/// Captures in `currency` still pending, made before `before`, not yet filed as
/// `missing_in_report`: at most `limit`, oldest first.
pub async fn missing_candidates(
    conn: &mut PgConnection,
    currency: &str,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Unsettled>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT b.merchant_id, b.source, b.amount FROM balance_transactions b
         WHERE b.status = 'pending' AND b.type = 'charge' AND b.currency = $1
           AND b.created_at < $2
           AND NOT EXISTS (SELECT 1 FROM settlement_discrepancies d
                           WHERE d.key = 'missing_in_report:' || b.source)
         ORDER BY b.created_at LIMIT $3",
    )
    .bind(currency)
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}
