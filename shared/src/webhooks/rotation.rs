//! Sealing-key rotation (`paystream keys rotate-sealing`): every value sealed outside the vault
//! (webhook signing secrets, current and previous; the replay copies of answers that carry
//! one; dispute evidence files) is opened under whichever configured key sealed it and sealed
//! again under the current one, online, in committed batches.
//!
//! The shape is the vault's KEK rotation (`paystream vault rotate-kek`): the processes hold
//! the current key and the previous one (`PAYSTREAM_WEBHOOK_SECRET_KEY[_PREVIOUS]`), so values
//! under either open while this runs and after; each batch locks its rows (`FOR UPDATE`), so
//! a concurrent write to one of them (a secret rotation, an idempotent answer being stored)
//! waits for the batch and then writes over the re-sealed value, never under it; and the
//! update is a compare-and-set on the ciphertext read, as a second guard. Which rows still
//! need work is found in SQL from each value's header (format byte and key id), so a second
//! run finds nothing and changes nothing.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::audit::{self, Actor, NewEntry};
use crate::store::webhooks as subscriptions;
use crate::store::{disputes, idempotency_keys};
use crate::webhooks::secret_box::{SecretBox, SecretBoxError};

/// One row's sealed values as a rotation reads them: `values[i]` opens with `aad[i]`.
#[derive(Debug, Clone)]
pub struct SealedRow {
    pub table: &'static str,
    /// How a person names the row (its primary key).
    pub id: String,
    /// The primary key's parts, for keyset paging and the update.
    pub pk: Vec<String>,
    pub aad: Vec<Vec<u8>>,
    pub values: Vec<Option<Vec<u8>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// A value the configured keys cannot open: left as it is, and reported.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Unreadable {
    pub table: &'static str,
    pub id: String,
    pub error: String,
}

#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RotationReport {
    /// The id of the key everything is now sealed under.
    pub key_id: String,
    /// Rows re-sealed, per table.
    pub resealed: BTreeMap<&'static str, u64>,
    /// Rows whose value changed between the read and the write (compare-and-set missed);
    /// they keep what the concurrent write put there.
    pub changed: u64,
    pub unreadable: Vec<Unreadable>,
    /// Values still not under the current key once the run ended: the unreadable ones, and any
    /// a process that still seals with the old key wrote meanwhile.
    pub remaining: u64,
}

impl RotationReport {
    pub fn total_resealed(&self) -> u64 {
        self.resealed.values().sum()
    }
}

#[derive(Debug, Clone, Copy)]
enum Table {
    Subscriptions,
    Idempotency,
    DisputeFiles,
}

const TABLES: [Table; 3] = [
    Table::Subscriptions,
    Table::Idempotency,
    Table::DisputeFiles,
];

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Subscriptions => "webhook_subscriptions",
            Table::Idempotency => "idempotency_keys",
            Table::DisputeFiles => "dispute_files",
        }
    }

    async fn lock(
        self,
        conn: &mut PgConnection,
        header: &[u8],
        after: &[String],
        limit: i64,
    ) -> Result<Vec<SealedRow>, sqlx::Error> {
        match self {
            Table::Subscriptions => {
                subscriptions::lock_secrets_sealed_not_under(conn, header, after, limit).await
            }
            Table::Idempotency => {
                idempotency_keys::lock_sealed_not_under(conn, header, after, limit).await
            }
            Table::DisputeFiles => {
                disputes::lock_files_sealed_not_under(conn, header, after, limit).await
            }
        }
    }

    async fn replace(
        self,
        conn: &mut PgConnection,
        row: &SealedRow,
        resealed: &[Option<Vec<u8>>],
    ) -> Result<bool, sqlx::Error> {
        match self {
            Table::Subscriptions => {
                subscriptions::replace_sealed_secrets(conn, row, resealed).await
            }
            Table::Idempotency => idempotency_keys::replace_sealed(conn, row, resealed).await,
            Table::DisputeFiles => disputes::replace_file_sealed(conn, row, resealed).await,
        }
    }
}

/// Values (per table) not sealed under `sealer`'s current key: what `paystream doctor`
/// reports and a rotation still has to do.
pub async fn not_under_current(
    pool: &PgPool,
    sealer: &SecretBox,
) -> Result<BTreeMap<&'static str, u64>, sqlx::Error> {
    let header = sealer.current_header();
    let mut out = BTreeMap::new();
    let counts = [
        subscriptions::count_secrets_sealed_not_under(pool, &header).await?,
        idempotency_keys::count_sealed_not_under(pool, &header).await?,
        disputes::count_files_sealed_not_under(pool, &header).await?,
    ];
    for (table, n) in TABLES.iter().zip(counts) {
        out.insert(table.name(), u64::try_from(n).unwrap_or(0));
    }
    Ok(out)
}

/// Every value of `row` under the current key: the ones already there as they are.
fn reseal_row(sealer: &SecretBox, row: &SealedRow) -> Result<Vec<Option<Vec<u8>>>, SecretBoxError> {
    row.values
        .iter()
        .zip(&row.aad)
        .map(|(value, aad)| match value {
            Some(v) if !sealer.is_current(v) => sealer.reseal(v, aad).map(Some),
            other => Ok(other.clone()),
        })
        .collect()
}

/// Re-seals every value not under `sealer`'s current key, `batch_size` rows per committed
/// transaction; `progress` hears (table, rows re-sealed) after each batch. Values no
/// configured key opens are left untouched and listed in the report. Audited once, when it
/// changed anything.
pub async fn rotate(
    pool: &PgPool,
    sealer: &SecretBox,
    batch_size: u32,
    actor: &Actor,
    mut progress: impl FnMut(&'static str, u64),
) -> Result<RotationReport, RotationError> {
    let header = sealer.current_header();
    let limit = i64::from(batch_size.max(1));
    let mut report = RotationReport {
        key_id: sealer.current_id(),
        ..RotationReport::default()
    };
    for table in TABLES {
        let mut after: Vec<String> = Vec::new();
        let mut done = 0u64;
        loop {
            let mut tx = pool.begin().await?;
            let rows = table.lock(&mut tx, &header, &after, limit).await?;
            let Some(last) = rows.last() else {
                break;
            };
            after = last.pk.clone();
            let mut batch = 0u64;
            for row in &rows {
                match reseal_row(sealer, row) {
                    Ok(resealed) => {
                        if table.replace(&mut tx, row, &resealed).await? {
                            batch += 1;
                        } else {
                            report.changed += 1;
                        }
                    }
                    Err(e) => {
                        // Which row and which key, never the value.
                        tracing::error!(table = row.table, id = %row.id, error = %e, "cannot re-seal a value");
                        report.unreadable.push(Unreadable {
                            table: row.table,
                            id: row.id.clone(),
                            error: e.to_string(),
                        });
                    }
                }
            }
            tx.commit().await?;
            done += batch;
            progress(table.name(), batch);
        }
        report.resealed.insert(table.name(), done);
    }
    report.remaining = not_under_current(pool, sealer).await?.values().sum();
    if report.total_resealed() > 0 {
        let mut conn = pool.acquire().await?;
        audit::append(
            &mut conn,
            NewEntry {
                merchant_id: None,
                object_type: "sealing_key",
                object_id: &report.key_id,
                action: "sealing_key.rotated",
                actor,
                before: Some(serde_json::json!({ "previousKeyId": sealer.previous_id() })),
                // Key ids and counts only: neither key nor any value reaches the log.
                after: Some(serde_json::json!({
                    "keyId": report.key_id,
                    "resealed": report.resealed,
                    "unreadable": report.unreadable.len(),
                    "remaining": report.remaining,
                })),
            },
        )
        .await?;
    }
    Ok(report)
}
