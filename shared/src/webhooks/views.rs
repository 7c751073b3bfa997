//! Webhook objects as clients see them (docs/webhooks.md). Serialized with serde like
//! every other view; poem-openapi schemas only behind the `openapi` feature.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[cfg(feature = "openapi")]
use poem_openapi::Object;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "camelCase"))]
#[serde(rename_all = "camelCase")]
pub struct WebhookSubscriptionView {
    pub id: String,
    pub url: String,
    /// Event types, or `["*"]` for all.
    pub events: Vec<String>,
    /// `whsec_...`: present only in the answers to subscribe and rotate-secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// `false` once the endpoint answered 410 Gone.
    pub active: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "camelCase"))]
#[serde(rename_all = "camelCase")]
pub struct WebhookDeliveryView {
    pub id: String,
    pub event_id: String,
    pub subscription_id: String,
    pub url: String,
    /// Attempts made in the current cycle (a redelivery starts a new cycle at 0).
    pub attempt: i32,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    #[cfg_attr(feature = "openapi", oai(nullable))]
    pub response_code: Option<i32>,
    #[cfg_attr(feature = "openapi", oai(nullable))]
    pub next_retry_at: Option<DateTime<Utc>>,
    #[cfg_attr(feature = "openapi", oai(nullable))]
    pub delivered_at: Option<DateTime<Utc>>,
    #[cfg_attr(feature = "openapi", oai(nullable))]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "camelCase"))]
#[serde(rename_all = "camelCase")]
pub struct WebhookEventView {
    pub id: String,
    #[serde(rename = "type")]
    #[cfg_attr(feature = "openapi", oai(rename = "type"))]
    pub event_type: String,
    /// The object as the API showed it when the event happened.
    pub data: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// The body a delivery POSTs: the event, with exactly these four fields in this order.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookPayload<'a> {
    pub id: &'a str,
    #[serde(rename = "type")]
    pub event_type: &'a str,
    pub created_at: DateTime<Utc>,
    pub data: &'a serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_contract_fields_in_order() {
        let data = serde_json::json!({"id": "pi_1"});
        let p = WebhookPayload {
            id: "evt_1",
            event_type: "payment_intent.succeeded",
            created_at: DateTime::from_timestamp(1, 0).unwrap(),
            data: &data,
        };
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"id":"evt_1","type":"payment_intent.succeeded","createdAt":"1970-01-01T00:00:01Z","data":{"id":"pi_1"}}"#
        );
    }

    #[test]
    fn secret_is_omitted_unless_present() {
        let mut s = WebhookSubscriptionView {
            id: "we_1".into(),
            url: "https://x.example/".into(),
            events: vec!["*".into()],
            secret: None,
            active: true,
            created_at: DateTime::from_timestamp(0, 0).unwrap(),
        };
        let v = serde_json::to_value(&s).unwrap();
        assert!(v.get("secret").is_none());
        s.secret = Some("whsec_x".into());
        assert_eq!(serde_json::to_value(&s).unwrap()["secret"], "whsec_x");
        let e = WebhookEventView {
            id: "evt_1".into(),
            event_type: "refund.created".into(),
            data: serde_json::json!({}),
            created_at: DateTime::from_timestamp(0, 0).unwrap(),
        };
        assert_eq!(serde_json::to_value(&e).unwrap()["type"], "refund.created");
    }
}
