//! Notifications back to paystream: signed POSTs to [`crate::SimConfig::notify_url`], sent by
//! one background task so no `/v1` answer ever waits for them.
//!
//! Each notification is `{id: "aevt_…", type, createdAt, data}` with `data` the object as the
//! `/v1` API shows it (a refund or a charge), signed in the header
//! `Acquirer-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "{t}.{body}")>`. The
//! signature is made when the request is sent (a retry signs again with a fresh `t`), so a
//! slow queue never produces a stale signature.
//!
//! The task applies the notification faults as it sends: a dropped notification is never sent,
//! a duplicated one is sent twice with the same id, and with `reorder` the task holds what
//! arrives for [`REORDER_HOLD`] and sends each held batch newest first, so a `refund.succeeded`
//! can overtake its `refund.pending`. A connection failure or a 5xx is retried a few times
//! with a short backoff; a 4xx is paystream refusing it and is not.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

use crate::faults::roll;
use crate::ledger::{Charge, ChargeStatus};
use crate::metrics::bump;
use crate::Sim;

/// The header the signature travels in.
pub const SIGNATURE_HEADER: &str = "Acquirer-Signature";
/// Sends of one notification before the simulator gives up on it.
pub const ATTEMPTS: u32 = 5;
/// The first retry's delay; each further one doubles it (100, 200, 400, 800 ms).
pub const FIRST_RETRY: Duration = Duration::from_millis(100);
/// How long `reorder` holds notifications before sending the batch newest first.
pub const REORDER_HOLD: Duration = Duration::from_millis(300);
/// How long paystream may take to answer one notification (its contract says 5 s).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// One notification, serialized once when the event happened.
#[derive(Debug, Clone)]
pub struct Notification {
    pub id: String,
    pub event_type: &'static str,
    pub body: Vec<u8>,
}

/// The queue between the request handlers, which only push, and the sending task.
pub(crate) struct Queue {
    tx: UnboundedSender<Notification>,
    // Taken once by the sending task (or by a unit test that inspects what was queued).
    rx: Mutex<Option<UnboundedReceiver<Notification>>>,
}

impl Queue {
    pub(crate) fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    pub(crate) fn take_receiver(&self) -> Option<UnboundedReceiver<Notification>> {
        self.rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "{timestamp}.{body}")>`.
pub fn signature_header(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

impl Sim {
    /// Queues a notification. Never blocks and takes no lock, so it may be called with the
    /// ledger held. Without a notification URL nothing is queued.
    pub(crate) fn notify(&self, event_type: &'static str, data: Value) {
        if self.config.notify_url.is_none() {
            return;
        }
        let id = format!("aevt_{}", uuid::Uuid::new_v4().simple());
        let body = json!({
            "id": id,
            "type": event_type,
            "createdAt": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "data": data,
        });
        let notification = Notification {
            id,
            event_type,
            body: body.to_string().into_bytes(),
        };
        // The receiver lives as long as the simulator; a send fails only during shutdown.
        let _ = self.notifications.tx.send(notification);
    }

    /// Announces a charge's outcome: `payment.succeeded` (captured or authorized),
    /// `payment.failed` (declined) or `payment.requires_action`. Used where the caller cannot
    /// have learnt the outcome from the answer: a `/v1` call whose answer was lost to the
    /// timeout fault, and the end of a 3-D Secure challenge.
    pub(crate) fn notify_charge(&self, charge: &Charge) {
        let event_type = match charge.status {
            ChargeStatus::Captured | ChargeStatus::Authorized => "payment.succeeded",
            ChargeStatus::Declined => "payment.failed",
            ChargeStatus::RequiresAction => "payment.requires_action",
            ChargeStatus::Voided | ChargeStatus::Refunded | ChargeStatus::Pending => return,
        };
        self.notify(event_type, charge.to_json());
    }

    /// Starts the task that sends queued notifications, once; a no-op without a notification
    /// URL or when it already runs. [`crate::run`] calls it.
    pub fn start_notifier(self: &Arc<Self>) {
        let Some(url) = self.config.notify_url.clone() else {
            return;
        };
        if let Some(rx) = self.notifications.take_receiver() {
            tokio::spawn(deliver(Arc::clone(self), rx, url));
        }
    }

    /// This notification's fate under the current faults: (drop it, send it twice).
    fn roll_notification(&self) -> (bool, bool) {
        let mut chaos = self.chaos();
        let faults = chaos.faults.notifications;
        let dropped = roll(&mut chaos.rng, faults.drop_per_million);
        let duplicated = roll(&mut chaos.rng, faults.duplicate_per_million);
        (dropped, duplicated)
    }
}

/// The notification client, trusting `ca_cert` too when given (an https API with a private CA).
fn notify_client(ca_cert: Option<&std::path::Path>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder().timeout(SEND_TIMEOUT);
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| e.to_string())? {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| e.to_string())
}

async fn deliver(sim: Arc<Sim>, mut rx: UnboundedReceiver<Notification>, url: String) {
    let http = match notify_client(sim.config.ca_cert.as_deref()) {
        Ok(http) => http,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the notification client; notifications are off");
            return;
        }
    };
    loop {
        let first = tokio::select! {
            () = sim.shutdown.cancelled() => return,
            next = rx.recv() => match next {
                Some(n) => n,
                None => return,
            },
        };
        let mut batch = vec![first];
        if sim.faults().notifications.reorder {
            let hold = tokio::time::sleep(REORDER_HOLD);
            tokio::pin!(hold);
            loop {
                tokio::select! {
                    () = sim.shutdown.cancelled() => return,
                    () = &mut hold => break,
                    next = rx.recv() => match next {
                        Some(n) => batch.push(n),
                        None => break,
                    },
                }
            }
            batch.reverse();
        }
        for notification in batch {
            let (dropped, duplicated) = sim.roll_notification();
            if dropped {
                bump(&sim.metrics.notifications_dropped);
                tracing::info!(id = %notification.id, kind = notification.event_type, "notification dropped (injected fault)");
                continue;
            }
            send(&sim, &http, &url, &notification).await;
            if duplicated {
                bump(&sim.metrics.notifications_duplicated);
                send(&sim, &http, &url, &notification).await;
            }
        }
    }
}

/// Sends one notification, retrying connection failures and 5xx answers. Returns whether
/// paystream accepted it.
async fn send(sim: &Sim, http: &reqwest::Client, url: &str, notification: &Notification) -> bool {
    let secret = sim.config.notify_secret.expose().as_bytes();
    let mut delay = FIRST_RETRY;
    for attempt in 1..=ATTEMPTS {
        let header = signature_header(secret, Utc::now().timestamp(), &notification.body);
        let result = http
            .post(url)
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, header)
            .body(notification.body.clone())
            .send()
            .await;
        let error = match result {
            Ok(resp) if resp.status().is_success() => {
                bump(&sim.metrics.notifications_sent);
                tracing::debug!(id = %notification.id, kind = notification.event_type, "notification delivered");
                return true;
            }
            Ok(resp) if resp.status().is_client_error() => {
                bump(&sim.metrics.notifications_failed);
                tracing::warn!(id = %notification.id, status = resp.status().as_u16(), "notification refused; not retried");
                return false;
            }
            Ok(resp) => format!("HTTP {}", resp.status().as_u16()),
            Err(e) => e.to_string(),
        };
        tracing::warn!(id = %notification.id, attempt, %error, "notification not delivered");
        if attempt < ATTEMPTS {
            sim.pause(delay).await;
            if sim.shutdown.is_cancelled() {
                break;
            }
            delay *= 2;
        }
    }
    bump(&sim.metrics.notifications_failed);
    false
}
