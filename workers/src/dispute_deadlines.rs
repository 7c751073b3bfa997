//! The disputes' deadlines, run by the scheduler's leader each round:
//! - `dispute.deadline_approaching`, once, for a `needs_response` dispute whose
//!   `evidenceDueBy` is at most [`ALERT_BEFORE`] away. "Once" is the guarded UPDATE that
//!   sets `deadline_alerted_at` (`store::disputes::alert_deadline`): only the transaction
//!   whose update matched records the event, so a restart or a new leader never repeats it;
//! - a `needs_response` dispute whose deadline passed without a submission is `lost`, through
//!   the state machine's guarded update (a submission that got there first wins the race).

use chrono::TimeDelta;
use sqlx::PgPool;

use paystream_shared::audit::Actor;
use paystream_shared::domain::dispute::DisputeStatus;
use paystream_shared::store::disputes::{self, Move};
use paystream_shared::store::StoreError;

/// How long before `evidenceDueBy` the merchant is warned.
pub const ALERT_BEFORE: TimeDelta = TimeDelta::hours(48);
/// Disputes handled per job per round.
pub const BATCH: i64 = 100;
/// Who expires a dispute.
pub const ACTOR: Actor = Actor::Worker("scheduler");

/// Sends the approaching-deadline alerts that are due. Returns how many were sent.
pub async fn alert_approaching(pool: &PgPool, limit: i64) -> Result<usize, StoreError> {
    let mut sent = 0;
    for dispute in disputes::due_for_alert(pool, ALERT_BEFORE, limit).await? {
        let mut tx = pool.begin().await?;
        if disputes::alert_deadline(&mut tx, &dispute).await? {
            sent += 1;
        }
        tx.commit().await?;
    }
    Ok(sent)
}

/// Ends as `lost` every `needs_response` dispute whose deadline passed. Returns how many.
pub async fn expire_past_due(pool: &PgPool, limit: i64) -> Result<usize, StoreError> {
    let mut lost = 0;
    for found in disputes::past_due(pool, limit).await? {
        let mut tx = pool.begin().await?;
        let Some(dispute) =
            disputes::get_for_update(&mut tx, &found.merchant_id, &found.id).await?
        else {
            continue;
        };
        if dispute.status != DisputeStatus::NeedsResponse
            || dispute.evidence_due_by > paystream_shared::domain::now()
        {
            continue;
        }
        disputes::transition(
            &mut tx,
            &dispute,
            DisputeStatus::Lost,
            Move::Expired,
            &ACTOR,
        )
        .await?;
        tx.commit().await?;
        lost += 1;
    }
    Ok(lost)
}

/// One round of both jobs; errors are logged and the next round tries again.
pub async fn run_once(pool: &PgPool) {
    match alert_approaching(pool, BATCH).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(disputes = n, "dispute deadline alerts sent"),
        Err(e) => tracing::error!(error = %e, "dispute deadline alerts failed"),
    }
    match expire_past_due(pool, BATCH).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(disputes = n, "disputes past their deadline lost"),
        Err(e) => tracing::error!(error = %e, "expiring disputes failed"),
    }
}
