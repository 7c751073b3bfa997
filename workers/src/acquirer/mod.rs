//! The acquirer connector: the [`Acquirer`] trait the confirm and refund workers call, with its
//! requests, answers and errors, and the in-process retry helper [`with_retries`]. Its HTTP
//! implementation, [`HttpAcquirer`] (which speaks the protocol documented in the `acquirer-sim`
//! crate), lives in `http.rs`; a connector to a real acquirer would sit beside it. The tests
//! that drive the HTTP client against the simulator are integration tests
//! (`workers/tests/acquirer_sim.rs`).
//!
//! Every mutating call carries an idempotency key derived from the object it acts on, never a
//! random one (ARCHITECTURE.md, "At least once, never twice"): a call that timed out may well have charged, and the retry
//! has to present the same key so that the acquirer answers with the stored result instead of
//! charging again. The keys are:
//!
//! | call | key |
//! |---|---|
//! | authorize | `{reference}:authorize` (the payment intent id) |
//! | capture | `{charge_id}:capture` |
//! | void | `{charge_id}:void` |
//! | refund | `{reference}:refund` (our refund id) |
//!
//! Errors fall in three classes (ARCHITECTURE.md, the two retry layers): [`AcquirerError::Transient`] (5xx, 408,
//! 429, timeouts, connection failures) is retried; [`AcquirerError::Rejected`] (any other 4xx)
//! is final; [`AcquirerError::Protocol`] (an answer we cannot read) is retried too. With an
//! unreadable answer we do not know whether the acquirer charged, so it must not become a final
//! failure; retrying under the same key is harmless, and if the answer stays unreadable the
//! budget runs out, the message is redelivered and finally dead-lettered with the reason, where
//! an operator looks at it. A decline is not an error at all: it is
//! [`PaymentOutcome::Declined`].

use std::future::Future;

use async_trait::async_trait;
use backon::Retryable;
use paystream_shared::domain::money::Amount;
use paystream_shared::domain::outcome::ChargeOutcome;
use paystream_shared::domain::payment_intent::PaymentError;
use paystream_shared::retry::RetrySchedule;
use serde::Deserialize;

mod http;

pub use http::{AcquirerSetupError, HttpAcquirer};
pub use paystream_vault::client::VaultClient;

#[async_trait]
pub trait Acquirer: Send + Sync {
    /// Authorizes, and with `capture` also captures, a payment.
    async fn authorize(&self, req: &AuthorizeRequest) -> Result<PaymentOutcome, AcquirerError>;
    /// Captures an authorized charge, in full or in part.
    async fn capture(&self, req: &CaptureRequest) -> Result<Charge, AcquirerError>;
    /// Releases an authorization that was never captured.
    async fn void(&self, req: &VoidRequest) -> Result<Charge, AcquirerError>;
    async fn refund(&self, req: &RefundRequest) -> Result<RefundReceipt, AcquirerError>;
    /// Sends a dispute's evidence (`POST /v1/disputes/{id}/evidence`); the acquirer decides
    /// later and says so by notification.
    async fn submit_dispute_evidence(
        &self,
        acquirer_dispute_id: &str,
        idempotency_key: &str,
        evidence: &serde_json::Value,
    ) -> Result<(), AcquirerError>;
    /// The charges the acquirer holds for one of our references, oldest first. Reconciliation
    /// and recovery ask this when they do not know whether a call went through.
    async fn charges_for_reference(&self, reference: &str) -> Result<Vec<Charge>, AcquirerError>;
    /// The refund the acquirer made under one of our refund ids, with its current status
    /// (`pending` until an asynchronous settlement ends); `None` when it never received it.
    /// Reconciliation asks this for refunds that stayed `pending`.
    async fn refund_by_reference(
        &self,
        reference: &str,
    ) -> Result<Option<RefundReceipt>, AcquirerError>;
}

/// What an authorization charges: a test payment method the acquirer knows by name, or a
/// stored card or bank account that only the vault can put into the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instrument {
    /// A `pm_card_*` / `pm_bank_account` test id, sent to the acquirer as `paymentMethod`.
    Test(String),
    /// A stored payment method: the vault forwards the authorization with the number put in.
    Vault {
        merchant_id: String,
        vault_ref: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizeRequest {
    /// Our payment intent id.
    pub reference: String,
    /// Minor units of `currency`.
    pub amount: i64,
    pub currency: String,
    pub payment_method: Instrument,
    pub capture: bool,
    pub return_url: Option<String>,
}

impl AuthorizeRequest {
    pub fn idempotency_key(&self) -> String {
        format!("{}:authorize", self.reference)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRequest {
    pub charge_id: String,
    /// `None` captures the whole authorization.
    pub amount: Option<i64>,
}

impl CaptureRequest {
    pub fn idempotency_key(&self) -> String {
        format!("{}:capture", self.charge_id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoidRequest {
    pub charge_id: String,
}

impl VoidRequest {
    pub fn idempotency_key(&self) -> String {
        format!("{}:void", self.charge_id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    pub charge_id: String,
    pub amount: i64,
    /// Our refund id.
    pub reference: String,
}

impl RefundRequest {
    pub fn idempotency_key(&self) -> String {
        format!("{}:refund", self.reference)
    }
}

/// What an authorization came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentOutcome {
    Captured {
        charge_id: String,
        amount: i64,
    },
    Authorized {
        charge_id: String,
        amount: i64,
    },
    /// The issuer refused; final.
    Declined {
        code: String,
        decline_code: Option<String>,
        message: String,
    },
    /// The issuer wants a 3-D Secure challenge at `redirect_url` first.
    ActionRequired {
        charge_id: String,
        redirect_url: String,
    },
    /// A bank debit the acquirer accepted and settles later: its notification (or
    /// reconciliation) ends the payment, so the intent stays `processing`.
    Pending {
        charge_id: String,
    },
}

impl PaymentOutcome {
    /// The outcome in the domain's terms, which decide what it does to the intent; `None` for
    /// a debit still pending, which decides nothing yet.
    pub fn into_charge_outcome(self) -> Option<ChargeOutcome> {
        Some(match self {
            PaymentOutcome::Captured { charge_id, amount } => ChargeOutcome::Captured {
                charge_id,
                amount_received: Amount::from_stored(amount),
            },
            PaymentOutcome::Authorized { charge_id, amount } => ChargeOutcome::Authorized {
                charge_id,
                amount_capturable: Amount::from_stored(amount),
            },
            PaymentOutcome::Declined {
                code,
                decline_code,
                message,
            } => ChargeOutcome::Declined {
                charge_id: None,
                error: PaymentError {
                    code,
                    decline_code,
                    message,
                },
            },
            PaymentOutcome::ActionRequired {
                charge_id,
                redirect_url,
            } => ChargeOutcome::RequiresAction {
                charge_id,
                redirect_url,
            },
            PaymentOutcome::Pending { .. } => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeStatus {
    RequiresAction,
    Authorized,
    Captured,
    Voided,
    /// Captured, then refunded in full.
    Refunded,
    Declined,
    /// A bank debit not settled yet.
    Pending,
}

/// A charge as the acquirer holds it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Charge {
    pub id: String,
    pub reference: String,
    pub amount: i64,
    pub currency: String,
    pub status: ChargeStatus,
    #[serde(default)]
    pub amount_captured: i64,
    #[serde(default)]
    pub amount_refunded: i64,
    pub redirect_url: Option<String>,
    /// A declined charge's reason, as the acquirer gives it (a bank's `account_closed`, say).
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub decline_code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

impl Charge {
    /// What the charge, as the acquirer holds it, says about the payment: `None` for a voided
    /// charge, which decided nothing an intent could move to.
    pub fn outcome(&self) -> Option<ChargeOutcome> {
        let charge_id = self.id.clone();
        Some(match self.status {
            ChargeStatus::Captured | ChargeStatus::Refunded => ChargeOutcome::Captured {
                charge_id,
                amount_received: Amount::from_stored(self.amount_captured),
            },
            ChargeStatus::Authorized => ChargeOutcome::Authorized {
                charge_id,
                amount_capturable: Amount::from_stored(self.amount),
            },
            ChargeStatus::Declined => ChargeOutcome::Declined {
                charge_id: Some(charge_id),
                error: PaymentError {
                    code: self.code.clone().unwrap_or_else(|| "card_declined".into()),
                    decline_code: self.decline_code.clone(),
                    message: self
                        .message
                        .clone()
                        .unwrap_or_else(|| "The acquirer declined the payment".into()),
                },
            },
            ChargeStatus::RequiresAction => ChargeOutcome::RequiresAction {
                charge_id,
                redirect_url: self.redirect_url.clone().unwrap_or_default(),
            },
            ChargeStatus::Voided | ChargeStatus::Pending => return None,
        })
    }

    /// What of the charge is still the customer's money at the acquirer: captured and not
    /// refunded.
    pub fn refundable(&self) -> i64 {
        match self.status {
            ChargeStatus::Captured => self
                .amount_captured
                .saturating_sub(self.amount_refunded)
                .max(0),
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    Pending,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RefundReceipt {
    pub id: String,
    pub amount: i64,
    pub status: RefundStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcquirerError {
    /// The acquirer could not be reached or failed on its side; the call may be retried with
    /// the same idempotency key.
    #[error("acquirer unavailable: {reason}")]
    Transient {
        reason: String,
        /// The acquirer's error code when it answered at all (a 5xx with a body), such as
        /// `processing_error`; `None` for timeouts and connection failures.
        code: Option<String>,
    },
    /// The acquirer refused the request itself (a 4xx other than a decline); retrying the same
    /// request cannot help.
    #[error("acquirer rejected the request with {status} {code}: {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    /// The acquirer answered something we cannot read; whether it acted is unknown.
    #[error("unreadable answer from the acquirer: {reason}")]
    Protocol { reason: String },
}

impl AcquirerError {
    /// Whether the call may succeed if repeated with the same idempotency key (see the module
    /// documentation for why an unreadable answer counts).
    /// Whether the acquirer itself answered that it could not process the card: a 5xx that
    /// carries the `processing_error` code, as opposed to an outage or a timeout.
    pub fn is_processing_error(&self) -> bool {
        matches!(self, AcquirerError::Transient { code: Some(c), .. } if c == "processing_error")
    }

    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            AcquirerError::Transient { .. } | AcquirerError::Protocol { .. }
        )
    }
}

/// Runs `op` until it succeeds, fails with an error that is not transient, or the schedule's
/// attempts (by default [`paystream_shared::retry::MAX_ATTEMPTS`]) are spent; then returns the
/// last error, which the caller turns into a delayed nak.
pub async fn with_retries<T, F, Fut>(schedule: &RetrySchedule, op: F) -> Result<T, AcquirerError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AcquirerError>>,
{
    op.retry(schedule.delays())
        .when(AcquirerError::is_transient)
        .notify(|error, delay| {
            tracing::warn!(%error, delay_ms = delay.as_millis(), "acquirer call failed; retrying");
        })
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use paystream_shared::retry::MAX_ATTEMPTS;

    use super::*;

    fn authorize(reference: &str, payment_method: &str, capture: bool) -> AuthorizeRequest {
        AuthorizeRequest {
            reference: reference.to_owned(),
            amount: 1099,
            currency: "usd".to_owned(),
            payment_method: Instrument::Test(payment_method.to_owned()),
            capture,
            return_url: None,
        }
    }

    fn fast(attempts: u32) -> RetrySchedule {
        RetrySchedule::new(Duration::from_millis(1), attempts)
    }

    #[tokio::test]
    async fn with_retries_spends_the_schedule_then_returns_the_last_error() {
        let attempts = AtomicU32::new(0);
        let err = with_retries(&fast(MAX_ATTEMPTS), || {
            let n = attempts.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                Err::<(), _>(AcquirerError::Transient {
                    reason: format!("attempt {n}"),
                    code: None,
                })
            }
        })
        .await
        .unwrap_err();
        assert_eq!(attempts.load(Ordering::SeqCst), MAX_ATTEMPTS);
        assert_eq!(err.to_string(), "acquirer unavailable: attempt 5");

        let attempts = AtomicU32::new(0);
        let value = with_retries(&fast(MAX_ATTEMPTS), || {
            let n = attempts.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(AcquirerError::Protocol {
                        reason: "garbled".to_owned(),
                    })
                } else {
                    Ok(n)
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(value, 2);
    }

    #[test]
    fn charges_map_to_the_domain_outcome() {
        let charge = |status| Charge {
            id: "ch_1".into(),
            reference: "pi_1".into(),
            amount: 1000,
            currency: "usd".into(),
            status,
            amount_captured: 600,
            amount_refunded: 100,
            redirect_url: Some("https://acq.test/3ds/ch_1".into()),
            code: None,
            decline_code: None,
            message: None,
        };
        assert_eq!(
            charge(ChargeStatus::Captured).outcome(),
            Some(ChargeOutcome::Captured {
                charge_id: "ch_1".into(),
                amount_received: Amount::from_stored(600)
            })
        );
        assert_eq!(charge(ChargeStatus::Captured).refundable(), 500);
        assert_eq!(charge(ChargeStatus::Authorized).refundable(), 0);
        assert_eq!(
            charge(ChargeStatus::Authorized).outcome(),
            Some(ChargeOutcome::Authorized {
                charge_id: "ch_1".into(),
                amount_capturable: Amount::from_stored(1000)
            })
        );
        assert!(matches!(
            charge(ChargeStatus::Declined).outcome(),
            Some(ChargeOutcome::Declined {
                charge_id: Some(_),
                ..
            })
        ));
        assert!(matches!(
            charge(ChargeStatus::RequiresAction).outcome(),
            Some(ChargeOutcome::RequiresAction { .. })
        ));
        assert_eq!(charge(ChargeStatus::Voided).outcome(), None);
        let declined = PaymentOutcome::Declined {
            code: "card_declined".into(),
            decline_code: Some("insufficient_funds".into()),
            message: "no".into(),
        }
        .into_charge_outcome();
        assert_eq!(
            PaymentOutcome::Pending {
                charge_id: "ch_1".into()
            }
            .into_charge_outcome(),
            None
        );
        assert_eq!(charge(ChargeStatus::Pending).outcome(), None);
        assert!(matches!(
            declined,
            Some(ChargeOutcome::Declined {
                charge_id: None,
                ..
            })
        ));
    }

    #[test]
    fn idempotency_keys_derive_from_the_object() {
        assert_eq!(
            authorize("pi_1", "pm_card_visa", true).idempotency_key(),
            "pi_1:authorize"
        );
        let capture = CaptureRequest {
            charge_id: "ch_1".to_owned(),
            amount: None,
        };
        assert_eq!(capture.idempotency_key(), "ch_1:capture");
        let void = VoidRequest {
            charge_id: "ch_1".to_owned(),
        };
        assert_eq!(void.idempotency_key(), "ch_1:void");
        let refund = RefundRequest {
            charge_id: "ch_1".to_owned(),
            amount: 1,
            reference: "re_1".to_owned(),
        };
        assert_eq!(refund.idempotency_key(), "re_1:refund");
    }
}
