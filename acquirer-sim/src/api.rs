//! The HTTP surface: routing, the `/v1` handlers, the `/sim` controls, fault injection and
//! reading requests. What each `/v1` call does to the books is in `books.rs`; the protocol
//! itself is described in the crate documentation and in docs/acquirer.md.

use std::sync::Arc;
use std::time::Duration;

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

use crate::faults::{roll, FaultsBody};
use crate::ledger::{Charge, Refund};
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
        .at("/payouts", get(crate::settlement::list_payouts))
        .at("/payouts/:id/report.csv", get(crate::settlement::report))
        .at("/disputes", get(crate::disputes::list))
        .at(
            "/disputes/:id/evidence",
            post(crate::disputes::submit_evidence),
        )
        .around(move |ep, req| {
            let sim = Arc::clone(&faulty);
            async move { Ok::<_, poem::Error>(misbehave(&sim, ep.as_ref(), req).await) }
        });
    Route::new()
        .nest("/v1", v1)
        .at("/sim/charges", get(sim_charges))
        .at(
            "/sim/3ds/:id",
            get(crate::challenge::page).post(crate::challenge::complete),
        )
        .at("/sim/disputes", post(crate::disputes::sim_open))
        .at("/sim/faults", get(get_faults).post(set_faults))
        .at("/sim/reset", post(reset))
        .at("/sim/settle", post(crate::settlement::settle_now))
        .at("/healthz", get(healthz))
        .at("/metrics", get(metrics))
        .data(sim)
}

/// An answer before it becomes a response; idempotent replays store exactly this.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
}

impl Reply {
    pub(crate) fn ok(body: Value) -> Self {
        Self {
            status: StatusCode::OK,
            body,
        }
    }

    pub(crate) fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({"error": {"code": code, "message": message.into()}}),
        }
    }

    pub(crate) fn invalid(code: &str, param: Option<&str>, message: impl Into<String>) -> Self {
        let mut reply = Self::error(StatusCode::BAD_REQUEST, code, message);
        if let Some(param) = param {
            reply.body["error"]["param"] = json!(param);
        }
        reply
    }

    pub(crate) fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::error(StatusCode::CONFLICT, code, message)
    }

    pub(crate) fn no_such_charge() -> Self {
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

pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<String, Reply> {
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
pub(crate) async fn read_body(body: Body) -> Result<Vec<u8>, Reply> {
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
pub(crate) fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
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

pub(crate) fn check_reference(raw: String, param: &str) -> Result<String, Reply> {
    if raw.is_empty() || raw.len() > 255 || raw.chars().any(char::is_control) {
        return Err(Reply::invalid(
            "parameter_invalid",
            Some(param),
            format!("`{param}` must be 1 to 255 characters without control characters"),
        ));
    }
    Ok(raw)
}
