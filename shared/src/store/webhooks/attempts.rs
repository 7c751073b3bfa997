//! The `webhook_delivery_attempts` table: every attempt of every cycle, claimed before its
//! HTTP call and recorded (with the delivery row, in one statement) after it.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use crate::domain::webhook::DeliveryStatus;
use crate::store::StoreError;

/// One attempt to claim: the delivery, and the cycle and attempt count its worker read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub delivery_id: String,
    pub cycle: i32,
    pub attempt_before: i32,
}

/// Claims the next attempt of many deliveries in one statement, before their HTTP calls, so a
/// worker that dies during a call has still used it up: the count in the row is exact
/// whatever happens to the process. An attempt a dead worker left `in_flight` is marked
/// `abandoned`. Answers one entry per claim, in order: the attempt number, or `None` where
/// another copy of the command claimed it first (or the row moved on). When one delivery is
/// claimed twice in a batch (two copies of its command), only the first claim can win.
pub async fn claim_attempts<'e>(
    db: impl PgExecutor<'e>,
    claims: &[Claim],
) -> Result<Vec<Option<i32>>, StoreError> {
    let ids: Vec<&str> = claims.iter().map(|c| c.delivery_id.as_str()).collect();
    let cycles: Vec<i32> = claims.iter().map(|c| c.cycle).collect();
    let befores: Vec<i32> = claims.iter().map(|c| c.attempt_before).collect();
    let won: Vec<(String, i32)> = sqlx::query_as(
        "WITH input AS (
             SELECT DISTINCT ON (id) * FROM UNNEST($1::text[], $2::int[], $3::int[])
                 AS i(id, cycle, attempt)
             ORDER BY id
         ), claimed AS (
             UPDATE webhook_deliveries d
             SET attempt = d.attempt + 1, next_retry_at = NULL, updated_at = now()
             FROM input i
             WHERE d.id = i.id AND d.cycle = i.cycle AND d.attempt = i.attempt AND d.status = 'pending'
             RETURNING d.id, d.cycle, d.attempt
         ), abandoned AS (
             UPDATE webhook_delivery_attempts a
             SET outcome = 'abandoned', error = 'the worker stopped during this attempt', finished_at = now()
             FROM claimed c
             WHERE a.delivery_id = c.id AND a.outcome = 'in_flight' AND c.attempt > 1
         )
         INSERT INTO webhook_delivery_attempts (delivery_id, cycle, attempt, outcome)
         SELECT id, cycle, attempt, 'in_flight' FROM claimed
         RETURNING delivery_id, attempt",
    )
    .bind(&ids)
    .bind(&cycles)
    .bind(&befores)
    .fetch_all(db)
    .await?;
    let mut won: std::collections::HashMap<String, i32> = won.into_iter().collect();
    Ok(claims
        .iter()
        .map(|c| {
            // The attempt this claim would have made; a second copy of the same claim finds
            // the entry taken by the first.
            match won.get(&c.delivery_id) {
                Some(&n) if n == c.attempt_before + 1 => won.remove(&c.delivery_id),
                _ => None,
            }
        })
        .collect())
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

/// One claimed attempt and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub delivery_id: String,
    pub cycle: i32,
    pub attempt: i32,
    pub record: AttemptRecord,
}

/// Records many attempts' results, each on its attempt row and on its delivery, in one
/// statement, guarded on the cycle and attempt each claimed. One answer per attempt, in order:
/// `false` when a redelivery started a new cycle meanwhile (the attempt is still recorded; the
/// delivery row belongs to the new cycle).
pub async fn record_attempts<'e>(
    db: impl PgExecutor<'e>,
    attempts: &[Recorded],
) -> Result<Vec<bool>, StoreError> {
    let ids: Vec<&str> = attempts.iter().map(|a| a.delivery_id.as_str()).collect();
    let cycles: Vec<i32> = attempts.iter().map(|a| a.cycle).collect();
    let numbers: Vec<i32> = attempts.iter().map(|a| a.attempt).collect();
    let outcomes: Vec<&str> = attempts.iter().map(|a| a.record.outcome).collect();
    let codes: Vec<Option<i32>> = attempts.iter().map(|a| a.record.response_code).collect();
    let errors: Vec<Option<&str>> = attempts.iter().map(|a| a.record.error.as_deref()).collect();
    let durations: Vec<i32> = attempts.iter().map(|a| a.record.duration_ms).collect();
    let next: Vec<Option<DateTime<Utc>>> =
        attempts.iter().map(|a| a.record.next_retry_at).collect();
    let statuses: Vec<&str> = attempts
        .iter()
        .map(|a| a.record.delivery_status().as_str())
        .collect();
    let applied: Vec<(String, i32)> = sqlx::query_as(
        "WITH input AS (
             SELECT * FROM UNNEST($1::text[], $2::int[], $3::int[], $4::text[], $5::int[],
                                  $6::text[], $7::int[], $8::timestamptz[], $9::text[])
                 AS i(id, cycle, attempt, outcome, code, error, ms, next_at, status)
         ), recorded AS (
             UPDATE webhook_delivery_attempts a
             SET outcome = i.outcome, response_code = i.code, error = i.error,
                 duration_ms = i.ms, next_retry_at = i.next_at, finished_at = now()
             FROM input i
             WHERE a.delivery_id = i.id AND a.cycle = i.cycle AND a.attempt = i.attempt
         )
         UPDATE webhook_deliveries d
         SET status = i.status, response_code = i.code, error = i.error, next_retry_at = i.next_at,
             delivered_at = CASE WHEN i.status = 'succeeded' THEN now() ELSE d.delivered_at END,
             updated_at = now()
         FROM input i
         WHERE d.id = i.id AND d.cycle = i.cycle AND d.attempt = i.attempt AND d.status = 'pending'
         RETURNING d.id, d.attempt",
    )
    .bind(&ids)
    .bind(&cycles)
    .bind(&numbers)
    .bind(&outcomes)
    .bind(&codes)
    .bind(&errors)
    .bind(&durations)
    .bind(&next)
    .bind(&statuses)
    .fetch_all(db)
    .await?;
    let applied: std::collections::HashSet<(String, i32)> = applied.into_iter().collect();
    Ok(attempts
        .iter()
        .map(|a| applied.contains(&(a.delivery_id.clone(), a.attempt)))
        .collect())
}
