//! The delivery command on `cmd.webhook.deliver`: versioned and tagged like every queue
//! payload. It names the delivery row, which holds everything else (event, subscription,
//! attempt count), so a command replayed from the dead letters days later still acts on the
//! row as it is then. The subscription id rides along so the worker can apply its
//! per-endpoint bound before touching the database.

use serde::{Deserialize, Serialize};

pub const SUBJECT_WEBHOOK_DELIVER: &str = "cmd.webhook.deliver";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum WebhookCommand {
    #[serde(rename = "webhook.deliver.v1", rename_all = "camelCase")]
    DeliverV1 {
        delivery_id: String,
        subscription_id: String,
    },
}

impl WebhookCommand {
    pub fn delivery_id(&self) -> &str {
        match self {
            WebhookCommand::DeliverV1 { delivery_id, .. } => delivery_id,
        }
    }

    pub fn subscription_id(&self) -> &str {
        match self {
            WebhookCommand::DeliverV1 {
                subscription_id, ..
            } => subscription_id,
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
    fn tagged_and_versioned() {
        let c = WebhookCommand::DeliverV1 {
            delivery_id: "wd_1".into(),
            subscription_id: "we_1".into(),
        };
        assert_eq!(
            c.to_json(),
            serde_json::json!({"type": "webhook.deliver.v1", "deliveryId": "wd_1", "subscriptionId": "we_1"})
        );
        assert_eq!(
            serde_json::from_value::<WebhookCommand>(c.to_json()).unwrap(),
            c
        );
        assert_eq!((c.delivery_id(), c.subscription_id()), ("wd_1", "we_1"));
        assert!(
            serde_json::from_str::<WebhookCommand>(r#"{"type":"webhook.deliver.v0"}"#).is_err()
        );
    }
}
