//! The simulator's books: charges, refunds and the stored answer for every idempotency key.
//! Plain data with no locking of its own; [`crate::Sim`] holds it behind one mutex so that a
//! request's idempotency check, its decision and the record of both happen as one step.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};

use crate::cards::Decline;
use crate::settlement::Payout;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeStatus {
    /// Waiting for the cardholder's 3-D Secure challenge.
    RequiresAction,
    Authorized,
    Captured,
    Voided,
    /// Captured and then refunded in full.
    Refunded,
    Declined,
    /// A bank debit accepted and not settled yet.
    Pending,
}

impl ChargeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ChargeStatus::RequiresAction => "requires_action",
            ChargeStatus::Authorized => "authorized",
            ChargeStatus::Captured => "captured",
            ChargeStatus::Voided => "voided",
            ChargeStatus::Refunded => "refunded",
            ChargeStatus::Declined => "declined",
            ChargeStatus::Pending => "pending",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Charge {
    pub id: String,
    /// The caller's object (a payment intent id).
    pub reference: String,
    pub amount: i64,
    pub currency: &'static str,
    pub status: ChargeStatus,
    pub amount_captured: i64,
    pub amount_refunded: i64,
    pub decline: Option<Decline>,
    pub redirect_url: Option<String>,
    /// Where the challenge page sends the browser afterwards.
    pub return_url: Option<String>,
    /// Whether the payment asked to be captured at once; a completed challenge honours it.
    pub capture: bool,
    /// The cardholder will dispute this charge; read by the chargeback notifications.
    pub disputes_later: bool,
    /// How the 3-D Secure challenge ended, once it has: a second submission of the challenge
    /// answers with this same token.
    pub challenge_result: Option<paystream_domain::three_ds::ResultToken>,
    pub created_at: DateTime<Utc>,
}

impl Charge {
    /// The charge as `/v1` answers show it.
    pub fn to_json(&self) -> Value {
        let mut body = json!({
            "id": self.id,
            "reference": self.reference,
            "amount": self.amount,
            "currency": self.currency,
            "status": self.status,
            "amountCaptured": self.amount_captured,
            "amountRefunded": self.amount_refunded,
            "createdAt": self.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        if let Some(url) = &self.redirect_url {
            body["redirectUrl"] = json!(url);
        }
        if let Some(url) = &self.return_url {
            body["returnUrl"] = json!(url);
        }
        if let Some(decline) = &self.decline {
            body["code"] = json!(decline.code);
            body["declineCode"] = json!(decline.decline_code);
            body["message"] = json!(decline.message);
        }
        body
    }

    /// The charge as `GET /sim/charges` shows it (docs/acquirer.md).
    pub fn to_sim_json(&self) -> Value {
        json!({
            "id": self.id,
            "reference": self.reference,
            "amount": self.amount,
            "currency": self.currency,
            "status": self.status,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    /// Accepted, settling later (asynchronous settlement is on).
    Pending,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone)]
pub struct Refund {
    pub id: String,
    pub charge_id: String,
    /// The caller's refund id.
    pub reference: String,
    pub amount: i64,
    pub currency: &'static str,
    pub status: RefundStatus,
    pub failure_reason: Option<&'static str>,
    pub created_at: DateTime<Utc>,
}

impl Refund {
    pub fn to_json(&self) -> Value {
        let mut body = json!({
            "id": self.id,
            "payment": self.charge_id,
            "reference": self.reference,
            "amount": self.amount,
            "currency": self.currency,
            "status": self.status,
            "createdAt": self.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        if let Some(reason) = self.failure_reason {
            body["failureReason"] = json!(reason);
        }
        body
    }
}

/// What makes two requests "the same" under one idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub struct Fingerprint {
    pub method: String,
    pub path: String,
    pub body: BodyPrint,
}

/// JSON bodies compare as values, so key order and whitespace do not matter; anything that is
/// not JSON compares byte for byte.
#[derive(Debug, Clone, PartialEq)]
pub enum BodyPrint {
    Json(Value),
    Raw(Vec<u8>),
}

impl BodyPrint {
    pub fn of(body: &[u8]) -> Self {
        if body.iter().all(u8::is_ascii_whitespace) {
            // An empty body and `{}` ask for the same thing.
            return BodyPrint::Json(json!({}));
        }
        match serde_json::from_slice(body) {
            Ok(value) => BodyPrint::Json(value),
            Err(_) => BodyPrint::Raw(body.to_vec()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StoredAnswer {
    pub fingerprint: Fingerprint,
    pub status: u16,
    pub body: Value,
}

#[derive(Debug, Default)]
pub struct Ledger {
    charges: HashMap<String, Charge>,
    /// Charge ids per reference, oldest first.
    by_reference: HashMap<String, Vec<String>>,
    /// All charge ids, oldest first, for the unfiltered `/sim/charges`.
    order: Vec<String>,
    refunds: HashMap<String, Refund>,
    /// Refund ids per reference, oldest first.
    refunds_by_reference: HashMap<String, Vec<String>>,
    answers: HashMap<String, StoredAnswer>,
    /// Refund ids, oldest first, for settlement.
    refund_order: Vec<String>,
    /// What has gone into a payout already (charge and refund ids): each settles once.
    settled: HashSet<String>,
    /// Published payouts, oldest first.
    payouts: Vec<Payout>,
    /// Chargebacks on these charges (`disputes.rs`), under the same lock.
    pub chargebacks: crate::disputes::Chargebacks,
}

impl Ledger {
    pub fn insert_charge(&mut self, charge: Charge) {
        self.by_reference
            .entry(charge.reference.clone())
            .or_default()
            .push(charge.id.clone());
        self.order.push(charge.id.clone());
        self.charges.insert(charge.id.clone(), charge);
    }

    pub fn charge_mut(&mut self, id: &str) -> Option<&mut Charge> {
        self.charges.get_mut(id)
    }

    /// The charges for a reference, oldest first; every charge when `reference` is `None`.
    pub fn charges(&self, reference: Option<&str>) -> Vec<&Charge> {
        let ids = match reference {
            Some(r) => self.by_reference.get(r).map(Vec::as_slice).unwrap_or(&[]),
            None => self.order.as_slice(),
        };
        ids.iter().filter_map(|id| self.charges.get(id)).collect()
    }

    pub fn insert_refund(&mut self, refund: Refund) {
        self.refunds_by_reference
            .entry(refund.reference.clone())
            .or_default()
            .push(refund.id.clone());
        self.refund_order.push(refund.id.clone());
        self.refunds.insert(refund.id.clone(), refund);
    }

    pub fn refund_mut(&mut self, id: &str) -> Option<&mut Refund> {
        self.refunds.get_mut(id)
    }

    /// The refunds made under one of the caller's refund ids, oldest first.
    pub fn refunds_for(&self, reference: &str) -> Vec<&Refund> {
        self.refunds_by_reference
            .get(reference)
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .filter_map(|id| self.refunds.get(id))
            .collect()
    }

    /// Every refund, oldest first.
    pub fn all_refunds(&self) -> impl Iterator<Item = &Refund> {
        self.refund_order
            .iter()
            .filter_map(|id| self.refunds.get(id))
    }

    /// Whether a charge or refund has gone into a payout.
    pub fn is_settled(&self, id: &str) -> bool {
        self.settled.contains(id)
    }

    pub fn mark_settled(&mut self, id: String) {
        self.settled.insert(id);
    }

    pub fn insert_payout(&mut self, payout: Payout) {
        self.payouts.push(payout);
    }

    pub fn payouts(&self) -> &[Payout] {
        &self.payouts
    }

    pub fn answer(&self, key: &str) -> Option<&StoredAnswer> {
        self.answers.get(key)
    }

    pub fn store_answer(&mut self, key: String, answer: StoredAnswer) {
        self.answers.insert(key, answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_prints_ignore_layout_but_not_content() {
        assert_eq!(
            BodyPrint::of(br#"{"a":1,"b":[1,2]}"#),
            BodyPrint::of(b"{ \"b\": [1, 2], \"a\": 1 }")
        );
        assert_ne!(BodyPrint::of(br#"{"a":1}"#), BodyPrint::of(br#"{"a":2}"#));
        assert_eq!(BodyPrint::of(b""), BodyPrint::of(b"{}"));
        assert_eq!(
            BodyPrint::of(b"not json"),
            BodyPrint::Raw(b"not json".to_vec())
        );
    }
}
