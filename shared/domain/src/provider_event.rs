//! Notifications from the acquirer ("provider events"): the signature that proves a body came
//! from the acquirer, the envelope every notification shares, the typed events we act on, and
//! the ordering rule that keeps a late or repeated notification from moving an object backwards.
//!
//! Wire format (docs/acquirer.md, "Notifications to paystream"):
//! - header `Acquirer-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "{t}.{body}")>`
//!   (several `v1=` entries may be sent while the acquirer rotates its secret; one must match);
//! - body `{"id": "aevt_…", "type": "refund.succeeded", "createdAt": RFC 3339, "data": {...}}`,
//!   where `data` is the object as the acquirer's API shows it (a refund or a charge).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::payment_intent::PaymentIntentStatus;
use super::refund::RefundStatus;
use super::DomainError;

/// The header the acquirer signs its notifications in.
pub const SIGNATURE_HEADER: &str = "Acquirer-Signature";

/// How far a signature's timestamp may be from our clock, either way. Five minutes, as Stripe
/// does: wide enough for clock skew and a retry, narrow enough that a captured request cannot
/// be replayed for long.
pub const TOLERANCE_SECS: i64 = 300;

/// Why a notification's signature was refused. The API answers all of them with a 400 and
/// never says more than which of these it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Acquirer-Signature header is missing")]
    Missing,
    #[error("the Acquirer-Signature header is malformed")]
    Malformed,
    #[error("no signature in the Acquirer-Signature header matches the body")]
    Mismatch,
    #[error("the signature's timestamp is more than five minutes from now")]
    OutOfTolerance,
}

impl SignatureError {
    /// The contract error code the API answers with.
    pub fn code(self) -> &'static str {
        match self {
            SignatureError::Missing => "signature_missing",
            SignatureError::Malformed | SignatureError::Mismatch => "signature_invalid",
            SignatureError::OutOfTolerance => "signature_timestamp_out_of_tolerance",
        }
    }
}

/// A parsed `Acquirer-Signature` header: the timestamp and every `v1` signature, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader {
    timestamp: i64,
    signatures: Vec<Vec<u8>>,
}

impl SignatureHeader {
    /// Parses `t=<unix>,v1=<hex>[,v1=<hex>...]`. Unknown schemes (`v0=`, a future `v2=`) are
    /// skipped, so the acquirer can add one without breaking us; a header without any `v1` is
    /// malformed.
    pub fn parse(raw: &str) -> Result<Self, SignatureError> {
        let mut timestamp = None;
        let mut signatures = Vec::new();
        for part in raw.split(',') {
            let (key, value) = part
                .trim()
                .split_once('=')
                .ok_or(SignatureError::Malformed)?;
            match key {
                "t" => {
                    if timestamp.is_some() || value.is_empty() || value.len() > 12 {
                        return Err(SignatureError::Malformed);
                    }
                    let t = value
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                        .then(|| value.parse::<i64>().ok())
                        .flatten()
                        .ok_or(SignatureError::Malformed)?;
                    timestamp = Some(t);
                }
                "v1" => {
                    // 32 bytes of HMAC-SHA256; anything else can never match.
                    let bytes = hex::decode(value).map_err(|_| SignatureError::Malformed)?;
                    if bytes.len() != 32 {
                        return Err(SignatureError::Malformed);
                    }
                    signatures.push(bytes);
                }
                _ => {}
            }
        }
        match timestamp {
            Some(timestamp) if !signatures.is_empty() => Ok(Self {
                timestamp,
                signatures,
            }),
            _ => Err(SignatureError::Malformed),
        }
    }

    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value that signs `body` at `timestamp`: what the acquirer sends. Our tests use it
/// to forge nothing but what the acquirer itself would send.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(tag))
}

/// Checks a notification before anything in it is trusted: the header parses, one of its `v1`
/// signatures is the HMAC of `"{t}.{body}"` under `secret` (compared in constant time), and `t`
/// is within [`TOLERANCE_SECS`] of `now`. The signature is checked before the timestamp so
/// nothing about an unauthenticated request influences the answer beyond "refused".
pub fn verify(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<SignatureHeader, SignatureError> {
    let header = SignatureHeader::parse(header.ok_or(SignatureError::Missing)?)?;
    let expected = mac(secret, header.timestamp, body);
    // `verify_slice` compares in constant time; every candidate is tried so the time taken
    // does not depend on which one matched.
    let matched = header.signatures.iter().fold(false, |found, sig| {
        expected.clone().verify_slice(sig).is_ok() | found
    });
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    if (now.timestamp() - header.timestamp).abs() > TOLERANCE_SECS {
        return Err(SignatureError::OutOfTolerance);
    }
    Ok(header)
}

/// The acquirer's id for one notification (`aevt_…`): the key that makes processing it once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProviderEventId(String);

impl ProviderEventId {
    pub const PREFIX: &'static str = "aevt_";

    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let ok = raw.len() > Self::PREFIX.len()
            && raw.len() <= 100
            && raw.starts_with(Self::PREFIX)
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(DomainError::new(
                "parameter_invalid",
                Some("id".to_owned()),
                "`id` must be an acquirer event id starting with `aevt_`",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProviderEventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What every notification carries, parsed only as far as storing it needs. `data` stays
/// untyped here: a notification with a good envelope but bad `data` is still the acquirer's
/// word, so it is stored and then dead-lettered by the processor rather than refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub id: ProviderEventId,
    pub event_type: String,
    pub created_at: DateTime<Utc>,
    pub data: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEnvelope {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    created_at: DateTime<Utc>,
    data: serde_json::Value,
}

impl Envelope {
    /// Parses an (already authenticated) body. Errors name the field but never quote values.
    pub fn parse(body: &[u8]) -> Result<Self, DomainError> {
        let raw: RawEnvelope = serde_json::from_slice(body).map_err(|e| {
            let text = e.to_string();
            let what = text.split(" at line ").next().unwrap_or_default();
            let message = if what.starts_with("missing field") {
                format!("the notification is malformed: {what}")
            } else {
                "the notification is not an event object (id, type, createdAt, data)".to_owned()
            };
            DomainError::new("parameter_invalid", None, message)
        })?;
        let id = ProviderEventId::parse(&raw.id)?;
        let type_ok = (1..=100).contains(&raw.event_type.len())
            && raw
                .event_type
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_');
        if !type_ok {
            return Err(DomainError::new(
                "parameter_invalid",
                Some("type".to_owned()),
                "`type` must be an event type such as `refund.succeeded`",
            ));
        }
        if !raw.data.is_object() {
            return Err(DomainError::new(
                "parameter_invalid",
                Some("data".to_owned()),
                "`data` must be an object",
            ));
        }
        Ok(Self {
            id,
            event_type: raw.event_type,
            created_at: raw.created_at,
            data: raw.data,
        })
    }
}

/// The notification types paystream acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderEventType {
    RefundPending,
    RefundSucceeded,
    RefundFailed,
    PaymentSucceeded,
    PaymentFailed,
    PaymentRequiresAction,
    /// The acquirer opened a chargeback.
    DisputeCreated,
    /// The acquirer decided a chargeback: `won` or `lost`.
    DisputeClosed,
}

impl ProviderEventType {
    pub const ALL: [ProviderEventType; 8] = [
        ProviderEventType::RefundPending,
        ProviderEventType::RefundSucceeded,
        ProviderEventType::RefundFailed,
        ProviderEventType::PaymentSucceeded,
        ProviderEventType::PaymentFailed,
        ProviderEventType::PaymentRequiresAction,
        ProviderEventType::DisputeCreated,
        ProviderEventType::DisputeClosed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderEventType::RefundPending => "refund.pending",
            ProviderEventType::RefundSucceeded => "refund.succeeded",
            ProviderEventType::RefundFailed => "refund.failed",
            ProviderEventType::PaymentSucceeded => "payment.succeeded",
            ProviderEventType::PaymentFailed => "payment.failed",
            ProviderEventType::PaymentRequiresAction => "payment.requires_action",
            ProviderEventType::DisputeCreated => "dispute.created",
            ProviderEventType::DisputeClosed => "dispute.closed",
        }
    }
}

impl fmt::Display for ProviderEventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProviderEventType {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, DomainError> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                DomainError::new(
                    "parameter_invalid",
                    Some("type".to_owned()),
                    format!(
                        "`{}` is not a notification type paystream handles",
                        s.chars().take(100).collect::<String>()
                    ),
                )
            })
    }
}

/// How processing a notification ended, as recorded on its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessingOutcome {
    /// The object moved (or recorded the acquirer's id) as the notification says.
    Applied,
    /// The object already showed what the notification says (the synchronous answer or an
    /// earlier notification got there first).
    Unchanged,
    /// The notification would have moved the object backwards; kept in the audit log.
    Ignored,
}

impl ProcessingOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessingOutcome::Applied => "applied",
            ProcessingOutcome::Unchanged => "unchanged",
            ProcessingOutcome::Ignored => "ignored",
        }
    }
}

/// What to do with a notification that says an object is now in `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<S> {
    /// Move through these statuses, in order (the last is the target).
    Apply(Vec<S>),
    /// The object is already there.
    Unchanged,
    /// Applying it would move the object backwards or across a final status; the reason is
    /// kept with the audit entry.
    Ignore(String),
}

/// The ordering rule for payment intents. A notification is applied when the state machine
/// allows the move from the current status (directly, or through `processing` from a status in
/// which the acquirer holds a charge: a 3-D Secure payment that completed goes
/// `requires_action → processing → succeeded`, a capture `requires_capture → processing →
/// succeeded`), and:
/// - a move to a later stage of the payment's life (higher [`PaymentIntentStatus::progress`])
///   applies whenever it arrives: a payment that succeeded did succeed, however late we hear;
/// - a move between the in-flight statuses, which may alternate (`processing ↔
///   requires_action`, `requires_capture → processing`), applies only if the notification is
///   not older than the intent's last change; an older one describes a state the intent has
///   already left.
pub fn payment_verdict(
    current: PaymentIntentStatus,
    updated_at: DateTime<Utc>,
    target: PaymentIntentStatus,
    event_at: DateTime<Utc>,
) -> Verdict<PaymentIntentStatus> {
    use PaymentIntentStatus as S;
    if current == target {
        return Verdict::Unchanged;
    }
    let path = if current.can_transition(target) {
        vec![target]
    } else if matches!(current, S::RequiresAction | S::RequiresCapture)
        && S::Processing.can_transition(target)
    {
        // Only where the acquirer already holds a charge: an intent we never confirmed
        // (`requires_confirmation`) cannot have been charged, whatever a notification says.
        vec![S::Processing, target]
    } else {
        return Verdict::Ignore(format!(
            "the payment intent is `{current}`, which cannot move to `{target}`"
        ));
    };
    if target.progress() <= current.progress() && event_at < updated_at {
        return Verdict::Ignore(format!(
            "the notification ({}) is older than the payment intent's last change ({})",
            event_at.to_rfc3339(),
            updated_at.to_rfc3339()
        ));
    }
    Verdict::Apply(path)
}

/// The ordering rule for refunds, whose state machine has no cycles: `pending` moves to
/// `succeeded` or `failed` once, whenever the notification arrives; anything else is either
/// already true or would move a settled refund backwards.
pub fn refund_verdict(current: RefundStatus, target: RefundStatus) -> Verdict<RefundStatus> {
    if current == target {
        Verdict::Unchanged
    } else if current.can_transition(target) {
        Verdict::Apply(vec![target])
    } else {
        Verdict::Ignore(format!(
            "the refund is `{current}`, which cannot move to `{target}`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use PaymentIntentStatus as S;

    const SECRET: &[u8] = b"acq_whsec_test";

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn a_signed_body_verifies_and_anything_else_does_not() {
        let body = br#"{"id":"aevt_1"}"#;
        let header = sign(SECRET, 1_700_000_000, body);
        assert!(header.starts_with("t=1700000000,v1="));
        let ok = verify(SECRET, Some(&header), body, at(1_700_000_000)).unwrap();
        assert_eq!(ok.timestamp(), 1_700_000_000);

        assert_eq!(
            verify(
                SECRET,
                Some(&header),
                br#"{"id":"aevt_2"}"#,
                at(1_700_000_000)
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"other", Some(&header), body, at(1_700_000_000)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(SECRET, None, body, at(1_700_000_000)),
            Err(SignatureError::Missing)
        );
        // The timestamp is signed: moving it breaks the signature.
        let moved = header.replace("t=1700000000", "t=1700000001");
        assert_eq!(
            verify(SECRET, Some(&moved), body, at(1_700_000_000)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn five_minutes_either_way_and_no_more() {
        let body = b"{}";
        let t = 1_700_000_000;
        let header = sign(SECRET, t, body);
        assert!(verify(SECRET, Some(&header), body, at(t + 300)).is_ok());
        assert!(verify(SECRET, Some(&header), body, at(t - 300)).is_ok());
        assert!(verify(SECRET, Some(&header), body, at(t - 240)).is_ok());
        assert_eq!(
            verify(SECRET, Some(&header), body, at(t + 360)),
            Err(SignatureError::OutOfTolerance)
        );
        assert_eq!(
            verify(SECRET, Some(&header), body, at(t - 301)),
            Err(SignatureError::OutOfTolerance)
        );
    }

    #[test]
    fn any_matching_v1_is_enough_and_unknown_schemes_are_skipped() {
        let body = b"{}";
        let good = sign(SECRET, 10, body);
        let good_sig = good.split_once(",v1=").unwrap().1;
        let other = "0".repeat(64);
        let header = format!("t=10, v0=abc, v1={other}, v1={good_sig}");
        assert!(verify(SECRET, Some(&header), body, at(10)).is_ok());
        let header = format!("t=10,v1={other}");
        assert_eq!(
            verify(SECRET, Some(&header), body, at(10)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        for bad in [
            "",
            "garbage",
            "t=10",
            "v1=00",
            "t=abc,v1=00",
            "t=-5,v1=00",
            "t=10,t=11,v1=00",
            "t=10,v1=zz",
            "t=10,v1=0011",
            "t=,v1=00",
            "t=1234567890123,v1=00",
        ] {
            let header = bad.replace("v1=00", &format!("v1={}", "00".repeat(32)));
            assert_eq!(
                SignatureHeader::parse(&header),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(SignatureError::Missing.code(), "signature_missing");
        assert_eq!(SignatureError::Mismatch.code(), "signature_invalid");
        assert_eq!(SignatureError::Malformed.code(), "signature_invalid");
        assert_eq!(
            SignatureError::OutOfTolerance.code(),
            "signature_timestamp_out_of_tolerance"
        );
    }

    #[test]
    fn event_ids_have_the_acquirer_prefix() {
        assert_eq!(
            ProviderEventId::parse("aevt_01abc").unwrap().as_str(),
            "aevt_01abc"
        );
        assert_eq!(
            ProviderEventId::parse("aevt_x-1").unwrap().to_string(),
            "aevt_x-1"
        );
        for bad in ["", "aevt_", "evt_1", "aevt_a b", "aevt_ü", &"a".repeat(101)] {
            assert!(ProviderEventId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn envelopes_parse_and_name_what_is_wrong() {
        let env = Envelope::parse(
            br#"{"id":"aevt_1","type":"refund.succeeded","createdAt":"2026-01-02T03:04:05.678Z","data":{"id":"rf_1"},"extra":1}"#,
        )
        .unwrap();
        assert_eq!(env.id.as_str(), "aevt_1");
        assert_eq!(env.event_type, "refund.succeeded");
        assert_eq!(env.created_at.timestamp_subsec_millis(), 678);
        assert_eq!(env.data["id"], "rf_1");

        let err = Envelope::parse(br#"{"id":"aevt_1","type":"x","data":{}}"#).unwrap_err();
        assert!(err.message.contains("missing field `createdAt`"), "{err}");
        let err = Envelope::parse(b"not json 4242424242424242").unwrap_err();
        assert!(!err.message.contains("4242"), "{err}");
        let err = Envelope::parse(
            br#"{"id":"nope","type":"x","createdAt":"2026-01-02T03:04:05Z","data":{}}"#,
        )
        .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("id"));
        let err = Envelope::parse(
            br#"{"id":"aevt_1","type":"Refund Succeeded","createdAt":"2026-01-02T03:04:05Z","data":{}}"#,
        )
        .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("type"));
        let err = Envelope::parse(
            br#"{"id":"aevt_1","type":"x","createdAt":"2026-01-02T03:04:05Z","data":[1]}"#,
        )
        .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("data"));
    }

    #[test]
    fn event_types_round_trip() {
        for t in ProviderEventType::ALL {
            assert_eq!(t.as_str().parse::<ProviderEventType>().unwrap(), t);
            assert_eq!(t.to_string(), t.as_str());
        }
        assert!("dispute.funds_withdrawn"
            .parse::<ProviderEventType>()
            .is_err());
        assert_eq!(ProcessingOutcome::Applied.as_str(), "applied");
        assert_eq!(ProcessingOutcome::Unchanged.as_str(), "unchanged");
        assert_eq!(ProcessingOutcome::Ignored.as_str(), "ignored");
    }

    #[test]
    fn payments_move_forward_whenever_the_news_arrives() {
        let t0 = at(1_000);
        let later = t0 + TimeDelta::seconds(5);
        let earlier = t0 - TimeDelta::seconds(5);
        // A late success settles a processing intent even if it is "older" than our last write.
        assert_eq!(
            payment_verdict(S::Processing, t0, S::Succeeded, earlier),
            Verdict::Apply(vec![S::Succeeded])
        );
        // 3-D Secure completed: through processing.
        assert_eq!(
            payment_verdict(S::RequiresAction, t0, S::Succeeded, later),
            Verdict::Apply(vec![S::Processing, S::Succeeded])
        );
        assert_eq!(
            payment_verdict(S::RequiresAction, t0, S::Failed, later),
            Verdict::Apply(vec![S::Failed])
        );
        assert_eq!(
            payment_verdict(S::Processing, t0, S::RequiresCapture, later),
            Verdict::Apply(vec![S::RequiresCapture])
        );
        assert_eq!(
            payment_verdict(S::Succeeded, t0, S::Succeeded, later),
            Verdict::Unchanged
        );
    }

    #[test]
    fn payments_never_move_backwards() {
        let t0 = at(1_000);
        let later = t0 + TimeDelta::seconds(5);
        let earlier = t0 - TimeDelta::seconds(5);
        for (current, target) in [
            (S::Succeeded, S::RequiresAction),
            (S::Succeeded, S::Failed),
            (S::Failed, S::Succeeded),
            (S::Refunded, S::Succeeded),
            (S::Canceled, S::Succeeded),
            (S::RequiresConfirmation, S::Succeeded),
        ] {
            assert!(
                matches!(
                    payment_verdict(current, t0, target, later),
                    Verdict::Ignore(_)
                ),
                "{current} -> {target}"
            );
        }
        // The in-flight statuses alternate, so there time decides: an old "requires action"
        // must not undo a 3-D Secure challenge that was already completed.
        let Verdict::Ignore(reason) =
            payment_verdict(S::Processing, t0, S::RequiresAction, earlier)
        else {
            panic!("a stale requires_action must be ignored");
        };
        assert!(reason.contains("older"), "{reason}");
        assert_eq!(
            payment_verdict(S::Processing, t0, S::RequiresAction, later),
            Verdict::Apply(vec![S::RequiresAction])
        );
        assert!(matches!(
            payment_verdict(S::Processing, t0, S::RequiresCapture, earlier),
            Verdict::Ignore(_)
        ));
    }

    #[test]
    fn refunds_settle_once() {
        use RefundStatus as R;
        assert_eq!(
            refund_verdict(R::Pending, R::Succeeded),
            Verdict::Apply(vec![R::Succeeded])
        );
        assert_eq!(
            refund_verdict(R::Pending, R::Failed),
            Verdict::Apply(vec![R::Failed])
        );
        assert_eq!(
            refund_verdict(R::Succeeded, R::Succeeded),
            Verdict::Unchanged
        );
        assert_eq!(refund_verdict(R::Pending, R::Pending), Verdict::Unchanged);
        for (current, target) in [
            (R::Succeeded, R::Pending),
            (R::Succeeded, R::Failed),
            (R::Failed, R::Succeeded),
        ] {
            assert!(matches!(
                refund_verdict(current, target),
                Verdict::Ignore(_)
            ));
        }
    }
}
