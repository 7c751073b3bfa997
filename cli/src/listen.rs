//! `paystream listen`: a webhook receiver on this machine, for trying paystream out. It
//! subscribes a local endpoint through the API (so deliveries go the same way they go to a
//! merchant: fan-out, signing, retries), checks every signature with the secret it was given,
//! prints one line per event, and removes its subscription when it stops.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context};
use chrono::Utc;
use clap::Args;
use poem::listener::TcpAcceptor;
use poem::web::Data;
use poem::{EndpointExt, Route, Server};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use paystream_shared::domain::webhook::WebhookSecret;

#[derive(Debug, Args)]
pub struct ListenArgs {
    /// The API's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub api: String,
    /// A secret API key of the merchant whose events to receive.
    #[arg(long, env = "PAYSTREAM_API_KEY")]
    pub key: String,
    /// Where to listen (the port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub addr: SocketAddr,
    /// Event types to subscribe to (repeat the flag); all of them by default.
    #[arg(long = "event", default_value = "*")]
    pub events: Vec<String>,
    /// Print each event's whole body as one JSON line instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// A PEM certificate authority to trust for an https `--api` (`paystream up --tls`'s is
    /// `.paystream/tls/ca.pem`), besides the system's.
    #[arg(long, env = "PAYSTREAM_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
}

struct Receiver {
    secret: WebhookSecret,
    json: bool,
}

/// Runs until Ctrl-C or SIGTERM.
pub async fn run(args: ListenArgs) -> anyhow::Result<()> {
    let shutdown = paystream_shared::shutdown::on_signal();
    let listener = std::net::TcpListener::bind(args.addr)
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    serve(args, listener, shutdown).await
}

/// Subscribes `listener`'s address, prints what arrives until `shutdown`, then unsubscribes.
pub async fn serve(
    args: ListenArgs,
    listener: std::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    // tokio adopts only non-blocking sockets.
    listener.set_nonblocking(true)?;
    let url = format!("http://{local}/webhooks");
    let http = paystream_shared::tls::client_builder(args.ca_cert.as_deref())?.build()?;
    let api = args.api.trim_end_matches('/');
    let answer = http
        .post(format!("{api}/api/webhooks/subscribe"))
        .bearer_auth(&args.key)
        .json(&serde_json::json!({"url": url, "events": args.events}))
        .send()
        .await
        .with_context(|| format!("cannot reach the API at {api}"))?;
    let status = answer.status();
    let body: Value = answer.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "the API refused the subscription ({status}): {}",
            body["error"]["message"].as_str().unwrap_or("no message")
        );
    }
    let (Some(id), Some(secret)) = (body["id"].as_str(), body["secret"].as_str()) else {
        bail!("the API's answer to subscribe has no id or secret: {body}");
    };
    let secret = WebhookSecret::parse(secret).map_err(|e| anyhow::anyhow!(e.message))?;
    println!("listening on {url} as subscription {id}; Ctrl-C to stop");

    let receiver = Arc::new(Receiver {
        secret,
        json: args.json,
    });
    let app = Route::new()
        .at("/webhooks", poem::post(receive))
        .data(receiver);
    let acceptor = TcpAcceptor::from_std(listener)?;
    let stop = shutdown.clone();
    Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(app, stop.cancelled_owned(), None)
        .await?;

    // Leave nothing behind: a subscription to a port nobody listens on would only fail.
    let deleted = http
        .delete(format!("{api}/api/webhooks/subscriptions/{id}"))
        .bearer_auth(&args.key)
        .send()
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false);
    if deleted {
        println!("subscription {id} deleted");
    } else {
        eprintln!("could not delete subscription {id}; delete it with DELETE /api/webhooks/subscriptions/{id}");
    }
    Ok(())
}

#[poem::handler]
fn receive(
    req: &poem::Request,
    body: Vec<u8>,
    receiver: Data<&Arc<Receiver>>,
) -> poem::http::StatusCode {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let id = header("webhook-id");
    let timestamp: i64 = header("webhook-timestamp").parse().unwrap_or(0);
    // The same tolerance a merchant's receiver should use: an old signature may be a replay.
    let fresh = (Utc::now().timestamp() - timestamp).abs() <= 300;
    if !fresh
        || !receiver
            .secret
            .verify(id, timestamp, &body, header("webhook-signature"))
    {
        println!("rejected a delivery with a bad or stale signature (webhook-id {id:?})");
        return poem::http::StatusCode::BAD_REQUEST;
    }
    let event: Value = serde_json::from_slice(&body).unwrap_or_default();
    if receiver.json {
        println!("{event}");
    } else {
        println!("{}", summary(&event));
    }
    poem::http::StatusCode::NO_CONTENT
}

/// `2026-12-01T10:00:00Z payment_intent.succeeded evt_… pi_… succeeded 1099 usd`.
fn summary(event: &Value) -> String {
    let data = &event["data"];
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let mut line = format!(
        "{} {} {} {}",
        text(&event["createdAt"]),
        text(&event["type"]),
        text(&event["id"]),
        text(&data["id"])
    );
    if let Some(status) = data["status"].as_str() {
        line.push(' ');
        line.push_str(status);
    }
    if let (Some(amount), Some(currency)) = (data["amount"].as_i64(), data["currency"].as_str()) {
        line.push_str(&format!(" {amount} {currency}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_names_the_event_and_its_object() {
        let event = serde_json::json!({
            "id": "evt_1", "type": "payment_intent.succeeded", "createdAt": "2026-12-01T10:00:00Z",
            "data": {"id": "pi_1", "status": "succeeded", "amount": 1099, "currency": "usd"}
        });
        assert_eq!(
            summary(&event),
            "2026-12-01T10:00:00Z payment_intent.succeeded evt_1 pi_1 succeeded 1099 usd"
        );
        let refund =
            serde_json::json!({"id": "evt_2", "type": "refund.created", "data": {"id": "re_1"}});
        assert_eq!(summary(&refund), "- refund.created evt_2 re_1");
    }
}
