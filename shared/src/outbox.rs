//! The transactional outbox as its writers see it: messages and events queued in the caller's
//! open transaction, so they commit with the state change they announce, or not at all. The
//! SQL lives in `store::outbox` and `store::events`; the relay (in the nats crate) publishes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::domain::ids::IdKind;

pub use crate::store::outbox::{enqueue, enqueue_with_id};

/// What the EVENTS stream carries and what a webhook's body is built from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventEnvelope {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub merchant_id: String,
    pub created_at: DateTime<Utc>,
    pub data: serde_json::Value,
}

/// The subject an event of `event_type` is published on.
pub fn event_subject(event_type: &str) -> String {
    format!("evt.{event_type}")
}

/// Records an event (listable through the API) and queues it for the EVENTS stream, in the
/// caller's transaction. `data` is the object as the API shows it.
pub async fn record_event(
    conn: &mut PgConnection,
    merchant_id: &str,
    event_type: &str,
    object_id: &str,
    data: serde_json::Value,
) -> Result<EventEnvelope, sqlx::Error> {
    let envelope = EventEnvelope {
        id: IdKind::Event.generate(),
        event_type: event_type.to_owned(),
        merchant_id: merchant_id.to_owned(),
        created_at: crate::domain::now(),
        data,
    };
    crate::store::events::insert(&mut *conn, &envelope, object_id).await?;
    let payload = serde_json::to_value(&envelope).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    enqueue(conn, &event_subject(event_type), &payload).await?;
    Ok(envelope)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_is_camel_case_with_type() {
        let env = EventEnvelope {
            id: "evt_1".into(),
            event_type: "payment_intent.created".into(),
            merchant_id: "mer_1".into(),
            created_at: DateTime::from_timestamp(0, 0).unwrap(),
            data: serde_json::json!({"id": "pi_1"}),
        };
        let v = serde_json::to_value(&env).unwrap();
        assert_eq!(v["type"], "payment_intent.created");
        assert_eq!(v["merchantId"], "mer_1");
        assert_eq!(v["createdAt"], "1970-01-01T00:00:00Z");
        assert_eq!(event_subject("refund.created"), "evt.refund.created");
        let back: EventEnvelope = serde_json::from_value(v).unwrap();
        assert_eq!(back, env);
    }
}
