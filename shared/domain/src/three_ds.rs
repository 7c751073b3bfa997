//! The 3-D Secure result token: the acquirer's signed word on how a challenge ended, carried
//! by the cardholder's browser from the challenge page to paystream's callback
//! (`GET /api/payment-intents/{id}/3ds/callback?result=<token>`).
//!
//! The browser holds no API key, so the token authenticates itself: it is
//! `base64url(payload) "." base64url(HMAC-SHA256(key, base64url(payload)))`, both parts
//! unpadded, where `payload` is JSON `{"ref", "charge", "outcome", "amount", "iat", "exp"}`
//! (times in unix milliseconds).
//! The key is derived from the acquirer's notification secret
//! (`HMAC-SHA256(secret, "paystream 3ds result token v1")`), so a notification signature can
//! never pass for a token or the other way round. A token is bound to one payment intent
//! (`ref`) and one charge, and expires [`TOKEN_TTL_SECS`] after the challenge ended.
//!
//! Both the simulator (which signs) and the API (which verifies) use this module, so the
//! format lives in one place.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::money::Amount;
use super::outcome::ChargeOutcome;
use super::payment_intent::PaymentError;

/// How long a result token is good for: long enough for a slow browser hop, short enough
/// that a token copied out of a history or a log is useless soon after.
pub const TOKEN_TTL_SECS: i64 = 600;

/// The longest token accepted; a real one is a few hundred bytes. Anything longer is refused
/// before any decoding work is done.
pub const MAX_TOKEN_LEN: usize = 2048;

/// The code (and decline code) of a failed challenge, on the charge and on the intent.
pub const AUTHENTICATION_FAILED: &str = "authentication_failed";
/// The message a failed challenge carries.
pub const AUTHENTICATION_FAILED_MESSAGE: &str = "The cardholder failed 3-D Secure authentication.";

const KEY_LABEL: &[u8] = b"paystream 3ds result token v1";

/// How the challenge ended, as the charge then stood at the acquirer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChallengeOutcome {
    /// Authenticated, and captured at once (automatic capture).
    Captured,
    /// Authenticated and authorized, waiting for a manual capture.
    Authorized,
    /// The cardholder failed the challenge; the charge is declined.
    Failed,
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultToken {
    /// Our payment intent id (the charge's `reference` at the acquirer).
    #[serde(rename = "ref")]
    pub reference: String,
    /// The acquirer's charge id.
    pub charge: String,
    pub outcome: ChallengeOutcome,
    /// The charge's amount in minor units.
    pub amount: i64,
    /// When the challenge ended (unix milliseconds: the ordering rule compares it with the
    /// intent's last change, which a whole second could wrongly precede).
    pub iat: i64,
    /// When the token stops being accepted (unix milliseconds).
    pub exp: i64,
}

/// Why a token was refused. The callback answers every one with the same 400 page; the
/// variant is only logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the result token is missing")]
    Missing,
    #[error("the result token is malformed")]
    Malformed,
    #[error("the result token's signature does not match")]
    BadSignature,
    #[error("the result token has expired")]
    Expired,
    #[error("the result token is for another payment intent")]
    WrongIntent,
}

fn key(secret: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(KEY_LABEL);
    mac.finalize().into_bytes().to_vec()
}

fn mac(secret: &[u8], payload_b64: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(&key(secret)).expect("any key length");
    mac.update(payload_b64);
    mac
}

impl ResultToken {
    /// A token for a challenge that ended at `now`, good for [`TOKEN_TTL_SECS`].
    pub fn new(
        reference: &str,
        charge: &str,
        outcome: ChallengeOutcome,
        amount: Amount,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            reference: reference.to_owned(),
            charge: charge.to_owned(),
            outcome,
            amount: amount.minor_units(),
            iat: now.timestamp_millis(),
            exp: now.timestamp_millis() + TOKEN_TTL_SECS * 1000,
        }
    }

    /// The signed, URL-safe text of the token.
    pub fn sign(&self, secret: &[u8]) -> String {
        let json = serde_json::to_vec(self).expect("a token serializes");
        let payload = URL_SAFE_NO_PAD.encode(json);
        let tag = mac(secret, payload.as_bytes()).finalize().into_bytes();
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// Checks a token before anything in it is trusted: its shape, then its signature
    /// (constant time), then its expiry, then that it is for `intent_id`. The signature comes
    /// first so an unauthenticated token learns nothing but "refused".
    pub fn verify(
        secret: &[u8],
        token: Option<&str>,
        intent_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Self, TokenError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(TokenError::Missing)?;
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let (payload, tag) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Malformed)?;
        mac(secret, payload.as_bytes())
            .verify_slice(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let parsed: Self = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if now.timestamp_millis() >= parsed.exp {
            return Err(TokenError::Expired);
        }
        if parsed.reference != intent_id {
            return Err(TokenError::WrongIntent);
        }
        Ok(parsed)
    }

    /// The token in the domain's terms: the same [`ChargeOutcome`] the acquirer's notification
    /// of this challenge yields, so both move the intent by one rule.
    pub fn charge_outcome(&self) -> ChargeOutcome {
        let charge_id = self.charge.clone();
        let amount = Amount::from_stored(self.amount);
        match self.outcome {
            ChallengeOutcome::Captured => ChargeOutcome::Captured {
                charge_id,
                amount_received: amount,
            },
            ChallengeOutcome::Authorized => ChargeOutcome::Authorized {
                charge_id,
                amount_capturable: amount,
            },
            ChallengeOutcome::Failed => ChargeOutcome::Declined {
                charge_id: Some(charge_id),
                error: authentication_failed(),
            },
        }
    }

    pub fn issued_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.iat).unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

/// The error a failed challenge leaves on the intent.
pub fn authentication_failed() -> PaymentError {
    PaymentError {
        code: AUTHENTICATION_FAILED.to_owned(),
        decline_code: Some(AUTHENTICATION_FAILED.to_owned()),
        message: AUTHENTICATION_FAILED_MESSAGE.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payment_intent::PaymentIntentStatus;

    const SECRET: &[u8] = b"acq_whsec_test";

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn token(outcome: ChallengeOutcome) -> ResultToken {
        ResultToken::new("pi_1", "ch_1", outcome, Amount::from_stored(1099), t0())
    }

    #[test]
    fn a_signed_token_verifies_and_round_trips() {
        let t = token(ChallengeOutcome::Captured);
        let text = t.sign(SECRET);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'));
        let back = ResultToken::verify(SECRET, Some(&text), "pi_1", t0()).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.exp - back.iat, TOKEN_TTL_SECS * 1000);
        assert_eq!(back.issued_at(), t0());
    }

    #[test]
    fn a_tampered_payload_or_signature_is_refused() {
        let text = token(ChallengeOutcome::Failed).sign(SECRET);
        let (payload, tag) = text.split_once('.').unwrap();
        let forged = ResultToken {
            outcome: ChallengeOutcome::Captured,
            ..token(ChallengeOutcome::Failed)
        };
        let forged_payload = forged.sign(b"other secret");
        let forged_payload = forged_payload.split_once('.').unwrap().0;
        let swapped = format!("{forged_payload}.{tag}");
        assert_eq!(
            ResultToken::verify(SECRET, Some(&swapped), "pi_1", t0()),
            Err(TokenError::BadSignature)
        );
        let mut bad_tag = tag.to_owned().into_bytes();
        bad_tag[0] = if bad_tag[0] == b'A' { b'B' } else { b'A' };
        let bad = format!("{payload}.{}", String::from_utf8(bad_tag).unwrap());
        assert_eq!(
            ResultToken::verify(SECRET, Some(&bad), "pi_1", t0()),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            ResultToken::verify(b"another secret", Some(&text), "pi_1", t0()),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn garbage_is_malformed_and_nothing_is_missing() {
        for bad in [
            "x",
            "a.b.c",
            "!!!.???",
            "abc.",
            &"a".repeat(MAX_TOKEN_LEN + 1),
        ] {
            let got = ResultToken::verify(SECRET, Some(bad), "pi_1", t0());
            assert!(
                matches!(got, Err(TokenError::Malformed | TokenError::BadSignature)),
                "{bad}: {got:?}"
            );
        }
        assert_eq!(
            ResultToken::verify(SECRET, None, "pi_1", t0()),
            Err(TokenError::Missing)
        );
        assert_eq!(
            ResultToken::verify(SECRET, Some(""), "pi_1", t0()),
            Err(TokenError::Missing)
        );
        // A correctly signed payload that is not a token is still refused.
        let payload = URL_SAFE_NO_PAD.encode(b"{\"ref\":1}");
        let tag = URL_SAFE_NO_PAD.encode(mac(SECRET, payload.as_bytes()).finalize().into_bytes());
        assert_eq!(
            ResultToken::verify(SECRET, Some(&format!("{payload}.{tag}")), "pi_1", t0()),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn the_issue_time_keeps_milliseconds() {
        // The ordering rule compares it with the intent's last change; rounding it down to the
        // second would make a fresh outcome look older than the challenge it ends.
        let at = t0() + chrono::TimeDelta::milliseconds(750);
        let t = ResultToken::new(
            "pi_1",
            "ch_1",
            ChallengeOutcome::Authorized,
            Amount::ZERO,
            at,
        );
        assert_eq!(t.issued_at(), at);
    }

    #[test]
    fn an_expired_token_is_refused() {
        let text = token(ChallengeOutcome::Captured).sign(SECRET);
        let late = t0() + chrono::TimeDelta::seconds(TOKEN_TTL_SECS);
        assert_eq!(
            ResultToken::verify(SECRET, Some(&text), "pi_1", late),
            Err(TokenError::Expired)
        );
        let almost = late - chrono::TimeDelta::seconds(1);
        assert!(ResultToken::verify(SECRET, Some(&text), "pi_1", almost).is_ok());
    }

    #[test]
    fn a_token_for_another_intent_is_refused() {
        let text = token(ChallengeOutcome::Captured).sign(SECRET);
        assert_eq!(
            ResultToken::verify(SECRET, Some(&text), "pi_2", t0()),
            Err(TokenError::WrongIntent)
        );
    }

    #[test]
    fn the_token_key_is_not_the_notification_key() {
        // A notification signature over the same bytes must not pass for a token's.
        let t = token(ChallengeOutcome::Captured);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&t).unwrap());
        let mut raw = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
        raw.update(payload.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(raw.finalize().into_bytes());
        assert_eq!(
            ResultToken::verify(SECRET, Some(&format!("{payload}.{tag}")), "pi_1", t0()),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn outcomes_map_to_the_notifications_statuses() {
        use PaymentIntentStatus as S;
        assert_eq!(
            token(ChallengeOutcome::Captured).charge_outcome().status(),
            S::Succeeded
        );
        assert_eq!(
            token(ChallengeOutcome::Authorized)
                .charge_outcome()
                .status(),
            S::RequiresCapture
        );
        let failed = token(ChallengeOutcome::Failed).charge_outcome();
        assert_eq!(failed.status(), S::Failed);
        assert_eq!(failed.charge_id(), Some("ch_1"));
        let ChargeOutcome::Declined { error, .. } = failed else {
            panic!("declined");
        };
        assert_eq!(error.code, AUTHENTICATION_FAILED);
    }
}
