//! The payment intent state machine. Every write path asks [`PaymentIntentStatus::transition`];
//! the allowed moves are data in one exhaustive match, so a new status cannot be added without
//! deciding its edges here.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::money::{Amount, Currency, Money};
use super::DomainError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentIntentStatus {
    RequiresPaymentMethod,
    RequiresConfirmation,
    RequiresAction,
    Processing,
    RequiresCapture,
    Succeeded,
    Failed,
    Canceled,
    Refunded,
}

use PaymentIntentStatus as S;

impl PaymentIntentStatus {
    pub const ALL: [PaymentIntentStatus; 9] = [
        S::RequiresPaymentMethod,
        S::RequiresConfirmation,
        S::RequiresAction,
        S::Processing,
        S::RequiresCapture,
        S::Succeeded,
        S::Failed,
        S::Canceled,
        S::Refunded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            S::RequiresPaymentMethod => "requires_payment_method",
            S::RequiresConfirmation => "requires_confirmation",
            S::RequiresAction => "requires_action",
            S::Processing => "processing",
            S::RequiresCapture => "requires_capture",
            S::Succeeded => "succeeded",
            S::Failed => "failed",
            S::Canceled => "canceled",
            S::Refunded => "refunded",
        }
    }

    /// The public transition table (docs/api.md), verbatim.
    pub fn can_transition(self, to: PaymentIntentStatus) -> bool {
        match self {
            S::RequiresPaymentMethod => matches!(to, S::RequiresConfirmation | S::Canceled),
            S::RequiresConfirmation => matches!(to, S::Processing | S::Canceled),
            S::Processing => {
                matches!(
                    to,
                    S::RequiresAction | S::RequiresCapture | S::Succeeded | S::Failed
                )
            }
            S::RequiresAction => matches!(to, S::Processing | S::Failed | S::Canceled),
            S::RequiresCapture => matches!(to, S::Processing | S::Canceled),
            S::Succeeded => matches!(to, S::Refunded),
            S::Failed | S::Canceled | S::Refunded => false,
        }
    }

    /// The move, or the contract's 409 `invalid_state_transition`. Never a silent no-op.
    pub fn transition(self, to: PaymentIntentStatus) -> Result<PaymentIntentStatus, DomainError> {
        if self.can_transition(to) {
            Ok(to)
        } else {
            Err(DomainError::new(
                "invalid_state_transition",
                None,
                format!("A payment intent in status `{self}` cannot move to `{to}`"),
            ))
        }
    }

    /// Whether a client may confirm an intent in this status. Asking
    /// `transition(Processing)` is not enough: `requires_action` and `requires_capture` may
    /// also move to `processing`, but by the 3-D Secure outcome and by a capture, never by a
    /// confirm.
    pub fn confirmable(self) -> Result<(), DomainError> {
        if matches!(self, S::RequiresPaymentMethod | S::RequiresConfirmation) {
            return Ok(());
        }
        Err(DomainError::new(
            "invalid_state_transition",
            None,
            format!(
                "Only a `requires_payment_method` or `requires_confirmation` payment intent can be confirmed; this one is `{self}`"
            ),
        ))
    }

    /// Whether a client may capture an intent in this status: only an authorization
    /// (`requires_capture`) is captured.
    pub fn capturable(self) -> Result<(), DomainError> {
        if self == S::RequiresCapture {
            return Ok(());
        }
        Err(DomainError::new(
            "invalid_state_transition",
            None,
            format!(
                "Only a `requires_capture` payment intent can be captured; this one is `{self}`"
            ),
        ))
    }

    pub fn is_final(self) -> bool {
        matches!(self, S::Failed | S::Canceled | S::Refunded)
    }

    /// How far along the life of a payment a status is. Transitions never lower it; the three
    /// in-flight statuses share a rank because they may alternate (3-D Secure, capture).
    pub fn progress(self) -> u8 {
        match self {
            S::RequiresPaymentMethod => 0,
            S::RequiresConfirmation => 1,
            S::Processing | S::RequiresAction | S::RequiresCapture => 2,
            S::Succeeded | S::Failed | S::Canceled => 3,
            S::Refunded => 4,
        }
    }
}

impl fmt::Display for PaymentIntentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PaymentIntentStatus {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        S::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                DomainError::new(
                    "parameter_invalid",
                    Some("status".to_owned()),
                    format!(
                        "`{}` is not a payment intent status",
                        super::quote_input(s, 40)
                    ),
                )
            })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CaptureMethod {
    #[default]
    Automatic,
    Manual,
}

impl CaptureMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureMethod::Automatic => "automatic",
            CaptureMethod::Manual => "manual",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        match raw {
            "automatic" => Ok(CaptureMethod::Automatic),
            "manual" => Ok(CaptureMethod::Manual),
            _ => Err(DomainError::new(
                "parameter_invalid",
                Some("captureMethod".to_owned()),
                "`captureMethod` must be `automatic` or `manual`",
            )),
        }
    }
}

/// Test payment methods that exist without a token, as in Stripe's test mode, with the test
/// card each one stands for at the acquirer.
pub const TEST_PAYMENT_METHODS: &[(&str, &str)] = &[
    ("pm_card_visa", "4242424242424242"),
    ("pm_card_mastercard", "5555555555554444"),
    ("pm_card_chargeDeclined", "4000000000000002"),
    ("pm_card_insufficientFunds", "4000000000009995"),
    ("pm_card_threeDSecureRequired", "4000002760003184"),
    ("pm_card_processingError", "4000000000000119"),
    ("pm_card_createDispute", "4000000000000259"),
    ("pm_bank_account", "000123456789"),
];

/// Whether a payment method is one of the built-in test methods.
pub fn is_test_payment_method(id: &str) -> bool {
    TEST_PAYMENT_METHODS.iter().any(|(pm, _)| *pm == id)
}

/// Payment methods whose issuer asks for 3-D Secure, so confirming them needs a `returnUrl`.
pub fn may_require_action(payment_method_id: &str) -> bool {
    payment_method_id == "pm_card_threeDSecureRequired"
}

/// A metadata map within the API's limits (docs/api.md): at most 50 keys, keys of 1..=40 characters,
/// values of at most 500 characters.
pub fn validate_metadata(
    metadata: &std::collections::BTreeMap<String, String>,
) -> Result<(), DomainError> {
    if metadata.len() > 50 {
        return Err(DomainError::new(
            "metadata_invalid",
            Some("metadata".to_owned()),
            "`metadata` may have at most 50 keys",
        ));
    }
    for (key, value) in metadata {
        let key_len = key.chars().count();
        if key_len == 0 || key_len > 40 {
            return Err(DomainError::new(
                "metadata_invalid",
                Some("metadata".to_owned()),
                "metadata keys must be 1 to 40 characters long",
            ));
        }
        if value.chars().count() > 500 {
            return Err(DomainError::new(
                "metadata_invalid",
                Some(format!("metadata[{}]", key)),
                "metadata values may be at most 500 characters long",
            ));
        }
    }
    Ok(())
}

/// Why a payment failed, as `lastPaymentError` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentError {
    pub code: String,
    pub decline_code: Option<String>,
    pub message: String,
}

/// What the customer must do next (3-D Secure): follow `url`, then come back to `return_url`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedirectAction {
    pub url: String,
    pub return_url: Option<String>,
}

/// A payment intent as the domain knows it: typed amounts, currency and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentIntent {
    pub id: String,
    pub merchant_id: String,
    pub amount: Amount,
    pub currency: Currency,
    pub status: PaymentIntentStatus,
    pub amount_capturable: Amount,
    pub amount_received: Amount,
    pub amount_refunded: Amount,
    pub customer_id: String,
    pub payment_method_id: Option<String>,
    pub capture_method: CaptureMethod,
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub last_payment_error: Option<PaymentError>,
    pub next_action: Option<RedirectAction>,
    pub return_url: Option<String>,
    pub authorization_expires_at: Option<DateTime<Utc>>,
    pub canceled_at: Option<DateTime<Utc>>,
    pub cancellation_reason: Option<String>,
    /// The acquirer's charge id, once it answered. Internal: never shown to merchants.
    pub acquirer_charge_id: Option<String>,
    /// Incremented by every write. A worker's write is guarded on the version it read, which
    /// never recurs, where a status (`processing`) can. Internal.
    pub version: i64,
    /// What a manual capture asked for, recorded with the capture itself so every later path
    /// captures exactly that. Internal.
    pub amount_to_capture: Option<Amount>,
    /// When the acquirer confirmed that a canceled intent's charge holds no money. Internal.
    pub void_confirmed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl PaymentIntent {
    pub fn money(&self) -> Money {
        Money::new(self.amount, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_contract_table_holds() {
        let allowed = [
            (S::RequiresPaymentMethod, S::RequiresConfirmation),
            (S::RequiresPaymentMethod, S::Canceled),
            (S::RequiresConfirmation, S::Processing),
            (S::RequiresConfirmation, S::Canceled),
            (S::Processing, S::RequiresAction),
            (S::Processing, S::RequiresCapture),
            (S::Processing, S::Succeeded),
            (S::Processing, S::Failed),
            (S::RequiresAction, S::Processing),
            (S::RequiresAction, S::Failed),
            (S::RequiresAction, S::Canceled),
            (S::RequiresCapture, S::Processing),
            (S::RequiresCapture, S::Canceled),
            (S::Succeeded, S::Refunded),
        ];
        for from in S::ALL {
            for to in S::ALL {
                assert_eq!(
                    from.can_transition(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn refused_transition_is_the_contract_409_code() {
        let err = S::Succeeded.transition(S::Processing).unwrap_err();
        assert_eq!(err.code, "invalid_state_transition");
        assert_eq!(
            S::Processing.transition(S::Succeeded).unwrap(),
            S::Succeeded
        );
    }

    #[test]
    fn every_status_answers_confirm_and_capture_with_a_result() {
        for st in S::ALL {
            let confirm = st.confirmable();
            assert_eq!(
                confirm.is_ok(),
                matches!(st, S::RequiresPaymentMethod | S::RequiresConfirmation),
                "{st}"
            );
            // What a confirm may do, the table allows: it leads to `processing` (through
            // `requires_confirmation` when the payment method is new).
            match confirm {
                Ok(()) => assert!(
                    st.can_transition(S::Processing) || st.can_transition(S::RequiresConfirmation)
                ),
                Err(e) => assert_eq!(e.code, "invalid_state_transition"),
            }
            let capture = st.capturable();
            assert_eq!(capture.is_ok(), st == S::RequiresCapture, "{st}");
            if let Err(e) = capture {
                assert_eq!(e.code, "invalid_state_transition");
            }
        }
    }

    #[test]
    fn final_statuses_have_no_exit() {
        for from in S::ALL.into_iter().filter(|s| s.is_final()) {
            assert!(S::ALL.iter().all(|to| !from.can_transition(*to)), "{from}");
        }
    }

    #[test]
    fn statuses_round_trip_through_text_and_json() {
        for s in S::ALL {
            assert_eq!(s.as_str().parse::<S>().unwrap(), s);
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
        assert!("pending".parse::<S>().is_err());
    }

    #[test]
    fn capture_method_parses() {
        assert_eq!(
            CaptureMethod::parse("manual").unwrap(),
            CaptureMethod::Manual
        );
        assert_eq!(
            CaptureMethod::parse("automatic").unwrap().as_str(),
            "automatic"
        );
        assert!(CaptureMethod::parse("later").is_err());
    }

    #[test]
    fn metadata_limits() {
        let mut m = BTreeMap::new();
        m.insert("order".to_owned(), "42".to_owned());
        assert!(validate_metadata(&m).is_ok());
        m.insert("k".repeat(41), "v".to_owned());
        assert!(validate_metadata(&m).is_err());
        let mut m = BTreeMap::new();
        m.insert("note".to_owned(), "v".repeat(501));
        assert_eq!(
            validate_metadata(&m).unwrap_err().param.as_deref(),
            Some("metadata[note]")
        );
        let many: BTreeMap<_, _> = (0..51).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(validate_metadata(&many).is_err());
    }

    #[test]
    fn test_payment_methods_are_known() {
        assert!(is_test_payment_method("pm_card_visa"));
        assert!(!is_test_payment_method("pm_card_unknown"));
        assert!(may_require_action("pm_card_threeDSecureRequired"));
        assert!(!may_require_action("pm_card_visa"));
    }

    proptest! {
        /// Walk random sequences of allowed transitions: progress never goes down, and nothing
        /// leaves a final status. A table edit that allowed, say, succeeded -> processing fails here.
        #[test]
        fn no_walk_moves_backwards(start in 0usize..9, choices in proptest::collection::vec(0usize..9, 0..40)) {
            let mut current = S::ALL[start];
            for choice in choices {
                let next = S::ALL[choice];
                match current.transition(next) {
                    Ok(to) => {
                        prop_assert!(to.progress() >= current.progress(), "{current} -> {to} moved backwards");
                        prop_assert!(!current.is_final());
                        current = to;
                    }
                    Err(e) => prop_assert_eq!(e.code, "invalid_state_transition"),
                }
            }
        }
    }
}
