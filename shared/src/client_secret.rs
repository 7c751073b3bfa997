//! A payment intent's client secret, `{id}_secret_{random}`: what the merchant's server hands
//! its checkout page so the browser, holding only a publishable key, may read and confirm that
//! one intent (docs/api.md "Client-side confirmation").
//!
//! Nothing stores it. The random part is an HMAC-SHA-256 of the merchant and intent ids under a
//! key derived from the server's sealing key (`PAYSTREAM_WEBHOOK_SECRET_KEY`, 32 random bytes),
//! truncated to 160 bits: unguessable without that key, the same on every read, so `GET` can
//! hand it to a secret key again without a copy of it in any table (README "Choices"). Checking
//! one recomputes it and compares in constant time. While the sealing key rotates, a secret
//! derived under the previous key is still accepted (README "Rotating the sealing key"), so
//! a checkout page opened before a process restarted keeps working on every replica.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::secret::Secret;

/// Separates this use of the sealing key from every other one.
const LABEL: &[u8] = b"paystream client secret v1";
/// Bytes of the HMAC kept: 160 bits, above the 128 the contract asks for.
const RANDOM_BYTES: usize = 20;
const SEPARATOR: &str = "_secret_";

/// The key client secrets are derived under.
#[derive(Clone)]
pub struct ClientSecrets {
    key: Secret<[u8; 32]>,
    /// Derived from the previous sealing key, during a rotation: verifies, never issues.
    previous: Option<Secret<[u8; 32]>>,
}

impl std::fmt::Debug for ClientSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecrets(..)")
    }
}

/// The derivation key under a sealing key, separated from its other uses by [`LABEL`].
fn derive(sealing_key: &[u8; 32]) -> Secret<[u8; 32]> {
    let mut m = mac(sealing_key);
    m.update(LABEL);
    Secret::new(m.finalize().into_bytes().into())
}

/// `{intent_id}_secret_{hex of the HMAC}` under one derivation key.
fn secret_under(key: &Secret<[u8; 32]>, merchant_id: &str, intent_id: &str) -> String {
    let mut m = mac(key.expose());
    m.update(merchant_id.as_bytes());
    m.update(&[0]);
    m.update(intent_id.as_bytes());
    let full = m.finalize().into_bytes();
    format!(
        "{intent_id}{SEPARATOR}{}",
        hex::encode(&full[..RANDOM_BYTES])
    )
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length, so this cannot fail.
    <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length")
}

impl ClientSecrets {
    /// Derived from the server's sealing key, under a label of its own.
    pub fn new(sealing_key: &[u8; 32]) -> Self {
        Self::with_previous(sealing_key, None)
    }

    /// Issues under `sealing_key`; also accepts what `previous` issued.
    pub fn with_previous(sealing_key: &[u8; 32], previous: Option<&[u8; 32]>) -> Self {
        Self {
            key: derive(sealing_key),
            previous: previous.map(derive),
        }
    }

    /// The client secret of `intent_id` of `merchant_id`.
    pub fn of(&self, merchant_id: &str, intent_id: &str) -> Secret<String> {
        Secret::new(secret_under(&self.key, merchant_id, intent_id))
    }

    /// Whether `presented` is the client secret of `intent_id` of `merchant_id`, compared in
    /// constant time (its length, which is public, aside).
    pub fn verify(&self, merchant_id: &str, intent_id: &str, presented: &str) -> bool {
        let matches = |key: &Secret<[u8; 32]>| -> bool {
            let expected = secret_under(key, merchant_id, intent_id);
            expected.as_bytes().ct_eq(presented.as_bytes()).into()
        };
        // Both compared whatever the first gives, so the time says nothing of which matched.
        let current = matches(&self.key);
        let previous = self.previous.as_ref().is_some_and(matches);
        current | previous
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_to_its_intent_its_merchant_and_its_key() {
        let secrets = ClientSecrets::new(&[7; 32]);
        let s = secrets.of("mer_a", "pi_1");
        let s = s.expose();
        assert!(s.starts_with("pi_1_secret_"), "{s}");
        assert_eq!(s.len(), "pi_1_secret_".len() + 2 * RANDOM_BYTES);
        assert_eq!(s, secrets.of("mer_a", "pi_1").expose(), "stable");
        assert!(secrets.verify("mer_a", "pi_1", s));
        assert!(!secrets.verify("mer_b", "pi_1", s));
        assert!(!secrets.verify("mer_a", "pi_2", s));
        assert!(!secrets.verify("mer_a", "pi_1", &s[..s.len() - 1]));
        assert!(!secrets.verify("mer_a", "pi_1", ""));
        let other = ClientSecrets::new(&[8; 32]);
        assert!(!other.verify("mer_a", "pi_1", s));
        assert_eq!(format!("{secrets:?}"), "ClientSecrets(..)");
    }

    #[test]
    fn during_a_rotation_the_previous_keys_secrets_still_verify_and_only_new_ones_are_issued() {
        let old = ClientSecrets::new(&[7; 32]);
        let issued_before = old.of("mer_a", "pi_1");
        let rotating = ClientSecrets::with_previous(&[8; 32], Some(&[7; 32]));
        assert!(rotating.verify("mer_a", "pi_1", issued_before.expose()));
        let issued_now = rotating.of("mer_a", "pi_1");
        assert_ne!(issued_now.expose(), issued_before.expose());
        assert!(rotating.verify("mer_a", "pi_1", issued_now.expose()));
        assert!(!rotating.verify("mer_a", "pi_2", issued_before.expose()));
        // Once the old key is retired, what it issued is refused.
        let after = ClientSecrets::new(&[8; 32]);
        assert!(!after.verify("mer_a", "pi_1", issued_before.expose()));
        assert!(after.verify("mer_a", "pi_1", issued_now.expose()));
    }
}
