//! Domain values. Each is a parsed newtype: an invalid value cannot exist past the edge.
//! Nothing in here knows about HTTP, NATS or SQL.
#![forbid(unsafe_code)]

pub mod dispute;
pub mod fees;
pub mod ids;
pub mod ledger;
pub mod money;
pub mod outcome;
pub mod payment_intent;
pub mod provider_event;
pub mod refund;
pub mod scrub;
pub mod secret;
pub mod settlement;
pub mod three_ds;
pub mod webhook;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

/// The current time at PostgreSQL's precision (microseconds), so a value read back from the
/// database equals the one we wrote and answered with.
pub fn now() -> DateTime<Utc> {
    let t = Utc::now();
    t.duration_trunc(TimeDelta::microseconds(1)).unwrap_or(t)
}

/// At most `max` characters of what a caller sent, for an error message. Scrubbed before it is
/// cut: a cut through a card number would leave a fragment too short for the scrubber to know.
pub(crate) fn quote_input(raw: &str, max: usize) -> String {
    scrub::scrub(raw).chars().take(max).collect()
}

/// A caller's mistake in a domain value, with the contract's error code and the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DomainError {
    pub code: &'static str,
    pub param: Option<String>,
    pub message: String,
}

impl DomainError {
    pub fn new(
        code: &'static str,
        param: impl Into<Option<String>>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            code,
            param: param.into(),
            message: message.into(),
        }
    }

    /// The same error, blamed on another field (a value parsed for `amount` may sit in `amountToCapture`).
    pub fn for_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_owned());
        self
    }
}
