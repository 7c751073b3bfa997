//! Refund persistence. Creation and settlement both run with the intent's row locked, so the
//! no-over-refund rule and `amountRefunded` are decided inside one transaction each, and two
//! concurrent refunds of one intent can never both pass the check.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use super::payment_intents;
use super::StoreError;
use crate::audit::{self, Actor, NewEntry};
use crate::commands::SUBJECT_REFUND_PROCESS;
use crate::domain::ids::IdKind;
use crate::domain::money::{Amount, Currency};
use crate::domain::payment_intent::{PaymentIntent, PaymentIntentStatus};
use crate::domain::refund::RefundStatus;
use crate::domain::DomainError;
use crate::outbox;
use crate::views::RefundView;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub id: String,
    pub merchant_id: String,
    pub payment_intent_id: String,
    pub amount: Amount,
    pub currency: Currency,
    pub reason: Option<String>,
    pub status: RefundStatus,
    pub failure_reason: Option<String>,
    pub acquirer_refund_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
}

impl Refund {
    pub fn view(&self) -> RefundView {
        RefundView {
            id: self.id.clone(),
            payment_intent_id: self.payment_intent_id.clone(),
            amount: self.amount.minor_units(),
            currency: self.currency.code().to_owned(),
            reason: self.reason.clone(),
            status: self.status.into(),
            failure_reason: self.failure_reason.clone(),
            created_at: self.created_at,
            processed_at: self.processed_at,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.view()).unwrap_or_default()
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    merchant_id: String,
    payment_intent_id: String,
    amount: i64,
    currency: String,
    reason: Option<String>,
    status: String,
    failure_reason: Option<String>,
    acquirer_refund_id: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    processed_at: Option<DateTime<Utc>>,
}

impl TryFrom<Row> for Refund {
    type Error = StoreError;

    fn try_from(r: Row) -> Result<Self, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            id: r.id.clone(),
            reason,
        };
        Ok(Refund {
            amount: Amount::from_stored(r.amount),
            currency: Currency::parse(&r.currency).map_err(|e| corrupt(e.message))?,
            status: r
                .status
                .parse()
                .map_err(|e: DomainError| corrupt(e.message))?,
            id: r.id,
            merchant_id: r.merchant_id,
            payment_intent_id: r.payment_intent_id,
            reason: r.reason,
            failure_reason: r.failure_reason,
            acquirer_refund_id: r.acquirer_refund_id,
            created_at: r.created_at,
            updated_at: r.updated_at,
            processed_at: r.processed_at,
        })
    }
}

const COLUMNS: &str =
    "id, merchant_id, payment_intent_id, amount, currency, reason, status, failure_reason, \
    acquirer_refund_id, created_at, updated_at, processed_at";

/// Creates a pending refund of a locked, `succeeded` intent and queues it for the refund
/// worker. `amount: None` refunds everything not yet refunded or being refunded.
pub async fn create(
    conn: &mut PgConnection,
    intent: &PaymentIntent,
    amount: Option<Amount>,
    reason: Option<String>,
    actor: &Actor,
) -> Result<Refund, StoreError> {
    if intent.status != PaymentIntentStatus::Succeeded {
        return Err(StoreError::InvalidTransition(DomainError::new(
            "invalid_state_transition",
            None,
            format!(
                "Only a `succeeded` payment intent can be refunded; this one is `{}`",
                intent.status
            ),
        )));
    }
    // The intent is locked, and dispute creation takes the same lock first, so a chargeback
    // arriving while this refund is decided waits for it (and the other way round).
    if super::disputes::has_open(&mut *conn, &intent.id).await? {
        return Err(StoreError::InvalidTransition(DomainError::new(
            "charge_disputed",
            None,
            "This payment is disputed; it cannot be refunded while the dispute is open",
        )));
    }
    let committed: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(amount), 0)::bigint FROM refunds WHERE payment_intent_id = $1 AND status <> 'failed'",
    )
    .bind(&intent.id)
    .fetch_one(&mut *conn)
    .await?;
    let remaining = intent
        .amount_received
        .checked_sub(Amount::from_stored(committed))
        .unwrap_or(Amount::ZERO);
    let amount = match amount {
        // The contract answers every refund beyond `amountReceived` with `amount_too_large`,
        // whether the amount was asked for or implied by leaving it out.
        None if remaining.is_zero() => {
            return Err(StoreError::Rejected(DomainError::new(
                "amount_too_large",
                Some("amount".into()),
                "Nothing is left to refund: this payment intent's refunds, settled or pending, already cover all of it",
            )))
        }
        None => remaining,
        Some(a) if a > remaining => {
            return Err(StoreError::Rejected(DomainError::new(
                "amount_too_large",
                Some("amount".into()),
                format!("Refund amount {a} is greater than what is left to refund ({remaining})"),
            )))
        }
        Some(a) => a,
    };
    let now = crate::domain::now();
    let refund = Refund {
        id: IdKind::Refund.generate(),
        merchant_id: intent.merchant_id.clone(),
        payment_intent_id: intent.id.clone(),
        amount,
        currency: intent.currency,
        reason,
        status: RefundStatus::Pending,
        failure_reason: None,
        acquirer_refund_id: None,
        created_at: now,
        updated_at: now,
        processed_at: None,
    };
    sqlx::query(
        "INSERT INTO refunds (id, merchant_id, payment_intent_id, amount, currency, reason, status, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&refund.id)
    .bind(&refund.merchant_id)
    .bind(&refund.payment_intent_id)
    .bind(refund.amount.minor_units())
    .bind(refund.currency.code())
    .bind(&refund.reason)
    .bind(refund.status.as_str())
    .bind(refund.created_at)
    .bind(refund.updated_at)
    .execute(&mut *conn)
    .await?;
    let after = refund.to_json();
    audit::append(
        &mut *conn,
        NewEntry {
            merchant_id: Some(&refund.merchant_id),
            object_type: "refund",
            object_id: &refund.id,
            action: "refund.created",
            actor,
            before: None,
            after: Some(after.clone()),
        },
    )
    .await?;
    outbox::record_event(
        &mut *conn,
        &refund.merchant_id,
        "refund.created",
        &refund.id,
        after,
    )
    .await?;
    let command = crate::commands::RefundCommand::ProcessV1 {
        refund_id: refund.id.clone(),
        merchant_id: refund.merchant_id.clone(),
    };
    outbox::enqueue(conn, SUBJECT_REFUND_PROCESS, &command.to_json()).await?;
    Ok(refund)
}

/// How the acquirer settled a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    Succeeded { acquirer_refund_id: Option<String> },
    Failed { reason: String },
}

/// Settles a pending refund in the caller's transaction: the refund's state machine decides,
/// the update is guarded on `pending`, and on success the intent's `amountRefunded` grows
/// (becoming `refunded` when it reaches `amountReceived`). Returns `None` when the refund was
/// already settled: a late or repeated settlement changes nothing.
pub async fn settle(
    conn: &mut PgConnection,
    refund_id: &str,
    settlement: Settlement,
    actor: &Actor,
) -> Result<Option<Refund>, StoreError> {
    let Some(current) = get_any(&mut *conn, refund_id).await? else {
        return Err(StoreError::NotFound(refund_id.to_owned()));
    };
    // Lock the intent first, always in the same order (intent, then refund), so settlements and
    // new refunds of one intent never deadlock.
    let intent =
        payment_intents::get_for_update(conn, &current.merchant_id, &current.payment_intent_id)
            .await?
            .ok_or_else(|| StoreError::NotFound(current.payment_intent_id.clone()))?;
    let Some(current) = get_any(&mut *conn, refund_id).await? else {
        return Err(StoreError::NotFound(refund_id.to_owned()));
    };
    let to = match &settlement {
        Settlement::Succeeded { .. } => RefundStatus::Succeeded,
        Settlement::Failed { .. } => RefundStatus::Failed,
    };
    if current.status.transition(to).is_err() {
        return Ok(None);
    }
    let mut next = current.clone();
    next.status = to;
    next.updated_at = crate::domain::now();
    next.processed_at = Some(next.updated_at);
    match settlement {
        Settlement::Succeeded { acquirer_refund_id } => {
            next.acquirer_refund_id = acquirer_refund_id.or(next.acquirer_refund_id)
        }
        Settlement::Failed { reason } => next.failure_reason = Some(reason),
    }
    let updated = sqlx::query(
        "UPDATE refunds SET status = $2, failure_reason = $3, acquirer_refund_id = $4, updated_at = $5, processed_at = $6
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(&next.id)
    .bind(next.status.as_str())
    .bind(&next.failure_reason)
    .bind(&next.acquirer_refund_id)
    .bind(next.updated_at)
    .bind(next.processed_at)
    .execute(&mut *conn)
    .await?;
    if updated.rows_affected() != 1 {
        return Ok(None);
    }
    let event = if to == RefundStatus::Succeeded {
        "refund.succeeded"
    } else {
        "refund.failed"
    };
    let after = next.to_json();
    audit::append(
        &mut *conn,
        NewEntry {
            merchant_id: Some(&next.merchant_id),
            object_type: "refund",
            object_id: &next.id,
            action: event,
            actor,
            before: Some(current.to_json()),
            after: Some(after.clone()),
        },
    )
    .await?;
    outbox::record_event(&mut *conn, &next.merchant_id, event, &next.id, after).await?;
    if to == RefundStatus::Succeeded {
        payment_intents::apply_refund(conn, &intent, next.amount, actor).await?;
        crate::ledger::post_refund(conn, &next).await?;
    }
    Ok(Some(next))
}

pub async fn get<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
    id: &str,
) -> Result<Option<Refund>, StoreError> {
    sqlx::query_as::<_, Row>(&format!(
        "SELECT {COLUMNS} FROM refunds WHERE id = $1 AND merchant_id = $2"
    ))
    .bind(id)
    .bind(merchant_id)
    .fetch_optional(db)
    .await?
    .map(Refund::try_from)
    .transpose()
}

pub async fn get_any<'e>(db: impl PgExecutor<'e>, id: &str) -> Result<Option<Refund>, StoreError> {
    sqlx::query_as::<_, Row>(&format!("SELECT {COLUMNS} FROM refunds WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await?
        .map(Refund::try_from)
        .transpose()
}

/// Whether `id` is a refund of this merchant: a list cursor must name one.
pub async fn exists<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
    id: &str,
) -> Result<bool, StoreError> {
    super::pages::owned_row_exists(db, "refunds", merchant_id, id).await
}

/// Newest first, optionally for one intent, after the `starting_after` refund (which the
/// caller has checked with [`exists`]).
pub async fn list<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
    payment_intent_id: Option<&str>,
    starting_after: Option<&str>,
    limit: i64,
) -> Result<Vec<Refund>, StoreError> {
    sqlx::query_as::<_, Row>(&super::pages::newest_first(
        "refunds",
        COLUMNS,
        "payment_intent_id",
    ))
    .bind(merchant_id)
    .bind(payment_intent_id)
    .bind(starting_after)
    .bind(limit)
    .fetch_all(db)
    .await?
    .into_iter()
    .map(Refund::try_from)
    .collect()
}

/// Pending refunds not touched for `older_than`, for reconciliation.
pub async fn stale_pending<'e>(
    db: impl PgExecutor<'e>,
    older_than: chrono::TimeDelta,
    limit: i64,
) -> Result<Vec<Refund>, StoreError> {
    sqlx::query_as::<_, Row>(&format!(
        "SELECT {COLUMNS} FROM refunds WHERE status = 'pending' AND updated_at < $1 ORDER BY updated_at LIMIT $2"
    ))
    .bind(crate::domain::now() - older_than)
    .bind(limit)
    .fetch_all(db)
    .await?
    .into_iter()
    .map(Refund::try_from)
    .collect()
}

/// Remembers the acquirer's id for a refund it accepted as pending (from its answer to our
/// call or from its `refund.pending` notification), so the refund is not sent again. Only while
/// the refund is pending and has none yet; answers whether this call recorded it.
pub async fn record_acquirer_id(
    conn: &mut PgConnection,
    refund_id: &str,
    acquirer_refund_id: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE refunds SET acquirer_refund_id = $2, updated_at = now()
         WHERE id = $1 AND status = 'pending' AND acquirer_refund_id IS NULL",
    )
    .bind(refund_id)
    .bind(acquirer_refund_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Marks a pending refund reconciliation has just sent again, so the next pass waits another
/// stuck threshold before asking about it.
pub async fn touch_pending(conn: &mut PgConnection, refund_id: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE refunds SET updated_at = now() WHERE id = $1 AND status = 'pending'")
        .bind(refund_id)
        .execute(conn)
        .await?;
    Ok(())
}
