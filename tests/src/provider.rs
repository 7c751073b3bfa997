//! Helpers for acquirer notifications: build one, sign it as the acquirer does, send it to
//! `/api/provider/webhooks`, and read what became of it.

use chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};

use paystream_shared::domain::provider_event::{sign, SIGNATURE_HEADER};
use paystream_shared::store::provider_events::{self, ProviderEvent};

use crate::{read, Reply, TestApp};

/// A notification with a fresh `aevt_` id, created now.
pub fn notification(event_type: &str, data: Value) -> Value {
    json!({
        "id": format!("aevt_{}", uuid::Uuid::new_v4().simple()),
        "type": event_type,
        "createdAt": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        "data": data,
    })
}

impl TestApp {
    /// The notification URL the in-process simulator sends to.
    pub fn notify_url(&self) -> String {
        format!("{}/api/provider/webhooks", self.address)
    }

    /// Sends `body` with the given `Acquirer-Signature` header (none when `None`).
    pub async fn notify_raw(&self, body: &[u8], signature: Option<&str>) -> Reply {
        let mut rb = self
            .http
            .post(self.notify_url())
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(signature) = signature {
            rb = rb.header(SIGNATURE_HEADER, signature);
        }
        read(rb.send().await.expect("notification sent")).await
    }

    /// Sends `event` signed with this app's acquirer secret at unix time `t`.
    pub async fn notify_at(&self, event: &Value, t: i64) -> Reply {
        let body = event.to_string().into_bytes();
        let secret = self.config.acquirer_webhook_secret.expose().as_bytes();
        self.notify_raw(&body, Some(&sign(secret, t, &body))).await
    }

    /// Sends `event` signed now, as the acquirer would.
    pub async fn notify(&self, event: &Value) -> Reply {
        self.notify_at(event, Utc::now().timestamp()).await
    }

    /// A stored notification.
    pub async fn provider_event(&self, id: &str) -> Option<ProviderEvent> {
        provider_events::get(&self.pool, id)
            .await
            .expect("provider event")
    }

    /// The refunds the simulator holds under one of our refund ids (its current view).
    pub async fn sim_refunds(&self, reference: &str) -> Vec<Value> {
        let body: Value = self
            .http
            .get(format!("{}/v1/refunds?reference={reference}", self.sim_url))
            .send()
            .await
            .expect("sim refunds")
            .json()
            .await
            .expect("json");
        body["data"].as_array().cloned().unwrap_or_default()
    }

    /// Audit actions recorded for one object, oldest first, with their actor.
    pub async fn audit_actions(&self, object_id: &str) -> Vec<(String, String)> {
        sqlx::query_as("SELECT action, actor FROM audit_log WHERE object_id = $1 ORDER BY seq")
            .bind(object_id)
            .fetch_all(&self.pool)
            .await
            .expect("audit")
    }
}
