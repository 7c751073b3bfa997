//! A payment intent's client secret, `{id}_secret_{random}`: what the merchant's server hands
//! its checkout page so the browser, holding only a publishable key, may read and confirm that
//! one intent (docs/api.md "Client-side confirmation").
//!
//! Nothing stores it. The random part is an HMAC-SHA-256 of the merchant and intent ids under a
//! key derived from the server's sealing key (`PAYSTREAM_WEBHOOK_SECRET_KEY`, 32 random bytes),
//! truncated to 160 bits: unguessable without that key, the same on every read, so `GET` can
//! hand it to a secret key again without a copy of it in any table (README "Choices"). Checking
//! one recomputes it and compares in constant time.

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
}

impl std::fmt::Debug for ClientSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecrets(..)")
    }
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length, so this cannot fail.
    <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length")
}

impl ClientSecrets {
    /// Derived from the server's sealing key, under a label of its own.
    pub fn new(sealing_key: &[u8; 32]) -> Self {
        let mut m = mac(sealing_key);
        m.update(LABEL);
        let key: [u8; 32] = m.finalize().into_bytes().into();
        Self {
            key: Secret::new(key),
        }
    }

    fn random_part(&self, merchant_id: &str, intent_id: &str) -> [u8; RANDOM_BYTES] {
        let mut m = mac(self.key.expose());
        m.update(merchant_id.as_bytes());
        m.update(&[0]);
        m.update(intent_id.as_bytes());
        let full = m.finalize().into_bytes();
        let mut out = [0u8; RANDOM_BYTES];
        out.copy_from_slice(&full[..RANDOM_BYTES]);
        out
    }

    /// The client secret of `intent_id` of `merchant_id`.
    pub fn of(&self, merchant_id: &str, intent_id: &str) -> Secret<String> {
        Secret::new(format!(
            "{intent_id}{SEPARATOR}{}",
            hex::encode(self.random_part(merchant_id, intent_id))
        ))
    }

    /// Whether `presented` is the client secret of `intent_id` of `merchant_id`, compared in
    /// constant time (its length, which is public, aside).
    pub fn verify(&self, merchant_id: &str, intent_id: &str, presented: &str) -> bool {
        let expected = self.of(merchant_id, intent_id);
        expected
            .expose()
            .as_bytes()
            .ct_eq(presented.as_bytes())
            .into()
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
}
