//! Payment intent persistence. Reads are always scoped by merchant; the only write path for a
//! status change is [`transition`], which consults the state machine and guards the UPDATE
//! on the status it read, so two racing writers cannot both win.

use crate::views::IntentView;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use super::StoreError;
use crate::audit::{self, Actor, NewEntry};
use crate::domain::money::{Amount, Currency};
use crate::domain::outcome::{event_type_for, ChargeOutcome};
use crate::domain::payment_intent::{
    CaptureMethod, PaymentError, PaymentIntent, PaymentIntentStatus, RedirectAction,
};
use crate::domain::provider_event::{payment_verdict, Verdict};
use crate::store::change::{self, Change};

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    merchant_id: String,
    amount: i64,
    currency: String,
    status: String,
    amount_capturable: i64,
    amount_received: i64,
    amount_refunded: i64,
    customer_id: String,
    payment_method_id: Option<String>,
    capture_method: String,
    description: Option<String>,
    metadata: sqlx::types::Json<BTreeMap<String, String>>,
    last_payment_error: Option<sqlx::types::Json<PaymentError>>,
    next_action: Option<sqlx::types::Json<RedirectAction>>,
    return_url: Option<String>,
    authorization_expires_at: Option<DateTime<Utc>>,
    canceled_at: Option<DateTime<Utc>>,
    cancellation_reason: Option<String>,
    acquirer_charge_id: Option<String>,
    version: i64,
    amount_to_capture: Option<i64>,
    void_confirmed_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<Row> for PaymentIntent {
    type Error = StoreError;

    fn try_from(r: Row) -> Result<Self, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            id: r.id.clone(),
            reason,
        };
        Ok(PaymentIntent {
            amount: Amount::from_stored(r.amount),
            currency: Currency::parse(&r.currency).map_err(|e| corrupt(e.message))?,
            status: r
                .status
                .parse::<PaymentIntentStatus>()
                .map_err(|e| corrupt(e.message))?,
            amount_capturable: Amount::from_stored(r.amount_capturable),
            amount_received: Amount::from_stored(r.amount_received),
            amount_refunded: Amount::from_stored(r.amount_refunded),
            capture_method: CaptureMethod::parse(&r.capture_method)
                .map_err(|e| corrupt(e.message))?,
            metadata: r.metadata.0,
            last_payment_error: r.last_payment_error.map(|j| j.0),
            next_action: r.next_action.map(|j| j.0),
            id: r.id,
            merchant_id: r.merchant_id,
            customer_id: r.customer_id,
            payment_method_id: r.payment_method_id,
            description: r.description,
            return_url: r.return_url,
            authorization_expires_at: r.authorization_expires_at,
            canceled_at: r.canceled_at,
            cancellation_reason: r.cancellation_reason,
            acquirer_charge_id: r.acquirer_charge_id,
            version: r.version,
            amount_to_capture: r.amount_to_capture.map(Amount::from_stored),
            void_confirmed_at: r.void_confirmed_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

const COLUMNS: &str =
    "id, merchant_id, amount, currency, status, amount_capturable, amount_received, \
    amount_refunded, customer_id, payment_method_id, capture_method, description, metadata, \
    last_payment_error, next_action, return_url, authorization_expires_at, canceled_at, \
    cancellation_reason, acquirer_charge_id, version, amount_to_capture, void_confirmed_at, \
    created_at, updated_at";

/// Inserts a new intent with its `created` audit entry and `payment_intent.created` event.
pub async fn insert(
    conn: &mut PgConnection,
    pi: &PaymentIntent,
    actor: &Actor,
) -> Result<(), StoreError> {
    let change = Change::new(
        &pi.merchant_id,
        "payment_intent",
        &pi.id,
        "payment_intent.created",
        actor,
        None,
        pi.to_json(),
    )
    .with_event("payment_intent.created");
    let sql = Change::sql(
        "changed AS (
            INSERT INTO payment_intents (id, merchant_id, amount, currency, status, amount_capturable,
                amount_received, amount_refunded, customer_id, payment_method_id, capture_method,
                description, metadata, last_payment_error, next_action, return_url,
                authorization_expires_at, canceled_at, cancellation_reason, created_at, updated_at)
            VALUES ($15,$16,$17,$18,$19,$20,$21,$22,$23,$24,$25,$26,$27,$28,$29,$30,$31,$32,$33,$34,$35)
            RETURNING 1)",
    );
    let query = change
        .bind(sqlx::query(&sql))
        .bind(&pi.id)
        .bind(&pi.merchant_id)
        .bind(pi.amount.minor_units())
        .bind(pi.currency.code())
        .bind(pi.status.as_str())
        .bind(pi.amount_capturable.minor_units())
        .bind(pi.amount_received.minor_units())
        .bind(pi.amount_refunded.minor_units())
        .bind(&pi.customer_id)
        .bind(&pi.payment_method_id)
        .bind(pi.capture_method.as_str())
        .bind(&pi.description)
        .bind(sqlx::types::Json(&pi.metadata))
        .bind(pi.last_payment_error.as_ref().map(sqlx::types::Json))
        .bind(pi.next_action.as_ref().map(sqlx::types::Json))
        .bind(&pi.return_url)
        .bind(pi.authorization_expires_at)
        .bind(pi.canceled_at)
        .bind(&pi.cancellation_reason)
        .bind(pi.created_at)
        .bind(pi.updated_at);
    change::apply(conn, query).await?;
    Ok(())
}

/// One intent of one merchant. Another merchant's id is simply not found.
pub async fn get<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
    id: &str,
) -> Result<Option<PaymentIntent>, StoreError> {
    let row = sqlx::query_as::<_, Row>(&format!(
        "SELECT {COLUMNS} FROM payment_intents WHERE id = $1 AND merchant_id = $2"
    ))
    .bind(id)
    .bind(merchant_id)
    .fetch_optional(db)
    .await?;
    row.map(PaymentIntent::try_from).transpose()
}

/// One intent of one merchant, locked (`FOR UPDATE`) for the rest of the caller's transaction:
/// the state machine then decides on the row as it is now, and concurrent writers of the same
/// intent (refunds, settlements, confirms) queue behind each other. One round trip.
pub async fn get_for_update(
    conn: &mut PgConnection,
    merchant_id: &str,
    id: &str,
) -> Result<Option<PaymentIntent>, StoreError> {
    let row = sqlx::query_as::<_, Row>(&format!(
        "SELECT {COLUMNS} FROM payment_intents WHERE id = $1 AND merchant_id = $2 FOR UPDATE"
    ))
    .bind(id)
    .bind(merchant_id)
    .fetch_optional(conn)
    .await?;
    row.map(PaymentIntent::try_from).transpose()
}

/// Loads an intent by id alone, for workers acting on a command that already names its merchant.
pub async fn get_any<'e>(
    db: impl PgExecutor<'e>,
    id: &str,
) -> Result<Option<PaymentIntent>, StoreError> {
    let row = sqlx::query_as::<_, Row>(&format!(
        "SELECT {COLUMNS} FROM payment_intents WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await?;
    row.map(PaymentIntent::try_from).transpose()
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub customer_id: Option<String>,
    pub status: Option<PaymentIntentStatus>,
    pub starting_after: Option<String>,
    /// How many to return; the caller asks for one more to learn `hasMore`.
    pub limit: i64,
}

/// Newest first, cursor after `starting_after` (an intent id of the same merchant).
pub async fn list<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
    filter: &ListFilter,
) -> Result<Vec<PaymentIntent>, StoreError> {
    let rows = sqlx::query_as::<_, Row>(&format!(
        "SELECT {COLUMNS} FROM payment_intents p
         WHERE merchant_id = $1
           AND ($2::text IS NULL OR customer_id = $2)
           AND ($3::text IS NULL OR status = $3)
           AND ($4::text IS NULL OR (created_at, id) < (
                SELECT c.created_at, c.id FROM payment_intents c WHERE c.id = $4 AND c.merchant_id = $1))
         ORDER BY created_at DESC, id DESC
         LIMIT $5"
    ))
    .bind(merchant_id)
    .bind(&filter.customer_id)
    .bind(filter.status.map(|s| s.as_str()))
    .bind(&filter.starting_after)
    .bind(filter.limit)
    .fetch_all(db)
    .await?;
    rows.into_iter().map(PaymentIntent::try_from).collect()
}

/// Whether `id` names an intent of this merchant (for validating a list cursor).
pub async fn exists<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
    id: &str,
) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM payment_intents WHERE id = $1 AND merchant_id = $2)",
    )
    .bind(id)
    .bind(merchant_id)
    .fetch_one(db)
    .await?)
}

/// The version `current` has after its next write: what a command queued with that write
/// carries.
pub fn next_version(current: &PaymentIntent) -> i64 {
    current.version + 1
}

/// Moves `current` to `to` after `change` edits the other fields: asks the state machine, then
/// in one statement updates the row only if it is still the version we read (and so still has
/// the status we read) and writes the audit entry (before and after) and, if given, the event.
/// Being one statement it is atomic inside or outside a transaction. Returns the new intent.
///
/// The guard is the version, not the status, because a status can recur: `processing` is
/// entered by a confirm and again by a manual capture, and a worker that read the first must
/// not write over the second.
pub async fn transition(
    conn: &mut PgConnection,
    current: &PaymentIntent,
    to: PaymentIntentStatus,
    actor: &Actor,
    event_type: Option<&str>,
    change: impl FnOnce(&mut PaymentIntent),
) -> Result<PaymentIntent, StoreError> {
    transition_queueing(conn, current, to, actor, event_type, None, change).await
}

/// What the acquirer's word about a charge did to an intent ([`apply_acquirer_outcome`]).
#[derive(Debug, Clone)]
pub enum OutcomeApplied {
    /// The intent moved; this is it now.
    Applied(PaymentIntent),
    /// The intent already showed the outcome (the other messenger got there first).
    Unchanged(PaymentIntent),
    /// Applying it would move the intent backwards or across a final status; nothing moved.
    Ignored {
        intent: PaymentIntent,
        reason: String,
    },
}

/// The one path by which the acquirer's word about a charge that arrives on its own (a signed
/// notification, or the 3-D Secure result token the cardholder's browser carries) moves an
/// intent: the ordering rule (`provider_event::payment_verdict`) decides, then each step goes
/// through [`transition`] with the outcome's fields (`outcome::ChargeOutcome::apply`) and the
/// merchant event for that status. `intent` must have been read with [`get_for_update`] in the
/// caller's transaction, so two messengers of the same outcome queue on the row and the second
/// finds it [`OutcomeApplied::Unchanged`]. `event_at` is when the acquirer decided.
pub async fn apply_acquirer_outcome(
    conn: &mut PgConnection,
    intent: PaymentIntent,
    outcome: &ChargeOutcome,
    event_at: DateTime<Utc>,
    actor: &Actor,
) -> Result<OutcomeApplied, StoreError> {
    match payment_verdict(intent.status, intent.updated_at, outcome.status(), event_at) {
        Verdict::Unchanged => Ok(OutcomeApplied::Unchanged(intent)),
        Verdict::Ignore(reason) => Ok(OutcomeApplied::Ignored { intent, reason }),
        Verdict::Apply(path) => {
            let mut current = intent;
            for status in path {
                current = transition(
                    conn,
                    &current,
                    status,
                    actor,
                    Some(event_type_for(status)),
                    |pi| outcome.apply(pi, status, crate::domain::now()),
                )
                .await?;
            }
            Ok(OutcomeApplied::Applied(current))
        }
    }
}

/// [`transition`] that also queues `message` (subject, payload), such as the command that
/// drives the new state, in the same statement.
pub async fn transition_queueing(
    conn: &mut PgConnection,
    current: &PaymentIntent,
    to: PaymentIntentStatus,
    actor: &Actor,
    event_type: Option<&str>,
    message: Option<(&str, serde_json::Value)>,
    change: impl FnOnce(&mut PaymentIntent),
) -> Result<PaymentIntent, StoreError> {
    current
        .status
        .transition(to)
        .map_err(StoreError::InvalidTransition)?;
    let mut next = current.clone();
    change(&mut next);
    next.status = to;
    next.version = next_version(current);
    next.updated_at = crate::domain::now();
    let mut effects = Change::new(
        &next.merchant_id,
        "payment_intent",
        &next.id,
        event_type.unwrap_or("payment_intent.updated"),
        actor,
        Some(current.to_json()),
        next.to_json(),
    );
    if let Some(event_type) = event_type {
        effects = effects.with_event(event_type);
    }
    if let Some((subject, payload)) = message {
        effects = effects.with_message(subject, payload);
    }
    let sql = Change::sql(
        "changed AS (
            UPDATE payment_intents SET status = $17, amount_capturable = $18, amount_received = $19,
                amount_refunded = $20, payment_method_id = $21, last_payment_error = $22,
                next_action = $23, return_url = $24, authorization_expires_at = $25,
                canceled_at = $26, cancellation_reason = $27, updated_at = $28,
                acquirer_charge_id = $29, amount_to_capture = $30, void_confirmed_at = $31,
                version = version + 1
            WHERE id = $15 AND status = $16 AND version = $32
            RETURNING 1)",
    );
    let query = effects
        .bind(sqlx::query(&sql))
        .bind(&current.id)
        .bind(current.status.as_str())
        .bind(next.status.as_str())
        .bind(next.amount_capturable.minor_units())
        .bind(next.amount_received.minor_units())
        .bind(next.amount_refunded.minor_units())
        .bind(&next.payment_method_id)
        .bind(next.last_payment_error.as_ref().map(sqlx::types::Json))
        .bind(next.next_action.as_ref().map(sqlx::types::Json))
        .bind(&next.return_url)
        .bind(next.authorization_expires_at)
        .bind(next.canceled_at)
        .bind(&next.cancellation_reason)
        .bind(next.updated_at)
        .bind(&next.acquirer_charge_id)
        .bind(next.amount_to_capture.map(Amount::minor_units))
        .bind(next.void_confirmed_at)
        .bind(current.version);
    let conflict = || StoreError::Conflict {
        object: "payment_intent",
        id: current.id.clone(),
        expected: current.status.to_string(),
    };
    // Only a capture sets `amount_received` (`ChargeOutcome::apply`); both are checked so a
    // new path that changes it cannot skip the ledger.
    let captures =
        to == PaymentIntentStatus::Succeeded || next.amount_received != current.amount_received;
    if !captures {
        return match change::apply(conn, query).await? {
            true => Ok(next),
            false => Err(conflict()),
        };
    }
    // A capture moves money, so the intent's move to `succeeded` and its ledger posting commit
    // together or not at all (ARCHITECTURE.md, "The ledger"). A caller outside a transaction
    // gets one here; inside one, this is a savepoint.
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    if !change::apply(&mut tx, query).await? {
        return Err(conflict());
    }
    crate::ledger::post_charge(&mut tx, &next).await?;
    tx.commit().await?;
    Ok(next)
}

/// Adds a settled refund to a locked intent's `amountRefunded`; the intent becomes `refunded`
/// when that reaches `amountReceived`. In the caller's transaction, with an audit entry.
pub async fn apply_refund(
    conn: &mut PgConnection,
    intent: &PaymentIntent,
    amount: Amount,
    actor: &Actor,
) -> Result<PaymentIntent, StoreError> {
    let total = intent
        .amount_refunded
        .checked_add(amount)
        .filter(|t| *t <= intent.amount_received)
        .ok_or_else(|| StoreError::Corrupt {
            id: intent.id.clone(),
            reason: format!(
                "refunds would exceed the amount received ({})",
                intent.amount_received
            ),
        })?;
    if total == intent.amount_received {
        return transition(
            conn,
            intent,
            PaymentIntentStatus::Refunded,
            actor,
            None,
            |pi| pi.amount_refunded = total,
        )
        .await;
    }
    let mut next = intent.clone();
    next.amount_refunded = total;
    next.version = next_version(intent);
    next.updated_at = crate::domain::now();
    let updated = sqlx::query("UPDATE payment_intents SET amount_refunded = $3, updated_at = $4, version = version + 1 WHERE id = $1 AND status = $2 AND version = $5")
        .bind(&intent.id)
        .bind(intent.status.as_str())
        .bind(total.minor_units())
        .bind(next.updated_at)
        .bind(intent.version)
        .execute(&mut *conn)
        .await?;
    if updated.rows_affected() != 1 {
        return Err(StoreError::Conflict {
            object: "payment_intent",
            id: intent.id.clone(),
            expected: intent.status.to_string(),
        });
    }
    audit::append(
        &mut *conn,
        NewEntry {
            merchant_id: Some(&next.merchant_id),
            object_type: "payment_intent",
            object_id: &next.id,
            action: "payment_intent.refund_applied",
            actor,
            before: Some(intent.to_json()),
            after: Some(next.to_json()),
        },
    )
    .await?;
    Ok(next)
}

/// Records that the acquirer holds no money for a canceled intent's charge any more (its void
/// was confirmed, or the charge never got as far as an authorization), with an audit entry.
/// Once: a second call, or one for an intent that is not canceled, writes nothing and answers
/// `false`. `updated_at` is left alone: nothing a client sees changed.
pub async fn mark_void_confirmed(
    conn: &mut PgConnection,
    intent: &PaymentIntent,
    actor: &Actor,
) -> Result<bool, StoreError> {
    let now = crate::domain::now();
    let mut after = intent.to_json();
    after["voidConfirmedAt"] = serde_json::json!(now);
    let effects = Change::new(
        &intent.merchant_id,
        "payment_intent",
        &intent.id,
        "payment_intent.void_confirmed",
        actor,
        None,
        after,
    );
    let sql = Change::sql(
        "changed AS (
            UPDATE payment_intents SET void_confirmed_at = $17, version = version + 1
            WHERE id = $15 AND status = $16 AND void_confirmed_at IS NULL
            RETURNING 1)",
    );
    let query = effects
        .bind(sqlx::query(&sql))
        .bind(&intent.id)
        .bind(PaymentIntentStatus::Canceled.as_str())
        .bind(now);
    Ok(change::apply(conn, query).await?)
}

/// Marks an intent reconciliation has just acted on (requeued its command), so the next pass
/// waits another stuck threshold before asking again. Only while it is still in `status`.
pub async fn touch(
    conn: &mut PgConnection,
    id: &str,
    status: PaymentIntentStatus,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE payment_intents SET updated_at = now() WHERE id = $1 AND status = $2")
        .bind(id)
        .bind(status.as_str())
        .execute(conn)
        .await?;
    Ok(())
}

/// `(id, merchant_id)` of intents in one of `statuses` that nothing changed since `before`,
/// oldest first: what reconciliation asks the acquirer about.
pub async fn stuck<'e>(
    db: impl PgExecutor<'e>,
    statuses: &[PaymentIntentStatus],
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(String, String)>, StoreError> {
    let statuses: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
    Ok(sqlx::query_as(
        "SELECT id, merchant_id FROM payment_intents
         WHERE status = ANY($1) AND updated_at < $2 ORDER BY updated_at LIMIT $3",
    )
    .bind(statuses)
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// `(id, merchant_id)` of canceled intents with a charge whose release the acquirer has not
/// confirmed, canceled before `before`, oldest first.
pub async fn unconfirmed_voids<'e>(
    db: impl PgExecutor<'e>,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(String, String)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, merchant_id FROM payment_intents
         WHERE status = 'canceled' AND acquirer_charge_id IS NOT NULL
           AND void_confirmed_at IS NULL AND updated_at < $1
         ORDER BY updated_at LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await?)
}
