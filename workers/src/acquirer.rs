//! The acquirer connector: the [`Acquirer`] trait the confirm and refund workers call, its HTTP
//! implementation ([`HttpAcquirer`], which speaks the protocol documented in the `acquirer-sim`
//! crate) and the in-process retry helper [`with_retries`].
//!
//! Every mutating call carries an idempotency key derived from the object it acts on, never a
//! random one (DESIGN.md rule 3): a call that timed out may well have charged, and the retry
//! has to present the same key so that the acquirer answers with the stored result instead of
//! charging again. The keys are:
//!
//! | call | key |
//! |---|---|
//! | authorize | `{reference}:authorize` (the payment intent id) |
//! | capture | `{charge_id}:capture` |
//! | void | `{charge_id}:void` |
//! | refund | `{reference}:refund` (our refund id) |
//!
//! Errors fall in three classes (DESIGN.md rule 4): [`AcquirerError::Transient`] (5xx, 408,
//! 429, timeouts, connection failures) is retried; [`AcquirerError::Rejected`] (any other 4xx)
//! is final; [`AcquirerError::Protocol`] (an answer we cannot read) is retried too. With an
//! unreadable answer we do not know whether the acquirer charged, so it must not become a final
//! failure; retrying under the same key is harmless, and if the answer stays unreadable the
//! budget runs out, the message is redelivered and finally dead-lettered with the reason, where
//! an operator looks at it. A decline is not an error at all: it is
//! [`PaymentOutcome::Declined`].

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use backon::Retryable;
use paystream_shared::domain::money::Amount;
use paystream_shared::domain::outcome::ChargeOutcome;
use paystream_shared::domain::payment_intent::PaymentError;
use paystream_shared::retry::RetrySchedule;
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[async_trait]
pub trait Acquirer: Send + Sync {
    /// Authorizes, and with `capture` also captures, a payment.
    async fn authorize(&self, req: &AuthorizeRequest) -> Result<PaymentOutcome, AcquirerError>;
    /// Captures an authorized charge, in full or in part.
    async fn capture(&self, req: &CaptureRequest) -> Result<Charge, AcquirerError>;
    /// Releases an authorization that was never captured.
    async fn void(&self, req: &VoidRequest) -> Result<Charge, AcquirerError>;
    async fn refund(&self, req: &RefundRequest) -> Result<RefundReceipt, AcquirerError>;
    /// The charges the acquirer holds for one of our references, oldest first. Reconciliation
    /// and recovery ask this when they do not know whether a call went through.
    async fn charges_for_reference(&self, reference: &str) -> Result<Vec<Charge>, AcquirerError>;
    /// The refund the acquirer made under one of our refund ids, with its current status
    /// (`pending` until an asynchronous settlement ends); `None` when it never received it.
    /// Reconciliation asks this for refunds that stayed `pending`.
    async fn refund_by_reference(
        &self,
        reference: &str,
    ) -> Result<Option<RefundReceipt>, AcquirerError>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizeRequest {
    /// Our payment intent id.
    pub reference: String,
    /// Minor units of `currency`.
    pub amount: i64,
    pub currency: String,
    pub payment_method: String,
    pub capture: bool,
    pub return_url: Option<String>,
}

impl AuthorizeRequest {
    pub fn idempotency_key(&self) -> String {
        format!("{}:authorize", self.reference)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRequest {
    pub charge_id: String,
    /// `None` captures the whole authorization.
    pub amount: Option<i64>,
}

impl CaptureRequest {
    pub fn idempotency_key(&self) -> String {
        format!("{}:capture", self.charge_id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoidRequest {
    pub charge_id: String,
}

impl VoidRequest {
    pub fn idempotency_key(&self) -> String {
        format!("{}:void", self.charge_id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    pub charge_id: String,
    pub amount: i64,
    /// Our refund id.
    pub reference: String,
}

impl RefundRequest {
    pub fn idempotency_key(&self) -> String {
        format!("{}:refund", self.reference)
    }
}

/// What an authorization came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentOutcome {
    Captured {
        charge_id: String,
        amount: i64,
    },
    Authorized {
        charge_id: String,
        amount: i64,
    },
    /// The issuer refused; final.
    Declined {
        code: String,
        decline_code: Option<String>,
        message: String,
    },
    /// The issuer wants a 3-D Secure challenge at `redirect_url` first.
    ActionRequired {
        charge_id: String,
        redirect_url: String,
    },
}

impl PaymentOutcome {
    /// The outcome in the domain's terms, which decide what it does to the intent.
    pub fn into_charge_outcome(self) -> ChargeOutcome {
        match self {
            PaymentOutcome::Captured { charge_id, amount } => ChargeOutcome::Captured {
                charge_id,
                amount_received: Amount::from_stored(amount),
            },
            PaymentOutcome::Authorized { charge_id, amount } => ChargeOutcome::Authorized {
                charge_id,
                amount_capturable: Amount::from_stored(amount),
            },
            PaymentOutcome::Declined {
                code,
                decline_code,
                message,
            } => ChargeOutcome::Declined {
                charge_id: None,
                error: PaymentError {
                    code,
                    decline_code,
                    message,
                },
            },
            PaymentOutcome::ActionRequired {
                charge_id,
                redirect_url,
            } => ChargeOutcome::RequiresAction {
                charge_id,
                redirect_url,
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeStatus {
    RequiresAction,
    Authorized,
    Captured,
    Voided,
    /// Captured, then refunded in full.
    Refunded,
    Declined,
}

/// A charge as the acquirer holds it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Charge {
    pub id: String,
    pub reference: String,
    pub amount: i64,
    pub currency: String,
    pub status: ChargeStatus,
    #[serde(default)]
    pub amount_captured: i64,
    #[serde(default)]
    pub amount_refunded: i64,
    pub redirect_url: Option<String>,
}

impl Charge {
    /// What the charge, as the acquirer holds it, says about the payment: `None` for a voided
    /// charge, which decided nothing an intent could move to.
    pub fn outcome(&self) -> Option<ChargeOutcome> {
        let charge_id = self.id.clone();
        Some(match self.status {
            ChargeStatus::Captured | ChargeStatus::Refunded => ChargeOutcome::Captured {
                charge_id,
                amount_received: Amount::from_stored(self.amount_captured),
            },
            ChargeStatus::Authorized => ChargeOutcome::Authorized {
                charge_id,
                amount_capturable: Amount::from_stored(self.amount),
            },
            ChargeStatus::Declined => ChargeOutcome::Declined {
                charge_id: Some(charge_id),
                error: PaymentError {
                    code: "card_declined".into(),
                    decline_code: None,
                    message: "The acquirer declined the payment".into(),
                },
            },
            ChargeStatus::RequiresAction => ChargeOutcome::RequiresAction {
                charge_id,
                redirect_url: self.redirect_url.clone().unwrap_or_default(),
            },
            ChargeStatus::Voided => return None,
        })
    }

    /// What of the charge is still the customer's money at the acquirer: captured and not
    /// refunded.
    pub fn refundable(&self) -> i64 {
        match self.status {
            ChargeStatus::Captured => self
                .amount_captured
                .saturating_sub(self.amount_refunded)
                .max(0),
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    Pending,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RefundReceipt {
    pub id: String,
    pub amount: i64,
    pub status: RefundStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcquirerError {
    /// The acquirer could not be reached or failed on its side; the call may be retried with
    /// the same idempotency key.
    #[error("acquirer unavailable: {reason}")]
    Transient {
        reason: String,
        /// The acquirer's error code when it answered at all (a 5xx with a body), such as
        /// `processing_error`; `None` for timeouts and connection failures.
        code: Option<String>,
    },
    /// The acquirer refused the request itself (a 4xx other than a decline); retrying the same
    /// request cannot help.
    #[error("acquirer rejected the request with {status} {code}: {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    /// The acquirer answered something we cannot read; whether it acted is unknown.
    #[error("unreadable answer from the acquirer: {reason}")]
    Protocol { reason: String },
}

impl AcquirerError {
    /// Whether the call may succeed if repeated with the same idempotency key (see the module
    /// documentation for why an unreadable answer counts).
    /// Whether the acquirer itself answered that it could not process the card: a 5xx that
    /// carries the `processing_error` code, as opposed to an outage or a timeout.
    pub fn is_processing_error(&self) -> bool {
        matches!(self, AcquirerError::Transient { code: Some(c), .. } if c == "processing_error")
    }

    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            AcquirerError::Transient { .. } | AcquirerError::Protocol { .. }
        )
    }
}

/// Runs `op` until it succeeds, fails with an error that is not transient, or the schedule's
/// attempts (by default [`paystream_shared::retry::MAX_ATTEMPTS`]) are spent; then returns the
/// last error, which the caller turns into a delayed nak.
pub async fn with_retries<T, F, Fut>(schedule: &RetrySchedule, op: F) -> Result<T, AcquirerError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, AcquirerError>>,
{
    op.retry(schedule.delays())
        .when(AcquirerError::is_transient)
        .notify(|error, delay| {
            tracing::warn!(%error, delay_ms = delay.as_millis(), "acquirer call failed; retrying");
        })
        .await
}

#[derive(Debug, thiserror::Error)]
pub enum AcquirerSetupError {
    #[error("the acquirer URL {url:?} is not an http(s) URL")]
    Url { url: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// The acquirer over HTTP.
#[derive(Debug, Clone)]
pub struct HttpAcquirer {
    base: Url,
    timeout: Duration,
    http: reqwest::Client,
}

impl HttpAcquirer {
    /// `timeout` bounds each call as a whole; a call that exceeds it is a transient failure.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, AcquirerSetupError> {
        let bad = || AcquirerSetupError::Url {
            url: base_url.to_owned(),
        };
        // The trailing slash makes `join` append to the base's path instead of replacing its
        // last segment.
        let base =
            Url::parse(&format!("{}/", base_url.trim_end_matches('/'))).map_err(|_| bad())?;
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            return Err(bad());
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(AcquirerSetupError::Client)?;
        Ok(Self {
            base,
            timeout,
            http,
        })
    }

    fn url(&self, path: &str) -> Result<Url, AcquirerError> {
        self.base.join(path).map_err(|e| AcquirerError::Protocol {
            reason: format!("cannot build a URL for {path}: {e}"),
        })
    }

    async fn call(
        &self,
        method: Method,
        url: Url,
        idempotency_key: Option<&str>,
        body: Option<&(impl Serialize + Sync)>,
    ) -> Result<(StatusCode, Vec<u8>), AcquirerError> {
        let mut req = self.http.request(method, url);
        if let Some(key) = idempotency_key {
            req = req.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        Ok((status, bytes.to_vec()))
    }

    fn transport_error(&self, e: &reqwest::Error) -> AcquirerError {
        let reason = if e.is_timeout() {
            format!("no answer within {} ms", self.timeout.as_millis())
        } else {
            e.to_string()
        };
        AcquirerError::Transient { reason, code: None }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AuthorizeBody<'a> {
    reference: &'a str,
    amount: i64,
    currency: &'a str,
    payment_method: &'a str,
    capture: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    return_url: Option<&'a str>,
}

#[derive(Serialize)]
struct CaptureBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    amount: Option<i64>,
}

#[derive(Serialize)]
struct EmptyBody {}

#[derive(Serialize)]
struct RefundBody<'a> {
    payment: &'a str,
    amount: i64,
    reference: &'a str,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeclineBody {
    code: String,
    decline_code: Option<String>,
    message: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

#[derive(Deserialize)]
struct ChargeList {
    data: Vec<Charge>,
}

#[derive(Deserialize)]
struct RefundList {
    data: Vec<RefundReceipt>,
}

#[async_trait]
impl Acquirer for HttpAcquirer {
    async fn authorize(&self, req: &AuthorizeRequest) -> Result<PaymentOutcome, AcquirerError> {
        let body = AuthorizeBody {
            reference: &req.reference,
            amount: req.amount,
            currency: &req.currency,
            payment_method: &req.payment_method,
            capture: req.capture,
            return_url: req.return_url.as_deref(),
        };
        let (status, bytes) = self
            .call(
                Method::POST,
                self.url("v1/payments")?,
                Some(&req.idempotency_key()),
                Some(&body),
            )
            .await?;
        authorize_outcome(status, &bytes)
    }

    async fn capture(&self, req: &CaptureRequest) -> Result<Charge, AcquirerError> {
        let url = self.url(&format!(
            "v1/payments/{}/capture",
            path_segment(&req.charge_id)?
        ))?;
        let body = CaptureBody { amount: req.amount };
        let (status, bytes) = self
            .call(Method::POST, url, Some(&req.idempotency_key()), Some(&body))
            .await?;
        success_body(status, &bytes)
    }

    async fn void(&self, req: &VoidRequest) -> Result<Charge, AcquirerError> {
        let url = self.url(&format!(
            "v1/payments/{}/void",
            path_segment(&req.charge_id)?
        ))?;
        let (status, bytes) = self
            .call(
                Method::POST,
                url,
                Some(&req.idempotency_key()),
                Some(&EmptyBody {}),
            )
            .await?;
        success_body(status, &bytes)
    }

    async fn refund(&self, req: &RefundRequest) -> Result<RefundReceipt, AcquirerError> {
        let body = RefundBody {
            payment: &req.charge_id,
            amount: req.amount,
            reference: &req.reference,
        };
        let (status, bytes) = self
            .call(
                Method::POST,
                self.url("v1/refunds")?,
                Some(&req.idempotency_key()),
                Some(&body),
            )
            .await?;
        success_body(status, &bytes)
    }

    async fn charges_for_reference(&self, reference: &str) -> Result<Vec<Charge>, AcquirerError> {
        let mut url = self.url("v1/payments")?;
        url.query_pairs_mut().append_pair("reference", reference);
        let (status, bytes) = self
            .call(Method::GET, url, None, None::<&EmptyBody>)
            .await?;
        success_body::<ChargeList>(status, &bytes).map(|list| list.data)
    }

    async fn refund_by_reference(
        &self,
        reference: &str,
    ) -> Result<Option<RefundReceipt>, AcquirerError> {
        let mut url = self.url("v1/refunds")?;
        url.query_pairs_mut().append_pair("reference", reference);
        let (status, bytes) = self
            .call(Method::GET, url, None, None::<&EmptyBody>)
            .await?;
        // One refund per reference is the rule (the key derives from it); should there ever be
        // more, the newest is the one a retry would have found.
        success_body::<RefundList>(status, &bytes).map(|list| list.data.into_iter().last())
    }
}

/// Ids go into URL paths; one that would change the path is refused before it is sent.
fn path_segment(id: &str) -> Result<&str, AcquirerError> {
    if !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(id)
    } else {
        Err(AcquirerError::Rejected {
            status: 400,
            code: "charge_id_invalid".to_owned(),
            message: "a charge id may hold only letters, digits, `_` and `-`".to_owned(),
        })
    }
}

/// Maps an answer to `POST /v1/payments`. A 402 is the issuer's decline, which is an outcome
/// and not an error.
fn authorize_outcome(status: StatusCode, body: &[u8]) -> Result<PaymentOutcome, AcquirerError> {
    if status == StatusCode::PAYMENT_REQUIRED {
        let decline: DeclineBody = parse(status, body)?;
        return Ok(PaymentOutcome::Declined {
            code: decline.code,
            decline_code: decline.decline_code,
            message: decline.message,
        });
    }
    let charge: Charge = success_body(status, body)?;
    match charge.status {
        ChargeStatus::Captured => Ok(PaymentOutcome::Captured {
            charge_id: charge.id,
            amount: charge.amount_captured,
        }),
        ChargeStatus::Authorized => Ok(PaymentOutcome::Authorized {
            charge_id: charge.id,
            amount: charge.amount,
        }),
        ChargeStatus::RequiresAction => match charge.redirect_url {
            Some(redirect_url) => Ok(PaymentOutcome::ActionRequired {
                charge_id: charge.id,
                redirect_url,
            }),
            None => Err(AcquirerError::Protocol {
                reason: "a charge requires action but has no redirect URL".to_owned(),
            }),
        },
        other => Err(AcquirerError::Protocol {
            reason: format!("a new charge cannot be {other:?}"),
        }),
    }
}

/// The body of a 2xx answer, or the error the status stands for.
fn success_body<T: DeserializeOwned>(status: StatusCode, body: &[u8]) -> Result<T, AcquirerError> {
    if status.is_success() {
        return parse(status, body);
    }
    let detail = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.error);
    let code = detail
        .as_ref()
        .map_or_else(|| "unknown".to_owned(), |d| d.code.clone());
    if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        return Err(AcquirerError::Transient {
            reason: format!("HTTP {} ({code})", status.as_u16()),
            code: detail.map(|d| d.code),
        });
    }
    if status.is_client_error() {
        return Err(AcquirerError::Rejected {
            status: status.as_u16(),
            code,
            message: detail.map_or_else(|| "no error details".to_owned(), |d| d.message),
        });
    }
    Err(AcquirerError::Protocol {
        reason: format!("unexpected HTTP {}", status.as_u16()),
    })
}

fn parse<T: DeserializeOwned>(status: StatusCode, body: &[u8]) -> Result<T, AcquirerError> {
    serde_json::from_slice(body).map_err(|e| {
        // The reason ends up in logs and dead-letter headers, so it names the place and, for a
        // missing field, the field, but never repeats a value from the body.
        let text = e.to_string();
        let what = if text.starts_with("missing field") {
            text.split(" at line ")
                .next()
                .unwrap_or_default()
                .to_owned()
        } else {
            format!("{:?} error", e.classify())
        };
        AcquirerError::Protocol {
            reason: format!(
                "HTTP {} with an unreadable body: {what} at line {} column {}",
                status.as_u16(),
                e.line(),
                e.column()
            ),
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use acquirer_sim::{spawn, SimConfig, SpawnedSim};
    use paystream_shared::retry::MAX_ATTEMPTS;
    use serde_json::{json, Value};

    use super::*;

    fn sim() -> SpawnedSim {
        spawn(SimConfig {
            timeout_hang: Duration::from_secs(3),
            seed: Some(42),
            ..SimConfig::default()
        })
        .unwrap()
    }

    fn client(sim: &SpawnedSim, timeout: Duration) -> HttpAcquirer {
        HttpAcquirer::new(&sim.url, timeout).unwrap()
    }

    fn authorize(reference: &str, payment_method: &str, capture: bool) -> AuthorizeRequest {
        AuthorizeRequest {
            reference: reference.to_owned(),
            amount: 1099,
            currency: "usd".to_owned(),
            payment_method: payment_method.to_owned(),
            capture,
            return_url: None,
        }
    }

    fn fast(attempts: u32) -> RetrySchedule {
        RetrySchedule::new(Duration::from_millis(1), attempts)
    }

    async fn set_faults(sim: &SpawnedSim, faults: Value) {
        let resp = reqwest::Client::new()
            .post(format!("{}/sim/faults", sim.url))
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }

    async fn sim_charges(sim: &SpawnedSim, reference: &str) -> Vec<Value> {
        let body: Value = reqwest::get(format!("{}/sim/charges?reference={reference}", sim.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["data"].as_array().unwrap().clone()
    }

    #[tokio::test]
    async fn authorizes_captures_voids_and_refunds_through_the_simulator() {
        let sim = sim();
        let acq = client(&sim, Duration::from_secs(5));

        let outcome = acq
            .authorize(&authorize("pi_a", "pm_card_visa", true))
            .await;
        let PaymentOutcome::Captured { charge_id, amount } = outcome.unwrap() else {
            panic!("expected a capture");
        };
        assert!(charge_id.starts_with("ch_"));
        assert_eq!(amount, 1099);

        let refund = RefundRequest {
            charge_id: charge_id.clone(),
            amount: 99,
            reference: "re_1".to_owned(),
        };
        let receipt = acq.refund(&refund).await.unwrap();
        assert!(receipt.id.starts_with("rf_"));
        assert_eq!(
            (receipt.amount, receipt.status),
            (99, RefundStatus::Succeeded)
        );
        // The same refund again is the same refund, not a second one.
        assert_eq!(acq.refund(&refund).await.unwrap(), receipt);
        let charges = acq.charges_for_reference("pi_a").await.unwrap();
        assert_eq!(charges.len(), 1);
        assert_eq!(charges[0].amount_refunded, 99);
        assert_eq!(charges[0].status, ChargeStatus::Captured);
        assert_eq!(charges[0].currency, "usd");

        let outcome = acq
            .authorize(&authorize("pi_m", "pm_card_mastercard", false))
            .await
            .unwrap();
        let PaymentOutcome::Authorized { charge_id, amount } = outcome else {
            panic!("expected an authorization, got {outcome:?}");
        };
        assert_eq!(amount, 1099);
        let captured = acq
            .capture(&CaptureRequest {
                charge_id: charge_id.clone(),
                amount: Some(1000),
            })
            .await
            .unwrap();
        assert_eq!(
            (captured.status, captured.amount_captured),
            (ChargeStatus::Captured, 1000)
        );

        let outcome = acq
            .authorize(&authorize("pi_v", "pm_card_visa", false))
            .await
            .unwrap();
        let PaymentOutcome::Authorized { charge_id, .. } = outcome else {
            panic!("expected an authorization, got {outcome:?}");
        };
        let voided = acq.void(&VoidRequest { charge_id }).await.unwrap();
        assert_eq!(voided.status, ChargeStatus::Voided);
        assert!(acq
            .charges_for_reference("pi_none")
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn refunds_are_found_by_reference_with_their_current_status() {
        let sim = sim();
        let acq = client(&sim, Duration::from_secs(5));
        assert_eq!(acq.refund_by_reference("re_none").await.unwrap(), None);
        let PaymentOutcome::Captured { charge_id, .. } = acq
            .authorize(&authorize("pi_r", "pm_card_visa", true))
            .await
            .unwrap()
        else {
            panic!("expected a capture");
        };
        set_faults(&sim, json!({"refundSettlementMs": 50})).await;
        let request = RefundRequest {
            charge_id,
            amount: 300,
            reference: "re_async".to_owned(),
        };
        let receipt = acq.refund(&request).await.unwrap();
        assert_eq!(receipt.status, RefundStatus::Pending);
        let found = acq.refund_by_reference("re_async").await.unwrap().unwrap();
        assert_eq!(
            (found.id.as_str(), found.amount),
            (receipt.id.as_str(), 300)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let found = acq.refund_by_reference("re_async").await.unwrap().unwrap();
        assert_eq!(found.status, RefundStatus::Succeeded);
        set_faults(&sim, json!({"errorRate": 1})).await;
        assert!(acq
            .refund_by_reference("re_async")
            .await
            .unwrap_err()
            .is_transient());
    }

    #[tokio::test]
    async fn declines_are_outcomes_and_3ds_asks_for_action() {
        let sim = sim();
        let acq = client(&sim, Duration::from_secs(5));
        for (pm, decline_code) in [
            ("pm_card_chargeDeclined", "generic_decline"),
            ("pm_card_insufficientFunds", "insufficient_funds"),
        ] {
            let outcome = acq.authorize(&authorize(pm, pm, true)).await.unwrap();
            let PaymentOutcome::Declined {
                code,
                decline_code: got,
                message,
            } = outcome
            else {
                panic!("{pm}: expected a decline, got {outcome:?}");
            };
            assert_eq!(code, "card_declined", "{pm}");
            assert_eq!(got.as_deref(), Some(decline_code), "{pm}");
            assert!(!message.is_empty());
        }
        let mut req = authorize("pi_3ds", "pm_card_threeDSecureRequired", true);
        req.return_url = Some("https://shop.test/back".to_owned());
        let outcome = acq.authorize(&req).await.unwrap();
        let PaymentOutcome::ActionRequired {
            charge_id,
            redirect_url,
        } = outcome
        else {
            panic!("expected action, got {outcome:?}");
        };
        assert_eq!(redirect_url, format!("{}/sim/3ds/{charge_id}", sim.url));
    }

    #[tokio::test]
    async fn server_errors_are_transient_and_client_errors_final() {
        let sim = sim();
        let acq = client(&sim, Duration::from_secs(5));
        let err = acq
            .authorize(&authorize("pi_pe", "pm_card_processingError", true))
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().contains("500"), "{err}");

        let err = acq
            .authorize(&authorize("pi_x", "pm_card_unknown", true))
            .await
            .unwrap_err();
        let AcquirerError::Rejected { status, code, .. } = &err else {
            panic!("expected a rejection, got {err}");
        };
        assert_eq!((*status, code.as_str()), (400, "payment_method_unknown"));
        assert!(!err.is_transient());

        // A final answer is not retried.
        let PaymentOutcome::Captured { charge_id, .. } = acq
            .authorize(&authorize("pi_c", "pm_card_visa", true))
            .await
            .unwrap()
        else {
            panic!("expected a capture");
        };
        let attempts = AtomicU32::new(0);
        let capture = CaptureRequest {
            charge_id,
            amount: None,
        };
        let err = with_retries(&fast(MAX_ATTEMPTS), || {
            attempts.fetch_add(1, Ordering::SeqCst);
            acq.capture(&capture)
        })
        .await
        .unwrap_err();
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
        assert!(
            matches!(err, AcquirerError::Rejected { status: 409, .. }),
            "{err}"
        );

        set_faults(&sim, json!({"errorRate": 1})).await;
        let err = acq.charges_for_reference("pi_c").await.unwrap_err();
        assert!(err.is_transient());
    }

    #[tokio::test]
    async fn retries_reach_exactly_one_charge_at_a_50_percent_error_rate() {
        let sim = sim();
        let acq = client(&sim, Duration::from_secs(5));
        set_faults(&sim, json!({"errorRate": 0.5})).await;
        let attempts = AtomicU32::new(0);
        for i in 0..5 {
            let reference = format!("pi_flaky_{i}");
            let req = authorize(&reference, "pm_card_visa", true);
            // A generous budget: at one failure in two, twenty failures in a row would take
            // about a million runs.
            let outcome = with_retries(&fast(20), || {
                attempts.fetch_add(1, Ordering::SeqCst);
                acq.authorize(&req)
            })
            .await
            .unwrap();
            assert!(matches!(outcome, PaymentOutcome::Captured { .. }));
            set_faults(&sim, json!({})).await;
            assert_eq!(sim_charges(&sim, &reference).await.len(), 1, "{reference}");
            set_faults(&sim, json!({"errorRate": 0.5})).await;
        }
        assert!(
            attempts.load(Ordering::SeqCst) > 5,
            "no failure was injected"
        );
    }

    #[tokio::test]
    async fn a_timed_out_charge_is_found_again_by_its_key() {
        let sim = sim();
        let acq = client(&sim, Duration::from_millis(300));
        set_faults(&sim, json!({"timeoutRate": 1})).await;
        let req = authorize("pi_slow", "pm_card_visa", true);
        let err = acq.authorize(&req).await.unwrap_err();
        assert_eq!(
            err,
            AcquirerError::Transient {
                reason: "no answer within 300 ms".to_owned(),
                code: None,
            }
        );
        // The acquirer charged even though we never heard back.
        let charges = sim_charges(&sim, "pi_slow").await;
        assert_eq!(charges.len(), 1);

        set_faults(&sim, json!({})).await;
        let outcome = with_retries(&fast(MAX_ATTEMPTS), || acq.authorize(&req))
            .await
            .unwrap();
        assert_eq!(
            outcome,
            PaymentOutcome::Captured {
                charge_id: charges[0]["id"].as_str().unwrap().to_owned(),
                amount: 1099
            }
        );
        assert_eq!(sim_charges(&sim, "pi_slow").await.len(), 1);
    }

    #[tokio::test]
    async fn connection_failures_are_transient() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let acq =
            HttpAcquirer::new(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2)).unwrap();
        let err = acq.charges_for_reference("pi_x").await.unwrap_err();
        assert!(matches!(err, AcquirerError::Transient { .. }), "{err}");
    }

    #[tokio::test]
    async fn with_retries_spends_the_schedule_then_returns_the_last_error() {
        let attempts = AtomicU32::new(0);
        let err = with_retries(&fast(MAX_ATTEMPTS), || {
            let n = attempts.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                Err::<(), _>(AcquirerError::Transient {
                    reason: format!("attempt {n}"),
                    code: None,
                })
            }
        })
        .await
        .unwrap_err();
        assert_eq!(attempts.load(Ordering::SeqCst), MAX_ATTEMPTS);
        assert_eq!(err.to_string(), "acquirer unavailable: attempt 5");

        let attempts = AtomicU32::new(0);
        let value = with_retries(&fast(MAX_ATTEMPTS), || {
            let n = attempts.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(AcquirerError::Protocol {
                        reason: "garbled".to_owned(),
                    })
                } else {
                    Ok(n)
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(value, 2);
    }

    #[test]
    fn answers_are_classified() {
        let outcome = |status: u16, body: &str| {
            authorize_outcome(StatusCode::from_u16(status).unwrap(), body.as_bytes())
        };
        let err = outcome(200, "<html>").unwrap_err();
        assert!(matches!(err, AcquirerError::Protocol { .. }) && err.is_transient());
        assert!(!err.to_string().contains("html"), "{err}");
        let err = outcome(200, r#"{"id":"ch_1"}"#).unwrap_err();
        assert!(
            err.to_string().contains("missing field `reference`"),
            "{err}"
        );
        let charge = |status: &str| {
            json!({"id": "ch_1", "reference": "pi", "amount": 5, "currency": "usd",
                   "status": status})
            .to_string()
        };
        assert!(matches!(
            outcome(200, &charge("requires_action")),
            Err(AcquirerError::Protocol { .. })
        ));
        assert!(matches!(
            outcome(200, &charge("voided")),
            Err(AcquirerError::Protocol { .. })
        ));
        assert!(matches!(
            outcome(200, &charge("lost")),
            Err(AcquirerError::Protocol { .. })
        ));
        assert!(matches!(
            outcome(402, "{}"),
            Err(AcquirerError::Protocol { .. })
        ));
        assert!(matches!(
            outcome(302, ""),
            Err(AcquirerError::Protocol { .. })
        ));
        for status in [429, 408, 502, 503] {
            assert!(outcome(status, "").unwrap_err().is_transient(), "{status}");
        }
        assert_eq!(
            outcome(404, "").unwrap_err(),
            AcquirerError::Rejected {
                status: 404,
                code: "unknown".to_owned(),
                message: "no error details".to_owned()
            }
        );
        assert_eq!(
            outcome(
                402,
                r#"{"code":"expired_card","message":"The card has expired."}"#
            )
            .unwrap(),
            PaymentOutcome::Declined {
                code: "expired_card".to_owned(),
                decline_code: None,
                message: "The card has expired.".to_owned()
            }
        );
    }

    #[tokio::test]
    async fn setup_and_ids_are_checked_before_anything_is_sent() {
        for bad in ["ftp://acquirer", "not a url", "http://", "file:///tmp/x"] {
            assert!(
                HttpAcquirer::new(bad, Duration::from_secs(1)).is_err(),
                "{bad}"
            );
        }
        let acq = HttpAcquirer::new("http://127.0.0.1:9/base/", Duration::from_secs(1)).unwrap();
        assert_eq!(
            acq.url("v1/payments").unwrap().as_str(),
            "http://127.0.0.1:9/base/v1/payments"
        );
        let err = acq
            .void(&VoidRequest {
                charge_id: "../refunds".to_owned(),
            })
            .await
            .unwrap_err();
        assert!(matches!(err, AcquirerError::Rejected { status: 400, .. }));
        let err = acq
            .capture(&CaptureRequest {
                charge_id: String::new(),
                amount: None,
            })
            .await
            .unwrap_err();
        assert!(!err.is_transient());
    }

    #[test]
    fn idempotency_keys_derive_from_the_object() {
        assert_eq!(
            authorize("pi_1", "pm_card_visa", true).idempotency_key(),
            "pi_1:authorize"
        );
        let capture = CaptureRequest {
            charge_id: "ch_1".to_owned(),
            amount: None,
        };
        assert_eq!(capture.idempotency_key(), "ch_1:capture");
        let void = VoidRequest {
            charge_id: "ch_1".to_owned(),
        };
        assert_eq!(void.idempotency_key(), "ch_1:void");
        let refund = RefundRequest {
            charge_id: "ch_1".to_owned(),
            amount: 1,
            reference: "re_1".to_owned(),
        };
        assert_eq!(refund.idempotency_key(), "re_1:refund");
    }
}
