//! The one rule for what an acquirer's word about a charge does to a payment intent.
//!
//! The acquirer tells us a charge's fate in three ways: the answer to our own call (the confirm
//! and capture workers), its books when we ask (reconciliation, abandonment) and its signed
//! notifications. All three end here, so an intent that learns "captured" from any of them
//! ends up with the same status, the same amounts and the same cleared `nextAction`.

use chrono::{DateTime, TimeDelta, Utc};

use super::money::Amount;
use super::payment_intent::{PaymentError, PaymentIntent, PaymentIntentStatus, RedirectAction};

/// How long an uncaptured authorization is held: 7 days, as Stripe holds card authorizations.
pub const AUTHORIZATION_TTL: TimeDelta = TimeDelta::days(7);

/// What became of a charge, as the acquirer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    /// Captured (and possibly refunded since): the money was taken.
    Captured {
        charge_id: String,
        amount_received: Amount,
    },
    /// Authorized and held, waiting for a manual capture.
    Authorized {
        charge_id: String,
        amount_capturable: Amount,
    },
    /// The issuer refused. An acquirer may decline before it ever made a charge.
    Declined {
        charge_id: Option<String>,
        error: PaymentError,
    },
    /// The issuer wants a 3-D Secure challenge at `redirect_url` first.
    RequiresAction {
        charge_id: String,
        redirect_url: String,
    },
}

impl ChargeOutcome {
    /// The status the outcome puts an intent in.
    pub fn status(&self) -> PaymentIntentStatus {
        match self {
            ChargeOutcome::Captured { .. } => PaymentIntentStatus::Succeeded,
            ChargeOutcome::Authorized { .. } => PaymentIntentStatus::RequiresCapture,
            ChargeOutcome::Declined { .. } => PaymentIntentStatus::Failed,
            ChargeOutcome::RequiresAction { .. } => PaymentIntentStatus::RequiresAction,
        }
    }

    pub fn charge_id(&self) -> Option<&str> {
        match self {
            ChargeOutcome::Captured { charge_id, .. }
            | ChargeOutcome::Authorized { charge_id, .. }
            | ChargeOutcome::RequiresAction { charge_id, .. } => Some(charge_id),
            ChargeOutcome::Declined { charge_id, .. } => charge_id.as_deref(),
        }
    }

    /// Whether the customer's money is taken or held at the acquirer.
    pub fn holds_money(&self) -> bool {
        matches!(
            self,
            ChargeOutcome::Captured { .. } | ChargeOutcome::Authorized { .. }
        )
    }

    /// Sets the fields of an intent entering `step` on its way to [`Self::status`]. A step
    /// before the last (the `processing` a 3-D Secure intent passes through) records only the
    /// charge: the challenge is over, nothing else is known yet. `now` starts the
    /// authorization's hold.
    pub fn apply(&self, pi: &mut PaymentIntent, step: PaymentIntentStatus, now: DateTime<Utc>) {
        if let Some(charge_id) = self.charge_id() {
            pi.acquirer_charge_id = Some(charge_id.to_owned());
        }
        pi.next_action = None;
        if step != self.status() {
            return;
        }
        match self {
            ChargeOutcome::Captured {
                amount_received, ..
            } => {
                pi.amount_received = *amount_received;
                pi.amount_capturable = Amount::ZERO;
            }
            ChargeOutcome::Authorized {
                amount_capturable, ..
            } => {
                pi.amount_capturable = *amount_capturable;
                pi.authorization_expires_at = Some(now + AUTHORIZATION_TTL);
            }
            ChargeOutcome::Declined { error, .. } => {
                pi.last_payment_error = Some(error.clone());
            }
            ChargeOutcome::RequiresAction { redirect_url, .. } => {
                pi.next_action = Some(RedirectAction {
                    url: redirect_url.clone(),
                    return_url: pi.return_url.clone(),
                });
            }
        }
    }
}

/// The merchant-facing event announcing that an intent entered `status`.
pub fn event_type_for(status: PaymentIntentStatus) -> &'static str {
    match status {
        PaymentIntentStatus::Processing => "payment_intent.processing",
        PaymentIntentStatus::Succeeded => "payment_intent.succeeded",
        PaymentIntentStatus::RequiresCapture => "payment_intent.amount_capturable_updated",
        PaymentIntentStatus::Failed => "payment_intent.payment_failed",
        PaymentIntentStatus::RequiresAction => "payment_intent.requires_action",
        PaymentIntentStatus::Canceled => "payment_intent.canceled",
        _ => "payment_intent.updated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Currency;
    use std::collections::BTreeMap;
    use PaymentIntentStatus as S;

    fn intent() -> PaymentIntent {
        let t = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        PaymentIntent {
            id: "pi_1".into(),
            merchant_id: "mer_1".into(),
            amount: Amount::from_stored(1000),
            currency: Currency::parse("usd").unwrap(),
            status: S::Processing,
            amount_capturable: Amount::ZERO,
            amount_received: Amount::ZERO,
            amount_refunded: Amount::ZERO,
            customer_id: "cus_1".into(),
            payment_method_id: Some("pm_card_visa".into()),
            capture_method: Default::default(),
            description: None,
            metadata: BTreeMap::new(),
            last_payment_error: None,
            next_action: Some(RedirectAction {
                url: "https://acq.test/3ds/ch_1".into(),
                return_url: None,
            }),
            return_url: Some("https://shop.test/back".into()),
            authorization_expires_at: None,
            canceled_at: None,
            cancellation_reason: None,
            acquirer_charge_id: None,
            version: 3,
            amount_to_capture: None,
            void_confirmed_at: None,
            created_at: t,
            updated_at: t,
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_100, 0).unwrap()
    }

    #[test]
    fn captured_takes_the_money_and_clears_the_challenge() {
        let o = ChargeOutcome::Captured {
            charge_id: "ch_1".into(),
            amount_received: Amount::from_stored(600),
        };
        let mut pi = intent();
        pi.amount_capturable = Amount::from_stored(1000);
        o.apply(&mut pi, o.status(), now());
        assert_eq!(o.status(), S::Succeeded);
        assert_eq!(pi.acquirer_charge_id.as_deref(), Some("ch_1"));
        assert_eq!(pi.amount_received.minor_units(), 600);
        assert_eq!(pi.amount_capturable, Amount::ZERO);
        assert_eq!(pi.next_action, None, "every path clears nextAction");
        assert!(o.holds_money());
    }

    #[test]
    fn authorized_holds_for_seven_days() {
        let o = ChargeOutcome::Authorized {
            charge_id: "ch_1".into(),
            amount_capturable: Amount::from_stored(1000),
        };
        let mut pi = intent();
        o.apply(&mut pi, S::RequiresCapture, now());
        assert_eq!(o.status(), S::RequiresCapture);
        assert_eq!(pi.amount_capturable.minor_units(), 1000);
        assert_eq!(
            pi.authorization_expires_at,
            Some(now() + TimeDelta::days(7))
        );
        assert_eq!(pi.next_action, None);
    }

    #[test]
    fn declined_records_the_error_and_maybe_no_charge() {
        let error = PaymentError {
            code: "card_declined".into(),
            decline_code: Some("insufficient_funds".into()),
            message: "no".into(),
        };
        let o = ChargeOutcome::Declined {
            charge_id: None,
            error: error.clone(),
        };
        let mut pi = intent();
        o.apply(&mut pi, S::Failed, now());
        assert_eq!(o.status(), S::Failed);
        assert_eq!(pi.last_payment_error, Some(error));
        assert_eq!(pi.acquirer_charge_id, None);
        assert_eq!(pi.next_action, None);
        assert!(!o.holds_money());
    }

    #[test]
    fn requires_action_points_at_the_challenge_and_back() {
        let o = ChargeOutcome::RequiresAction {
            charge_id: "ch_2".into(),
            redirect_url: "https://acq.test/3ds/ch_2".into(),
        };
        let mut pi = intent();
        pi.next_action = None;
        o.apply(&mut pi, S::RequiresAction, now());
        let action = pi.next_action.unwrap();
        assert_eq!(action.url, "https://acq.test/3ds/ch_2");
        assert_eq!(action.return_url.as_deref(), Some("https://shop.test/back"));
        assert!(!o.holds_money());
    }

    #[test]
    fn an_intermediate_step_records_only_the_charge() {
        let o = ChargeOutcome::Captured {
            charge_id: "ch_1".into(),
            amount_received: Amount::from_stored(1000),
        };
        let mut pi = intent();
        pi.status = S::RequiresAction;
        o.apply(&mut pi, S::Processing, now());
        assert_eq!(pi.acquirer_charge_id.as_deref(), Some("ch_1"));
        assert_eq!(pi.amount_received, Amount::ZERO);
        assert_eq!(pi.next_action, None);
    }

    #[test]
    fn each_status_announces_its_event() {
        assert_eq!(event_type_for(S::Processing), "payment_intent.processing");
        assert_eq!(event_type_for(S::Succeeded), "payment_intent.succeeded");
        assert_eq!(
            event_type_for(S::RequiresCapture),
            "payment_intent.amount_capturable_updated"
        );
        assert_eq!(event_type_for(S::Failed), "payment_intent.payment_failed");
        assert_eq!(
            event_type_for(S::RequiresAction),
            "payment_intent.requires_action"
        );
        assert_eq!(event_type_for(S::Canceled), "payment_intent.canceled");
        assert_eq!(event_type_for(S::Refunded), "payment_intent.updated");
    }
}
