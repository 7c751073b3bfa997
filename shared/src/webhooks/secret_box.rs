//! AES-256-GCM for everything sealed outside the vault: webhook signing secrets, the replay
//! copies of answers that carry one, dispute evidence files.
//!
//! The key comes from configuration (`PAYSTREAM_WEBHOOK_SECRET_KEY`, plus, while a rotation
//! is under way, `PAYSTREAM_WEBHOOK_SECRET_KEY_PREVIOUS`); the database holds only
//! `2 || key id (8) || nonce (12) || ciphertext || tag`. The key id is the first 8 bytes of
//! the key's SHA-256: it says which key opens a value without revealing anything usable, so
//! `paystream keys rotate-sealing` and `paystream doctor` can find, in SQL, every value not yet
//! under the current key. Values written before key ids existed (`1 || nonce || ...`) are
//! still opened, by trying each configured key, and re-sealed by the rotation.
//!
//! The caller's associated data (a subscription id, a file id) binds each ciphertext to its
//! row, so a value copied onto another row does not decrypt there. Nonces are 96 random bits
//! per encryption: far below the 2^32 encryptions under one key where random nonces would
//! start to risk a repeat.

use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use sha2::{Digest, Sha256};

use crate::domain::webhook::WebhookSecret;

/// The format byte of values written before key ids: `1 || nonce || ciphertext || tag`.
const LEGACY_VERSION: u8 = 1;
/// The format byte of values that name their key: `2 || key id || nonce || ciphertext || tag`.
pub const VERSION: u8 = 2;
pub const KEY_ID_LEN: usize = 8;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretBoxError {
    /// Wrong key, wrong row, or a corrupted value: GCM's tag does not verify.
    #[error("the sealed value does not decrypt with the configured sealing key")]
    Undecryptable,
    #[error("the sealed value has an unknown format")]
    Format,
    /// Sealed under a key this process was not given: a rotation's old key retired too early,
    /// or the wrong key configured.
    #[error(
        "the sealed value is under sealing key {key_id}, which this process does not hold \
         (set PAYSTREAM_WEBHOOK_SECRET_KEY_PREVIOUS to it until `paystream keys rotate-sealing` \
         has re-sealed everything)"
    )]
    UnknownKey { key_id: String },
}

/// One sealing key and its id.
struct SealingKey {
    id: [u8; KEY_ID_LEN],
    key: LessSafeKey,
}

impl SealingKey {
    fn new(bytes: &[u8; 32]) -> SealingKey {
        let digest = Sha256::digest(bytes);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        // A 32-byte key is exactly what AES-256 takes, so this cannot fail.
        let unbound = UnboundKey::new(&AES_256_GCM, bytes)
            .unwrap_or_else(|_| unreachable!("AES-256 takes a 32-byte key"));
        SealingKey {
            id,
            key: LessSafeKey::new(unbound),
        }
    }

    fn open(&self, nonce: &[u8], ciphertext: &[u8], aad: &[u8]) -> Result<Vec<u8>, SecretBoxError> {
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretBoxError::Format)?;
        let mut in_out = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut in_out)
            .map_err(|_| SecretBoxError::Undecryptable)?;
        Ok(plain.to_vec())
    }
}

/// The key id of a sealed value, if it names one (hex, as logs and `doctor` print it).
pub fn key_id_of(sealed: &[u8]) -> Option<String> {
    match sealed.split_first() {
        Some((&VERSION, rest)) if rest.len() >= KEY_ID_LEN => {
            Some(hex::encode(&rest[..KEY_ID_LEN]))
        }
        _ => None,
    }
}

/// Seals with the current key; opens with the current or the previous one. Every process that
/// opens sealed values is given both while a rotation is under way.
pub struct SecretBox {
    current: SealingKey,
    previous: Option<SealingKey>,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBox(current {}, ***)", self.current_id())
    }
}

impl SecretBox {
    /// One key, sealing and opening.
    pub fn new(key: &[u8; 32]) -> SecretBox {
        SecretBox::with_previous(key, None)
    }

    /// The current key seals; either opens. The same key twice is no rotation, so it is
    /// kept once.
    pub fn with_previous(current: &[u8; 32], previous: Option<&[u8; 32]>) -> SecretBox {
        let current = SealingKey::new(current);
        let previous = previous.map(SealingKey::new).filter(|p| p.id != current.id);
        SecretBox { current, previous }
    }

    /// The keys configured for this process (`PAYSTREAM_WEBHOOK_SECRET_KEY[_PREVIOUS]`).
    pub fn from_config(config: &crate::config::Config) -> SecretBox {
        SecretBox::with_previous(
            config.webhook_secret_key.expose(),
            config
                .webhook_secret_key_previous
                .as_ref()
                .map(|k| k.expose()),
        )
    }

    /// The id of the key new values are sealed under, in hex.
    pub fn current_id(&self) -> String {
        hex::encode(self.current.id)
    }

    /// The current key's id as raw bytes, as it sits in a sealed value's header.
    pub fn current_id_bytes(&self) -> [u8; KEY_ID_LEN] {
        self.current.id
    }

    /// The first bytes of every value sealed under the current key (format and key id): what
    /// the store's queries compare to find values a rotation still has to re-seal.
    pub fn current_header(&self) -> Vec<u8> {
        let mut header = Vec::with_capacity(1 + KEY_ID_LEN);
        header.push(VERSION);
        header.extend_from_slice(&self.current.id);
        header
    }

    /// The previous key's id, in hex, if one is configured.
    pub fn previous_id(&self) -> Option<String> {
        self.previous.as_ref().map(|p| hex::encode(p.id))
    }

    /// Whether `sealed` is already under the current key (nothing for a rotation to do).
    pub fn is_current(&self, sealed: &[u8]) -> bool {
        key_id_of(sealed).as_deref() == Some(self.current_id().as_str())
    }

    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut in_out = plaintext.to_vec();
        self.current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut in_out,
            )
            .unwrap_or_else(|_| unreachable!("sealing fails only for inputs above 64 GiB"));
        let mut out = Vec::with_capacity(1 + KEY_ID_LEN + NONCE_LEN + in_out.len());
        out.push(VERSION);
        out.extend_from_slice(&self.current.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&in_out);
        out
    }

    fn keys(&self) -> impl Iterator<Item = &SealingKey> {
        std::iter::once(&self.current).chain(self.previous.as_ref())
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, SecretBoxError> {
        let (&version, rest) = sealed.split_first().ok_or(SecretBoxError::Format)?;
        match version {
            VERSION => {
                if rest.len() < KEY_ID_LEN + NONCE_LEN {
                    return Err(SecretBoxError::Format);
                }
                let (id, rest) = rest.split_at(KEY_ID_LEN);
                let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
                let key =
                    self.keys()
                        .find(|k| k.id == id)
                        .ok_or_else(|| SecretBoxError::UnknownKey {
                            key_id: hex::encode(id),
                        })?;
                key.open(nonce, ciphertext, aad)
            }
            LEGACY_VERSION => {
                if rest.len() < NONCE_LEN {
                    return Err(SecretBoxError::Format);
                }
                let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
                // No key id: whichever configured key's tag verifies is the one.
                let mut last = SecretBoxError::Undecryptable;
                for key in self.keys() {
                    match key.open(nonce, ciphertext, aad) {
                        Ok(plain) => return Ok(plain),
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            _ => Err(SecretBoxError::Format),
        }
    }

    /// Opens `sealed` and seals its plaintext again under the current key (the rotation's
    /// step for one value).
    pub fn reseal(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, SecretBoxError> {
        let plain = self.open(sealed, aad)?;
        Ok(self.seal(&plain, aad))
    }

    /// Seals a subscription's signing secret, bound to the subscription id.
    pub fn seal_secret(&self, secret: &WebhookSecret, subscription_id: &str) -> Vec<u8> {
        self.seal(secret.expose().as_bytes(), subscription_id.as_bytes())
    }

    pub fn open_secret(
        &self,
        sealed: &[u8],
        subscription_id: &str,
    ) -> Result<WebhookSecret, SecretBoxError> {
        let plain = self.open(sealed, subscription_id.as_bytes())?;
        let text = String::from_utf8(plain).map_err(|_| SecretBoxError::Format)?;
        WebhookSecret::parse(&text).map_err(|_| SecretBoxError::Format)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_bound_to_the_subscription() {
        let b = SecretBox::new(&[7u8; 32]);
        let secret = WebhookSecret::generate();
        let sealed = b.seal_secret(&secret, "we_1");
        assert!(!sealed
            .windows(secret.expose().len())
            .any(|w| w == secret.expose().as_bytes()));
        assert_eq!(b.open_secret(&sealed, "we_1").unwrap(), secret);
        assert_eq!(
            b.open_secret(&sealed, "we_2").unwrap_err(),
            SecretBoxError::Undecryptable
        );
        let other = SecretBox::new(&[8u8; 32]);
        assert_eq!(
            other.open_secret(&sealed, "we_1").unwrap_err(),
            SecretBoxError::UnknownKey {
                key_id: b.current_id()
            }
        );
        // Two seals of one secret differ (fresh nonces).
        assert_ne!(b.seal_secret(&secret, "we_1"), sealed);
        assert_eq!(
            format!("{b:?}"),
            format!("SecretBox(current {}, ***)", b.current_id())
        );
    }

    #[test]
    fn malformed_values_are_refused() {
        let b = SecretBox::new(&[1u8; 32]);
        assert_eq!(b.open(&[], b"x").unwrap_err(), SecretBoxError::Format);
        assert_eq!(
            b.open(&[2, 0, 0], b"x").unwrap_err(),
            SecretBoxError::Format
        );
        assert_eq!(
            b.open(&[1, 0, 0], b"x").unwrap_err(),
            SecretBoxError::Format
        );
        assert_eq!(
            b.open(&[9, 0, 0], b"x").unwrap_err(),
            SecretBoxError::Format
        );
        let mut sealed = b.seal(b"not a secret", b"x");
        assert_eq!(b.open(&sealed, b"x").unwrap(), b"not a secret");
        assert_eq!(
            b.open_secret(&sealed, "x").unwrap_err(),
            SecretBoxError::Format
        );
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert_eq!(
            b.open(&sealed, b"x").unwrap_err(),
            SecretBoxError::Undecryptable
        );
    }

    /// `1 || nonce || ciphertext || tag`, as values were sealed before key ids.
    fn legacy_seal(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).unwrap());
        let nonce = [3u8; NONCE_LEN];
        let mut in_out = plaintext.to_vec();
        k.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut in_out,
        )
        .unwrap();
        let mut out = vec![LEGACY_VERSION];
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&in_out);
        out
    }

    #[test]
    fn every_value_names_its_key_and_the_previous_key_still_opens() {
        let old = SecretBox::new(&[1u8; 32]);
        let rotating = SecretBox::with_previous(&[2u8; 32], Some(&[1u8; 32]));
        let sealed_old = old.seal(b"evidence", b"file_1");
        assert_eq!(sealed_old[0], VERSION);
        assert_eq!(key_id_of(&sealed_old), Some(old.current_id()));
        assert_eq!(rotating.previous_id(), Some(old.current_id()));
        assert_ne!(rotating.current_id(), old.current_id());
        assert!(!rotating.is_current(&sealed_old));
        assert_eq!(rotating.open(&sealed_old, b"file_1").unwrap(), b"evidence");

        let resealed = rotating.reseal(&sealed_old, b"file_1").unwrap();
        assert!(rotating.is_current(&resealed));
        assert_eq!(&resealed[1..1 + KEY_ID_LEN], &rotating.current_id_bytes());
        assert_eq!(rotating.open(&resealed, b"file_1").unwrap(), b"evidence");
        // The old key alone cannot read what the new one sealed, and says which key it lacks.
        assert_eq!(
            old.open(&resealed, b"file_1").unwrap_err(),
            SecretBoxError::UnknownKey {
                key_id: rotating.current_id()
            }
        );
        // The same key given twice is one key.
        assert_eq!(
            SecretBox::with_previous(&[2u8; 32], Some(&[2u8; 32])).previous_id(),
            None
        );
    }

    #[test]
    fn a_value_under_an_unknown_key_is_a_clear_error() {
        let stranger = SecretBox::new(&[9u8; 32]);
        let b = SecretBox::with_previous(&[2u8; 32], Some(&[1u8; 32]));
        let sealed = stranger.seal(b"x", b"a");
        let err = b.open(&sealed, b"a").unwrap_err();
        assert_eq!(
            err,
            SecretBoxError::UnknownKey {
                key_id: stranger.current_id()
            }
        );
        let message = err.to_string();
        assert!(message.contains(&stranger.current_id()), "{message}");
        assert!(
            message.contains("PAYSTREAM_WEBHOOK_SECRET_KEY_PREVIOUS"),
            "{message}"
        );
        assert_eq!(key_id_of(b""), None);
        assert_eq!(key_id_of(&[VERSION, 1, 2]), None);
    }

    #[test]
    fn values_sealed_before_key_ids_open_under_either_key_and_are_resealed() {
        let legacy = legacy_seal(&[1u8; 32], b"whsec_old", b"we_1");
        assert_eq!(key_id_of(&legacy), None);
        let b = SecretBox::with_previous(&[2u8; 32], Some(&[1u8; 32]));
        assert_eq!(b.open(&legacy, b"we_1").unwrap(), b"whsec_old");
        assert!(!b.is_current(&legacy));
        let resealed = b.reseal(&legacy, b"we_1").unwrap();
        assert!(b.is_current(&resealed));
        assert_eq!(b.open(&resealed, b"we_1").unwrap(), b"whsec_old");
        // Under neither key, or bound elsewhere: the tag does not verify.
        assert_eq!(
            SecretBox::new(&[3u8; 32])
                .open(&legacy, b"we_1")
                .unwrap_err(),
            SecretBoxError::Undecryptable
        );
        assert_eq!(
            b.open(&legacy, b"we_2").unwrap_err(),
            SecretBoxError::Undecryptable
        );
    }
}
