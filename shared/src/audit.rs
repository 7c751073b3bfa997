//! The audit log: append-only (the database refuses UPDATE, DELETE and TRUNCATE) and
//! hash-chained per object (a trigger takes the object's lock, then computes the entry's place
//! `object_seq`, `prev_hash` and `hash` on insert, see migrations 0001 and 0011).
//! This module appends entries, lists them, and verifies the chain.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

/// Who did something: an API key, a worker, the reconciliation job, or an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    ApiKey(String),
    Worker(&'static str),
    Operator(String),
    System(&'static str),
}

impl Actor {
    pub fn render(&self) -> String {
        match self {
            Actor::ApiKey(id) => format!("api_key:{id}"),
            Actor::Worker(name) => format!("worker:{name}"),
            Actor::Operator(name) => format!("operator:{name}"),
            Actor::System(name) => (*name).to_owned(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewEntry<'a> {
    pub merchant_id: Option<&'a str>,
    pub object_type: &'a str,
    pub object_id: &'a str,
    pub action: &'a str,
    pub actor: &'a Actor,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// Appending lives with the other table writes in the store; re-exported so callers name it
/// beside the rest of the audit log.
pub use crate::store::audit_log::append;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    #[serde(skip)]
    pub seq: i64,
    pub id: String,
    pub object_type: String,
    pub object_id: String,
    pub action: String,
    pub actor: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "hex_bytes")]
    pub hash: Vec<u8>,
}

fn hex_bytes<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(bytes))
}

/// The action of an access entry: a read of payment data (a payment method, the balance, its
/// transactions; dispute evidence files when they land). Access entries live in this same log,
/// so they are append-only, hash-chained and covered by [`verify`] exactly as state changes
/// are; `GET /api/audit-log?actor=` and `paystream audit access` list them.
pub const ACCESS_READ: &str = "access.read";
/// The action of a call the key's role does not allow (see [`crate::roles`]).
pub const ACCESS_REFUSED: &str = "access.refused";

/// Records that `actor` read `object_type`/`object_id` of this merchant; `seen` names what the
/// answer held (the ids of a page). Written before the answer goes out: a read that cannot be
/// recorded is not served.
pub async fn record_read(
    pool: &PgPool,
    merchant_id: &str,
    actor: &Actor,
    object_type: &str,
    object_id: &str,
    seen: serde_json::Value,
) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    append(
        &mut conn,
        NewEntry {
            merchant_id: Some(merchant_id),
            object_type,
            object_id,
            action: ACCESS_READ,
            actor,
            before: None,
            after: Some(serde_json::json!({ "seen": seen })),
        },
    )
    .await?;
    Ok(())
}

/// One access entry, for the operator's `paystream audit access`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct AccessEntry {
    pub id: String,
    pub merchant_id: Option<String>,
    pub action: String,
    pub object_type: String,
    pub object_id: String,
    pub actor: String,
    pub after: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
}

/// Every access entry (reads and refusals) of every merchant since `since`, oldest first.
pub async fn list_access(
    pool: &PgPool,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<AccessEntry>, sqlx::Error> {
    sqlx::query_as::<_, AccessEntry>(
        "SELECT id, merchant_id, action, object_type, object_id, actor, after, created_at
         FROM audit_log
         WHERE action IN ($1, $2) AND ($3::timestamptz IS NULL OR created_at >= $3)
         ORDER BY seq",
    )
    .bind(ACCESS_READ)
    .bind(ACCESS_REFUSED)
    .bind(since)
    .fetch_all(pool)
    .await
}

/// Whether `id` is an audit entry of this merchant: a list cursor must name one.
pub async fn exists(pool: &PgPool, merchant_id: &str, id: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM audit_log WHERE id = $1 AND merchant_id = $2)")
        .bind(id)
        .bind(merchant_id)
        .fetch_one(pool)
        .await
}

/// Newest first, scoped to one merchant, optionally to one object and to one actor (as
/// rendered: `api_key:key_...`); `starting_after` is an entry id of that merchant (the caller
/// checks it with [`exists`]).
pub async fn list(
    pool: &PgPool,
    merchant_id: &str,
    object_id: Option<&str>,
    actor: Option<&str>,
    limit: i64,
    starting_after: Option<&str>,
) -> Result<Vec<Entry>, sqlx::Error> {
    sqlx::query_as::<_, Entry>(
        "SELECT seq, id, object_type, object_id, action, actor, before, after, created_at, hash
         FROM audit_log
         WHERE merchant_id = $1
           AND ($2::text IS NULL OR object_id = $2)
           AND ($3::text IS NULL OR seq < (SELECT seq FROM audit_log WHERE id = $3 AND merchant_id = $1))
           AND ($5::text IS NULL OR actor = $5)
         ORDER BY seq DESC
         LIMIT $4",
    )
    .bind(merchant_id)
    .bind(object_id)
    .bind(starting_after)
    .bind(limit)
    .bind(actor)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadEntry {
    pub seq: i64,
    pub id: String,
    pub object_id: String,
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub entries: u64,
    /// The earliest entry whose hash or link does not hold, if any.
    pub first_bad: Option<BadEntry>,
}

#[derive(sqlx::FromRow)]
struct ChainRow {
    seq: i64,
    id: String,
    object_id: String,
    object_seq: i64,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
    payload: String,
}

/// Why an entry does not hold.
pub const EDITED: &str = "content does not match its hash";
pub const BAD_LINK: &str = "prev_hash does not match the entry before it";
pub const FORKED: &str =
    "forks the chain: links to an earlier entry than the one before it (appends that raced before migration 0011)";
pub const MISSING: &str = "an entry is missing before it";

/// Walks every object's chain in chain order (`object_seq`, which the trigger assigns under
/// the object's lock) and recomputes every hash. An entry edited behind the trigger's back
/// (its content no longer matches its hash), a link that does not match the entry before it,
/// or a gap in the positions is reported; so is a fork left by concurrent appends before the
/// chain recorded its positions, under its own reason, since nobody edited anything there.
pub async fn verify(pool: &PgPool) -> Result<VerifyReport, sqlx::Error> {
    let mut rows = sqlx::query_as::<_, ChainRow>(
        "SELECT a.seq, a.id, a.object_id, a.object_seq, a.prev_hash, a.hash, audit_payload(a) AS payload
         FROM audit_log a ORDER BY a.object_id, a.object_seq",
    )
    .fetch(pool);
    let zero = vec![0u8; 32];
    let mut current_object: Option<String> = None;
    let mut expected_prev = zero.clone();
    let mut expected_place = 1i64;
    // Hashes of this chain's earlier entries, to tell a fork from a broken link.
    let mut earlier: HashSet<Vec<u8>> = HashSet::new();
    let mut entries = 0u64;
    let mut first_bad: Option<BadEntry> = None;
    while let Some(row) = rows.try_next().await? {
        entries += 1;
        if current_object.as_deref() != Some(row.object_id.as_str()) {
            current_object = Some(row.object_id.clone());
            expected_prev = zero.clone();
            expected_place = 1;
            earlier.clear();
        }
        let mut hasher = Sha256::new();
        hasher.update(&row.prev_hash);
        hasher.update(row.payload.as_bytes());
        let computed = hasher.finalize().to_vec();
        let reason = if row.prev_hash != expected_prev {
            if earlier.contains(&row.prev_hash) && computed == row.hash {
                Some(FORKED)
            } else {
                Some(BAD_LINK)
            }
        } else if computed != row.hash {
            Some(EDITED)
        } else if row.object_seq != expected_place {
            Some(MISSING)
        } else {
            None
        };
        if let Some(reason) = reason {
            if first_bad.as_ref().is_none_or(|b| row.seq < b.seq) {
                first_bad = Some(BadEntry {
                    seq: row.seq,
                    id: row.id.clone(),
                    object_id: row.object_id.clone(),
                    reason,
                });
            }
        }
        expected_place = row.object_seq + 1;
        earlier.insert(expected_prev);
        expected_prev = row.hash;
    }
    Ok(VerifyReport { entries, first_bad })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actors_render_distinctly() {
        assert_eq!(Actor::ApiKey("key_1".into()).render(), "api_key:key_1");
        assert_eq!(
            Actor::Worker("confirm-worker").render(),
            "worker:confirm-worker"
        );
        assert_eq!(Actor::Operator("cli".into()).render(), "operator:cli");
        assert_eq!(Actor::System("reconciliation").render(), "reconciliation");
    }
}
