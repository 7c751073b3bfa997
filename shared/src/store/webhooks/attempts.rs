//! The `webhook_delivery_attempts` table: every attempt of every cycle, claimed before its
//! HTTP call and recorded (with the delivery row, in one statement) after it.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use crate::domain::webhook::DeliveryStatus;
use crate::store::StoreError;

/// Claims the next attempt before the HTTP call, so a worker that dies during the call has
/// still used it up: the count in the row is exact whatever happens to the process. An
/// attempt a dead worker left `in_flight` is marked `abandoned`. Returns the attempt number,
/// or `None` if another copy of the command claimed it first (or the row moved on).
pub async fn claim_attempt<'e>(
    db: impl PgExecutor<'e>,
    delivery_id: &str,
    cycle: i32,
    attempt_before: i32,
) -> Result<Option<i32>, StoreError> {
    Ok(sqlx::query_scalar(
        "WITH claimed AS (
             UPDATE webhook_deliveries SET attempt = attempt + 1, next_retry_at = NULL, updated_at = now()
             WHERE id = $1 AND cycle = $2 AND attempt = $3 AND status = 'pending'
             RETURNING id, cycle, attempt
         ), abandoned AS (
             UPDATE webhook_delivery_attempts
             SET outcome = 'abandoned', error = 'the worker stopped during this attempt', finished_at = now()
             WHERE delivery_id = $1 AND outcome = 'in_flight' AND $3 > 0 AND EXISTS (SELECT 1 FROM claimed)
         )
         INSERT INTO webhook_delivery_attempts (delivery_id, cycle, attempt, outcome)
         SELECT id, cycle, attempt, 'in_flight' FROM claimed
         RETURNING attempt",
    )
    .bind(delivery_id)
    .bind(cycle)
    .bind(attempt_before)
    .fetch_optional(db)
    .await?)
}

/// How one attempt ended, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// `succeeded`, `retry` or `failed`.
    pub outcome: &'static str,
    pub response_code: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i32,
    pub next_retry_at: Option<DateTime<Utc>>,
}

impl AttemptRecord {
    fn delivery_status(&self) -> DeliveryStatus {
        match self.outcome {
            "succeeded" => DeliveryStatus::Succeeded,
            "failed" => DeliveryStatus::Failed,
            _ => DeliveryStatus::Pending,
        }
    }
}

/// Records an attempt's result on its attempt row and on the delivery, guarded on the cycle
/// and attempt it claimed. Returns `false` when a redelivery started a new cycle meanwhile
/// (the attempt is still recorded; the delivery row belongs to the new cycle).
pub async fn record_attempt<'e>(
    db: impl PgExecutor<'e>,
    delivery_id: &str,
    cycle: i32,
    attempt: i32,
    record: &AttemptRecord,
) -> Result<bool, StoreError> {
    let applied: Option<String> = sqlx::query_scalar(
        "WITH recorded AS (
             UPDATE webhook_delivery_attempts
             SET outcome = $4, response_code = $5, error = $6, duration_ms = $7,
                 next_retry_at = $8, finished_at = now()
             WHERE delivery_id = $1 AND cycle = $2 AND attempt = $3
         )
         UPDATE webhook_deliveries
         SET status = $9, response_code = $5, error = $6, next_retry_at = $8,
             delivered_at = CASE WHEN $9 = 'succeeded' THEN now() ELSE delivered_at END,
             updated_at = now()
         WHERE id = $1 AND cycle = $2 AND attempt = $3 AND status = 'pending'
         RETURNING id",
    )
    .bind(delivery_id)
    .bind(cycle)
    .bind(attempt)
    .bind(record.outcome)
    .bind(record.response_code)
    .bind(&record.error)
    .bind(record.duration_ms)
    .bind(record.next_retry_at)
    .bind(record.delivery_status().as_str())
    .fetch_optional(db)
    .await?;
    Ok(applied.is_some())
}
