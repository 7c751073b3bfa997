//! AES-256-GCM for webhook signing secrets at rest.
//!
//! The key comes from configuration (`PAYSTREAM_WEBHOOK_SECRET_KEY`); the database holds only
//! `version || nonce || ciphertext || tag`. The subscription id is the associated data, so a
//! ciphertext copied onto another subscription's row does not decrypt there. Nonces are 96
//! random bits per encryption: secrets are encrypted once per subscription and rotation, far
//! below the 2^32 encryptions under one key where random nonces would start to risk a repeat.

use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

use crate::domain::webhook::WebhookSecret;

/// The format byte in front of every sealed value, so the layout can change later.
const VERSION: u8 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretBoxError {
    /// Wrong key, wrong subscription, or a corrupted value: GCM's tag does not verify.
    #[error("the stored webhook secret does not decrypt with the configured key")]
    Undecryptable,
    #[error("the stored webhook secret has an unknown format")]
    Format,
}

/// Seals and opens webhook secrets with the configured key.
pub struct SecretBox {
    key: LessSafeKey,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(***)")
    }
}

impl SecretBox {
    pub fn new(key: &[u8; 32]) -> SecretBox {
        // A 32-byte key is exactly what AES-256 takes, so this cannot fail.
        let unbound = UnboundKey::new(&AES_256_GCM, key)
            .unwrap_or_else(|_| unreachable!("AES-256 takes a 32-byte key"));
        SecretBox {
            key: LessSafeKey::new(unbound),
        }
    }

    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut in_out = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut in_out,
            )
            .unwrap_or_else(|_| unreachable!("sealing fails only for inputs above 64 GiB"));
        let mut out = Vec::with_capacity(1 + NONCE_LEN + in_out.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&in_out);
        out
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, SecretBoxError> {
        let (&version, rest) = sealed.split_first().ok_or(SecretBoxError::Format)?;
        if version != VERSION || rest.len() < NONCE_LEN {
            return Err(SecretBoxError::Format);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretBoxError::Format)?;
        let mut in_out = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut in_out)
            .map_err(|_| SecretBoxError::Undecryptable)?;
        Ok(plain.to_vec())
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
            SecretBoxError::Undecryptable
        );
        // Two seals of one secret differ (fresh nonces).
        assert_ne!(b.seal_secret(&secret, "we_1"), sealed);
        assert_eq!(format!("{b:?}"), "SecretBox(***)");
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
}
