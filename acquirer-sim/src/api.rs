//! The HTTP surface: routing, the `/v1` handlers, the `/sim` controls and fault injection.
//! The protocol itself is described in the crate documentation.

use std::sync::Arc;
use std::time::Duration;

use chrono::{Datelike, Utc};
use paystream_domain::money::{Amount, Currency};
use paystream_domain::DomainError;
use poem::error::ReadBodyError;
use poem::http::{HeaderMap, StatusCode};
use poem::web::{Data, Path, Query};
use poem::{
    get, handler, post, Body, Endpoint, EndpointExt, IntoResponse, Request, Response, Route,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cards::{self, Verdict, EXPIRED_CARD};
use crate::faults::{roll, FaultsBody};
use crate::ledger::{
    BodyPrint, Charge, ChargeStatus, Fingerprint, Ledger, Refund, RefundStatus, StoredAnswer,
};
use crate::metrics::bump;
use crate::Sim;

/// Request bodies are small JSON objects; anything bigger is a mistake or an attack.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The simulator as a poem endpoint, for [`crate::run`] and for `poem::test::TestClient`.
pub fn app(sim: Arc<Sim>) -> impl Endpoint {
    let faulty = Arc::clone(&sim);
    let v1 = Route::new()
        .at("/payments", get(list_payments).post(create_payment))
        .at("/payments/:id/capture", post(capture_payment))
        .at("/payments/:id/void", post(void_payment))
        .at("/refunds", get(list_refunds).post(create_refund))
        .around(move |ep, req| {
            let sim = Arc::clone(&faulty);
            async move { Ok::<_, poem::Error>(misbehave(&sim, ep.as_ref(), req).await) }
        });
    Route::new()
        .nest("/v1", v1)
        .at("/sim/charges", get(sim_charges))
        .at("/sim/3ds/:id", post(crate::challenge::complete))
        .at("/sim/faults", get(get_faults).post(set_faults))
        .at("/sim/reset", post(reset))
        .at("/healthz", get(healthz))
        .at("/metrics", get(metrics))
        .data(sim)
}

/// An answer before it becomes a response; idempotent replays store exactly this.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    status: StatusCode,
    body: Value,
}

impl Reply {
    fn ok(body: Value) -> Self {
        Self {
            status: StatusCode::OK,
            body,
        }
    }

    fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({"error": {"code": code, "message": message.into()}}),
        }
    }

    fn invalid(code: &str, param: Option<&str>, message: impl Into<String>) -> Self {
        let mut reply = Self::error(StatusCode::BAD_REQUEST, code, message);
        if let Some(param) = param {
            reply.body["error"]["param"] = json!(param);
        }
        reply
    }

    fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::error(StatusCode::CONFLICT, code, message)
    }

    fn no_such_charge() -> Self {
        Self::error(StatusCode::NOT_FOUND, "resource_missing", "No such charge.")
    }
}

impl From<DomainError> for Reply {
    fn from(e: DomainError) -> Self {
        Reply::invalid(e.code, e.param.as_deref(), e.message)
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        Response::builder()
            .status(self.status)
            .content_type("application/json")
            .body(self.body.to_string())
    }
}

/// Marks a `/v1` call whose answer the timeout fault will withhold: the caller will not learn
/// the outcome from it, so the handler also announces the outcome by notification, as an
/// acquirer's asynchronous notifications tell a merchant what a lost connection hid.
#[derive(Debug, Clone, Copy)]
struct AnswerLost;

fn answer_lost(req: &Request) -> bool {
    req.extensions().get::<AnswerLost>().is_some()
}

/// Wraps every `/v1` call in the configured misbehaviour. The error roll happens before the
/// call and the timeout roll's hang after it, so a "timed out" call has already charged and
/// stored its answer, which is exactly the case idempotency keys exist for.
async fn misbehave<E: Endpoint>(sim: &Sim, ep: &E, mut req: Request) -> Response {
    bump(&sim.metrics.requests);
    let (latency_ms, fail, hang) = sim.roll_faults();
    if latency_ms > 0 {
        sim.pause(Duration::from_millis(latency_ms)).await;
    }
    if fail {
        bump(&sim.metrics.injected_errors);
        return Reply::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "simulated_error",
            "The acquirer failed (injected fault).",
        )
        .into_response();
    }
    if hang {
        req.extensions_mut().insert(AnswerLost);
    }
    let response = ep.get_response(req).await;
    if hang {
        bump(&sim.metrics.injected_timeouts);
        sim.pause(sim.config.timeout_hang).await;
    }
    response
}

impl Sim {
    /// Runs `op` at most once per idempotency key. The lookup, the decision and the record of
    /// its answer happen under one lock, so two concurrent requests with one key cannot both
    /// run: the second sees the first one's stored answer.
    fn idempotent(
        &self,
        req: &Request,
        body: &[u8],
        op: impl FnOnce(&mut Ledger) -> Result<Reply, Reply>,
    ) -> Response {
        let key = match idempotency_key(req.headers()) {
            Ok(key) => key,
            Err(reply) => return reply.into_response(),
        };
        let fingerprint = Fingerprint {
            method: req.method().to_string(),
            path: req.original_uri().path().to_owned(),
            body: BodyPrint::of(body),
        };
        let mut ledger = self.ledger();
        if let Some(stored) = ledger.answer(&key) {
            if stored.fingerprint == fingerprint {
                bump(&self.metrics.replays);
                let mut response = Reply {
                    status: StatusCode::from_u16(stored.status)
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    body: stored.body.clone(),
                }
                .into_response();
                response.headers_mut().insert(
                    "idempotent-replayed",
                    "true".parse().expect("static header"),
                );
                return response;
            }
            bump(&self.metrics.key_conflicts);
            return Reply::error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "This idempotency key was already used with a different request.",
            )
            .into_response();
        }
        let reply = op(&mut ledger).unwrap_or_else(|refusal| refusal);
        // A 5xx decided nothing, so a retry with the same key must get to try again.
        if !reply.status.is_server_error() {
            ledger.store_answer(
                key,
                StoredAnswer {
                    fingerprint,
                    status: reply.status.as_u16(),
                    body: reply.body.clone(),
                },
            );
        }
        reply.into_response()
    }

    fn authorize(&self, ledger: &mut Ledger, body: &[u8], lost: bool) -> Result<Reply, Reply> {
        let req: CreatePayment = parse_body(body)?;
        let reference = check_reference(req.reference, "reference")?;
        let amount = Amount::parse_charge(req.amount, "amount")?.minor_units();
        let currency = Currency::parse(&req.currency)?.code();
        if let Some(url) = &req.return_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() > 2048 {
                return Err(Reply::invalid(
                    "url_invalid",
                    Some("returnUrl"),
                    "`returnUrl` must be an http(s) URL of at most 2048 characters",
                ));
            }
        }
        let (number, expired) = match (&req.payment_method, &req.card, &req.bank_account) {
            (Some(pm), None, None) => (
                cards::number_for_payment_method(pm).ok_or_else(|| {
                    Reply::invalid(
                        "payment_method_unknown",
                        Some("paymentMethod"),
                        "`paymentMethod` is not a payment method this acquirer knows",
                    )
                })?,
                false,
            ),
            (None, Some(card), None) => (card.number.as_str(), card.validate()?),
            (None, None, Some(bank)) => (bank.validate()?, false),
            _ => {
                return Err(Reply::invalid(
                    "parameter_invalid",
                    None,
                    "send exactly one of `paymentMethod`, `card` and `bankAccount`",
                ))
            }
        };
        let verdict = if expired {
            Verdict::Decline(EXPIRED_CARD)
        } else {
            cards::verdict(number)
        };

        let mut charge = Charge {
            id: new_id("ch"),
            reference,
            amount,
            currency,
            status: ChargeStatus::Authorized,
            amount_captured: 0,
            amount_refunded: 0,
            decline: None,
            redirect_url: None,
            return_url: req.return_url,
            capture: req.capture,
            disputes_later: false,
            created_at: Utc::now(),
        };
        let status = match verdict {
            Verdict::ProcessingError => {
                return Err(Reply::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "processing_error",
                    "An error occurred while processing the card.",
                ))
            }
            Verdict::Decline(decline) => {
                charge.status = ChargeStatus::Declined;
                charge.decline = Some(decline);
                StatusCode::PAYMENT_REQUIRED
            }
            Verdict::ChallengeRequired => {
                charge.status = ChargeStatus::RequiresAction;
                charge.redirect_url = Some(format!("{}/sim/3ds/{}", self.public_url, charge.id));
                StatusCode::OK
            }
            Verdict::Approve { disputes_later } => {
                charge.disputes_later = disputes_later;
                if req.capture {
                    charge.status = ChargeStatus::Captured;
                    charge.amount_captured = amount;
                }
                StatusCode::OK
            }
        };
        bump(&self.metrics.charges);
        tracing::info!(
            charge = %charge.id,
            reference = %charge.reference,
            amount,
            status = charge.status.as_str(),
            "charge created"
        );
        let reply = Reply {
            status,
            body: charge.to_json(),
        };
        if lost {
            self.notify_charge(&charge);
        }
        ledger.insert_charge(charge);
        Ok(reply)
    }

    fn capture(
        &self,
        ledger: &mut Ledger,
        id: &str,
        body: &[u8],
        lost: bool,
    ) -> Result<Reply, Reply> {
        let req: CaptureBody = parse_body(body)?;
        let charge = ledger.charge_mut(id).ok_or_else(Reply::no_such_charge)?;
        match charge.status {
            ChargeStatus::Authorized => {}
            ChargeStatus::Captured | ChargeStatus::Refunded => {
                return Err(Reply::conflict(
                    "charge_already_captured",
                    "The charge has already been captured.",
                ))
            }
            other => {
                return Err(Reply::conflict(
                    "charge_not_capturable",
                    format!(
                        "A charge in status `{}` cannot be captured.",
                        other.as_str()
                    ),
                ))
            }
        }
        let amount = match req.amount {
            None => charge.amount,
            Some(raw) => {
                let amount = Amount::parse_charge(raw, "amount")?.minor_units();
                if amount > charge.amount {
                    return Err(Reply::invalid(
                        "amount_too_large",
                        Some("amount"),
                        "`amount` is more than the authorized amount",
                    ));
                }
                amount
            }
        };
        charge.status = ChargeStatus::Captured;
        charge.amount_captured = amount;
        tracing::info!(charge = %charge.id, amount, "charge captured");
        if lost {
            self.notify_charge(charge);
        }
        Ok(Reply::ok(charge.to_json()))
    }

    fn void(&self, ledger: &mut Ledger, id: &str, body: &[u8]) -> Result<Reply, Reply> {
        let _: VoidBody = parse_body(body)?;
        let charge = ledger.charge_mut(id).ok_or_else(Reply::no_such_charge)?;
        match charge.status {
            ChargeStatus::Authorized | ChargeStatus::RequiresAction => {}
            ChargeStatus::Captured | ChargeStatus::Refunded => {
                return Err(Reply::conflict(
                    "charge_already_captured",
                    "A captured charge cannot be voided; refund it instead.",
                ))
            }
            ChargeStatus::Voided => {
                return Err(Reply::conflict(
                    "charge_already_voided",
                    "The charge has already been voided.",
                ))
            }
            ChargeStatus::Declined => {
                return Err(Reply::conflict(
                    "charge_not_voidable",
                    "A declined charge cannot be voided.",
                ))
            }
        }
        charge.status = ChargeStatus::Voided;
        tracing::info!(charge = %charge.id, "charge voided");
        Ok(Reply::ok(charge.to_json()))
    }

    /// Refunds a captured charge. With `settle_after`, the refund is accepted as `pending`
    /// (its amount reserved at once, so concurrent refunds still cannot exceed the capture),
    /// `refund.pending` is announced, and a task settles it after the delay.
    fn refund(
        &self,
        ledger: &mut Ledger,
        body: &[u8],
        settle_after: Option<Duration>,
        lost: bool,
    ) -> Result<Reply, Reply> {
        let req: RefundBody = parse_body(body)?;
        let reference = check_reference(req.reference, "reference")?;
        let amount = Amount::parse_charge(req.amount, "amount")?.minor_units();
        let charge = ledger
            .charge_mut(&req.payment)
            .ok_or_else(Reply::no_such_charge)?;
        match charge.status {
            ChargeStatus::Captured => {}
            ChargeStatus::Refunded => {
                return Err(Reply::conflict(
                    "charge_already_refunded",
                    "The charge has already been refunded in full.",
                ))
            }
            other => {
                return Err(Reply::conflict(
                    "charge_not_captured",
                    format!(
                        "A charge in status `{}` cannot be refunded.",
                        other.as_str()
                    ),
                ))
            }
        }
        let remaining = charge.amount_captured - charge.amount_refunded;
        if amount > remaining {
            return Err(Reply::invalid(
                "amount_too_large",
                Some("amount"),
                format!("`amount` is more than the {remaining} left to refund"),
            ));
        }
        charge.amount_refunded += amount;
        if charge.amount_refunded == charge.amount_captured {
            charge.status = ChargeStatus::Refunded;
        }
        let refund = Refund {
            id: new_id("rf"),
            charge_id: charge.id.clone(),
            reference,
            amount,
            currency: charge.currency,
            status: if settle_after.is_some() {
                RefundStatus::Pending
            } else {
                RefundStatus::Succeeded
            },
            failure_reason: None,
            created_at: Utc::now(),
        };
        bump(&self.metrics.refunds);
        tracing::info!(refund = %refund.id, charge = %refund.charge_id, amount, status = ?refund.status, "refund created");
        let reply = Reply::ok(refund.to_json());
        match settle_after {
            Some(delay) => {
                self.notify("refund.pending", refund.to_json());
                if let Some(sim) = self.me.upgrade() {
                    let id = refund.id.clone();
                    tokio::spawn(async move {
                        sim.pause(delay).await;
                        if !sim.shutdown.is_cancelled() {
                            sim.settle_refund(&id);
                        }
                    });
                }
            }
            None if lost => self.notify("refund.succeeded", refund.to_json()),
            None => {}
        }
        ledger.insert_refund(refund);
        Ok(reply)
    }

    /// Settles a pending refund: succeeded, or (at `refundFailureRate`) failed with its amount
    /// released back to the charge; announced by notification either way.
    fn settle_refund(&self, id: &str) {
        let fail = {
            let mut chaos = self.chaos();
            let rate = chaos.faults.refund_failure_per_million;
            roll(&mut chaos.rng, rate)
        };
        let settled = {
            let mut ledger = self.ledger();
            let Some(refund) = ledger.refund_mut(id) else {
                // Forgotten by `/sim/reset` meanwhile.
                return;
            };
            if refund.status != RefundStatus::Pending {
                return;
            }
            if fail {
                refund.status = RefundStatus::Failed;
                refund.failure_reason = Some("refund_declined");
            } else {
                refund.status = RefundStatus::Succeeded;
            }
            let (body, charge_id, amount) =
                (refund.to_json(), refund.charge_id.clone(), refund.amount);
            if fail {
                if let Some(charge) = ledger.charge_mut(&charge_id) {
                    charge.amount_refunded -= amount;
                    if charge.status == ChargeStatus::Refunded {
                        charge.status = ChargeStatus::Captured;
                    }
                }
            }
            body
        };
        tracing::info!(refund = id, failed = fail, "refund settled");
        let event = if fail {
            "refund.failed"
        } else {
            "refund.succeeded"
        };
        self.notify(event, settled);
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreatePayment {
    reference: String,
    amount: i64,
    currency: String,
    payment_method: Option<String>,
    card: Option<CardBody>,
    bank_account: Option<BankAccountBody>,
    capture: bool,
    return_url: Option<String>,
}

// No `Debug`: nothing may ever format a card number into a log line.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CardBody {
    number: String,
    exp_month: u32,
    exp_year: i32,
    /// Absent for a card on file: a vault keeps no CVC, and charging a stored card needs none.
    cvc: Option<String>,
}

// No `Debug`, like the card.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BankAccountBody {
    #[allow(dead_code)]
    country: String,
    routing_number: String,
    account_number: String,
    #[allow(dead_code)]
    account_holder_name: String,
    #[allow(dead_code)]
    account_holder_type: Option<String>,
}

impl BankAccountBody {
    /// Checks the account's shape (400 when wrong); the account number decides the verdict.
    fn validate(&self) -> Result<&str, Reply> {
        if self.routing_number.len() != 9
            || !self.routing_number.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(Reply::invalid(
                "routing_number_invalid",
                Some("bankAccount.routingNumber"),
                "`bankAccount.routingNumber` must be 9 digits",
            ));
        }
        if !(4..=17).contains(&self.account_number.len())
            || !self.account_number.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(Reply::invalid(
                "account_number_invalid",
                Some("bankAccount.accountNumber"),
                "`bankAccount.accountNumber` must be 4 to 17 digits",
            ));
        }
        Ok(&self.account_number)
    }
}

impl CardBody {
    /// Checks the card's shape (400 when wrong) and tells whether it has expired, which is the
    /// issuer's decline rather than a malformed request.
    fn validate(&self) -> Result<bool, Reply> {
        if !(8..=19).contains(&self.number.len())
            || !self.number.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(Reply::invalid(
                "invalid_number",
                Some("card.number"),
                "`card.number` must be 8 to 19 digits",
            ));
        }
        if !(1..=12).contains(&self.exp_month) {
            return Err(Reply::invalid(
                "invalid_expiry_month",
                Some("card.expMonth"),
                "`card.expMonth` must be 1 to 12",
            ));
        }
        if !(2000..=2199).contains(&self.exp_year) {
            return Err(Reply::invalid(
                "invalid_expiry_year",
                Some("card.expYear"),
                "`card.expYear` must be a four-digit year",
            ));
        }
        let bad_cvc =
            |c: &str| !(3..=4).contains(&c.len()) || !c.bytes().all(|b| b.is_ascii_digit());
        if self.cvc.as_deref().is_some_and(bad_cvc) {
            return Err(Reply::invalid(
                "invalid_cvc",
                Some("card.cvc"),
                "`card.cvc` must be 3 or 4 digits",
            ));
        }
        let today = Utc::now();
        Ok((self.exp_year, self.exp_month) < (today.year(), today.month()))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CaptureBody {
    amount: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VoidBody {}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RefundBody {
    payment: String,
    amount: i64,
    reference: String,
}

#[derive(Deserialize)]
struct ReferenceQuery {
    reference: Option<String>,
}

#[handler]
async fn create_payment(Data(sim): Data<&Arc<Sim>>, req: &Request, body: Body) -> Response {
    match read_body(body).await {
        Ok(body) => {
            let lost = answer_lost(req);
            sim.idempotent(req, &body, |ledger| sim.authorize(ledger, &body, lost))
        }
        Err(reply) => reply.into_response(),
    }
}

#[handler]
async fn capture_payment(
    Data(sim): Data<&Arc<Sim>>,
    Path(id): Path<String>,
    req: &Request,
    body: Body,
) -> Response {
    match read_body(body).await {
        Ok(body) => {
            let lost = answer_lost(req);
            sim.idempotent(req, &body, |ledger| sim.capture(ledger, &id, &body, lost))
        }
        Err(reply) => reply.into_response(),
    }
}

#[handler]
async fn void_payment(
    Data(sim): Data<&Arc<Sim>>,
    Path(id): Path<String>,
    req: &Request,
    body: Body,
) -> Response {
    match read_body(body).await {
        Ok(body) => sim.idempotent(req, &body, |ledger| sim.void(ledger, &id, &body)),
        Err(reply) => reply.into_response(),
    }
}

#[handler]
async fn create_refund(Data(sim): Data<&Arc<Sim>>, req: &Request, body: Body) -> Response {
    match read_body(body).await {
        Ok(body) => {
            let lost = answer_lost(req);
            // Read before the ledger is locked: the two locks are never held together.
            let settle_after = match sim.faults().refund_settlement_ms {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            };
            sim.idempotent(req, &body, |ledger| {
                sim.refund(ledger, &body, settle_after, lost)
            })
        }
        Err(reply) => reply.into_response(),
    }
}

/// `GET /v1/refunds?reference=`: the refunds made under one of the caller's refund ids, with
/// their current status (an idempotent replay of `POST /v1/refunds` shows the status it had
/// when first answered; this shows where it is now).
#[handler]
fn list_refunds(Data(sim): Data<&Arc<Sim>>, Query(q): Query<ReferenceQuery>) -> Reply {
    let Some(reference) = q.reference.filter(|r| !r.is_empty()) else {
        return Reply::invalid(
            "parameter_missing",
            Some("reference"),
            "`reference` is required",
        );
    };
    let ledger = sim.ledger();
    let data: Vec<Value> = ledger
        .refunds_for(&reference)
        .into_iter()
        .map(Refund::to_json)
        .collect();
    Reply::ok(json!({ "data": data }))
}

#[handler]
fn list_payments(Data(sim): Data<&Arc<Sim>>, Query(q): Query<ReferenceQuery>) -> Reply {
    let Some(reference) = q.reference.filter(|r| !r.is_empty()) else {
        return Reply::invalid(
            "parameter_missing",
            Some("reference"),
            "`reference` is required",
        );
    };
    let ledger = sim.ledger();
    let data: Vec<Value> = ledger
        .charges(Some(&reference))
        .into_iter()
        .map(Charge::to_json)
        .collect();
    Reply::ok(json!({ "data": data }))
}

#[handler]
fn sim_charges(Data(sim): Data<&Arc<Sim>>, Query(q): Query<ReferenceQuery>) -> Reply {
    let ledger = sim.ledger();
    let data: Vec<Value> = ledger
        .charges(q.reference.as_deref())
        .into_iter()
        .map(Charge::to_sim_json)
        .collect();
    Reply::ok(json!({ "data": data }))
}

#[handler]
fn get_faults(Data(sim): Data<&Arc<Sim>>) -> Reply {
    Reply::ok(json!(sim.faults()))
}

#[handler]
async fn set_faults(Data(sim): Data<&Arc<Sim>>, body: Body) -> Reply {
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(reply) => return reply,
    };
    let applied = parse_body::<FaultsBody>(&body).and_then(|b| {
        b.into_faults()
            .map_err(|e| Reply::invalid("parameter_invalid", Some(e.param), e.to_string()))
    });
    match applied {
        Ok(faults) => {
            sim.set_faults(faults);
            tracing::info!(?faults, "fault settings replaced");
            Reply::ok(json!(faults))
        }
        Err(reply) => reply,
    }
}

#[handler]
fn reset(Data(sim): Data<&Arc<Sim>>) -> StatusCode {
    sim.reset();
    tracing::info!("simulator reset");
    StatusCode::NO_CONTENT
}

#[handler]
fn healthz() -> &'static str {
    "ok"
}

#[handler]
fn metrics(Data(sim): Data<&Arc<Sim>>) -> Response {
    Response::builder()
        .content_type("text/plain; version=0.0.4")
        .body(sim.metrics.render())
}

impl Sim {
    /// Draws this call's faults: (added latency, fail now, hang afterwards).
    fn roll_faults(&self) -> (u64, bool, bool) {
        let mut chaos = self.chaos();
        let faults = chaos.faults;
        let fail = roll(&mut chaos.rng, faults.error_per_million);
        let hang = roll(&mut chaos.rng, faults.timeout_per_million);
        (faults.latency_ms, fail, hang)
    }

    /// Sleeps, but never past shutdown, so hung calls do not hold up a graceful stop.
    pub(crate) async fn pause(&self, duration: Duration) {
        tokio::select! {
            () = tokio::time::sleep(duration) => {}
            () = self.shutdown.cancelled() => {}
        }
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, Reply> {
    let Some(raw) = headers.get("idempotency-key") else {
        return Err(Reply::invalid(
            "idempotency_key_missing",
            None,
            "the `Idempotency-Key` header is required",
        ));
    };
    raw.to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| (0x20..0x7f).contains(&b)))
        .map(str::to_owned)
        .ok_or_else(|| {
            Reply::invalid(
                "idempotency_key_invalid",
                None,
                "the `Idempotency-Key` header must be 1 to 255 printable ASCII characters",
            )
        })
}

/// Reads a request body of at most [`MAX_BODY_BYTES`], whether or not it announced its length.
async fn read_body(body: Body) -> Result<Vec<u8>, Reply> {
    match body.into_bytes_limit(MAX_BODY_BYTES).await {
        Ok(bytes) => Ok(bytes.to_vec()),
        Err(ReadBodyError::PayloadTooLarge) => Err(Reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
        )),
        Err(_) => Err(Reply::invalid(
            "body_invalid",
            None,
            "the request body could not be read",
        )),
    }
}

/// Parses a JSON body. An empty body counts as `{}`. Error messages name the field but never
/// quote the value sent, which could be a card number.
fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let param = (path != ".").then_some(path.as_str());
        let inner = err.inner();
        if !inner.is_data() {
            return not_json();
        }
        let text = inner.to_string();
        let text = text.split(" at line ").next().unwrap_or_default();
        // serde's messages for missing and unknown fields quote field names only; any other
        // may quote the value that was sent.
        let message = if text.starts_with("missing field") || text.starts_with("unknown field") {
            text.to_owned()
        } else {
            format!("`{path}` has an invalid type or value")
        };
        Reply::invalid("parameter_invalid", param, message)
    })?;
    de.end().map_err(|_| not_json())?;
    Ok(value)
}

fn not_json() -> Reply {
    Reply::invalid("body_invalid", None, "the body is not valid JSON")
}

fn check_reference(raw: String, param: &str) -> Result<String, Reply> {
    if raw.is_empty() || raw.len() > 255 || raw.chars().any(char::is_control) {
        return Err(Reply::invalid(
            "parameter_invalid",
            Some(param),
            format!("`{param}` must be 1 to 255 characters without control characters"),
        ));
    }
    Ok(raw)
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}
