//! Merchants and their API keys. A secret key is shown once, at creation; only its SHA-256 is
//! stored, so a copy of the table authenticates nobody.

use chrono::{DateTime, Utc};
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgExecutor};

use super::StoreError;
use crate::domain::ids::IdKind;
use crate::domain::DomainError;

/// What a key may do is decided by its role, through the table in [`crate::roles`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything the API offers.
    Admin,
    /// Payments, refunds, webhooks and disputes; no key management.
    Developer,
    /// Reads, refunds and dispute evidence; no webhook or key changes.
    Support,
    /// GET only: dashboards and reporting jobs that must never move money.
    ReadOnly,
    /// A `pk_` key that may sit in a browser: it may only create vault tokens.
    Publishable,
}

impl Role {
    /// Every role, in the order the docs list them.
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Developer,
        Role::Support,
        Role::ReadOnly,
        Role::Publishable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Developer => "developer",
            Role::Support => "support",
            Role::ReadOnly => "read_only",
            Role::Publishable => "publishable",
        }
    }

    pub fn parse(raw: &str) -> Result<Role, DomainError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == raw)
            .ok_or_else(|| {
                DomainError::new(
                    "parameter_invalid",
                    Some("role".into()),
                    "role must be `admin`, `developer`, `support`, `read_only` or `publishable`",
                )
            })
    }

    /// What a new key of this role starts with: `pk_` for publishable keys, `sk_` otherwise.
    pub fn key_prefix(self) -> &'static str {
        match self {
            Role::Publishable => "pk_",
            _ => "sk_",
        }
    }
}

/// A freshly created key. `secret` exists only in this value; it is never stored.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub merchant_id: String,
    pub merchant_name: String,
    pub key_id: String,
    pub role: Role,
    pub secret: crate::secret::Secret<String>,
}

/// Who a valid key belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOwner {
    pub key_id: String,
    pub merchant_id: String,
    pub role: Role,
    /// The browser origins this key may be used from (CORS); empty for none.
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    pub id: String,
    pub merchant_id: String,
    pub merchant_name: String,
    pub key_prefix: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Set when the key was rolled: it authenticates until then, and never after.
    pub expires_at: Option<DateTime<Utc>>,
    /// The key that replaced it.
    pub rolled_to: Option<String>,
}

impl KeyInfo {
    /// `active`, `expiring` (rolled, still valid), `expired` or `revoked`.
    pub fn state(&self, now: DateTime<Utc>) -> &'static str {
        match (self.revoked_at, self.expires_at) {
            (Some(_), _) => "revoked",
            (None, Some(at)) if at <= now => "expired",
            (None, Some(_)) => "expiring",
            (None, None) => "active",
        }
    }
}

pub fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

pub fn generate_secret() -> String {
    generate_key(Role::Admin)
}

/// A new random key for `role` (`sk_…` or `pk_…`, 40 random characters after the prefix).
pub fn generate_key(role: Role) -> String {
    let body: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();
    format!("{}{body}", role.key_prefix())
}

/// The merchant named `name`, created if missing.
pub async fn ensure_merchant(conn: &mut PgConnection, name: &str) -> Result<String, StoreError> {
    let id: String = sqlx::query_scalar(
        "INSERT INTO merchants (id, name) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
         RETURNING id",
    )
    .bind(IdKind::Merchant.generate())
    .bind(name)
    .fetch_one(conn)
    .await?;
    Ok(id)
}

/// Creates a key for merchant `name` (creating the merchant if needed). With `secret` given,
/// that secret is registered (bootstrap keys); otherwise a new one is generated.
pub async fn create_key(
    conn: &mut PgConnection,
    name: &str,
    role: Role,
    secret: Option<&str>,
) -> Result<NewKey, StoreError> {
    let merchant_id = ensure_merchant(conn, name).await?;
    let secret = secret
        .map(str::to_owned)
        .unwrap_or_else(|| generate_key(role));
    insert_key(conn, merchant_id, name, role, secret).await
}

/// Stores the hash of `secret` as a new key; the secret itself goes back to the caller only.
async fn insert_key(
    conn: &mut PgConnection,
    merchant_id: String,
    merchant_name: &str,
    role: Role,
    secret: String,
) -> Result<NewKey, StoreError> {
    let key_id = IdKind::ApiKey.generate();
    let prefix: String = secret.chars().take(7).collect();
    sqlx::query("INSERT INTO api_keys (id, merchant_id, key_hash, key_prefix, role) VALUES ($1, $2, $3, $4, $5)")
        .bind(&key_id)
        .bind(&merchant_id)
        .bind(hash_secret(&secret))
        .bind(prefix)
        .bind(role.as_str())
        .execute(conn)
        .await?;
    Ok(NewKey {
        merchant_id,
        merchant_name: merchant_name.to_owned(),
        key_id,
        role,
        secret: crate::secret::Secret::new(secret),
    })
}

/// The outcome of [`roll_key`].
#[derive(Debug, Clone)]
pub struct RolledKey {
    /// The replacement: same merchant, same role, a new secret.
    pub new: NewKey,
    pub old_key_id: String,
    /// When the old secret stops authenticating.
    pub old_expires_at: DateTime<Utc>,
}

/// Rolls an active key, as Stripe's "roll key" does: a new secret for the same merchant and
/// role, and the old one valid for `expire_old_in` more (never longer than an expiry it already
/// had). The audit entry is written on `conn` too, so pass a transaction's connection: the roll
/// and its record commit together. `None` when no active, unexpired key has that id.
pub async fn roll_key(
    conn: &mut PgConnection,
    key_id: &str,
    expire_old_in: std::time::Duration,
    actor: &crate::audit::Actor,
) -> Result<Option<RolledKey>, StoreError> {
    let old: Option<(String, String, String)> = sqlx::query_as(
        "SELECT k.merchant_id, m.name, k.role FROM api_keys k JOIN merchants m ON m.id = k.merchant_id
         WHERE k.id = $1 AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())
         FOR UPDATE OF k",
    )
    .bind(key_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((merchant_id, merchant_name, role)) = old else {
        return Ok(None);
    };
    let role = Role::parse(&role).map_err(|e| StoreError::Corrupt {
        id: key_id.to_owned(),
        reason: e.message,
    })?;
    let new = insert_key(
        conn,
        merchant_id.clone(),
        &merchant_name,
        role,
        generate_key(role),
    )
    .await?;
    let secs = i64::try_from(expire_old_in.as_secs()).unwrap_or(i64::MAX);
    // Microseconds, PostgreSQL's precision, so what is printed is what is stored.
    let old_expires_at: DateTime<Utc> = sqlx::query_scalar(
        "UPDATE api_keys
         SET expires_at = LEAST(coalesce(expires_at, 'infinity'),
                                date_trunc('microseconds', now() + make_interval(secs => $2::double precision))),
             rolled_to = $3
         WHERE id = $1 RETURNING expires_at",
    )
    .bind(key_id)
    .bind(secs)
    .bind(&new.key_id)
    .fetch_one(&mut *conn)
    .await?;
    crate::audit::append(
        conn,
        crate::audit::NewEntry {
            merchant_id: Some(&merchant_id),
            object_type: "api_key",
            object_id: key_id,
            action: "api_key.rolled",
            actor,
            before: Some(serde_json::json!({"expiresAt": null})),
            // Ids and times only: a secret never reaches the audit log.
            after: Some(serde_json::json!({
                "expiresAt": old_expires_at,
                "rolledTo": new.key_id,
                "role": role.as_str(),
            })),
        },
    )
    .await?;
    Ok(Some(RolledKey {
        new,
        old_key_id: key_id.to_owned(),
        old_expires_at,
    }))
}

/// Makes sure `secret` is an active admin key of merchant `name`; returns its merchant id.
pub async fn ensure_bootstrap_key(
    conn: &mut PgConnection,
    name: &str,
    secret: &str,
) -> Result<String, StoreError> {
    let existing: Option<String> = sqlx::query_scalar(
        "SELECT merchant_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
    )
    .bind(hash_secret(secret))
    .fetch_optional(&mut *conn)
    .await?;
    match existing {
        Some(merchant_id) => Ok(merchant_id),
        None => Ok(create_key(conn, name, Role::Admin, Some(secret))
            .await?
            .merchant_id),
    }
}

pub async fn authenticate<'e>(
    db: impl PgExecutor<'e>,
    secret: &str,
) -> Result<Option<KeyOwner>, StoreError> {
    Ok(authenticate_with_expiry(db, &hash_secret(secret))
        .await?
        .map(|(owner, _)| owner))
}

/// An `api_keys` row as authentication reads it: id, merchant, role, expiry, origins.
type KeyRow = (String, String, String, Option<DateTime<Utc>>, Vec<String>);

/// The owner of the valid key with this hash ([`hash_secret`]), and when the key expires (a
/// rolled key), for a cache that must stop serving it then.
pub async fn authenticate_with_expiry<'e>(
    db: impl PgExecutor<'e>,
    key_hash: &[u8],
) -> Result<Option<(KeyOwner, Option<DateTime<Utc>>)>, StoreError> {
    let row: Option<KeyRow> = sqlx::query_as(
        "SELECT id, merchant_id, role, expires_at, allowed_origins FROM api_keys
         WHERE key_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
    )
    .bind(key_hash)
    .fetch_optional(db)
    .await?;
    row.map(|(key_id, merchant_id, role, expires_at, allowed_origins)| {
        let role = Role::parse(&role).map_err(|e| StoreError::Corrupt {
            id: key_id.clone(),
            reason: e.message,
        })?;
        Ok((
            KeyOwner {
                key_id,
                merchant_id,
                role,
                allowed_origins,
            },
            expires_at,
        ))
    })
    .transpose()
}

/// Sets the browser origins `key_id` may be used from (each already parsed by
/// [`parse_origin`]); false when there is no such key.
pub async fn set_allowed_origins<'e>(
    db: impl PgExecutor<'e>,
    key_id: &str,
    origins: &[String],
) -> Result<bool, StoreError> {
    let done = sqlx::query("UPDATE api_keys SET allowed_origins = $2 WHERE id = $1")
        .bind(key_id)
        .bind(origins)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether any live publishable key allows `origin`: what a CORS preflight, which carries no
/// key, is answered by. The actual request is then checked against its own key's origins.
pub async fn origin_allowed_for_some_key<'e>(
    db: impl PgExecutor<'e>,
    origin: &str,
) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM api_keys
          WHERE role = 'publishable' AND $1 = ANY (allowed_origins)
            AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()))",
    )
    .bind(origin)
    .fetch_one(db)
    .await?)
}

/// A browser origin as `Origin` headers spell it: `https://host[:port]` or `http://host[:port]`,
/// lowercase, with no path, query or trailing slash, so it compares equal to what browsers send.
pub fn parse_origin(raw: &str) -> Result<String, DomainError> {
    let origin = raw.trim().to_ascii_lowercase();
    let invalid = || {
        DomainError::new(
            "parameter_invalid",
            Some("origin".into()),
            "an origin is scheme://host[:port], as https://shop.example, with no path",
        )
    };
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(invalid)?;
    let host_ok = !rest.is_empty()
        && rest.len() <= 253
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if !host_ok {
        return Err(invalid());
    }
    Ok(origin)
}

pub async fn list_keys<'e>(db: impl PgExecutor<'e>) -> Result<Vec<KeyInfo>, StoreError> {
    Ok(sqlx::query_as::<_, KeyInfo>(
        "SELECT k.id, k.merchant_id, m.name AS merchant_name, k.key_prefix, k.role, k.created_at, k.revoked_at,
                k.expires_at, k.rolled_to
         FROM api_keys k JOIN merchants m ON m.id = k.merchant_id ORDER BY k.created_at, k.id",
    )
    .fetch_all(db)
    .await?)
}

/// Revokes a key; `false` when no active key has that id.
pub async fn revoke_key<'e>(db: impl PgExecutor<'e>, key_id: &str) -> Result<bool, StoreError> {
    let done =
        sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
            .bind(key_id)
            .execute(db)
            .await?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_hashes_stable() {
        let a = generate_secret();
        assert!(a.starts_with("sk_") && a.len() == 43);
        assert_ne!(a, generate_secret());
        assert_eq!(hash_secret(&a), hash_secret(&a));
        assert_ne!(hash_secret(&a), hash_secret("sk_other"));
    }

    #[test]
    fn roles() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()).unwrap(), role);
        }
        assert!(Role::parse("root").is_err());
        assert_eq!(Role::ReadOnly.as_str(), "read_only");
        let pk = Role::parse("publishable").unwrap();
        assert_eq!(generate_key(Role::Support).get(..3), Some("sk_"));
        assert!(generate_key(pk).starts_with("pk_") && generate_key(pk).len() == 43);
    }
}
