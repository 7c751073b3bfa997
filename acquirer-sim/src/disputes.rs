//! Chargebacks: the cardholder's bank disputes a captured charge, the simulator withdraws it
//! and tells paystream, paystream answers with evidence, and a moment later the simulator
//! decides the way Stripe's test mode does.
//!
//! - A charge of 4000000000000259 (`pm_card_createDispute`) opens a chargeback by itself
//!   [`OPEN_AFTER_CAPTURE`] after it is captured; `POST /sim/disputes` {reference, reason?,
//!   amount?} opens one now on a reference's captured charge (amount: default the whole
//!   captured amount; reason: default `fraudulent`).
//! - Each chargeback is announced once by a `dispute.created` notification whose `data` is the
//!   chargeback: `{id: "chb_…", payment: "ch_…", reference, amount, currency, reason, status:
//!   "needs_response", evidenceDueBy, createdAt}`. `evidenceDueBy` is
//!   [`crate::SimConfig::dispute_due`] after opening (`PAYSTREAM_SIM_DISPUTE_DUE_SECS`, 7 days).
//! - `POST /v1/disputes/{id}/evidence` {evidence: {uncategorizedText?, ...}} (idempotent like
//!   every `/v1` POST) moves it to `under_review`; [`DECIDE_AFTER`] later it is `won` when
//!   `uncategorizedText` contains `winning_evidence`, otherwise `lost`, announced by
//!   `dispute.closed`. Evidence for a chargeback that is no longer `needs_response` is a 409.
//! - `GET /v1/disputes?reference=` lists a reference's chargebacks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use poem::http::StatusCode;
use poem::web::{Data, Path, Query};
use poem::{handler, Body, IntoResponse, Request, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{check_reference, parse_body, read_body, Reply};
use crate::ledger::{ChargeStatus, Ledger};
use crate::Sim;

/// How long after capture a `pm_card_createDispute` charge is disputed.
pub const OPEN_AFTER_CAPTURE: Duration = Duration::from_millis(300);
/// How long the "bank" takes to decide once evidence arrives.
pub const DECIDE_AFTER: Duration = Duration::from_millis(300);
/// The phrase that wins a dispute in Stripe's test mode.
pub const WINNING_EVIDENCE: &str = "winning_evidence";
/// Reasons a chargeback may carry (Stripe's).
pub const REASONS: [&str; 8] = [
    "fraudulent",
    "duplicate",
    "product_not_received",
    "product_unacceptable",
    "subscription_canceled",
    "credit_not_processed",
    "unrecognized",
    "general",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargebackStatus {
    NeedsResponse,
    UnderReview,
    Won,
    Lost,
}

impl ChargebackStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ChargebackStatus::NeedsResponse => "needs_response",
            ChargebackStatus::UnderReview => "under_review",
            ChargebackStatus::Won => "won",
            ChargebackStatus::Lost => "lost",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Chargeback {
    pub id: String,
    pub charge_id: String,
    pub reference: String,
    pub amount: i64,
    pub currency: &'static str,
    pub reason: String,
    pub status: ChargebackStatus,
    pub evidence_due_by: DateTime<Utc>,
    pub evidence: Option<Value>,
    pub created_at: DateTime<Utc>,
}

impl Chargeback {
    pub fn to_json(&self) -> Value {
        let millis = |t: &DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        json!({
            "id": self.id,
            "payment": self.charge_id,
            "reference": self.reference,
            "amount": self.amount,
            "currency": self.currency,
            "reason": self.reason,
            "status": self.status.as_str(),
            "evidenceDueBy": millis(&self.evidence_due_by),
            "createdAt": millis(&self.created_at),
        })
    }
}

/// The chargebacks the simulator holds, kept with the rest of its books (one lock).
#[derive(Debug, Default)]
pub struct Chargebacks {
    by_id: HashMap<String, Chargeback>,
    /// Ids per reference, oldest first.
    by_reference: HashMap<String, Vec<String>>,
}

impl Chargebacks {
    fn insert(&mut self, chargeback: Chargeback) {
        self.by_reference
            .entry(chargeback.reference.clone())
            .or_default()
            .push(chargeback.id.clone());
        self.by_id.insert(chargeback.id.clone(), chargeback);
    }

    /// Every chargeback, in no particular order (settlement sorts what it takes).
    pub fn all(&self) -> impl Iterator<Item = &Chargeback> {
        self.by_id.values()
    }

    pub fn for_reference(&self, reference: &str) -> Vec<&Chargeback> {
        self.by_reference
            .get(reference)
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .filter_map(|id| self.by_id.get(id))
            .collect()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OpenBody {
    reference: String,
    reason: Option<String>,
    amount: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EvidenceBody {
    evidence: serde_json::Map<String, Value>,
}

impl Sim {
    /// Opens a chargeback on `reference`'s captured charge and announces it.
    fn open_chargeback(
        &self,
        ledger: &mut Ledger,
        reference: &str,
        reason: Option<String>,
        amount: Option<i64>,
    ) -> Result<Chargeback, Reply> {
        let reason = reason.unwrap_or_else(|| "fraudulent".to_owned());
        if !REASONS.contains(&reason.as_str()) {
            return Err(Reply::invalid(
                "parameter_invalid",
                Some("reason"),
                format!("`reason` must be one of {}", REASONS.join(", ")),
            ));
        }
        let charge = ledger
            .charges(Some(reference))
            .into_iter()
            .find(|c| matches!(c.status, ChargeStatus::Captured | ChargeStatus::Refunded))
            .cloned()
            .ok_or_else(|| {
                Reply::error(
                    StatusCode::NOT_FOUND,
                    "no_such_charge",
                    "No captured charge has this reference.",
                )
            })?;
        let amount = match amount {
            None => charge.amount_captured,
            Some(a) if a > 0 && a <= charge.amount_captured => a,
            Some(_) => {
                return Err(Reply::invalid(
                    "amount_invalid",
                    Some("amount"),
                    "`amount` must be positive and at most the captured amount",
                ))
            }
        };
        let now = Utc::now();
        let due = chrono::Duration::from_std(self.config.dispute_due)
            .unwrap_or(chrono::Duration::days(7));
        let chargeback = Chargeback {
            id: format!("chb_{}", uuid::Uuid::new_v4().simple()),
            charge_id: charge.id.clone(),
            reference: charge.reference.clone(),
            amount,
            currency: charge.currency,
            reason,
            status: ChargebackStatus::NeedsResponse,
            evidence_due_by: now + due,
            evidence: None,
            created_at: now,
        };
        tracing::info!(chargeback = %chargeback.id, charge = %charge.id, amount, "chargeback opened");
        self.notify("dispute.created", chargeback.to_json());
        ledger.chargebacks.insert(chargeback.clone());
        Ok(chargeback)
    }

    /// A `pm_card_createDispute` charge was just captured: its holder disputes it a moment
    /// later, as Stripe's test card does.
    pub(crate) fn dispute_later(&self, reference: &str) {
        let Some(sim) = self.me.upgrade() else {
            return;
        };
        let reference = reference.to_owned();
        tokio::spawn(async move {
            sim.pause(OPEN_AFTER_CAPTURE).await;
            if sim.shutdown.is_cancelled() {
                return;
            }
            let mut ledger = sim.ledger();
            if ledger.chargebacks.for_reference(&reference).is_empty() {
                // Gone only when `/sim/reset` forgot the charge meanwhile.
                let _ = sim.open_chargeback(&mut ledger, &reference, None, None);
            }
        });
    }

    fn take_evidence(&self, ledger: &mut Ledger, id: &str, body: &[u8]) -> Result<Reply, Reply> {
        let req: EvidenceBody = parse_body(body)?;
        let chargeback = ledger.chargebacks.by_id.get_mut(id).ok_or_else(|| {
            Reply::error(
                StatusCode::NOT_FOUND,
                "no_such_dispute",
                "No dispute has this id.",
            )
        })?;
        if chargeback.status != ChargebackStatus::NeedsResponse {
            return Err(Reply::conflict(
                "dispute_not_open",
                format!(
                    "The dispute is `{}` and takes no more evidence.",
                    chargeback.status.as_str()
                ),
            ));
        }
        chargeback.status = ChargebackStatus::UnderReview;
        chargeback.evidence = Some(Value::Object(req.evidence));
        tracing::info!(chargeback = id, "dispute evidence received");
        let reply = Reply::ok(chargeback.to_json());
        if let Some(sim) = self.me.upgrade() {
            let id = id.to_owned();
            tokio::spawn(async move {
                sim.pause(DECIDE_AFTER).await;
                if !sim.shutdown.is_cancelled() {
                    sim.decide(&id);
                }
            });
        }
        Ok(reply)
    }

    /// The issuer's decision on submitted evidence, by Stripe's test-mode rule.
    fn decide(&self, id: &str) {
        let decided = {
            let mut ledger = self.ledger();
            let Some(chargeback) = ledger.chargebacks.by_id.get_mut(id) else {
                return;
            };
            if chargeback.status != ChargebackStatus::UnderReview {
                return;
            }
            let wins = chargeback
                .evidence
                .as_ref()
                .and_then(|e| e.get("uncategorizedText"))
                .and_then(Value::as_str)
                .is_some_and(|t| t.contains(WINNING_EVIDENCE));
            chargeback.status = if wins {
                ChargebackStatus::Won
            } else {
                ChargebackStatus::Lost
            };
            tracing::info!(
                chargeback = id,
                status = chargeback.status.as_str(),
                "dispute decided"
            );
            chargeback.to_json()
        };
        self.notify("dispute.closed", decided);
    }
}

/// `POST /sim/disputes`: opens a chargeback now.
#[handler]
pub(crate) async fn sim_open(Data(sim): Data<&Arc<Sim>>, body: Body) -> Reply {
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(reply) => return reply,
    };
    let req: OpenBody = match parse_body(&body) {
        Ok(req) => req,
        Err(reply) => return reply,
    };
    let reference = match check_reference(req.reference, "reference") {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    let mut ledger = sim.ledger();
    match sim.open_chargeback(&mut ledger, &reference, req.reason, req.amount) {
        Ok(chargeback) => Reply {
            status: StatusCode::CREATED,
            body: chargeback.to_json(),
        },
        Err(reply) => reply,
    }
}

/// `POST /v1/disputes/{id}/evidence`.
#[handler]
pub(crate) async fn submit_evidence(
    Data(sim): Data<&Arc<Sim>>,
    Path(id): Path<String>,
    req: &Request,
    body: Body,
) -> Response {
    match read_body(body).await {
        Ok(body) => sim.idempotent(req, &body, |ledger| sim.take_evidence(ledger, &id, &body)),
        Err(reply) => reply.into_response(),
    }
}

#[derive(Deserialize)]
pub(crate) struct ReferenceQuery {
    reference: Option<String>,
}

/// `GET /v1/disputes?reference=`.
#[handler]
pub(crate) fn list(Data(sim): Data<&Arc<Sim>>, Query(q): Query<ReferenceQuery>) -> Reply {
    let Some(reference) = q.reference.filter(|r| !r.is_empty()) else {
        return Reply::invalid(
            "parameter_missing",
            Some("reference"),
            "`reference` is required",
        );
    };
    let ledger = sim.ledger();
    let data: Vec<Value> = ledger
        .chargebacks
        .for_reference(&reference)
        .into_iter()
        .map(|c| {
            let mut body = c.to_json();
            if let Some(e) = &c.evidence {
                body["evidence"] = e.clone();
            }
            body
        })
        .collect();
    Reply::ok(json!({ "data": data }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use poem::test::TestClient;
    use poem::EndpointExt;
    use serde_json::{json, Value};
    use tokio_util::sync::CancellationToken;

    use crate::{app, Sim, SimConfig};

    fn sim() -> Arc<Sim> {
        Sim::new(
            SimConfig {
                notify_url: Some("http://paystream.test/api/provider/webhooks".into()),
                dispute_due: Duration::from_secs(60),
                ..SimConfig::default()
            },
            CancellationToken::new(),
        )
    }

    async fn body(resp: poem::test::TestResponse) -> (u16, Value) {
        let status = resp.0.status().as_u16();
        let bytes = resp.0.into_body().into_vec().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn a_dispute_card_is_charged_back_and_evidence_decides_it() {
        let sim = sim();
        let mut rx = sim.notifications.take_receiver().unwrap();
        let cli = TestClient::new(app(Arc::clone(&sim)).map_to_response());
        for (reference, pm) in [("pi_a", "pm_card_createDispute"), ("pi_b", "pm_card_visa")] {
            let (status, _) = body(
                cli.post("/v1/payments")
                    .header("Idempotency-Key", reference)
                    .body_json(
                        &json!({"reference": reference, "amount": 2000, "currency": "usd",
                        "paymentMethod": pm, "capture": true}),
                    )
                    .send()
                    .await,
            )
            .await;
            assert_eq!(status, 200);
        }
        // The dispute card opens one by itself; the visa one only on request.
        let created = rx.recv().await.unwrap();
        assert_eq!(created.event_type, "dispute.created");
        let created: Value = serde_json::from_slice(&created.body).unwrap();
        assert_eq!(created["data"]["reference"], "pi_a");
        assert_eq!(created["data"]["status"], "needs_response");
        assert_eq!(created["data"]["amount"], 2000);
        let (status, opened) = body(
            cli.post("/sim/disputes")
                .body_json(&json!({"reference": "pi_b", "reason": "duplicate", "amount": 500}))
                .send()
                .await,
        )
        .await;
        assert_eq!((status, opened["amount"].as_i64()), (201, Some(500)));
        assert_eq!(opened["reason"], "duplicate");
        let n = rx.recv().await.unwrap();
        assert_eq!(n.event_type, "dispute.created");

        // Refusals: unknown reference, bad reason, too much.
        for bad in [
            json!({"reference": "pi_none"}),
            json!({"reference": "pi_b", "reason": "bored"}),
            json!({"reference": "pi_b", "amount": 5000}),
        ] {
            let (status, _) = body(cli.post("/sim/disputes").body_json(&bad).send().await).await;
            assert!(status == 404 || status == 400, "{bad}: {status}");
        }

        // Winning evidence wins; anything else loses; evidence twice is a 409.
        let a = created["data"]["id"].as_str().unwrap().to_owned();
        let b = opened["id"].as_str().unwrap().to_owned();
        for (id, text) in [(&a, "see winning_evidence"), (&b, "no receipt")] {
            let (status, under) = body(
                cli.post(format!("/v1/disputes/{id}/evidence"))
                    .header("Idempotency-Key", format!("ev-{id}"))
                    .body_json(&json!({"evidence": {"uncategorizedText": text}}))
                    .send()
                    .await,
            )
            .await;
            assert_eq!(
                (status, under["status"].as_str()),
                (200, Some("under_review"))
            );
        }
        let (status, _) = body(
            cli.post(format!("/v1/disputes/{a}/evidence"))
                .header("Idempotency-Key", "again")
                .body_json(&json!({"evidence": {}}))
                .send()
                .await,
        )
        .await;
        assert_eq!(status, 409);
        let mut outcomes = std::collections::HashMap::new();
        for _ in 0..2 {
            let n = rx.recv().await.unwrap();
            assert_eq!(n.event_type, "dispute.closed");
            let v: Value = serde_json::from_slice(&n.body).unwrap();
            outcomes.insert(
                v["data"]["id"].as_str().unwrap().to_owned(),
                v["data"]["status"].as_str().unwrap().to_owned(),
            );
        }
        assert_eq!(outcomes[&a], "won");
        assert_eq!(outcomes[&b], "lost");
        let (status, listed) = body(cli.get("/v1/disputes?reference=pi_a").send().await).await;
        assert_eq!(status, 200);
        assert_eq!(listed["data"][0]["status"], "won");
        assert_eq!(
            listed["data"][0]["evidence"]["uncategorizedText"],
            "see winning_evidence"
        );
        let (status, _) = body(cli.get("/v1/disputes").send().await).await;
        assert_eq!(status, 400);
        let (status, _) = body(
            cli.post("/v1/disputes/chb_none/evidence")
                .header("Idempotency-Key", "none")
                .body_json(&json!({"evidence": {}}))
                .send()
                .await,
        )
        .await;
        assert_eq!(status, 404);
    }
}
