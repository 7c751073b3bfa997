//! `vault.records`: the sealed cards and bank accounts.

use sqlx::{PgConnection, PgExecutor};

use crate::instrument::Kind;

/// The associated data of a record's ciphertext: it opens only as the record it was sealed as.
pub fn record_aad(record_id: &str, merchant_id: &str, kind: Kind) -> Vec<u8> {
    format!(
        "paystream-vault/record/v1|{record_id}|{merchant_id}|{}",
        kind.as_str()
    )
    .into_bytes()
}

pub struct NewRecord<'a> {
    pub id: &'a str,
    pub merchant_id: &'a str,
    pub kind: Kind,
    pub data_key_id: &'a str,
    pub sealed: &'a [u8],
    pub display: &'a serde_json::Value,
    pub fingerprint: &'a str,
}

pub async fn insert(conn: &mut PgConnection, r: NewRecord<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO vault.records (id, merchant_id, kind, data_key_id, sealed, display, fingerprint)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(r.id)
    .bind(r.merchant_id)
    .bind(r.kind.as_str())
    .bind(r.data_key_id)
    .bind(r.sealed)
    .bind(r.display)
    .bind(r.fingerprint)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks a record stored (its token was consumed); returns its kind and display fields.
pub async fn mark_stored(
    conn: &mut PgConnection,
    id: &str,
) -> Result<(String, serde_json::Value), sqlx::Error> {
    sqlx::query_as(
        "UPDATE vault.records SET stored_at = now() WHERE id = $1 RETURNING kind, display",
    )
    .bind(id)
    .fetch_one(conn)
    .await
}

#[derive(sqlx::FromRow)]
pub struct Sealed {
    pub kind: String,
    pub data_key_id: String,
    pub sealed: Vec<u8>,
}

/// A stored record of `merchant_id`; `None` for an unknown id, another merchant's record, or
/// one whose token was never consumed.
pub async fn stored<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
    id: &str,
) -> Result<Option<Sealed>, sqlx::Error> {
    sqlx::query_as(
        "SELECT kind, data_key_id, sealed FROM vault.records
         WHERE id = $1 AND merchant_id = $2 AND stored_at IS NOT NULL",
    )
    .bind(id)
    .bind(merchant_id)
    .fetch_optional(db)
    .await
}
