//! Earlier payments written in bulk (`paystream seed-history`): a merchant's past, in
//! set-based statements (`history.sql`), so a benchmark can run against a database the size
//! of months of traffic. Through the API a million payments take hours; this takes minutes.
//!
//! It is the one writer of the payment tables that does not go through their store functions
//! one object at a time: it writes, for a whole batch at once, exactly the rows those
//! functions write for the same lives (`payment_intents::insert` and `transition`, `refunds`
//! create and settle, `ledger::post`, the relay's marks, the webhook fan-out and delivery),
//! audit entries through the same `audit_chain` trigger. So `audit verify` and `ledger
//! verify` pass over it, and nothing in it is left for a relay or a worker to do.

use sqlx::{PgConnection, PgPool};

use super::StoreError;
use crate::domain::fees::FeeSchedule;

/// The whole batch script; split into its parts at the `-- seed:` markers.
const SCRIPT: &str = include_str!("history.sql");

/// The tables a seed writes, analyzed afterwards so the planner knows their new size before
/// the first query that follows.
pub const TOUCHED: &[&str] = &[
    "payment_intents",
    "events",
    "audit_log",
    "outbox",
    "refunds",
    "webhook_deliveries",
    "webhook_delivery_attempts",
    "ledger_transactions",
    "ledger_entries",
    "ledger_accounts",
    "balance_transactions",
];

/// One batch to write.
#[derive(Debug, Clone)]
pub struct Batch<'a> {
    pub merchant_id: &'a str,
    /// The API key the history's API calls are audited as.
    pub key_id: &'a str,
    pub payments: u32,
    /// The schedule the captures are charged by (the process's, `ledger::fee_schedule`).
    pub fees: FeeSchedule,
    /// Payments are spread over this many days before now.
    pub days: u32,
    /// How many payments the same seed wrote in earlier batches: the mix of outcomes counts
    /// from the seed's first payment, so it does not depend on the batch size.
    pub done_before: u64,
}

/// What one batch wrote, row counts per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct BatchCounts {
    pub intents: i64,
    pub events: i64,
    pub audit_entries: i64,
    pub outbox: i64,
    pub refunds: i64,
    /// Webhook deliveries; each has one attempt row as well.
    pub deliveries: i64,
    /// Ledger transactions; each has one balance transaction as well.
    pub postings: i64,
    pub entries: i64,
}

impl BatchCounts {
    /// Every row written, across all tables.
    pub fn rows(&self) -> i64 {
        self.intents
            + self.events
            + self.audit_entries
            + self.outbox
            + self.refunds
            + 2 * self.deliveries
            + 2 * self.postings
            + self.entries
    }

    pub fn add(&mut self, other: &BatchCounts) {
        self.intents += other.intents;
        self.events += other.events;
        self.audit_entries += other.audit_entries;
        self.outbox += other.outbox;
        self.refunds += other.refunds;
        self.deliveries += other.deliveries;
        self.postings += other.postings;
        self.entries += other.entries;
    }
}

fn part(marker: &str) -> &'static str {
    let start = SCRIPT
        .find(marker)
        .unwrap_or_else(|| panic!("history.sql has no {marker} marker"));
    let rest = &SCRIPT[start + marker.len()..];
    let end = rest.find("-- seed:").unwrap_or(rest.len());
    &rest[..end]
}

/// Writes one batch in the caller's transaction (its temporary tables are dropped at commit,
/// so it must be one). The audit trigger locks every object it chains until commit, so a
/// batch's intents and refunds must fit PostgreSQL's lock table; a batch that does not fails
/// with SQLSTATE 53200 and writes nothing.
pub async fn write_batch(
    conn: &mut PgConnection,
    batch: &Batch<'_>,
) -> Result<BatchCounts, StoreError> {
    sqlx::query(part("-- seed:params"))
        .bind(batch.merchant_id)
        .bind(batch.key_id)
        .bind(i32::try_from(batch.payments).unwrap_or(i32::MAX))
        .bind(i64::from(batch.fees.percent_bps()))
        .bind(batch.fees.fixed().minor_units())
        .bind(i32::try_from(batch.days).unwrap_or(i32::MAX))
        .bind(i64::try_from(batch.done_before).unwrap_or(i64::MAX))
        .execute(&mut *conn)
        .await?;
    sqlx::raw_sql(part("-- seed:body"))
        .execute(&mut *conn)
        .await?;
    Ok(sqlx::query_as(part("-- seed:summary"))
        .fetch_one(&mut *conn)
        .await?)
}

/// `ANALYZE` of every table a seed writes.
pub async fn analyze(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::raw_sql(&format!("ANALYZE {}", TOUCHED.join(", ")))
        .execute(pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_has_its_three_parts_in_order() {
        let params = part("-- seed:params");
        let body = part("-- seed:body");
        let summary = part("-- seed:summary");
        assert!(
            params.contains("$7"),
            "the parameters are bound in the first part"
        );
        assert!(!body.contains("$1"), "the body runs as plain statements");
        assert!(body.contains("INSERT INTO audit_log"));
        assert!(summary.trim_start().starts_with("SELECT"));
    }

    #[test]
    fn every_row_counts_once() {
        let c = BatchCounts {
            intents: 1,
            events: 2,
            audit_entries: 3,
            outbox: 4,
            refunds: 5,
            deliveries: 6,
            postings: 7,
            entries: 8,
        };
        assert_eq!(c.rows(), 1 + 2 + 3 + 4 + 5 + 12 + 14 + 8);
        let mut sum = c;
        sum.add(&c);
        assert_eq!(sum.rows(), 2 * c.rows());
    }

    #[test]
    fn every_table_the_script_writes_is_analyzed() {
        for line in SCRIPT.lines() {
            if let Some(rest) = line.trim_start().strip_prefix("INSERT INTO ") {
                let table = rest.split_whitespace().next().unwrap_or_default();
                assert!(TOUCHED.contains(&table), "{table} is not analyzed");
            }
        }
    }
}
