//! `vault.audit_log`: append-only (triggers refuse UPDATE, DELETE and TRUNCATE).

use sqlx::PgExecutor;

/// Who acted: a merchant's API key, or a paystream service holding the service credential.
#[derive(Debug, Clone)]
pub enum Actor {
    ApiKey(String),
    Service,
}

impl Actor {
    pub fn as_string(&self) -> String {
        match self {
            Actor::ApiKey(id) => format!("api_key:{id}"),
            Actor::Service => "service".to_owned(),
        }
    }
}

/// Appends one entry. `detail` must never hold a number: callers pass ids, paths and statuses.
pub async fn append<'e>(
    db: impl PgExecutor<'e>,
    actor: &Actor,
    action: &str,
    object_id: &str,
    merchant_id: Option<&str>,
    detail: serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO vault.audit_log (actor, action, object_id, merchant_id, detail)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(actor.as_string())
    .bind(action)
    .bind(object_id)
    .bind(merchant_id)
    .bind(detail)
    .execute(db)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Entry {
    pub actor: String,
    pub action: String,
    pub object_id: String,
    pub merchant_id: Option<String>,
    pub at: chrono::DateTime<chrono::Utc>,
    pub detail: serde_json::Value,
}

/// The entries about one object, oldest first.
pub async fn for_object<'e>(
    db: impl PgExecutor<'e>,
    object_id: &str,
) -> Result<Vec<Entry>, sqlx::Error> {
    sqlx::query_as(
        "SELECT actor, action, object_id, merchant_id, at, detail FROM vault.audit_log
         WHERE object_id = $1 ORDER BY seq",
    )
    .bind(object_id)
    .fetch_all(db)
    .await
}
