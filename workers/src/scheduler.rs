//! The scheduler: periodic jobs that must run once, not once per replica. Leadership is a
//! PostgreSQL session advisory lock held on a dedicated connection: the leader runs the jobs;
//! standbys retry the lock every few seconds and take over within that time if the leader's
//! connection (or process) dies, because PostgreSQL releases the lock with the session.
//!
//! Each round reconciles with the acquirer, keeps the payment intents' deadlines (expired
//! authorizations, the notice before they expire, abandoned intents: see [`deadlines`]), the
//! disputes' deadlines (`dispute_deadlines`),
//! purges what has outlived its purpose, vacuums the tables every payment churns when the
//! server runs without autovacuum, and refreshes planner statistics.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use tokio_util::sync::CancellationToken;

use paystream_shared::config::Config;

use crate::acquirer::Acquirer;
use crate::deadlines::{self, DeadlineError};
use crate::reconcile;
use crate::runtime::{WorkerError, WorkerProcess};
use crate::settlement::{self, SettlementClient};

/// The advisory lock key that names the scheduler's leadership ("paystrm" in ASCII).
pub const LEADER_LOCK: i64 = 0x0070_6179_7374_726d;
/// How often a standby asks for leadership.
pub const STANDBY_RETRY: Duration = Duration::from_secs(5);
/// Sent outbox rows are kept this long for inspection, then purged.
pub const OUTBOX_RETENTION_HOURS: i32 = 24;
/// How many batches of one deadline job a round may run: a backlog (after an outage, say)
/// drains over a few rounds instead of holding one round, and reconciliation after it, for
/// as long as it takes.
pub const MAX_BATCHES_PER_ROUND: usize = 20;

/// How long things may wait before the scheduler acts on them, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Reconciliation asks the acquirer about intents `processing` (refunds `pending`) this long.
    pub stuck_after: TimeDelta,
    /// Unpaid intents idle this long are canceled as abandoned.
    pub abandon_after: TimeDelta,
    /// A capture no report has settled this long after it is `missing_in_report`.
    pub settlement_window: TimeDelta,
}

impl Thresholds {
    pub fn from_config(config: &Config) -> Self {
        // The configuration bounds both, so the fallbacks (the defaults) are never used.
        Self {
            stuck_after: TimeDelta::from_std(config.reconcile_stuck_after)
                .unwrap_or(TimeDelta::minutes(5)),
            abandon_after: TimeDelta::from_std(config.abandon_after)
                .unwrap_or(TimeDelta::hours(24)),
            settlement_window: TimeDelta::from_std(config.settlement_window)
                .unwrap_or(TimeDelta::days(2)),
        }
    }
}

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

/// How many rows one purge statement deletes: a short transaction each.
pub const PURGE_BATCH: i64 = 10_000;

/// Purges what has outlived its purpose: idempotency keys past 24 h and published outbox rows,
/// [`PURGE_BATCH`] rows a statement.
pub async fn purge(pool: &PgPool) -> Result<(u64, u64), sqlx::Error> {
    purge_in_batches(pool, PURGE_BATCH).await
}

/// [`purge`] with `batch` rows a statement, batch after batch until one comes back short.
pub async fn purge_in_batches(pool: &PgPool, batch: i64) -> Result<(u64, u64), sqlx::Error> {
    let full = u64::try_from(batch).unwrap_or(u64::MAX);
    let mut keys = 0;
    loop {
        let done = paystream_shared::store::idempotency_keys::purge_expired(pool, batch).await?;
        keys += done;
        if done < full {
            break;
        }
    }
    let mut outbox = 0;
    loop {
        let done =
            paystream_shared::store::outbox::purge_published(pool, OUTBOX_RETENTION_HOURS, batch)
                .await?;
        outbox += done;
        if done < full {
            break;
        }
    }
    Ok((keys, outbox))
}

/// The tables every payment updates or the purge deletes from: each payment leaves dead row
/// versions in them (an outbox row marked published, an intent moved twice, an
/// Idempotency-Key completed, a delivery recorded, a running balance added to).
pub const CHURNED_TABLES: [&str; 6] = [
    "outbox",
    "payment_intents",
    "idempotency_keys",
    "webhook_deliveries",
    "webhook_delivery_attempts",
    "ledger_accounts",
];

/// How often the leader vacuums [`CHURNED_TABLES`] (where autovacuum does not): on its own
/// clock, not the reconciliation round's (15 minutes by default), in which a busy system
/// leaves hundreds of thousands of dead versions.
pub const VACUUM_INTERVAL: Duration = Duration::from_secs(60);

/// Vacuums [`CHURNED_TABLES`] when the server runs without autovacuum, and says whether it
/// did. Without it their dead versions pile up without end: the relay's claim and the
/// intents' lookups walk past them, and the same benchmark on a database with 20,000 earlier
/// payments ran at 138-160 payments/s against 183/s right after a `VACUUM`. Where autovacuum
/// runs, it is left to it (migration 0029 tunes it for these tables). Plain `VACUUM` takes no
/// lock that blocks reads or writes; the visibility map lets it skip the pages of old rows.
pub async fn vacuum_churned(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let autovacuum: String = sqlx::query_scalar("SELECT current_setting('autovacuum')")
        .fetch_one(pool)
        .await?;
    if autovacuum == "on" {
        return Ok(false);
    }
    sqlx::query(&format!("VACUUM {}", CHURNED_TABLES.join(", ")))
        .execute(pool)
        .await?;
    Ok(true)
}

/// Runs one deadline job batch after batch while batches come back full, at most
/// [`MAX_BATCHES_PER_ROUND`] times; each batch decides against the clock as it is then.
async fn drain<F, Fut>(job: &'static str, mut step: F)
where
    F: FnMut(chrono::DateTime<chrono::Utc>) -> Fut,
    Fut: Future<Output = Result<usize, DeadlineError>>,
{
    let full = usize::try_from(deadlines::BATCH).unwrap_or(usize::MAX);
    let mut total = 0;
    for _ in 0..MAX_BATCHES_PER_ROUND {
        match step(paystream_shared::domain::now()).await {
            Ok(done) => {
                total += done;
                if done < full {
                    break;
                }
            }
            Err(e) => {
                tracing::error!(job, error = %e, "deadline job failed");
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(job, intents = total, "deadline job done");
    }
}

/// One round of the payment intents' deadline jobs.
pub async fn keep_deadlines(pool: &PgPool, acquirer: &Arc<dyn Acquirer>, thresholds: &Thresholds) {
    drain("expire_authorizations", |now| {
        deadlines::expire_authorizations(pool, now, deadlines::BATCH)
    })
    .await;
    drain("announce_expiring_authorizations", |now| {
        deadlines::announce_expiring_authorizations(
            pool,
            now,
            deadlines::EXPIRING_NOTICE,
            deadlines::BATCH,
        )
    })
    .await;
    drain("cancel_abandoned", |now| {
        deadlines::cancel_abandoned(
            pool,
            acquirer,
            now,
            thresholds.abandon_after,
            deadlines::BATCH,
        )
    })
    .await;
}

/// One round of every job. Errors are logged, never fatal: the next round tries again.
pub async fn tick(
    pool: &PgPool,
    acquirer: &Arc<dyn Acquirer>,
    settlement: &SettlementClient,
    thresholds: &Thresholds,
) {
    if let Err(e) = reconcile::run_once(pool, acquirer, thresholds.stuck_after).await {
        tracing::error!(error = %e, "reconciliation failed");
    }
    if let Err(e) = settlement::run_once(pool, settlement, thresholds.settlement_window).await {
        tracing::error!(error = %e, "settlement reconciliation failed");
    }
    keep_deadlines(pool, acquirer, thresholds).await;
    crate::dispute_deadlines::run_once(pool).await;
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

/// The `scheduler` process: no consumer, one task that leads or stands by. Healthy means
/// PostgreSQL answers: the scheduler works through the database (its commands go out through
/// the outbox), leader or standby alike.
pub async fn run_scheduler(config: Config, shutdown: CancellationToken) -> Result<(), WorkerError> {
    let acquirer: Arc<dyn Acquirer> = Arc::new(crate::runtime::acquirer(&config)?);
    let settlement = SettlementClient::new(&config.acquirer_url, config.acquirer_timeout)
        .map_err(|e| WorkerError::Acquirer(e.to_string()))?;
    let process = WorkerProcess::connect(&config, 4).await?;
    let pool = process.pool();
    process
        .task(move |stop| lead_or_stand_by(config, pool, acquirer, settlement, stop))
        .run(shutdown)
        .await
}

/// Takes leadership when it is free and runs a round every interval while it holds it.
async fn lead_or_stand_by(
    config: Config,
    pool: PgPool,
    acquirer: Arc<dyn Acquirer>,
    settlement: SettlementClient,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let thresholds = Thresholds::from_config(&config);
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
        let mut vacuum = tokio::time::interval(VACUUM_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = vacuum.tick() => {
                    if let Err(e) = vacuum_churned(&pool).await {
                        tracing::warn!(error = %e, "vacuum failed");
                    }
                }
                _ = every.tick() => {
                    if !leadership.still_held().await {
                        tracing::warn!("lost the leadership session; standing by");
                        break;
                    }
                    tick(&pool, &acquirer, &settlement, &thresholds).await;
                }
            }
        }
    }
    Ok(())
}
