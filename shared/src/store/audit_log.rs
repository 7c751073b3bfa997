//! The one write to `audit_log`: an append. The trigger of migration 0011 places the entry in
//! its object's chain and computes its hashes; UPDATE, DELETE and TRUNCATE are refused.

use sqlx::PgConnection;

use crate::audit::NewEntry;
use crate::domain::ids::IdKind;

/// Appends one entry inside the caller's transaction, so the entry commits or rolls back with
/// the change it describes.
pub async fn append(conn: &mut PgConnection, entry: NewEntry<'_>) -> Result<String, sqlx::Error> {
    let id = IdKind::Audit.generate();
    sqlx::query(
        "INSERT INTO audit_log (id, merchant_id, object_type, object_id, action, actor, before, after, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, '', '')",
    )
    .bind(&id)
    .bind(entry.merchant_id)
    .bind(entry.object_type)
    .bind(entry.object_id)
    .bind(entry.action)
    .bind(entry.actor.render())
    .bind(entry.before)
    .bind(entry.after)
    .execute(conn)
    .await?;
    Ok(id)
}
