//! Envelope encryption. Each record is sealed with AES-256-GCM under a data key (DEK) of its
//! own; each DEK is sealed ("wrapped") with AES-256-GCM under the key-encryption key (KEK).
//! Associated data binds every ciphertext to where it belongs (a record to its id, merchant and
//! kind; a DEK to its id and purpose), so a ciphertext copied onto another row does not open.
//!
//! Sealed bytes are `nonce (12) || ciphertext || tag (16)`, with a fresh random nonce each
//! time: a key seals at most a handful of messages (a DEK one record, the KEK one DEK per
//! record), far below the 2^32 random-nonce limit of GCM.

use hmac::{Hmac, Mac};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the system random number generator failed")]
    Random,
    /// Wrong key, wrong associated data or altered bytes: AES-GCM tells them apart from nothing.
    #[error("ciphertext does not open under this key")]
    Open,
    #[error("data key {dek} is wrapped by KEK {kek}, which this vault does not hold (set PAYSTREAM_VAULT_KEK_PREVIOUS to it)")]
    UnknownKek { dek: String, kek: String },
}

pub const KEY_LEN: usize = 32;

pub fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| CryptoError::Random)?;
    Ok(out)
}

fn aead_key(bytes: &[u8; KEY_LEN]) -> LessSafeKey {
    // AES-256 takes any 32 bytes, so this cannot fail.
    #[allow(clippy::expect_used)]
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte AES-256 key"))
}

fn seal(key: &LessSafeKey, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let nonce_bytes = random_bytes::<NONCE_LEN>()?;
    let mut in_out = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce_bytes),
        Aad::from(aad),
        &mut in_out,
    )
    .map_err(|_| CryptoError::Random)?;
    let mut out = Vec::with_capacity(NONCE_LEN + in_out.len());
    out.extend_from_slice(&nonce_bytes);
    out.extend_from_slice(&in_out);
    Ok(out)
}

fn open(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < NONCE_LEN {
        return Err(CryptoError::Open);
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Open)?;
    let mut in_out = ciphertext.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(aad), &mut in_out)
        .map_err(|_| CryptoError::Open)?;
    Ok(plain.to_vec())
}

/// A key-encryption key and its id (the first 8 bytes of its SHA-256, in hex), which every
/// wrapped DEK records so the vault knows which KEK opens it. The id reveals nothing usable.
#[derive(Clone)]
pub struct Kek {
    id: String,
    key: std::sync::Arc<LessSafeKey>,
}

impl Kek {
    pub fn new(bytes: [u8; KEY_LEN]) -> Self {
        let digest = Sha256::digest(bytes);
        Kek {
            id: hex::encode(&digest[..8]),
            key: std::sync::Arc::new(aead_key(&bytes)),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// A data key in memory. Never printed, never stored unwrapped.
pub struct DataKey([u8; KEY_LEN]);

impl DataKey {
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(DataKey(random_bytes()?))
    }

    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        seal(&aead_key(&self.0), aad, plaintext)
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        open(&aead_key(&self.0), aad, sealed)
    }

    /// HMAC-SHA256 under this key (the fingerprint secret is a data key of its own).
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        #[allow(clippy::expect_used)]
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        for part in parts {
            // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

/// The KEKs this vault process holds: the current one wraps, either one unwraps.
#[derive(Clone)]
pub struct Keyring {
    current: Kek,
    previous: Option<Kek>,
}

fn dek_aad(dek_id: &str, purpose: &str) -> Vec<u8> {
    format!("paystream-vault/dek/v1|{dek_id}|{purpose}").into_bytes()
}

impl Keyring {
    pub fn new(current: Kek, previous: Option<Kek>) -> Self {
        Keyring { current, previous }
    }

    pub fn current_id(&self) -> &str {
        self.current.id()
    }

    pub fn previous_id(&self) -> Option<&str> {
        self.previous.as_ref().map(Kek::id)
    }

    /// Wraps `dek` under the current KEK: `(kek_id, wrapped)`.
    pub fn wrap(
        &self,
        dek_id: &str,
        purpose: &str,
        dek: &DataKey,
    ) -> Result<(String, Vec<u8>), CryptoError> {
        let wrapped = seal(&self.current.key, &dek_aad(dek_id, purpose), &dek.0)?;
        Ok((self.current.id.clone(), wrapped))
    }

    pub fn unwrap(
        &self,
        dek_id: &str,
        purpose: &str,
        kek_id: &str,
        wrapped: &[u8],
    ) -> Result<DataKey, CryptoError> {
        let kek = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.id == kek_id)
            .ok_or_else(|| CryptoError::UnknownKek {
                dek: dek_id.to_owned(),
                kek: kek_id.to_owned(),
            })?;
        let bytes = open(&kek.key, &dek_aad(dek_id, purpose), wrapped)?;
        let key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| CryptoError::Open)?;
        Ok(DataKey(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_opens_only_with_its_key_and_associated_data() {
        let dek = DataKey::generate().unwrap();
        let sealed = dek.seal(b"rec_1|m_1", b"4242424242424242").unwrap();
        assert!(!sealed.windows(16).any(|w| w == b"4242424242424242"));
        assert_eq!(
            dek.open(b"rec_1|m_1", &sealed).unwrap(),
            b"4242424242424242"
        );
        assert!(dek.open(b"rec_2|m_1", &sealed).is_err());
        assert!(DataKey::generate()
            .unwrap()
            .open(b"rec_1|m_1", &sealed)
            .is_err());
        let mut tampered = sealed.clone();
        tampered[20] ^= 1;
        assert!(dek.open(b"rec_1|m_1", &tampered).is_err());
    }

    #[test]
    fn the_previous_kek_unwraps_until_it_is_dropped() {
        let old = Kek::new([1; 32]);
        let new = Kek::new([2; 32]);
        assert_ne!(old.id(), new.id());
        assert_eq!(old.id().len(), 16);
        let dek = DataKey::generate().unwrap();
        let (kek_id, wrapped) = Keyring::new(old.clone(), None)
            .wrap("dk_1", "record", &dek)
            .unwrap();
        let rotating = Keyring::new(new.clone(), Some(old));
        let back = rotating
            .unwrap("dk_1", "record", &kek_id, &wrapped)
            .unwrap();
        assert_eq!(back.0, dek.0);
        assert!(rotating
            .unwrap("dk_2", "record", &kek_id, &wrapped)
            .is_err());
        let (new_id, rewrapped) = rotating.wrap("dk_1", "record", &back).unwrap();
        assert_eq!(new_id, new.id());
        let after = Keyring::new(new, None);
        assert!(matches!(
            after.unwrap("dk_1", "record", &kek_id, &wrapped),
            Err(CryptoError::UnknownKek { .. })
        ));
        assert_eq!(
            after
                .unwrap("dk_1", "record", &new_id, &rewrapped)
                .unwrap()
                .0,
            dek.0
        );
    }

    #[test]
    fn macs_are_keyed_and_length_prefixed() {
        let a = DataKey::generate().unwrap();
        let b = DataKey::generate().unwrap();
        assert_eq!(a.mac(&[b"m", b"4242"]), a.mac(&[b"m", b"4242"]));
        assert_ne!(a.mac(&[b"m", b"4242"]), b.mac(&[b"m", b"4242"]));
        assert_ne!(a.mac(&[b"ab", b"c"]), a.mac(&[b"a", b"bc"]));
    }
}
