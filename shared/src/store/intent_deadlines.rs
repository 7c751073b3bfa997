//! The deadlines in a payment intent's life that the scheduler keeps: authorizations that
//! expire, intents abandoned before payment, and the one-time notice that an authorization is
//! about to expire.
//!
//! The selections here only name candidates, oldest first and bounded, without locking them:
//! the caller then decides on each intent as it is at that moment. Every status change still
//! goes through [`payment_intents::transition`](super::payment_intents::transition); the notice,
//! which changes no status, is written here by a guarded update in one statement.

use crate::views::IntentView;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use super::StoreError;
use crate::audit::Actor;
use crate::domain::payment_intent::{PaymentIntent, PaymentIntentStatus};
use crate::store::change::{self, Change};

/// The event announcing that an uncaptured authorization expires soon.
pub const AUTHORIZATION_EXPIRING: &str = "payment_intent.authorization_expiring";

/// An intent a deadline job should look at.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Candidate {
    pub id: String,
    pub merchant_id: String,
}

/// `requires_capture` intents whose authorization expired at or before `now`, soonest expired
/// first.
pub async fn expired_authorizations<'e>(
    db: impl PgExecutor<'e>,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Candidate>, StoreError> {
    Ok(sqlx::query_as::<_, Candidate>(
        "SELECT id, merchant_id FROM payment_intents
         WHERE status = 'requires_capture' AND authorization_expires_at <= $1
         ORDER BY authorization_expires_at, id
         LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// `requires_capture` intents whose authorization expires after `now` and at or before
/// `until`, and whose expiry has not been announced yet.
pub async fn expiring_unannounced<'e>(
    db: impl PgExecutor<'e>,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Candidate>, StoreError> {
    Ok(sqlx::query_as::<_, Candidate>(
        "SELECT id, merchant_id FROM payment_intents
         WHERE status = 'requires_capture'
           AND authorization_expires_at > $1 AND authorization_expires_at <= $2
           AND authorization_expiring_notified_at IS NULL
         ORDER BY authorization_expires_at, id
         LIMIT $3",
    )
    .bind(now)
    .bind(until)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// Intents in one of `statuses` that nothing has changed since `idle_since` (a status change
/// is what moves `updated_at`), longest idle first.
pub async fn idle_since<'e>(
    db: impl PgExecutor<'e>,
    statuses: &[PaymentIntentStatus],
    idle_since: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Candidate>, StoreError> {
    let statuses: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
    Ok(sqlx::query_as::<_, Candidate>(
        "SELECT id, merchant_id FROM payment_intents
         WHERE status = ANY($1) AND updated_at <= $2
         ORDER BY updated_at, id
         LIMIT $3",
    )
    .bind(statuses)
    .bind(idle_since)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// Records `payment_intent.authorization_expiring` for `intent` as read: the notice mark, the
/// audit entry, the event and its outbox row in one statement. The update is guarded on the
/// mark being unset and on the intent being unchanged since it was read (still
/// `requires_capture`, same `updated_at`), so the event goes out once per intent, never for an
/// intent captured or canceled meanwhile, and its data is the intent as it is. Returns whether
/// this call sent it (`false`: already sent, or the intent moved on).
///
/// The intent's `updated_at` is left alone: the notice changes nothing a client sees, and
/// `updated_at` is what reconciliation and the abandonment job measure idleness by.
pub async fn record_authorization_expiring(
    conn: &mut PgConnection,
    intent: &PaymentIntent,
    actor: &Actor,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let effects = Change::new(
        &intent.merchant_id,
        "payment_intent",
        &intent.id,
        AUTHORIZATION_EXPIRING,
        actor,
        None,
        intent.to_json(),
    )
    .with_event(AUTHORIZATION_EXPIRING);
    let sql = Change::sql(
        "changed AS (
            UPDATE payment_intents SET authorization_expiring_notified_at = $18
            WHERE id = $15 AND status = $16 AND updated_at = $17
              AND authorization_expiring_notified_at IS NULL
            RETURNING 1)",
    );
    let query = effects
        .bind(sqlx::query(&sql))
        .bind(&intent.id)
        .bind(PaymentIntentStatus::RequiresCapture.as_str())
        .bind(intent.updated_at)
        .bind(now);
    Ok(change::apply(conn, query).await?)
}
