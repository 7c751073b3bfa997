//! The `webhook_subscriptions` table: endpoints, their selections and their sealed secrets.

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::{PgConnection, PgExecutor};

use crate::audit::{self, Actor, NewEntry};
use crate::domain::webhook::{EventSelection, WebhookUrl};
use crate::store::StoreError;
use crate::webhooks::rotation::SealedRow;
use crate::webhooks::views::WebhookSubscriptionView;

/// How long the secret a rotation replaced keeps signing (docs/webhooks.md: 24 h).
pub const ROTATION_OVERLAP: TimeDelta = TimeDelta::hours(24);

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Subscription {
    pub id: String,
    pub merchant_id: String,
    pub url: String,
    pub events: Vec<String>,
    pub secret_sealed: Vec<u8>,
    pub previous_secret_sealed: Option<Vec<u8>>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub active: bool,
    pub created_at: DateTime<Utc>,
}

impl Subscription {
    /// The view without its secret (lists, audit entries, replays).
    pub fn view(&self) -> WebhookSubscriptionView {
        WebhookSubscriptionView {
            id: self.id.clone(),
            url: self.url.clone(),
            events: self.events.clone(),
            secret: None,
            active: self.active,
            created_at: self.created_at,
        }
    }

    fn audit_json(&self) -> serde_json::Value {
        serde_json::to_value(self.view()).unwrap_or_default()
    }
}

const SUBSCRIPTION_COLUMNS: &str = "id, merchant_id, url, events, secret_sealed, \
    previous_secret_sealed, previous_secret_expires_at, active, created_at";

/// Inserts a subscription whose secret the caller sealed for `id`, with its audit entry.
pub async fn insert_subscription(
    conn: &mut PgConnection,
    id: &str,
    merchant_id: &str,
    url: &WebhookUrl,
    events: &EventSelection,
    secret_sealed: Vec<u8>,
    actor: &Actor,
) -> Result<Subscription, StoreError> {
    let now = crate::domain::now();
    let sub = Subscription {
        id: id.to_owned(),
        merchant_id: merchant_id.to_owned(),
        url: url.as_str().to_owned(),
        events: events.to_strings(),
        secret_sealed,
        previous_secret_sealed: None,
        previous_secret_expires_at: None,
        active: true,
        created_at: now,
    };
    sqlx::query(
        "INSERT INTO webhook_subscriptions (id, merchant_id, url, events, secret_sealed, active, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, true, $6, $6)",
    )
    .bind(&sub.id)
    .bind(&sub.merchant_id)
    .bind(&sub.url)
    .bind(&sub.events)
    .bind(&sub.secret_sealed)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    audit::append(
        conn,
        NewEntry {
            merchant_id: Some(merchant_id),
            object_type: "webhook_subscription",
            object_id: id,
            action: "webhook_subscription.created",
            actor,
            before: None,
            after: Some(sub.audit_json()),
        },
    )
    .await?;
    Ok(sub)
}

/// One live (not deleted) subscription of one merchant; `lock` takes its row lock.
pub async fn get_subscription(
    conn: &mut PgConnection,
    merchant_id: &str,
    id: &str,
    lock: bool,
) -> Result<Option<Subscription>, StoreError> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    Ok(sqlx::query_as::<_, Subscription>(&format!(
        "SELECT {SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions
         WHERE id = $1 AND merchant_id = $2 AND deleted_at IS NULL{lock}"
    ))
    .bind(id)
    .bind(merchant_id)
    .fetch_optional(conn)
    .await?)
}

/// Newest first; `starting_after` must be a subscription of this merchant (checked by caller).
pub async fn list_subscriptions<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
    limit: i64,
    starting_after: Option<&str>,
) -> Result<Vec<Subscription>, StoreError> {
    Ok(sqlx::query_as::<_, Subscription>(&format!(
        "SELECT {SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions
         WHERE merchant_id = $1 AND deleted_at IS NULL
           AND ($2::text IS NULL OR (created_at, id) < (
                SELECT c.created_at, c.id FROM webhook_subscriptions c WHERE c.id = $2 AND c.merchant_id = $1))
         ORDER BY created_at DESC, id DESC
         LIMIT $3"
    ))
    .bind(merchant_id)
    .bind(starting_after)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// Marks a subscription deleted (its deliveries keep their history); pending deliveries to it
/// end as `failed` when the worker reaches them.
pub async fn delete_subscription(
    conn: &mut PgConnection,
    sub: &Subscription,
    actor: &Actor,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE webhook_subscriptions SET deleted_at = now(), active = false, updated_at = now()
         WHERE id = $1 AND deleted_at IS NULL",
    )
    .bind(&sub.id)
    .execute(&mut *conn)
    .await?;
    audit::append(
        conn,
        NewEntry {
            merchant_id: Some(&sub.merchant_id),
            object_type: "webhook_subscription",
            object_id: &sub.id,
            action: "webhook_subscription.deleted",
            actor,
            before: Some(sub.audit_json()),
            after: None,
        },
    )
    .await?;
    Ok(())
}

/// Replaces the secret; the replaced one keeps signing for [`ROTATION_OVERLAP`]. A second
/// rotation inside that window drops the oldest secret: only the last two ever sign.
pub async fn rotate_secret(
    conn: &mut PgConnection,
    sub: &Subscription,
    new_sealed: Vec<u8>,
    actor: &Actor,
) -> Result<Subscription, StoreError> {
    let expires = crate::domain::now() + ROTATION_OVERLAP;
    sqlx::query(
        "UPDATE webhook_subscriptions
         SET previous_secret_sealed = secret_sealed, previous_secret_expires_at = $2,
             secret_sealed = $3, updated_at = now()
         WHERE id = $1",
    )
    .bind(&sub.id)
    .bind(expires)
    .bind(&new_sealed)
    .execute(&mut *conn)
    .await?;
    let mut next = sub.clone();
    next.previous_secret_sealed = Some(std::mem::replace(&mut next.secret_sealed, new_sealed));
    next.previous_secret_expires_at = Some(expires);
    audit::append(
        conn,
        NewEntry {
            merchant_id: Some(&sub.merchant_id),
            object_type: "webhook_subscription",
            object_id: &sub.id,
            action: "webhook_subscription.secret_rotated",
            actor,
            before: Some(sub.audit_json()),
            after: Some(serde_json::json!({"previousSecretExpiresAt": expires})),
        },
    )
    .await?;
    Ok(next)
}

/// Disables a subscription whose endpoint said it is gone (410), with its audit entry.
/// Returns whether this call disabled it (it may have been already).
pub async fn disable_subscription(
    conn: &mut PgConnection,
    id: &str,
    reason: &str,
    actor: &Actor,
) -> Result<bool, StoreError> {
    let merchant: Option<String> = sqlx::query_scalar(
        "UPDATE webhook_subscriptions SET active = false, disabled_reason = $2, updated_at = now()
         WHERE id = $1 AND active RETURNING merchant_id",
    )
    .bind(id)
    .bind(reason)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(merchant) = merchant else {
        return Ok(false);
    };
    audit::append(
        conn,
        NewEntry {
            merchant_id: Some(&merchant),
            object_type: "webhook_subscription",
            object_id: id,
            action: "webhook_subscription.disabled",
            actor,
            before: Some(serde_json::json!({"active": true})),
            after: Some(serde_json::json!({"active": false, "reason": reason})),
        },
    )
    .await?;
    Ok(true)
}

/// Up to `limit` subscriptions after id `after` with a secret (current or previous) that does
/// not start with `header` (the current sealing key's), locked until the caller's transaction
/// ends, so a secret rotation waits for the re-seal instead of being overwritten by it.
pub async fn lock_secrets_sealed_not_under(
    conn: &mut PgConnection,
    header: &[u8],
    after: &[String],
    limit: i64,
) -> Result<Vec<SealedRow>, sqlx::Error> {
    let after = after.first().map(String::as_str).unwrap_or("");
    let rows: Vec<(String, Vec<u8>, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT id, secret_sealed, previous_secret_sealed FROM webhook_subscriptions
         WHERE id > $2
           AND (substring(secret_sealed from 1 for octet_length($1::bytea)) <> $1
             OR substring(previous_secret_sealed from 1 for octet_length($1::bytea)) <> $1)
         ORDER BY id LIMIT $3 FOR UPDATE",
    )
    .bind(header)
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, secret, previous)| SealedRow {
            table: "webhook_subscriptions",
            aad: vec![id.clone().into_bytes(), id.clone().into_bytes()],
            pk: vec![id.clone()],
            id,
            values: vec![Some(secret), previous],
        })
        .collect())
}

/// Replaces both sealed secrets, only if they are still `row`'s (compare-and-set).
pub async fn replace_sealed_secrets(
    conn: &mut PgConnection,
    row: &SealedRow,
    resealed: &[Option<Vec<u8>>],
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE webhook_subscriptions SET secret_sealed = $2, previous_secret_sealed = $3
         WHERE id = $1 AND secret_sealed = $4 AND previous_secret_sealed IS NOT DISTINCT FROM $5",
    )
    .bind(&row.pk[0])
    .bind(&resealed[0])
    .bind(&resealed[1])
    .bind(&row.values[0])
    .bind(&row.values[1])
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Subscriptions with a sealed secret not under `header`'s key.
pub async fn count_secrets_sealed_not_under<'e>(
    db: impl PgExecutor<'e>,
    header: &[u8],
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM webhook_subscriptions
         WHERE substring(secret_sealed from 1 for octet_length($1::bytea)) <> $1
            OR substring(previous_secret_sealed from 1 for octet_length($1::bytea)) <> $1",
    )
    .bind(header)
    .fetch_one(db)
    .await
}
