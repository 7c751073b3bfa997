//! A short-lived cache of API-key lookups, so a request does not cost a statement to find its
//! key. A hit is at most [`TTL`] old, so a revoked key is refused within that second, and the
//! key's `expires_at` (set by rolling) is checked on every hit, so a rolled key stops at its
//! expiry to the microsecond, cache or not. Only keys that checked out are kept: an unknown or
//! refused key always asks the database, so a new key works at once. Entries are keyed by the
//! secret's SHA-256, never by the secret.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use paystream_shared::store::merchants::{self, KeyOwner};
use paystream_shared::store::StoreError;

/// How stale a cached lookup may be: the revocation window.
pub const TTL: Duration = Duration::from_secs(1);

/// Bounds the memory a flood of distinct valid keys could take; past it the cache starts over.
const MAX_ENTRIES: usize = 10_000;

struct Entry {
    owner: KeyOwner,
    expires_at: Option<DateTime<Utc>>,
    fetched: Instant,
}

pub struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<Vec<u8>, Entry>>,
}

impl Default for KeyCache {
    fn default() -> Self {
        Self::new(TTL)
    }
}

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The key's owner if the key is valid now, from the cache when the lookup is fresh.
    pub async fn authenticate(
        &self,
        pool: &PgPool,
        secret: &str,
    ) -> Result<Option<KeyOwner>, StoreError> {
        let hash = merchants::hash_secret(secret);
        if let Some(hit) = self.lookup(&hash, Instant::now(), Utc::now()) {
            return Ok(hit);
        }
        let found = merchants::authenticate_with_expiry(pool, &hash).await?;
        Ok(found.map(|(owner, expires_at)| {
            self.insert(hash, owner.clone(), expires_at, Instant::now());
            owner
        }))
    }

    /// `Some(answer)` on a fresh hit (`Some(None)`: the key expired since it was cached),
    /// `None` when the database must be asked.
    fn lookup(&self, hash: &[u8], now: Instant, wall: DateTime<Utc>) -> Option<Option<KeyOwner>> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.get(hash)?;
        if now.saturating_duration_since(entry.fetched) >= self.ttl {
            entries.remove(hash);
            return None;
        }
        if entry.expires_at.is_some_and(|at| at <= wall) {
            entries.remove(hash);
            return Some(None);
        }
        Some(Some(entry.owner.clone()))
    }

    fn insert(
        &self,
        hash: Vec<u8>,
        owner: KeyOwner,
        expires_at: Option<DateTime<Utc>>,
        now: Instant,
    ) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(
            hash,
            Entry {
                owner,
                expires_at,
                fetched: now,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paystream_shared::store::merchants::Role;

    fn owner() -> KeyOwner {
        KeyOwner {
            key_id: "key_1".into(),
            merchant_id: "mer_1".into(),
            role: Role::Admin,
            allowed_origins: Vec::new(),
        }
    }

    #[test]
    fn a_hit_is_never_older_than_the_ttl() {
        let cache = KeyCache::new(Duration::from_secs(1));
        let t0 = Instant::now();
        let wall = Utc::now();
        assert!(cache.lookup(b"h", t0, wall).is_none(), "empty: ask the db");
        cache.insert(b"h".to_vec(), owner(), None, t0);
        assert_eq!(
            cache.lookup(b"h", t0 + Duration::from_millis(999), wall),
            Some(Some(owner()))
        );
        // A second on, the lookup is stale: the database decides again (a revoked key is
        // refused there).
        assert!(cache
            .lookup(b"h", t0 + Duration::from_secs(1), wall)
            .is_none());
        assert!(
            cache.lookup(b"h", t0, wall).is_none(),
            "the stale entry was dropped"
        );
    }

    #[test]
    fn a_rolled_keys_expiry_is_honoured_on_a_hit() {
        let cache = KeyCache::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let wall = Utc::now();
        let expiry = wall + chrono::Duration::milliseconds(10);
        cache.insert(b"h".to_vec(), owner(), Some(expiry), t0);
        assert_eq!(cache.lookup(b"h", t0, wall), Some(Some(owner())));
        assert_eq!(
            cache.lookup(b"h", t0, expiry),
            Some(None),
            "refused at its expiry though the entry is fresh"
        );
        assert!(cache.lookup(b"h", t0, wall).is_none(), "and forgotten");
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = KeyCache::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..=MAX_ENTRIES {
            cache.insert(i.to_le_bytes().to_vec(), owner(), None, t0);
        }
        assert!(cache.entries.lock().unwrap().len() <= MAX_ENTRIES);
    }
}
