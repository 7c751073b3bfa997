//! `--observe webhook`: the bench's own webhook endpoint. It listens on 127.0.0.1:0, subscribes
//! itself to `payment_intent.succeeded` and `payment_intent.payment_failed`, verifies every
//! delivery's signature, and hands each verified event to the payment waiting for it. The stack
//! does the observing's work itself (it delivers these webhooks anyway), so watching adds no
//! request to the API per look, and a payment counts only once its webhook arrived verified.

#[allow(unused_imports)]
use super::*;

use std::net::TcpListener;

use poem::listener::TcpAcceptor;
use poem::web::Data;
use poem::{EndpointExt, Route, Server};

use paystream_shared::domain::webhook::WebhookSecret;

/// The events the sink subscribes to: the two ends of a confirmed card payment.
pub(crate) const SINK_EVENTS: [&str; 2] =
    ["payment_intent.succeeded", "payment_intent.payment_failed"];

/// What the sink counted; every delivery is either matched, a duplicate, unknown or invalid.
#[derive(Debug, Default)]
pub(crate) struct SinkCounts {
    pub(crate) received: AtomicU64,
    pub(crate) invalid_signatures: AtomicU64,
    pub(crate) duplicates: AtomicU64,
}

pub(crate) struct SinkState {
    pub(crate) run: Arc<Run>,
    pub(crate) secret: Mutex<Option<WebhookSecret>>,
    pub(crate) counts: SinkCounts,
    /// The webhook ids already received: a redelivery is counted, not applied twice.
    seen: Mutex<std::collections::HashSet<String>>,
}

/// One verified delivery's meaning for the bench.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    Succeeded {
        id: String,
        updated_at: DateTime<Utc>,
    },
    Failed {
        id: String,
        reason: String,
    },
    /// Another event type or an unreadable body: not ours to act on.
    Other,
}

/// Reads an event body (`{"type", "data": {the intent}}`).
pub(crate) fn parse_delivery(body: &[u8]) -> Delivery {
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Delivery::Other;
    };
    let Some(id) = event["data"]["id"].as_str().map(str::to_owned) else {
        return Delivery::Other;
    };
    match event["type"].as_str() {
        Some("payment_intent.succeeded") => {
            let updated_at = event["data"]["updatedAt"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc));
            match updated_at {
                Some(updated_at) => Delivery::Succeeded { id, updated_at },
                None => Delivery::Other,
            }
        }
        Some("payment_intent.payment_failed") => {
            let code = event["data"]["lastPaymentError"]["code"]
                .as_str()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default();
            Delivery::Failed {
                id,
                reason: format!("ended in failed{code}"),
            }
        }
        _ => Delivery::Other,
    }
}

#[poem::handler]
async fn receive(
    req: &poem::Request,
    body: Vec<u8>,
    state: Data<&Arc<SinkState>>,
) -> poem::http::StatusCode {
    let at = Instant::now();
    let at_wall = Utc::now();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    state.counts.received.fetch_add(1, Ordering::Relaxed);
    let id = header("webhook-id");
    let ts: i64 = header("webhook-timestamp").parse().unwrap_or(0);
    let valid = state
        .secret
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
        .is_some_and(|s| s.verify(&id, ts, &body, &header("webhook-signature")));
    if !valid {
        // Refused, so a bad signature is never mistaken for a delivered payment; the stack
        // retries it, and the count shows up in the report.
        state
            .counts
            .invalid_signatures
            .fetch_add(1, Ordering::Relaxed);
        return poem::http::StatusCode::BAD_REQUEST;
    }
    let first = state
        .seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(id);
    if !first {
        state.counts.duplicates.fetch_add(1, Ordering::Relaxed);
        return poem::http::StatusCode::NO_CONTENT;
    }
    state.run.delivered(parse_delivery(&body), at, at_wall);
    poem::http::StatusCode::NO_CONTENT
}

/// The running sink: its subscription is deleted by [`Sink::close`].
pub(crate) struct Sink {
    pub(crate) state: Arc<SinkState>,
    subscription: String,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Sink {
    pub(crate) async fn start(run: Arc<Run>) -> anyhow::Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the webhook sink")?;
        let url = format!("http://{}/sink", listener.local_addr()?);
        listener.set_nonblocking(true)?;
        let state = Arc::new(SinkState {
            run: run.clone(),
            secret: Mutex::new(None),
            counts: SinkCounts::default(),
            seen: Mutex::new(std::collections::HashSet::new()),
        });
        let stop = CancellationToken::new();
        let server = {
            let app = Route::new()
                .at("/sink", poem::post(receive))
                .data(state.clone());
            let acceptor = TcpAcceptor::from_std(listener)?;
            let stop = stop.clone();
            tokio::spawn(async move {
                Server::new_with_acceptor(acceptor)
                    .run_with_graceful_shutdown(app, stop.cancelled_owned(), Some(Duration::ZERO))
                    .await
            })
        };
        let (status, body) = run
            .api
            .call(
                Method::POST,
                "/api/webhooks/subscribe",
                Some(&json!({"url": url, "events": SINK_EVENTS})),
                None,
            )
            .await
            .map_err(|e| anyhow::anyhow!("subscribing the webhook sink: {e}"))?;
        if status != StatusCode::CREATED {
            stop.cancel();
            bail!(
                "subscribing the webhook sink answered {} (the stack must allow private webhook \
                 addresses: PAYSTREAM_WEBHOOK_ALLOW_PRIVATE=true, which `paystream up` sets)",
                describe(status, &body)
            );
        }
        let answer: serde_json::Value =
            serde_json::from_slice(&body).context("reading the subscription")?;
        let secret = WebhookSecret::parse(answer["secret"].as_str().unwrap_or_default())
            .map_err(|e| anyhow::anyhow!("the subscription's secret: {}", e.message))?;
        *state
            .secret
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(secret);
        Ok(Sink {
            state,
            subscription: answer["id"].as_str().unwrap_or_default().to_owned(),
            stop,
            server,
        })
    }

    /// Unsubscribes (the endpoint is about to go away) and stops the listener.
    pub(crate) async fn close(self) {
        let _ = self
            .state
            .run
            .api
            .call(
                Method::DELETE,
                &format!("/api/webhooks/subscriptions/{}", self.subscription),
                None,
                None,
            )
            .await;
        self.stop.cancel();
        let _ = self.server.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_are_read_by_type() {
        let ok = br#"{"id":"evt_1","type":"payment_intent.succeeded","data":{"id":"pi_1","updatedAt":"2026-01-01T00:00:00.5Z"}}"#;
        assert_eq!(
            parse_delivery(ok),
            Delivery::Succeeded {
                id: "pi_1".into(),
                updated_at: DateTime::parse_from_rfc3339("2026-01-01T00:00:00.5Z")
                    .unwrap()
                    .with_timezone(&Utc)
            }
        );
        let failed = br#"{"type":"payment_intent.payment_failed","data":{"id":"pi_2","lastPaymentError":{"code":"card_declined"}}}"#;
        assert_eq!(
            parse_delivery(failed),
            Delivery::Failed {
                id: "pi_2".into(),
                reason: "ended in failed (card_declined)".into()
            }
        );
        assert_eq!(parse_delivery(b"not json"), Delivery::Other);
        assert_eq!(
            parse_delivery(br#"{"type":"payment_intent.created","data":{"id":"pi_3"}}"#),
            Delivery::Other
        );
        assert_eq!(
            parse_delivery(br#"{"type":"payment_intent.succeeded","data":{"id":"pi_4"}}"#),
            Delivery::Other
        );
    }
}
