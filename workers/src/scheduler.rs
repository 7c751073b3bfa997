//! The scheduler: periodic jobs that must run once, not once per replica. Leadership is a
//! PostgreSQL session advisory lock held on a dedicated connection: the leader runs the jobs;
//! standbys retry the lock every few seconds and take over within that time if the leader's
//! connection (or process) dies, because PostgreSQL releases the lock with the session.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use tokio_util::sync::CancellationToken;

use paystream_shared::config::Config;

use crate::acquirer::{Acquirer, HttpAcquirer};
use crate::reconcile;
use crate::runtime::WorkerError;

/// The advisory lock key that names the scheduler's leadership ("paystrm" in ASCII).
pub const LEADER_LOCK: i64 = 0x0070_6179_7374_726d;
/// How often a standby asks for leadership.
pub const STANDBY_RETRY: Duration = Duration::from_secs(5);
/// Sent outbox rows are kept this long for inspection, then purged.
pub const OUTBOX_RETENTION_HOURS: i32 = 24;

/// Held while this process leads; dropping it closes the session and frees the lock.
pub struct Leadership {
    conn: PoolConnection<Postgres>,
}

impl Leadership {
    /// Whether the session that holds the lock is still alive.
    pub async fn still_held(&mut self) -> bool {
        sqlx::query_scalar::<_, i32>("SELECT 1")
            .fetch_one(&mut *self.conn)
            .await
            .is_ok()
    }
}

/// Takes leadership if nobody holds it.
pub async fn try_lead(pool: &PgPool) -> Result<Option<Leadership>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LEADER_LOCK)
        .fetch_one(&mut *conn)
        .await?;
    if got {
        Ok(Some(Leadership { conn }))
    } else {
        Ok(None)
    }
}

/// Purges what has outlived its purpose: idempotency keys past 24 h and published outbox rows.
pub async fn purge(pool: &PgPool) -> Result<(u64, u64), sqlx::Error> {
    let keys =
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours'")
            .execute(pool)
            .await?
            .rows_affected();
    let outbox = sqlx::query("DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < now() - make_interval(hours => $1)")
        .bind(OUTBOX_RETENTION_HOURS)
        .execute(pool)
        .await?
        .rows_affected();
    Ok((keys, outbox))
}

/// One round of every job. Errors are logged, never fatal: the next round tries again.
pub async fn tick(pool: &PgPool, acquirer: &Arc<dyn Acquirer>, stuck_after: TimeDelta) {
    if let Err(e) = reconcile::run_once(pool, acquirer, stuck_after).await {
        tracing::error!(error = %e, "reconciliation failed");
    }
    match purge(pool).await {
        Ok((keys, outbox)) => {
            tracing::info!(idempotency_keys = keys, outbox_rows = outbox, "purged")
        }
        Err(e) => tracing::error!(error = %e, "purge failed"),
    }
    // Fresh planner statistics, for servers that run without autovacuum.
    if let Err(e) = sqlx::query("ANALYZE").execute(pool).await {
        tracing::warn!(error = %e, "analyze failed");
    }
}

/// The `scheduler` process, minus reading its configuration.
pub async fn run_scheduler(config: Config, shutdown: CancellationToken) -> Result<(), WorkerError> {
    let pool = paystream_shared::db::connect(config.database_url.expose(), 4).await?;
    let acquirer: Arc<dyn Acquirer> = Arc::new(
        HttpAcquirer::new(&config.acquirer_url, config.acquirer_timeout)
            .map_err(|e| WorkerError::Acquirer(e.to_string()))?,
    );
    let stuck_after =
        TimeDelta::from_std(config.reconcile_stuck_after).unwrap_or(TimeDelta::minutes(5));
    while !shutdown.is_cancelled() {
        let leadership = match try_lead(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach PostgreSQL to ask for leadership");
                None
            }
        };
        let Some(mut leadership) = leadership else {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(STANDBY_RETRY) => continue,
            }
        };
        tracing::info!("this scheduler leads");
        let mut every = tokio::time::interval(config.reconcile_interval);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = every.tick() => {
                    if !leadership.still_held().await {
                        tracing::warn!("lost the leadership session; standing by");
                        break;
                    }
                    tick(&pool, &acquirer, stuck_after).await;
                }
            }
        }
    }
    Ok(())
}
