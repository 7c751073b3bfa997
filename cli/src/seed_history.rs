//! `paystream seed-history`: gives a merchant a long history of earlier payments, written
//! straight into the database by `store::history` one batch per transaction, so a benchmark
//! can run against a database the size of months of traffic.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use paystream_shared::config::Config;
pub use paystream_shared::store::history::BatchCounts;
use paystream_shared::store::history::{self, Batch};
use paystream_shared::store::merchants::{self, Role};
use paystream_shared::store::StoreError;

/// PostgreSQL's "out of shared memory" (its lock table is full).
const LOCK_TABLE_FULL: &str = "53200";

#[derive(Debug, clap::Args)]
pub struct SeedHistoryArgs {
    /// An admin or developer secret key of the merchant the history belongs to.
    #[arg(long, env = "PAYSTREAM_BOOTSTRAP_API_KEY", hide_env_values = true)]
    pub key: String,
    /// How many earlier payments to add.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub payments: u64,
    /// Payments per database transaction. The audit trigger locks each object it chains until
    /// commit, so one batch must fit PostgreSQL's lock table (max_locks_per_transaction times
    /// the connection slots: about 7,800 with the defaults, for the batch's intents and
    /// refunds).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub batch: u32,
    /// Spread the payments over this many days before now.
    #[arg(long, default_value_t = 28, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("no valid API key matches --key")]
    UnknownKey,
    #[error("key {key_id} has role {role}: a history of payments needs an admin or developer key")]
    KeyCannotPay { key_id: String, role: &'static str },
    #[error(
        "a batch of {batch} payments holds more locks than PostgreSQL's lock table has room \
         for (the audit chain locks each object until commit): use a smaller --batch, or raise \
         max_locks_per_transaction"
    )]
    BatchTooLarge { batch: u32 },
    #[error(transparent)]
    Store(#[from] paystream_shared::store::StoreError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What one seed is asked for.
#[derive(Debug, Clone)]
pub struct SeedOptions {
    pub payments: u64,
    pub batch: u32,
    pub days: u32,
}

/// One committed batch, as progress reports it.
#[derive(Debug, Clone)]
pub struct BatchDone {
    pub number: u64,
    pub of: u64,
    pub counts: BatchCounts,
    pub elapsed: Duration,
}

/// The whole seed.
#[derive(Debug, Clone, Default)]
pub struct SeedReport {
    pub merchant_id: String,
    pub totals: BatchCounts,
    pub batches: u64,
    pub elapsed: Duration,
    pub analyze: Duration,
}

fn lock_table_full(e: StoreError, batch: u32) -> SeedError {
    match &e {
        StoreError::Db(db)
            if db.as_database_error().and_then(|d| d.code()).as_deref()
                == Some(LOCK_TABLE_FULL) =>
        {
            SeedError::BatchTooLarge { batch }
        }
        _ => SeedError::Store(e),
    }
}

/// Rows per second, in whole rows (no floating point: counts and durations stay integers).
pub fn per_second(rows: i64, elapsed: Duration) -> u128 {
    let micros = elapsed.as_micros().max(1);
    u128::try_from(rows).unwrap_or(0) * 1_000_000 / micros
}

/// Adds `options.payments` earlier payments to the merchant of `key`, one transaction per
/// batch, calling `progress` after each commit; then analyzes the tables it wrote.
pub async fn seed(
    pool: &PgPool,
    key: &str,
    options: &SeedOptions,
    mut progress: impl FnMut(&BatchDone),
) -> Result<SeedReport, SeedError> {
    let owner = merchants::authenticate(pool, key)
        .await?
        .ok_or(SeedError::UnknownKey)?;
    if !matches!(owner.role, Role::Admin | Role::Developer) {
        return Err(SeedError::KeyCannotPay {
            key_id: owner.key_id,
            role: owner.role.as_str(),
        });
    }
    let fees = paystream_shared::ledger::fee_schedule();
    let batch = u64::from(options.batch);
    let of = options.payments.div_ceil(batch);
    let started = Instant::now();
    let mut report = SeedReport {
        merchant_id: owner.merchant_id.clone(),
        ..SeedReport::default()
    };
    let mut left = options.payments;
    while left > 0 {
        let n = left.min(batch);
        let batch_started = Instant::now();
        let mut tx = pool.begin().await?;
        let written = Batch {
            merchant_id: &owner.merchant_id,
            key_id: &owner.key_id,
            payments: u32::try_from(n).unwrap_or(u32::MAX),
            fees,
            days: options.days,
            done_before: options.payments - left,
        };
        let counts = history::write_batch(&mut tx, &written)
            .await
            .map_err(|e| lock_table_full(e, options.batch))?;
        tx.commit().await?;
        left -= n;
        report.batches += 1;
        report.totals.add(&counts);
        progress(&BatchDone {
            number: report.batches,
            of,
            counts,
            elapsed: batch_started.elapsed(),
        });
    }
    report.elapsed = started.elapsed();
    let analyze_started = Instant::now();
    history::analyze(pool).await?;
    report.analyze = analyze_started.elapsed();
    Ok(report)
}

pub async fn run(config: &Config, args: SeedHistoryArgs) -> anyhow::Result<ExitCode> {
    let url = config.database_url.expose();
    paystream_shared::db::ensure_database(url).await?;
    let pool = paystream_shared::db::connect(url, 2).await?;
    paystream_shared::db::migrate(&pool).await?;
    let fees = paystream_shared::ledger::fee_schedule();
    println!(
        "seeding {} earlier payments over the past {} days, {} per transaction (fees {} bps + {})",
        args.payments,
        args.days,
        args.batch,
        fees.percent_bps(),
        fees.fixed().minor_units()
    );
    let options = SeedOptions {
        payments: args.payments,
        batch: args.batch,
        days: args.days,
    };
    let report = seed(&pool, &args.key, &options, |b| {
        println!(
            "batch {}/{}: {} payments, {} rows in {} ms ({} rows/s, {} payments/s)",
            b.number,
            b.of,
            b.counts.intents,
            b.counts.rows(),
            b.elapsed.as_millis(),
            per_second(b.counts.rows(), b.elapsed),
            per_second(b.counts.intents, b.elapsed),
        );
    })
    .await?;
    let t = &report.totals;
    println!(
        "done: merchant {}: {} intents, {} events, {} audit entries, {} outbox rows, {} refunds, \
         {} webhook deliveries, {} ledger postings ({} entries)",
        report.merchant_id,
        t.intents,
        t.events,
        t.audit_entries,
        t.outbox,
        t.refunds,
        t.deliveries,
        t.postings,
        t.entries
    );
    println!(
        "{} rows in {} ms ({} rows/s), then ANALYZE in {} ms",
        t.rows(),
        report.elapsed.as_millis(),
        per_second(t.rows(), report.elapsed),
        report.analyze.as_millis()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_lock_table_is_told_as_a_batch_too_large() {
        let db = paystream_tests::TestDb::new().await;
        // The error PostgreSQL answers when its lock table is full, raised on purpose: filling
        // the shared server's real lock table would fail other sessions too.
        let full = sqlx::raw_sql(
            "DO $$ BEGIN RAISE EXCEPTION 'out of shared memory' USING ERRCODE = '53200'; END $$",
        )
        .execute(&db.pool)
        .await
        .unwrap_err();
        let told = lock_table_full(StoreError::Db(full), 9000);
        assert!(
            matches!(told, SeedError::BatchTooLarge { batch: 9000 }),
            "{told}"
        );
        assert!(told.to_string().contains("--batch"), "{told}");
        let other = lock_table_full(StoreError::NotFound("pi_x".into()), 9000);
        assert!(matches!(other, SeedError::Store(_)), "{other}");
    }

    #[test]
    fn rates_are_whole_rows_per_second() {
        assert_eq!(per_second(5000, Duration::from_millis(2500)), 2000);
        assert_eq!(per_second(0, Duration::ZERO), 0);
        assert_eq!(per_second(3, Duration::ZERO), 3_000_000);
    }
}
