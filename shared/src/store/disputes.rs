//! Dispute persistence. A dispute is created once per acquirer dispute id (a UNIQUE key and
//! `ON CONFLICT DO NOTHING`, so concurrent duplicate notifications create one row and never
//! fail), with its payment intent's row locked: the refund guard (`refunds::create`) takes the
//! same lock, so a refund and a dispute of one intent are decided one after the other. Every
//! status change is a guarded update through the state machine (`domain::dispute`), with its
//! audit entry, events and ledger posting in the caller's transaction.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use sqlx::{PgConnection, PgExecutor};

use super::StoreError;
use crate::audit::{self, Actor, NewEntry};
use crate::domain::dispute::DisputeStatus;
use crate::domain::ids::IdKind;
use crate::domain::money::{Amount, Currency};
use crate::domain::payment_intent::PaymentIntent;
use crate::domain::DomainError;
use crate::outbox;
use crate::views::{DisputeEvidenceView, DisputeFileView, DisputeView, EvidenceDetailsView};
use crate::webhooks::rotation::SealedRow;

#[derive(Debug, Clone, PartialEq)]
pub struct Dispute {
    pub id: String,
    pub merchant_id: String,
    pub payment_intent_id: String,
    pub acquirer_dispute_id: String,
    pub acquirer_charge_id: String,
    pub amount: Amount,
    pub currency: Currency,
    pub reason: String,
    pub status: DisputeStatus,
    pub evidence_due_by: DateTime<Utc>,
    /// Text fields by their camelCase names.
    pub evidence: Map<String, Value>,
    pub submission_count: i32,
    pub deadline_alerted_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    merchant_id: String,
    payment_intent_id: String,
    acquirer_dispute_id: String,
    acquirer_charge_id: String,
    amount: i64,
    currency: String,
    reason: String,
    status: String,
    evidence_due_by: DateTime<Utc>,
    evidence: Value,
    submission_count: i32,
    deadline_alerted_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<Row> for Dispute {
    type Error = StoreError;

    fn try_from(r: Row) -> Result<Self, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            id: r.id.clone(),
            reason,
        };
        Ok(Dispute {
            amount: Amount::from_stored(r.amount),
            currency: Currency::parse(&r.currency).map_err(|e| corrupt(e.message))?,
            status: r
                .status
                .parse()
                .map_err(|e: DomainError| corrupt(e.message))?,
            evidence: match r.evidence {
                Value::Object(m) => m,
                _ => return Err(corrupt("evidence is not an object".into())),
            },
            id: r.id,
            merchant_id: r.merchant_id,
            payment_intent_id: r.payment_intent_id,
            acquirer_dispute_id: r.acquirer_dispute_id,
            acquirer_charge_id: r.acquirer_charge_id,
            reason: r.reason,
            evidence_due_by: r.evidence_due_by,
            submission_count: r.submission_count,
            deadline_alerted_at: r.deadline_alerted_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

const COLUMNS: &str =
    "id, merchant_id, payment_intent_id, acquirer_dispute_id, acquirer_charge_id, \
    amount, currency, reason, status, evidence_due_by, evidence, submission_count, \
    deadline_alerted_at, created_at, updated_at";

/// A chargeback as the acquirer announced it, checked against its intent by the caller.
#[derive(Debug, Clone)]
pub struct NewDispute<'a> {
    pub acquirer_dispute_id: &'a str,
    pub acquirer_charge_id: &'a str,
    pub amount: Amount,
    pub currency: Currency,
    pub reason: &'static str,
    pub evidence_due_by: DateTime<Utc>,
}

/// Creates the dispute for a chargeback of `intent`, which the caller has locked
/// (`payment_intents::get_for_update`), and withdraws its amount and fee through the ledger,
/// with `dispute.created` and `dispute.funds_withdrawn`. `None` when a dispute for this
/// acquirer dispute id already exists: a duplicate notification changes nothing.
pub async fn create(
    conn: &mut PgConnection,
    intent: &PaymentIntent,
    new: NewDispute<'_>,
    actor: &Actor,
) -> Result<Option<Dispute>, StoreError> {
    let now = crate::domain::now();
    let row = sqlx::query_as::<_, Row>(&format!(
        "INSERT INTO disputes (id, merchant_id, payment_intent_id, acquirer_dispute_id, acquirer_charge_id,
             amount, currency, reason, status, evidence_due_by, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'needs_response', $9, $10, $10)
         ON CONFLICT (acquirer_dispute_id) DO NOTHING
         RETURNING {COLUMNS}"
    ))
    .bind(IdKind::Dispute.generate())
    .bind(&intent.merchant_id)
    .bind(&intent.id)
    .bind(new.acquirer_dispute_id)
    .bind(new.acquirer_charge_id)
    .bind(new.amount.minor_units())
    .bind(new.currency.code())
    .bind(new.reason)
    .bind(new.evidence_due_by)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let dispute = Dispute::try_from(row)?;
    crate::ledger::post_dispute_withdrawal(
        conn,
        &dispute.merchant_id,
        dispute.currency,
        &dispute.id,
        dispute.amount,
    )
    .await?;
    let view = serde_json::to_value(view(&mut *conn, &dispute).await?).unwrap_or_default();
    audit::append(
        &mut *conn,
        NewEntry {
            merchant_id: Some(&dispute.merchant_id),
            object_type: "dispute",
            object_id: &dispute.id,
            action: "dispute.created",
            actor,
            before: None,
            after: Some(view.clone()),
        },
    )
    .await?;
    for event in ["dispute.created", "dispute.funds_withdrawn"] {
        outbox::record_event(
            &mut *conn,
            &dispute.merchant_id,
            event,
            &dispute.id,
            view.clone(),
        )
        .await?;
    }
    Ok(Some(dispute))
}

/// Whether the intent has a dispute still `needs_response` or `under_review`. Called with the
/// intent locked, by the refund guard.
pub async fn has_open<'e>(
    db: impl PgExecutor<'e>,
    payment_intent_id: &str,
) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM disputes WHERE payment_intent_id = $1
             AND status IN ('needs_response', 'under_review'))",
    )
    .bind(payment_intent_id)
    .fetch_one(db)
    .await?)
}

pub async fn get<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
    id: &str,
) -> Result<Option<Dispute>, StoreError> {
    sqlx::query_as::<_, Row>(&format!(
        "SELECT {COLUMNS} FROM disputes WHERE id = $1 AND merchant_id = $2"
    ))
    .bind(id)
    .bind(merchant_id)
    .fetch_optional(db)
    .await?
    .map(Dispute::try_from)
    .transpose()
}

pub async fn get_by_acquirer_id<'e>(
    db: impl PgExecutor<'e>,
    acquirer_dispute_id: &str,
) -> Result<Option<Dispute>, StoreError> {
    sqlx::query_as::<_, Row>(&format!(
        "SELECT {COLUMNS} FROM disputes WHERE acquirer_dispute_id = $1"
    ))
    .bind(acquirer_dispute_id)
    .fetch_optional(db)
    .await?
    .map(Dispute::try_from)
    .transpose()
}

/// Locks a dispute for a change. Lock order: the intent first when both are locked.
pub async fn get_for_update(
    conn: &mut PgConnection,
    merchant_id: &str,
    id: &str,
) -> Result<Option<Dispute>, StoreError> {
    sqlx::query_as::<_, Row>(&format!(
        "SELECT {COLUMNS} FROM disputes WHERE id = $1 AND merchant_id = $2 FOR UPDATE"
    ))
    .bind(id)
    .bind(merchant_id)
    .fetch_optional(&mut *conn)
    .await?
    .map(Dispute::try_from)
    .transpose()
}

/// Newest first, optionally of one status and one intent.
pub async fn list<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
    status: Option<DisputeStatus>,
    payment_intent_id: Option<&str>,
    starting_after: Option<&str>,
    limit: i64,
) -> Result<Vec<Dispute>, StoreError> {
    sqlx::query_as::<_, Row>(&format!(
        "SELECT {COLUMNS} FROM disputes
         WHERE merchant_id = $1
           AND ($2::text IS NULL OR status = $2)
           AND ($3::text IS NULL OR payment_intent_id = $3)
           AND ($4::text IS NULL OR (created_at, id) < (SELECT c.created_at, c.id FROM disputes c WHERE c.id = $4 AND c.merchant_id = $1))
         ORDER BY created_at DESC, id DESC LIMIT $5"
    ))
    .bind(merchant_id)
    .bind(status.map(DisputeStatus::as_str))
    .bind(payment_intent_id)
    .bind(starting_after)
    .bind(limit)
    .fetch_all(db)
    .await?
    .into_iter()
    .map(Dispute::try_from)
    .collect()
}

/// Whether `id` is one of this merchant's disputes: a list cursor must be.
pub async fn exists<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
    id: &str,
) -> Result<bool, StoreError> {
    super::pages::owned_row_exists(db, "disputes", merchant_id, id).await
}

/// What moving a dispute also changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// The merchant submitted its evidence (counts a submission).
    Submit,
    /// The merchant accepted the loss.
    Close,
    /// The acquirer decided.
    Decided,
    /// The deadline passed without a submission.
    Expired,
}

impl Move {
    fn action(self) -> &'static str {
        match self {
            Move::Submit => "dispute.submitted",
            Move::Close => "dispute.closed",
            Move::Decided => "dispute.decided",
            Move::Expired => "dispute.expired",
        }
    }
}

/// Moves a locked dispute to `to` if its state machine allows: a guarded update on the status
/// read, its audit entry, `dispute.updated` (to `under_review`) or `dispute.closed`, and for a
/// win the reinstatement with `dispute.funds_reinstated`. Errors with `InvalidTransition` when
/// the move is not allowed; `Conflict` when someone moved it meanwhile.
pub async fn transition(
    conn: &mut PgConnection,
    current: &Dispute,
    to: DisputeStatus,
    how: Move,
    actor: &Actor,
) -> Result<Dispute, StoreError> {
    current
        .status
        .transition(to)
        .map_err(StoreError::InvalidTransition)?;
    let submitted = i32::from(how == Move::Submit);
    let row = sqlx::query_as::<_, Row>(&format!(
        "UPDATE disputes SET status = $3, submission_count = submission_count + $4, updated_at = $5
         WHERE id = $1 AND status = $2 RETURNING {COLUMNS}"
    ))
    .bind(&current.id)
    .bind(current.status.as_str())
    .bind(to.as_str())
    .bind(submitted)
    .bind(crate::domain::now())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::Conflict {
        object: "dispute",
        id: current.id.clone(),
        expected: current.status.as_str().to_owned(),
    })?;
    let next = Dispute::try_from(row)?;
    if to == DisputeStatus::Won {
        crate::ledger::post_dispute_reinstatement(
            conn,
            &next.merchant_id,
            next.currency,
            &next.id,
            next.amount,
        )
        .await?;
    }
    let before = serde_json::to_value(view(&mut *conn, current).await?).unwrap_or_default();
    let after = serde_json::to_value(view(&mut *conn, &next).await?).unwrap_or_default();
    audit::append(
        &mut *conn,
        NewEntry {
            merchant_id: Some(&next.merchant_id),
            object_type: "dispute",
            object_id: &next.id,
            action: how.action(),
            actor,
            before: Some(before),
            after: Some(after.clone()),
        },
    )
    .await?;
    let mut events = vec![if to.is_final() {
        "dispute.closed"
    } else {
        "dispute.updated"
    }];
    if to == DisputeStatus::Won {
        events.push("dispute.funds_reinstated");
    }
    for event in events {
        outbox::record_event(
            &mut *conn,
            &next.merchant_id,
            event,
            &next.id,
            after.clone(),
        )
        .await?;
    }
    Ok(next)
}

/// Replaces the given text fields of a locked `needs_response` dispute's evidence (the caller
/// checked it may), with its audit entry and `dispute.updated`.
pub async fn update_evidence(
    conn: &mut PgConnection,
    current: &Dispute,
    fields: &Map<String, Value>,
    added_files: &[String],
    actor: &Actor,
) -> Result<Dispute, StoreError> {
    let row = sqlx::query_as::<_, Row>(&format!(
        "UPDATE disputes SET evidence = evidence || $2, updated_at = $3
         WHERE id = $1 AND status = 'needs_response' RETURNING {COLUMNS}"
    ))
    .bind(&current.id)
    .bind(Value::Object(fields.clone()))
    .bind(crate::domain::now())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::Conflict {
        object: "dispute",
        id: current.id.clone(),
        expected: "needs_response".to_owned(),
    })?;
    let next = Dispute::try_from(row)?;
    let after = serde_json::to_value(view(&mut *conn, &next).await?).unwrap_or_default();
    audit::append(
        &mut *conn,
        NewEntry {
            merchant_id: Some(&next.merchant_id),
            object_type: "dispute",
            object_id: &next.id,
            action: "dispute.evidence_updated",
            actor,
            // Which fields changed and which files came, not their content.
            before: None,
            after: Some(json!({
                "fields": fields.keys().collect::<Vec<_>>(),
                "files": added_files,
            })),
        },
    )
    .await?;
    outbox::record_event(
        &mut *conn,
        &next.merchant_id,
        "dispute.updated",
        &next.id,
        after,
    )
    .await?;
    Ok(next)
}

/// An evidence file as stored: metadata and the sealed content.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredFile {
    pub id: String,
    pub dispute_id: String,
    pub purpose: String,
    pub filename: String,
    pub content_type: String,
    pub size: i64,
    pub sealed: Vec<u8>,
}

impl StoredFile {
    pub fn view(&self) -> DisputeFileView {
        DisputeFileView {
            id: self.id.clone(),
            purpose: self.purpose.clone(),
            filename: self.filename.clone(),
            content_type: self.content_type.clone(),
            size: self.size,
        }
    }
}

/// Files a dispute holds.
pub async fn file_count<'e>(db: impl PgExecutor<'e>, dispute_id: &str) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM dispute_files WHERE dispute_id = $1")
            .bind(dispute_id)
            .fetch_one(db)
            .await?,
    )
}

/// Stores a sealed evidence file of a locked dispute.
pub async fn insert_file(
    conn: &mut PgConnection,
    merchant_id: &str,
    file: &StoredFile,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO dispute_files (id, dispute_id, merchant_id, purpose, filename, content_type, size, sealed)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&file.id)
    .bind(&file.dispute_id)
    .bind(merchant_id)
    .bind(&file.purpose)
    .bind(&file.filename)
    .bind(&file.content_type)
    .bind(file.size)
    .bind(&file.sealed)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

const FILE_COLUMNS: &str = "id, dispute_id, purpose, filename, content_type, size, sealed";

pub async fn files<'e>(
    db: impl PgExecutor<'e>,
    dispute_id: &str,
) -> Result<Vec<StoredFile>, StoreError> {
    Ok(sqlx::query_as::<_, StoredFile>(&format!(
        "SELECT {FILE_COLUMNS} FROM dispute_files WHERE dispute_id = $1 ORDER BY created_at, id"
    ))
    .bind(dispute_id)
    .fetch_all(db)
    .await?)
}

pub async fn file<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
    dispute_id: &str,
    file_id: &str,
) -> Result<Option<StoredFile>, StoreError> {
    Ok(sqlx::query_as::<_, StoredFile>(&format!(
        "SELECT {FILE_COLUMNS} FROM dispute_files WHERE id = $1 AND dispute_id = $2 AND merchant_id = $3"
    ))
    .bind(file_id)
    .bind(dispute_id)
    .bind(merchant_id)
    .fetch_optional(db)
    .await?)
}

/// `needs_response` disputes whose deadline is within `window` and that were not alerted.
pub async fn due_for_alert<'e>(
    db: impl PgExecutor<'e>,
    window: chrono::TimeDelta,
    limit: i64,
) -> Result<Vec<Dispute>, StoreError> {
    sqlx::query_as::<_, Row>(&format!(
        "SELECT {COLUMNS} FROM disputes WHERE status = 'needs_response' AND deadline_alerted_at IS NULL
           AND evidence_due_by <= $1 ORDER BY evidence_due_by LIMIT $2"
    ))
    .bind(crate::domain::now() + window)
    .bind(limit)
    .fetch_all(db)
    .await?
    .into_iter()
    .map(Dispute::try_from)
    .collect()
}

/// Sends `dispute.deadline_approaching` for a dispute, once: the guarded UPDATE claims the
/// alert, and only the caller whose update matched records the event. `false`: already sent
/// (or the dispute left `needs_response`).
pub async fn alert_deadline(
    conn: &mut PgConnection,
    dispute: &Dispute,
) -> Result<bool, StoreError> {
    let claimed = sqlx::query(
        "UPDATE disputes SET deadline_alerted_at = now()
         WHERE id = $1 AND status = 'needs_response' AND deadline_alerted_at IS NULL",
    )
    .bind(&dispute.id)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if claimed {
        let data = serde_json::to_value(view(&mut *conn, dispute).await?).unwrap_or_default();
        outbox::record_event(
            &mut *conn,
            &dispute.merchant_id,
            "dispute.deadline_approaching",
            &dispute.id,
            data,
        )
        .await?;
    }
    Ok(claimed)
}

/// `needs_response` disputes whose deadline has passed.
pub async fn past_due<'e>(db: impl PgExecutor<'e>, limit: i64) -> Result<Vec<Dispute>, StoreError> {
    sqlx::query_as::<_, Row>(&format!(
        "SELECT {COLUMNS} FROM disputes WHERE status = 'needs_response' AND evidence_due_by <= now()
         ORDER BY evidence_due_by LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(db)
    .await?
    .into_iter()
    .map(Dispute::try_from)
    .collect()
}

/// The dispute as the API shows it: with its files and balance transactions.
pub async fn view(conn: &mut PgConnection, d: &Dispute) -> Result<DisputeView, StoreError> {
    let files = files(&mut *conn, &d.id).await?;
    let bts = super::balance_transactions::for_source(&mut *conn, &d.merchant_id, &d.id).await?;
    let text = |k: &str| d.evidence.get(k).and_then(Value::as_str).map(str::to_owned);
    let now = crate::domain::now();
    Ok(DisputeView {
        id: d.id.clone(),
        payment_intent_id: d.payment_intent_id.clone(),
        amount: d.amount.minor_units(),
        currency: d.currency.code().to_owned(),
        reason: d.reason.clone(),
        status: d.status.into(),
        evidence_due_by: d.evidence_due_by,
        evidence: DisputeEvidenceView {
            product_description: text("productDescription"),
            customer_communication: text("customerCommunication"),
            customer_email_address: text("customerEmailAddress"),
            shipping_tracking_number: text("shippingTrackingNumber"),
            refund_policy: text("refundPolicy"),
            uncategorized_text: text("uncategorizedText"),
            files: files.iter().map(StoredFile::view).collect(),
        },
        evidence_details: EvidenceDetailsView {
            has_evidence: !d.evidence.is_empty() || !files.is_empty(),
            submission_count: i64::from(d.submission_count),
            past_due: d.evidence_due_by <= now,
        },
        balance_transactions: bts.into_iter().map(|b| b.id).collect(),
        created_at: d.created_at,
        updated_at: d.updated_at,
    })
}

/// Up to `limit` evidence files after id `after` not sealed under `header`'s key, locked
/// until the caller's transaction ends.
pub async fn lock_files_sealed_not_under(
    conn: &mut PgConnection,
    header: &[u8],
    after: &[String],
    limit: i64,
) -> Result<Vec<SealedRow>, sqlx::Error> {
    let after = after.first().map(String::as_str).unwrap_or("");
    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT id, sealed FROM dispute_files
         WHERE id > $2 AND substring(sealed from 1 for octet_length($1::bytea)) <> $1
         ORDER BY id LIMIT $3 FOR UPDATE",
    )
    .bind(header)
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, sealed)| SealedRow {
            table: "dispute_files",
            aad: vec![id.clone().into_bytes()],
            pk: vec![id.clone()],
            id,
            values: vec![Some(sealed)],
        })
        .collect())
}

/// Replaces a file's sealed content, only if it is still `row`'s (compare-and-set).
pub async fn replace_file_sealed(
    conn: &mut PgConnection,
    row: &SealedRow,
    resealed: &[Option<Vec<u8>>],
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE dispute_files SET sealed = $2 WHERE id = $1 AND sealed = $3")
        .bind(&row.pk[0])
        .bind(&resealed[0])
        .bind(&row.values[0])
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Evidence files not sealed under `header`'s key.
pub async fn count_files_sealed_not_under<'e>(
    db: impl PgExecutor<'e>,
    header: &[u8],
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM dispute_files
         WHERE substring(sealed from 1 for octet_length($1::bytea)) <> $1",
    )
    .bind(header)
    .fetch_one(db)
    .await
}
