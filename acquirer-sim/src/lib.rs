//! A stand-in card acquirer. It speaks the HTTP protocol paystream's acquirer connector
//! (`paystream_workers::acquirer`) uses, decides by test card number (docs/acquirer.md), keeps its
//! books in memory, honors idempotency keys and misbehaves on request. The demo, the tests,
//! the benchmarks and the chaos runs all use it.
//!
//! # Protocol
//!
//! JSON bodies with camelCase fields; amounts are integers in the currency's minor unit,
//! currencies lowercase ISO 4217 codes. Errors other than declines have the shape
//! `{"error": {"code", "message", "param"?}}`. Every `POST /v1/...` needs an `Idempotency-Key`
//! header (1..=255 printable ASCII; missing or malformed is a 400).
//!
//! | call | body | answers |
//! |---|---|---|
//! | `POST /v1/payments` | `{reference, amount, currency, paymentMethod? \| card?: {number, expMonth, expYear, cvc?} \| bankAccount?: {country, routingNumber, accountNumber, accountHolderName, accountHolderType?}, capture, returnUrl?}` | 200 charge (`captured`, `authorized` or `requires_action` with `redirectUrl`); 402 decline; 400; 500 `processing_error` |
//! | `POST /v1/payments/{id}/capture` | `{amount?}` (default: all) | 200 charge `captured`; 404; 409 `charge_already_captured` / `charge_not_capturable`; 400 `amount_too_large` |
//! | `POST /v1/payments/{id}/void` | `{}` or empty | 200 charge `voided` (from `authorized` or `requires_action`); 404; 409 |
//! | `POST /v1/refunds` | `{payment, amount, reference}` (`reference` is the caller's refund id) | 200 `{id: "rf_…", payment, reference, amount, currency, status, createdAt, failureReason?}` with status `succeeded`, or `pending` under asynchronous settlement; 404; 409 unless captured; 400 `amount_too_large` beyond what is left |
//! | `GET /v1/payments?reference=` | | 200 `{data: [charge]}`, oldest first; 400 without `reference` |
//! | `GET /v1/refunds?reference=` | | 200 `{data: [refund]}` with each refund's current status (`pending`, `succeeded`, `failed`), oldest first; 400 without `reference` |
//!
//! A charge is `{id: "ch_…", reference, amount, currency, status, amountCaptured,
//! amountRefunded, createdAt, redirectUrl?, returnUrl?}` with status `requires_action`, `authorized`,
//! `captured`, `voided`, `refunded` (captured and refunded in full) or `declined`.
//!
//! Exactly one of `paymentMethod` (a `pm_card_*` / `pm_bank_account` test id, mapped through
//! [`paystream_domain::payment_intent::TEST_PAYMENT_METHODS`]; an unknown id is a 400),
//! `card` and `bankAccount` is sent. `card` and `bankAccount` carry real numbers and come only
//! from the vault's forward; a card on file comes without `cvc`. The verdict, by card or
//! account number:
//! - 4242424242424242, 5555555555554444, 000123456789 (bank account): approved,
//!   `captured` when `capture` is true, else `authorized`.
//! - 4000000000000259: approved like the above, and marked as one its holder will dispute.
//! - 4000000000000002: 402 `card_declined` / `generic_decline`.
//! - 4000000000009995: 402 `card_declined` / `insufficient_funds`.
//! - 4000002760003184: 200 `requires_action` with `redirectUrl` = `{public url}/sim/3ds/{id}`.
//!   `GET` that URL is the challenge page (HTML, two buttons); `POST` to it with the form field
//!   `result=succeeded` or `result=failed` completes the challenge as the cardholder would and
//!   answers 303 to paystream's callback with the signed result token (see `challenge.rs`).
//! - 4000000000000119: 500 `processing_error`, every time; no charge is recorded.
//! - any other well-formed number: 402 `card_declined` / `generic_decline`, so test mode never
//!   seems to accept a real card. An expired card: 402 `expired_card`.
//!
//! A decline is final: HTTP 402 with the declined charge,
//! `{id, status: "declined", code, declineCode, message, ...}`. Declined charges are recorded
//! and listed like any other, so "one charge per reference" holds for them too.
//!
//! # Idempotency
//! The same key with the same method, path and body (compared as JSON values) answers exactly
//! what the first request answered, status and body, plus `Idempotent-Replayed: true`, and
//! does nothing else. The same key with anything different is a 422 `idempotency_key_reused`.
//! Keys are global, not per endpoint. Every answer below 500 is stored; a 5xx decided nothing
//! and is not, so a retry runs again.
//!
//! # Test controls
//! - `GET /sim/charges?reference=` `{data: [{id, reference, amount, currency, status}]}`
//!   (every charge when `reference` is absent).
//! - `POST /sim/faults` `{errorRate, timeoutRate, latencyMs, notifications: {duplicateRate,
//!   dropRate, reorder}}`, all optional, rates in 0..=1. The body replaces the previous
//!   settings (absent means off) and the answer shows what was applied, rates in parts per
//!   million. `GET /sim/faults` shows the current settings.
//!   - `errorRate`: that share of `/v1` calls answers 500 `simulated_error` before doing
//!     anything.
//!   - `timeoutRate`: that share of `/v1` calls does its work, stores its answer, and then
//!     hangs for [`SimConfig::timeout_hang`] (or until shutdown) before answering: the
//!     acquirer charged but the caller gave up. A retry with the same key gets the stored answer.
//!   - `latencyMs`: added to every `/v1` call.
//!   - `notifications`: `dropRate` (never sent), `duplicateRate` (sent twice with the same
//!     id), `reorder` (held for 300 ms and each held batch sent newest first).
//!   - `refundSettlementMs`: above 0, refunds settle asynchronously: `POST /v1/refunds`
//!     answers `pending` (the amount is reserved at once), `refund.pending` is sent, and after
//!     that many milliseconds the refund succeeds and `refund.succeeded` is sent.
//!   - `refundFailureRate`: share of asynchronously settled refunds that fail instead
//!     (`refund.failed`, `failureReason: "refund_declined"`, the amount refundable again).
//!   - `settlement`: `{dropRate, amountSkewRate, feeSkewRate, extraRate, duplicateRate}`
//!     corrupt the settlement reports (see `settlement.rs`); a rate of 1 always applies.
//! - `POST /sim/settle`: 200 `{data: [payout]}`, the payouts it just made (one per currency
//!   with anything unsettled). The simulator also settles every `ACQUIRER_SIM_SETTLE_EVERY_SECS`.
//! - `GET /v1/payouts?after=&limit=` (oldest first, `{data, hasMore}`) and
//!   `GET /v1/payouts/{id}/report.csv`: the settlement reports (`settlement.rs`).
//! - `POST /sim/disputes` `{reference, reason?, amount?}`: 201, opens a chargeback on the
//!   reference's captured charge now (see `disputes.rs`, which also serves
//!   `POST /v1/disputes/{id}/evidence` and `GET /v1/disputes?reference=`).
//! - `POST /sim/reset`: 204; forgets charges, refunds, chargebacks, payouts, idempotency keys
//!   and faults.
//! - `GET /healthz`: 200. `GET /metrics`: Prometheus text.
//!
//! # Notifications
//! With [`SimConfig::notify_url`] set (`ACQUIRER_SIM_NOTIFY_URL`; `paystream up` points it at
//! `/api/provider/webhooks`), the simulator POSTs signed notifications there from a background
//! task, never delaying a `/v1` answer:
//! `{"id": "aevt_…", "type", "createdAt": RFC 3339, "data": <the refund or charge as /v1 shows it>}`
//! with header `Acquirer-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "{t}.{body}")>` and
//! the secret [`SimConfig::notify_secret`] (`PAYSTREAM_ACQUIRER_WEBHOOK_SECRET`). Types:
//! - `refund.pending`, `refund.succeeded`, `refund.failed`: asynchronous refund settlement
//!   (`refundSettlementMs`); `data.reference` is the caller's refund id, `data.payment` the
//!   charge.
//! - `payment.succeeded` (charge `captured` or `authorized`), `payment.failed` (`declined`,
//!   with `code`/`declineCode`), `payment.requires_action` (with `redirectUrl`): late payment
//!   outcomes; `data.reference` is the caller's payment intent id.
//! - `dispute.created` (a chargeback, `needs_response`), `dispute.closed` (`won` or `lost`):
//!   `data` is the chargeback `{id: "chb_…", payment, reference, amount, currency, reason,
//!   status, evidenceDueBy, createdAt}`.
//!
//! What a `/v1` answer already told the caller is not repeated: a synchronous outcome is
//! announced only when the timeout fault withheld its answer (the caller may never learn it
//! otherwise), and the 3-D Secure challenge announces its result when it is served. Delivery
//! is retried on connection errors and 5xx (5 attempts, 100 ms doubling); a 4xx is final.

#![forbid(unsafe_code)]

mod api;
mod books;
mod cards;
mod challenge;
mod disputes;
mod faults;
mod ledger;
mod metrics;
mod notify;
mod settlement;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use poem::listener::TcpAcceptor;
use poem::Server;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use api::app;
pub use faults::{Faults, NotificationFaults, SettlementFaults};
pub use notify::{signature_header, SIGNATURE_HEADER};
use paystream_domain::secret::Secret;
pub use settlement::REPORT_HEADER;

use paystream_domain::fees::FeeSchedule;

use crate::ledger::Ledger;
use crate::metrics::Metrics;

/// Where the simulator listens when nothing says otherwise (`PAYSTREAM_ACQUIRER_URL`'s default).
pub const DEFAULT_ACQUIRER_URL: &str = "http://127.0.0.1:8090";

/// The notification secret when `PAYSTREAM_ACQUIRER_WEBHOOK_SECRET` is unset: the same
/// development value paystream's configuration defaults to, so a local stack agrees out of the
/// box (a unit test keeps the two equal).
pub const DEFAULT_NOTIFY_SECRET: &str = "acq_whsec_local_development_only";

#[derive(Debug, Clone)]
pub struct SimConfig {
    /// How long a call picked by `timeoutRate` hangs after doing its work. Callers time out
    /// well before the default.
    pub timeout_hang: Duration,
    /// The simulator's address as callers and browsers reach it, for the URLs it hands out.
    /// `None`: `http://` and the listener's address.
    pub public_url: Option<String>,
    /// Seeds the fault dice, so a chaos run can be replayed. `None`: from entropy.
    pub seed: Option<u64>,
    /// Where notifications are POSTed (paystream's `/api/provider/webhooks`). `None`: the
    /// simulator sends none.
    pub notify_url: Option<String>,
    /// The secret notifications are signed with; the 3-D Secure result token is signed with
    /// a key derived from it.
    pub notify_secret: Secret<String>,
    /// paystream's API as the cardholder's browser reaches it (`http://host:port`), where a
    /// finished 3-D Secure challenge sends the browser
    /// (`{callback_url}/api/payment-intents/{reference}/3ds/callback?result=<token>`).
    /// `None`: the origin of [`Self::notify_url`] when that ends in `/api/provider/webhooks`;
    /// without either, the browser goes straight to the payment's `returnUrl`.
    pub callback_url: Option<String>,
    /// A PEM bundle the notification client trusts besides the system's roots
    /// (`PAYSTREAM_CA_CERT`), for a paystream API served with a private CA's certificate.
    pub ca_cert: Option<std::path::PathBuf>,
    /// The acquirer's fees, taken from each captured charge when it settles; the same
    /// schedule and function as paystream's (`PAYSTREAM_FEE_PERCENT_BPS`, `PAYSTREAM_FEE_FIXED`).
    pub fees: FeeSchedule,
    /// How often the simulator settles by itself (`ACQUIRER_SIM_SETTLE_EVERY_SECS`, one day);
    /// zero never does (`POST /sim/settle` still does).
    pub settle_every: Duration,
    /// How long a cardholder's bank gives the merchant to answer a chargeback
    /// (`PAYSTREAM_SIM_DISPUTE_DUE_SECS`, default 7 days): the chargeback's `evidenceDueBy`.
    pub dispute_due: Duration,
    /// What the acquirer charges the merchant per chargeback, in minor units, on the report's
    /// `chargeback` line (`PAYSTREAM_DISPUTE_FEE`, the variable paystream books it from; 1500).
    pub dispute_fee: i64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            timeout_hang: Duration::from_secs(30),
            public_url: None,
            seed: None,
            notify_url: None,
            notify_secret: Secret::new(DEFAULT_NOTIFY_SECRET.to_owned()),
            callback_url: None,
            ca_cert: None,
            fees: FeeSchedule::default(),
            settle_every: DEFAULT_SETTLE_EVERY,
            dispute_due: Duration::from_secs(7 * 24 * 3600),
            dispute_fee: paystream_domain::fees::DEFAULT_DISPUTE_FEE,
        }
    }
}

/// How often the simulator settles when `ACQUIRER_SIM_SETTLE_EVERY_SECS` is unset: daily.
pub const DEFAULT_SETTLE_EVERY: Duration = Duration::from_secs(86_400);

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid configuration: {var}={value:?}: {reason}")]
    Config {
        var: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("{context}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl SimConfig {
    /// Reads `ACQUIRER_SIM_HANG_MS`, `ACQUIRER_SIM_SEED`, the public URL
    /// (`ACQUIRER_SIM_PUBLIC_URL`, else `PAYSTREAM_ACQUIRER_URL`), the notification URL
    /// (`ACQUIRER_SIM_NOTIFY_URL`), paystream's API for the 3-D Secure callback
    /// (`ACQUIRER_SIM_CALLBACK_URL`) and the notification secret (`PAYSTREAM_ACQUIRER_WEBHOOK_SECRET`, the
    /// variable paystream verifies with) through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SimError> {
        let get = |var: &str| lookup(var).filter(|v| !v.is_empty());
        let number = |var: &'static str| -> Result<Option<u64>, SimError> {
            get(var)
                .map(|raw| {
                    raw.parse().map_err(|_| SimError::Config {
                        var,
                        value: raw,
                        reason: "must be a whole number",
                    })
                })
                .transpose()
        };
        let defaults = SimConfig::default();
        Ok(SimConfig {
            timeout_hang: number("ACQUIRER_SIM_HANG_MS")?
                .map_or(defaults.timeout_hang, Duration::from_millis),
            public_url: get("ACQUIRER_SIM_PUBLIC_URL")
                .or_else(|| get("PAYSTREAM_ACQUIRER_URL"))
                .map(|url| url.trim_end_matches('/').to_owned()),
            seed: number("ACQUIRER_SIM_SEED")?,
            notify_url: match get("ACQUIRER_SIM_NOTIFY_URL") {
                Some(url) if url.starts_with("http://") || url.starts_with("https://") => Some(url),
                Some(url) => {
                    return Err(SimError::Config {
                        var: "ACQUIRER_SIM_NOTIFY_URL",
                        value: url,
                        reason: "must be an http(s) URL",
                    })
                }
                None => None,
            },
            notify_secret: get("PAYSTREAM_ACQUIRER_WEBHOOK_SECRET")
                .map_or(defaults.notify_secret, Secret::new),
            fees: {
                let bps = number("PAYSTREAM_FEE_PERCENT_BPS")?;
                let fixed = number("PAYSTREAM_FEE_FIXED")?;
                let default = FeeSchedule::default();
                let bps = match bps {
                    None => default.percent_bps(),
                    Some(n) => u32::try_from(n).map_err(|_| SimError::Config {
                        var: "PAYSTREAM_FEE_PERCENT_BPS",
                        value: n.to_string(),
                        reason: "must be at most 10000",
                    })?,
                };
                let fixed = match fixed {
                    None => default.fixed().minor_units(),
                    Some(n) => i64::try_from(n).map_err(|_| SimError::Config {
                        var: "PAYSTREAM_FEE_FIXED",
                        value: n.to_string(),
                        reason: "is too large",
                    })?,
                };
                FeeSchedule::new(bps, fixed).map_err(|_| SimError::Config {
                    var: "PAYSTREAM_FEE_PERCENT_BPS",
                    value: bps.to_string(),
                    reason: "must be at most 10000",
                })?
            },
            settle_every: number("ACQUIRER_SIM_SETTLE_EVERY_SECS")?
                .map_or(defaults.settle_every, Duration::from_secs),
            callback_url: match get("ACQUIRER_SIM_CALLBACK_URL") {
                Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                    Some(url.trim_end_matches('/').to_owned())
                }
                Some(url) => {
                    return Err(SimError::Config {
                        var: "ACQUIRER_SIM_CALLBACK_URL",
                        value: url,
                        reason: "must be an http(s) URL",
                    })
                }
                None => None,
            },
            ca_cert: get("PAYSTREAM_CA_CERT").map(std::path::PathBuf::from),
            dispute_due: number("PAYSTREAM_SIM_DISPUTE_DUE_SECS")?
                .map_or(defaults.dispute_due, Duration::from_secs),
            dispute_fee: match number("PAYSTREAM_DISPUTE_FEE")? {
                None => defaults.dispute_fee,
                Some(n) => i64::try_from(n).map_err(|_| SimError::Config {
                    var: "PAYSTREAM_DISPUTE_FEE",
                    value: n.to_string(),
                    reason: "is too large",
                })?,
            },
        })
    }
}

/// The address to bind: `ACQUIRER_SIM_ADDR` (`host:port`), else the host and port of
/// `PAYSTREAM_ACQUIRER_URL` (default [`DEFAULT_ACQUIRER_URL`]), so that under `paystream up`
/// the simulator listens exactly where the workers will call it.
pub fn listen_addr(lookup: impl Fn(&str) -> Option<String>) -> Result<String, SimError> {
    if let Some(addr) = lookup("ACQUIRER_SIM_ADDR").filter(|v| !v.is_empty()) {
        return Ok(addr);
    }
    let url = lookup("PAYSTREAM_ACQUIRER_URL")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_ACQUIRER_URL.to_owned());
    let bad = |reason| SimError::Config {
        var: "PAYSTREAM_ACQUIRER_URL",
        value: url.clone(),
        reason,
    };
    let (rest, default_port) = if let Some(rest) = url.strip_prefix("http://") {
        (rest, 80)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (rest, 443)
    } else {
        return Err(bad("must be an http(s) URL"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err(bad("must name a host"));
    }
    // A port is present when the text after the last `:` is digits and not inside `[v6]`.
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
    Ok(if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    })
}

/// The simulator's state. Shared by every request through an `Arc`.
pub struct Sim {
    // A handle on itself, so a request handler can start a task that outlives the request
    // (a refund settling later) without every handler passing the `Arc` around.
    me: Weak<Sim>,
    config: SimConfig,
    public_url: String,
    // std mutexes, not tokio's: every critical section is a few map operations with no
    // `.await` inside, so a guard is never held across a suspension point and contention is
    // brief. Lock order: never hold both at once.
    ledger: Mutex<Ledger>,
    chaos: Mutex<Chaos>,
    metrics: Metrics,
    notifications: notify::Queue,
    shutdown: CancellationToken,
}

struct Chaos {
    faults: Faults,
    rng: StdRng,
}

impl Sim {
    /// A simulator whose hung calls give up when `shutdown` is cancelled. Without
    /// `config.public_url`, handed-out URLs point at [`DEFAULT_ACQUIRER_URL`].
    pub fn new(config: SimConfig, shutdown: CancellationToken) -> Arc<Self> {
        let public_url = config
            .public_url
            .clone()
            .unwrap_or_else(|| DEFAULT_ACQUIRER_URL.to_owned());
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            config,
            public_url,
            ledger: Mutex::new(Ledger::default()),
            chaos: Mutex::new(Chaos {
                faults: Faults::default(),
                rng,
            }),
            metrics: Metrics::default(),
            notifications: notify::Queue::new(),
            shutdown,
        })
    }

    /// paystream's API base for the 3-D Secure callback (see [`SimConfig::callback_url`]).
    fn callback_base(&self) -> Option<String> {
        self.config.callback_url.clone().or_else(|| {
            self.config
                .notify_url
                .as_deref()
                .and_then(|url| url.strip_suffix("/api/provider/webhooks"))
                .map(str::to_owned)
        })
    }

    pub fn faults(&self) -> Faults {
        self.chaos().faults
    }

    pub fn set_faults(&self, faults: Faults) {
        self.chaos().faults = faults;
    }

    /// Forgets charges, refunds, payouts, idempotency keys and faults. Metrics keep counting.
    pub fn reset(&self) {
        *self.ledger() = Ledger::default();
        self.chaos().faults = Faults::default();
    }

    // A panic cannot leave either structure half-updated (each update is a few infallible map
    // writes), so a poisoned lock still guards consistent data and the simulator carries on.
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn chaos(&self) -> MutexGuard<'_, Chaos> {
        self.chaos.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Serves the simulator on `listener` until `shutdown` is cancelled, then lets in-flight calls
/// finish (hung ones stop hanging at once). Tests bind `127.0.0.1:0` and read the address back
/// from the listener first, or use [`spawn`].
pub async fn run(
    listener: std::net::TcpListener,
    mut config: SimConfig,
    shutdown: CancellationToken,
) -> Result<(), SimError> {
    let io = |context| move |source| SimError::Io { context, source };
    listener
        .set_nonblocking(true)
        .map_err(io("cannot make the listener non-blocking"))?;
    let addr = listener
        .local_addr()
        .map_err(io("the listener has no local address"))?;
    if config.public_url.is_none() {
        config.public_url = Some(format!("http://{addr}"));
    }
    let sim = Sim::new(config, shutdown.clone());
    sim.start_notifier();
    sim.start_settlement_timer(sim.config.settle_every);
    let acceptor = TcpAcceptor::from_std(listener).map_err(io("cannot adopt the listener"))?;
    tracing::info!(%addr, "acquirer simulator listening");
    Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(
            app(sim),
            shutdown.cancelled_owned(),
            Some(Duration::from_secs(5)),
        )
        .await
        .map_err(io("the server failed"))?;
    tracing::info!("acquirer simulator stopped");
    Ok(())
}

/// A simulator running in the background on a loopback port, for tests. Dropping it stops it.
pub struct SpawnedSim {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub url: String,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), SimError>>>,
}

impl SpawnedSim {
    /// Stops the simulator and waits until it has.
    pub async fn stop(mut self) -> Result<(), SimError> {
        self.shutdown.cancel();
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for SpawnedSim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Binds `127.0.0.1:0` and runs the simulator there on the current tokio runtime.
pub fn spawn(config: SimConfig) -> Result<SpawnedSim, SimError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| SimError::Io {
        context: "cannot bind a loopback port",
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| SimError::Io {
        context: "the listener has no local address",
        source,
    })?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(listener, config, shutdown.clone()));
    Ok(SpawnedSim {
        addr,
        url: format!("http://{addr}"),
        shutdown,
        task: Some(task),
    })
}
