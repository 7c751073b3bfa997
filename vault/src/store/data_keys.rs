//! `vault.data_keys`: every data key, wrapped by a KEK, and the re-wrap that rotation runs.

use sqlx::{PgConnection, PgExecutor, PgPool};

use crate::crypto::{DataKey, Keyring};
use crate::error::VaultError;

pub const RECORD: &str = "record";
pub const FINGERPRINT: &str = "fingerprint";

fn new_id() -> String {
    format!("dk_{}", uuid::Uuid::new_v4().simple())
}

/// Creates, wraps and stores a fresh data key for one record; returns its id and the key.
pub async fn create_record_key(
    conn: &mut PgConnection,
    keyring: &Keyring,
) -> Result<(String, DataKey), VaultError> {
    let id = new_id();
    let dek = DataKey::generate()?;
    let (kek_id, wrapped) = keyring.wrap(&id, RECORD, &dek)?;
    sqlx::query(
        "INSERT INTO vault.data_keys (id, purpose, kek_id, wrapped) VALUES ($1, $2, $3, $4)",
    )
    .bind(&id)
    .bind(RECORD)
    .bind(kek_id)
    .bind(wrapped)
    .execute(conn)
    .await?;
    Ok((id, dek))
}

/// The vault's fingerprint secret, created on the first start (two vaults starting at once
/// agree on one: the unique index lets only one insert win) and wrapped like any data key, so
/// a KEK rotation re-wraps it too.
pub async fn fingerprint_key(
    pool: &PgPool,
    keyring: &Keyring,
) -> Result<DataKey, crate::StartError> {
    let id = new_id();
    let candidate = DataKey::generate()?;
    let (kek_id, wrapped) = keyring.wrap(&id, FINGERPRINT, &candidate)?;
    sqlx::query(
        "INSERT INTO vault.data_keys (id, purpose, kek_id, wrapped) VALUES ($1, $2, $3, $4)
         ON CONFLICT (purpose) WHERE purpose = 'fingerprint' DO NOTHING",
    )
    .bind(&id)
    .bind(FINGERPRINT)
    .bind(kek_id)
    .bind(wrapped)
    .execute(pool)
    .await?;
    let (id, kek_id, wrapped): (String, String, Vec<u8>) = sqlx::query_as(
        "SELECT id, kek_id, wrapped FROM vault.data_keys WHERE purpose = 'fingerprint'",
    )
    .fetch_one(pool)
    .await?;
    Ok(keyring.unwrap(&id, FINGERPRINT, &kek_id, &wrapped)?)
}

/// Unwraps the data key `id` (of a record).
pub async fn open_record_key<'e>(
    db: impl PgExecutor<'e>,
    keyring: &Keyring,
    id: &str,
) -> Result<DataKey, VaultError> {
    let (kek_id, wrapped): (String, Vec<u8>) = sqlx::query_as(
        "SELECT kek_id, wrapped FROM vault.data_keys WHERE id = $1 AND purpose = 'record'",
    )
    .bind(id)
    .fetch_one(db)
    .await?;
    Ok(keyring.unwrap(id, RECORD, &kek_id, &wrapped)?)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RewrapReport {
    pub rewrapped: u64,
    /// Data keys still wrapped by another KEK than the current one.
    pub remaining: u64,
}

/// Re-wraps up to `limit` data keys that another KEK wrapped under the current one, in one
/// transaction; rows another rotation holds are skipped (`SKIP LOCKED`), so two runs share the
/// work. Only data keys are touched, never a record. Running it again after an interruption
/// continues where the committed batches ended.
pub async fn rewrap_batch(
    pool: &PgPool,
    keyring: &Keyring,
    limit: i64,
) -> Result<RewrapReport, VaultError> {
    let current = keyring.current_id().to_owned();
    let mut tx = pool.begin().await?;
    let rows: Vec<(String, String, String, Vec<u8>)> = sqlx::query_as(
        "SELECT id, purpose, kek_id, wrapped FROM vault.data_keys WHERE kek_id <> $1
         ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(&current)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let mut rewrapped = 0;
    for (id, purpose, kek_id, wrapped) in rows {
        let dek = keyring
            .unwrap(&id, &purpose, &kek_id, &wrapped)
            .map_err(|e| match e {
                crate::crypto::CryptoError::UnknownKek { .. } => {
                    VaultError::conflict("kek_unknown", e.to_string())
                }
                other => VaultError::from(other),
            })?;
        let (new_kek, new_wrapped) = keyring.wrap(&id, &purpose, &dek)?;
        sqlx::query(
            "UPDATE vault.data_keys SET kek_id = $2, wrapped = $3, rewrapped_at = now()
             WHERE id = $1 AND kek_id = $4",
        )
        .bind(&id)
        .bind(new_kek)
        .bind(new_wrapped)
        .bind(&kek_id)
        .execute(&mut *tx)
        .await?;
        rewrapped += 1;
    }
    tx.commit().await?;
    let remaining: i64 =
        sqlx::query_scalar("SELECT count(*) FROM vault.data_keys WHERE kek_id <> $1")
            .bind(&current)
            .fetch_one(pool)
            .await?;
    Ok(RewrapReport {
        rewrapped,
        remaining: u64::try_from(remaining).unwrap_or(0),
    })
}
