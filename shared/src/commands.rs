//! Queue payloads: versioned, tagged types kept apart from the domain types, so a message
//! written by an older process still decodes (or fails loudly) after an upgrade.

use serde::{Deserialize, Serialize};

pub const SUBJECT_PAYMENT_CONFIRM: &str = "cmd.payment.confirm";
pub const SUBJECT_PAYMENT_CAPTURE: &str = "cmd.payment.capture";
pub const SUBJECT_PAYMENT_CANCEL: &str = "cmd.payment.cancel";
pub const SUBJECT_PAYMENT_RETURN: &str = "cmd.payment.return";
pub const SUBJECT_DISPUTE_EVIDENCE: &str = "cmd.payment.dispute_evidence";
pub const SUBJECT_REFUND_PROCESS: &str = "cmd.refund.process";
pub const SUBJECT_WEBHOOK_DELIVER: &str = "cmd.webhook.deliver";
pub const SUBJECT_PROVIDER_EVENT: &str = "cmd.provider_event.process";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum PaymentCommand {
    /// `intent_version` is the intent's version when the command was issued (see
    /// `store::payment_intents::next_version`): a worker finding another version knows the
    /// command is for a state the intent has left. Optional, so a message written before it
    /// existed still decodes.
    #[serde(rename = "payment.confirm.v1", rename_all = "camelCase")]
    ConfirmV1 {
        payment_intent_id: String,
        merchant_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        intent_version: Option<i64>,
    },
    #[serde(rename = "payment.capture.v1", rename_all = "camelCase")]
    CaptureV1 {
        payment_intent_id: String,
        merchant_id: String,
        amount_to_capture: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        intent_version: Option<i64>,
    },
    /// Voids an authorization at the acquirer after the intent was canceled.
    #[serde(rename = "payment.cancel.v1", rename_all = "camelCase")]
    CancelV1 {
        payment_intent_id: String,
        merchant_id: String,
    },
    /// Gives back the money of a charge the acquirer holds for an intent that is `failed` or
    /// `canceled` (an orphan charge): voided if only authorized, refunded if captured, with
    /// idempotency keys derived from the charge, so it happens once however often it is sent.
    #[serde(rename = "payment.return_orphan.v1", rename_all = "camelCase")]
    ReturnOrphanV1 {
        payment_intent_id: String,
        merchant_id: String,
        charge_id: String,
    },
    /// Sends a submitted dispute's evidence to the acquirer, once (the idempotency key is
    /// derived from the dispute), by the worker that talks to the acquirer.
    #[serde(rename = "payment.dispute_evidence.v1", rename_all = "camelCase")]
    SubmitDisputeEvidenceV1 {
        payment_intent_id: String,
        merchant_id: String,
        dispute_id: String,
    },
}

impl PaymentCommand {
    /// The void a cancel of `intent` must queue: only when the acquirer holds a charge for it
    /// (an authorization, or one waiting for 3-D Secure), or a late capture or authentication
    /// could still take the money.
    pub fn void_for(intent: &crate::domain::payment_intent::PaymentIntent) -> Option<Self> {
        intent
            .acquirer_charge_id
            .is_some()
            .then(|| PaymentCommand::CancelV1 {
                payment_intent_id: intent.id.clone(),
                merchant_id: intent.merchant_id.clone(),
            })
    }

    /// `(subject, payload)`, as a transition queues it.
    pub fn message(&self) -> (&'static str, serde_json::Value) {
        (self.subject(), self.to_json())
    }

    pub fn subject(&self) -> &'static str {
        match self {
            PaymentCommand::ConfirmV1 { .. } => SUBJECT_PAYMENT_CONFIRM,
            PaymentCommand::CaptureV1 { .. } => SUBJECT_PAYMENT_CAPTURE,
            PaymentCommand::CancelV1 { .. } => SUBJECT_PAYMENT_CANCEL,
            PaymentCommand::ReturnOrphanV1 { .. } => SUBJECT_PAYMENT_RETURN,
            PaymentCommand::SubmitDisputeEvidenceV1 { .. } => SUBJECT_DISPUTE_EVIDENCE,
        }
    }

    pub fn payment_intent_id(&self) -> &str {
        match self {
            PaymentCommand::ConfirmV1 {
                payment_intent_id, ..
            }
            | PaymentCommand::CaptureV1 {
                payment_intent_id, ..
            }
            | PaymentCommand::CancelV1 {
                payment_intent_id, ..
            }
            | PaymentCommand::ReturnOrphanV1 {
                payment_intent_id, ..
            }
            | PaymentCommand::SubmitDisputeEvidenceV1 {
                payment_intent_id, ..
            } => payment_intent_id,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum RefundCommand {
    #[serde(rename = "refund.process.v1", rename_all = "camelCase")]
    ProcessV1 {
        refund_id: String,
        merchant_id: String,
    },
}

impl RefundCommand {
    pub fn refund_id(&self) -> &str {
        match self {
            RefundCommand::ProcessV1 { refund_id, .. } => refund_id,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// Processes one stored acquirer notification (a `provider_events` row). It carries only the
/// id: the row holds the event as received, so a redelivered command reads the same event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ProviderEventCommand {
    #[serde(rename = "provider_event.process.v1", rename_all = "camelCase")]
    ProcessV1 { event_id: String },
}

impl ProviderEventCommand {
    pub fn event_id(&self) -> &str {
        match self {
            ProviderEventCommand::ProcessV1 { event_id } => event_id,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_tagged_and_versioned() {
        let c = PaymentCommand::ConfirmV1 {
            payment_intent_id: "pi_1".into(),
            merchant_id: "mer_1".into(),
            intent_version: None,
        };
        let v = c.to_json();
        assert_eq!(
            v,
            serde_json::json!({"type": "payment.confirm.v1", "paymentIntentId": "pi_1", "merchantId": "mer_1"})
        );
        assert_eq!(serde_json::from_value::<PaymentCommand>(v).unwrap(), c);
        assert_eq!(c.subject(), SUBJECT_PAYMENT_CONFIRM);
        assert_eq!(c.payment_intent_id(), "pi_1");
        let cap = PaymentCommand::CaptureV1 {
            payment_intent_id: "pi_2".into(),
            merchant_id: "m".into(),
            amount_to_capture: 5,
            intent_version: Some(7),
        };
        assert_eq!(cap.subject(), SUBJECT_PAYMENT_CAPTURE);
        assert_eq!(cap.to_json()["intentVersion"], 7);
        assert_eq!(
            serde_json::from_value::<PaymentCommand>(cap.to_json()).unwrap(),
            cap
        );
        // A capture queued before commands carried the version still decodes.
        let old = serde_json::json!({"type": "payment.capture.v1", "paymentIntentId": "pi_2",
                                     "merchantId": "m", "amountToCapture": 5});
        assert!(matches!(
            serde_json::from_value::<PaymentCommand>(old).unwrap(),
            PaymentCommand::CaptureV1 {
                intent_version: None,
                ..
            }
        ));
        assert_eq!(
            PaymentCommand::CancelV1 {
                payment_intent_id: "pi_3".into(),
                merchant_id: "m".into()
            }
            .subject(),
            SUBJECT_PAYMENT_CANCEL
        );
        let orphan = PaymentCommand::ReturnOrphanV1 {
            payment_intent_id: "pi_4".into(),
            merchant_id: "m".into(),
            charge_id: "ch_4".into(),
        };
        assert_eq!(orphan.subject(), SUBJECT_PAYMENT_RETURN);
        assert_eq!(orphan.to_json()["type"], "payment.return_orphan.v1");
        assert_eq!(orphan.to_json()["chargeId"], "ch_4");
        assert!(
            serde_json::from_str::<PaymentCommand>(r#"{"type":"payment.confirm.v9"}"#).is_err()
        );
    }

    #[test]
    fn provider_event_commands_carry_only_the_event_id() {
        let c = ProviderEventCommand::ProcessV1 {
            event_id: "aevt_1".into(),
        };
        let v = c.to_json();
        assert_eq!(
            v,
            serde_json::json!({"type": "provider_event.process.v1", "eventId": "aevt_1"})
        );
        assert_eq!(
            serde_json::from_value::<ProviderEventCommand>(v).unwrap(),
            c
        );
        assert_eq!(c.event_id(), "aevt_1");
    }
}
