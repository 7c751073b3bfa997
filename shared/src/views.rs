//! The objects as clients see them, in one place: the API answers with these, events carry
//! them as `data`, and webhooks deliver them. Serialized with serde everywhere, so a response,
//! its idempotent replay and the event it caused are byte-for-byte the same shape.
//! With the `openapi` feature they also describe themselves for the API's docs.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[cfg(feature = "openapi")]
use poem_openapi::{Enum, Object};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "camelCase"))]
#[serde(rename_all = "camelCase")]
pub struct PaymentErrorView {
    pub code: String,
    pub decline_code: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "camelCase"))]
#[serde(rename_all = "camelCase")]
pub struct RedirectToUrlView {
    pub url: String,
    pub return_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Enum))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
#[serde(rename_all = "snake_case")]
pub enum NextActionType {
    RedirectToUrl,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "camelCase"))]
#[serde(rename_all = "camelCase")]
pub struct NextActionView {
    #[serde(rename = "type")]
    #[cfg_attr(feature = "openapi", oai(rename = "type"))]
    pub action_type: NextActionType,
    pub redirect_to_url: RedirectToUrlView,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "camelCase"))]
#[serde(rename_all = "camelCase")]
pub struct PaymentIntentView {
    pub id: String,
    /// Integer count of the currency's minor unit.
    pub amount: i64,
    pub amount_capturable: i64,
    pub amount_received: i64,
    pub amount_refunded: i64,
    pub currency: String,
    /// One of CONTRACT.md's statuses, e.g. `requires_confirmation`, `processing`, `succeeded`.
    pub status: String,
    pub customer_id: String,
    pub payment_method_id: Option<String>,
    /// `automatic` or `manual`.
    pub capture_method: String,
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub last_payment_error: Option<PaymentErrorView>,
    pub next_action: Option<NextActionView>,
    pub authorization_expires_at: Option<DateTime<Utc>>,
    pub canceled_at: Option<DateTime<Utc>>,
    pub cancellation_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "camelCase"))]
#[serde(rename_all = "camelCase")]
pub struct RefundView {
    pub id: String,
    pub payment_intent_id: String,
    /// Integer count of the currency's minor unit.
    pub amount: i64,
    pub currency: String,
    pub reason: Option<String>,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
}

/// The kind of a stored payment method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Enum))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
#[serde(rename_all = "snake_case")]
pub enum PaymentMethodType {
    Card,
    BankAccount,
}

impl PaymentMethodType {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentMethodType::Card => "card",
            PaymentMethodType::BankAccount => "bank_account",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "card" => Some(PaymentMethodType::Card),
            "bank_account" => Some(PaymentMethodType::BankAccount),
            _ => None,
        }
    }
}

/// A card's display fields, as the vault returned them; never the number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "camelCase"))]
#[serde(rename_all = "camelCase")]
pub struct CardView {
    /// `visa`, `mastercard`, `amex`, `discover`, ... or `unknown`.
    pub brand: String,
    pub last4: String,
    pub exp_month: i64,
    pub exp_year: i64,
    /// The same card gives the same fingerprint for one merchant.
    pub fingerprint: String,
    /// `credit`, `debit`, `prepaid` or `unknown`.
    pub funding: String,
}

/// A bank account's display fields; never the account number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "camelCase"))]
#[serde(rename_all = "camelCase")]
pub struct BankAccountView {
    pub bank_name: Option<String>,
    pub last4: String,
    pub routing_number: String,
    pub country: String,
    /// `individual` or `company`.
    pub account_holder_type: String,
    pub fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "camelCase"))]
#[serde(rename_all = "camelCase")]
pub struct PaymentMethodView {
    pub id: String,
    #[serde(rename = "type")]
    #[cfg_attr(feature = "openapi", oai(rename = "type"))]
    pub method_type: PaymentMethodType,
    /// `null` once detached.
    pub customer_id: Option<String>,
    pub card: Option<CardView>,
    pub bank_account: Option<BankAccountView>,
    pub created_at: DateTime<Utc>,
    /// When the method was detached; a detached method cannot be used to confirm.
    pub detached_at: Option<DateTime<Utc>>,
}

/// What clients see of a payment intent. A trait rather than a method of the domain type: the
/// views carry the API's schema derives, which the domain crate must not know about.
pub trait IntentView {
    fn view(&self) -> PaymentIntentView;
    fn to_json(&self) -> serde_json::Value;
}

impl IntentView for crate::domain::payment_intent::PaymentIntent {
    fn view(&self) -> PaymentIntentView {
        PaymentIntentView {
            id: self.id.clone(),
            amount: self.amount.minor_units(),
            amount_capturable: self.amount_capturable.minor_units(),
            amount_received: self.amount_received.minor_units(),
            amount_refunded: self.amount_refunded.minor_units(),
            currency: self.currency.code().to_owned(),
            status: self.status.as_str().to_owned(),
            customer_id: self.customer_id.clone(),
            payment_method_id: self.payment_method_id.clone(),
            capture_method: self.capture_method.as_str().to_owned(),
            description: self.description.clone(),
            metadata: self.metadata.clone(),
            last_payment_error: self.last_payment_error.as_ref().map(|e| PaymentErrorView {
                code: e.code.clone(),
                decline_code: e.decline_code.clone(),
                message: e.message.clone(),
            }),
            next_action: self.next_action.as_ref().map(|a| NextActionView {
                action_type: NextActionType::RedirectToUrl,
                redirect_to_url: RedirectToUrlView {
                    url: a.url.clone(),
                    return_url: a.return_url.clone(),
                },
            }),
            authorization_expires_at: self.authorization_expires_at,
            canceled_at: self.canceled_at,
            cancellation_reason: self.cancellation_reason.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }

    /// The view as JSON, for audit entries and event data.
    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.view()).unwrap_or_default()
    }
}
