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
    /// Why the payment failed, e.g. `card_declined`, `authentication_failed`.
    pub code: String,
    /// The issuer's reason for a decline, e.g. `insufficient_funds`.
    #[cfg_attr(feature = "openapi", oai(nullable))]
    pub decline_code: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "camelCase"))]
#[serde(rename_all = "camelCase")]
pub struct RedirectToUrlView {
    /// The issuer's 3-D Secure challenge page; send the cardholder's browser there.
    pub url: String,
    /// Where the browser is sent back to once the challenge is done.
    #[cfg_attr(feature = "openapi", oai(nullable))]
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

/// Declares a string enum of the API's, serialized in snake_case, with its conversion from
/// the domain's enum of the same variants.
macro_rules! view_enum {
    ($(#[$doc:meta])* $name:ident from $domain:path { $($variant:ident),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(Enum))]
        #[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($variant),+
        }

        impl From<$domain> for $name {
            fn from(value: $domain) -> Self {
                use $domain as D;
                match value {
                    $(D::$variant => $name::$variant),+
                }
            }
        }

        impl From<$name> for $domain {
            fn from(value: $name) -> Self {
                use $domain as D;
                match value {
                    $($name::$variant => D::$variant),+
                }
            }
        }
    };
}

view_enum! {
    /// Where a payment intent is in its life.
    PaymentIntentStatusView from crate::domain::payment_intent::PaymentIntentStatus {
        RequiresPaymentMethod, RequiresConfirmation, RequiresAction, Processing,
        RequiresCapture, Succeeded, Failed, Canceled, Refunded,
    }
}

view_enum! {
    /// `automatic` captures the payment when it is authorized; `manual` holds the
    /// authorization (`requires_capture`) until it is captured or canceled.
    CaptureMethodView from crate::domain::payment_intent::CaptureMethod { Automatic, Manual }
}

view_enum! {
    /// Where a refund is: `pending` until the acquirer settles it.
    RefundStatusView from crate::domain::refund::RefundStatus { Pending, Succeeded, Failed }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "camelCase"))]
#[serde(rename_all = "camelCase")]
pub struct PaymentIntentView {
    /// `pi_...`
    pub id: String,
    /// What is to be paid: an integer count of the currency's minor unit (1099 is 10.99 USD).
    pub amount: i64,
    /// What can still be captured of an authorization (manual capture), in minor units.
    pub amount_capturable: i64,
    /// What was captured, in minor units.
    pub amount_received: i64,
    /// What settled refunds gave back, in minor units.
    pub amount_refunded: i64,
    /// ISO 4217 code, lowercase.
    pub currency: String,
    pub status: PaymentIntentStatusView,
    /// Your own customer reference, as sent.
    pub customer_id: String,
    /// The payment method to charge: a test method such as `pm_card_visa`, or `null` until
    /// one is attached.
    #[cfg_attr(feature = "openapi", oai(nullable))]
    pub payment_method_id: Option<String>,
    pub capture_method: CaptureMethodView,
    #[cfg_attr(feature = "openapi", oai(nullable))]
    pub description: Option<String>,
    /// Your own key-value pairs (at most 50 keys).
    pub metadata: BTreeMap<String, String>,
    /// Why the last attempt failed; `null` unless it did.
    #[cfg_attr(feature = "openapi", oai(nullable))]
    pub last_payment_error: Option<PaymentErrorView>,
    /// What the customer must do next (a 3-D Secure redirect) in `requires_action`; `null`
    /// otherwise.
    #[cfg_attr(feature = "openapi", oai(nullable))]
    pub next_action: Option<NextActionView>,
    /// Until when a `requires_capture` authorization can be captured.
    #[cfg_attr(feature = "openapi", oai(nullable))]
    pub authorization_expires_at: Option<DateTime<Utc>>,
    #[cfg_attr(feature = "openapi", oai(nullable))]
    pub canceled_at: Option<DateTime<Utc>>,
    /// `duplicate`, `fraudulent`, `requested_by_customer`, `abandoned` or `expired`.
    #[cfg_attr(feature = "openapi", oai(nullable))]
    pub cancellation_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// `{id}_secret_...`: what your server hands your checkout page, so the browser can read
    /// and confirm this one intent with your publishable key. Only in answers to a secret key;
    /// never in events, webhooks or answers to a publishable key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "camelCase"))]
#[serde(rename_all = "camelCase")]
pub struct RefundView {
    /// `re_...`
    pub id: String,
    pub payment_intent_id: String,
    /// Integer count of the currency's minor unit.
    pub amount: i64,
    pub currency: String,
    /// `duplicate`, `fraudulent` or `requested_by_customer`.
    #[cfg_attr(feature = "openapi", oai(nullable))]
    pub reason: Option<String>,
    pub status: RefundStatusView,
    /// Why the acquirer refused the refund; `null` unless it is `failed`.
    #[cfg_attr(feature = "openapi", oai(nullable))]
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When the refund settled or failed.
    #[cfg_attr(feature = "openapi", oai(nullable))]
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
    #[cfg_attr(feature = "openapi", oai(nullable))]
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
    #[cfg_attr(feature = "openapi", oai(nullable))]
    pub customer_id: Option<String>,
    /// Set when `type` is `card`.
    #[cfg_attr(feature = "openapi", oai(nullable))]
    pub card: Option<CardView>,
    /// Set when `type` is `bank_account`.
    #[cfg_attr(feature = "openapi", oai(nullable))]
    pub bank_account: Option<BankAccountView>,
    pub created_at: DateTime<Utc>,
    /// When the method was detached; a detached method cannot be used to confirm.
    #[cfg_attr(feature = "openapi", oai(nullable))]
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
            status: self.status.into(),
            customer_id: self.customer_id.clone(),
            payment_method_id: self.payment_method_id.clone(),
            capture_method: self.capture_method.into(),
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
            // Added by the API to answers for a secret key only; a view made here goes into
            // events and webhooks too, so it never carries it.
            client_secret: None,
        }
    }

    /// The view as JSON, for audit entries and event data.
    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.view()).unwrap_or_default()
    }
}

view_enum! {
    /// Where a dispute is: `needs_response` until evidence is submitted (then `under_review`)
    /// or it is closed; `won` and `lost` are final.
    DisputeStatusView from crate::domain::dispute::DisputeStatus { NeedsResponse, UnderReview, Won, Lost }
}

/// One evidence file, as listed on its dispute (the content is read separately).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "camelCase"))]
#[serde(rename_all = "camelCase")]
pub struct DisputeFileView {
    /// `file_...`
    pub id: String,
    /// The form field it came under: `receipt`, `shippingDocumentation`,
    /// `customerCommunicationFile` or `uncategorizedFile`.
    pub purpose: String,
    pub filename: String,
    /// By content: `application/pdf`, `image/png` or `image/jpeg`.
    pub content_type: String,
    /// In bytes.
    pub size: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "camelCase"))]
#[serde(rename_all = "camelCase")]
pub struct DisputeEvidenceView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_communication: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_email_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shipping_tracking_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refund_policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncategorized_text: Option<String>,
    pub files: Vec<DisputeFileView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "camelCase"))]
#[serde(rename_all = "camelCase")]
pub struct EvidenceDetailsView {
    pub has_evidence: bool,
    pub submission_count: i64,
    /// Whether `evidenceDueBy` has passed.
    pub past_due: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "camelCase"))]
#[serde(rename_all = "camelCase")]
pub struct DisputeView {
    /// `dp_...`
    pub id: String,
    pub payment_intent_id: String,
    /// The disputed amount, in minor units.
    pub amount: i64,
    pub currency: String,
    /// One of Stripe's reasons: `fraudulent`, `duplicate`, `product_not_received`, ...
    pub reason: String,
    pub status: DisputeStatusView,
    /// Evidence must be submitted before this.
    pub evidence_due_by: DateTime<Utc>,
    pub evidence: DisputeEvidenceView,
    pub evidence_details: EvidenceDetailsView,
    /// The `txn_...` balance transactions this dispute moved money with.
    pub balance_transactions: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}
