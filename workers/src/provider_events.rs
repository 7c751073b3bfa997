//! Processing acquirer notifications: the `PROVIDER_EVENTS` consumer's step.
//!
//! The API has already verified, stored and queued each notification; this step applies it
//! through the same state machines and store functions as every other writer, once:
//! 1. lock the stored notification (`provider_events` row); one already processed is acked;
//! 2. parse its `data` into a typed event (an authentic but unusable notification is
//!    dead-lettered with the reason, never dropped and never retried forever);
//! 3. lock the object it is about (the payment intent; for a refund, its intent too, in the
//!    order refund settlement uses) and decide with the ordering rule
//!    (`paystream_shared::domain::provider_event`): apply, already so, or ignore;
//! 4. apply it, or record an ignored one in the audit log (`provider_event.ignored`, actor
//!    `acquirer`), and mark the notification processed with its outcome, all in one
//!    transaction. The consume loop acks only after that commit.
//!
//! It runs inside the `refund-worker` process (see `runtime::run_refund_worker`).

use paystream_shared::views::IntentView;
use serde::Deserialize;
use serde_json::json;
use sqlx::{PgConnection, PgPool};

use paystream_nats::consumer::{DeliveryInfo, Handler, Outcome};
use paystream_shared::audit::{self, Actor, NewEntry};
use paystream_shared::commands::{PaymentCommand, ProviderEventCommand};
use paystream_shared::domain::ids::IdKind;
use paystream_shared::domain::money::{Amount, Currency};
use paystream_shared::domain::outcome::ChargeOutcome;
use paystream_shared::domain::payment_intent::{PaymentError, PaymentIntent, PaymentIntentStatus};
use paystream_shared::domain::provider_event::{
    refund_verdict, ProcessingOutcome, ProviderEventType, Verdict,
};
use paystream_shared::domain::refund::RefundStatus;
use paystream_shared::outbox;
use paystream_shared::retry::RetrySchedule;
use paystream_shared::store::payment_intents::{self, OutcomeApplied};
use paystream_shared::store::provider_events::{self, ProviderEvent};
use paystream_shared::store::refunds::{self, Refund, Settlement};
use paystream_shared::store::StoreError;

/// The durable consumer's name.
pub const WORKER: &str = "provider-events";
/// Whoever a notification moves is moved by the acquirer's word.
pub const ACTOR: Actor = Actor::System("acquirer");
/// The audit action of a notification that would have moved an object backwards.
pub const IGNORED_ACTION: &str = "provider_event.ignored";

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Authentic but unusable: bad `data`, an unknown type or reference, or numbers that do
    /// not match our records. Retrying cannot help; an operator must look.
    #[error("{0}")]
    Unusable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ProcessError {
    fn from(e: sqlx::Error) -> Self {
        ProcessError::Store(StoreError::Db(e))
    }
}

pub(crate) fn unusable(reason: impl Into<String>) -> ProcessError {
    ProcessError::Unusable(reason.into())
}

/// A refund as the acquirer's notification describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundNotice {
    pub target: RefundTarget,
    /// The acquirer's refund id (`rf_…`).
    pub acquirer_refund_id: String,
    /// Our refund id.
    pub refund_id: String,
    pub amount: Amount,
    pub currency: Currency,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundTarget {
    Pending,
    Succeeded,
    Failed { reason: String },
}

/// A charge's outcome as the acquirer's notification describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentNotice {
    pub target: PaymentTarget,
    /// The acquirer's charge id (`ch_…`).
    pub charge_id: String,
    /// Our payment intent id.
    pub payment_intent_id: String,
    pub amount: Amount,
    pub currency: Currency,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentTarget {
    Captured { amount_received: Amount },
    Authorized { amount_capturable: Amount },
    Failed(PaymentError),
    RequiresAction { redirect_url: String },
}

impl PaymentTarget {
    #[cfg(test)]
    fn status(&self) -> PaymentIntentStatus {
        self.outcome("").status()
    }

    /// The notice in the domain's terms, which decide what it does to the intent.
    fn outcome(&self, charge_id: &str) -> ChargeOutcome {
        let charge_id = charge_id.to_owned();
        match self {
            PaymentTarget::Captured { amount_received } => ChargeOutcome::Captured {
                charge_id,
                amount_received: *amount_received,
            },
            PaymentTarget::Authorized { amount_capturable } => ChargeOutcome::Authorized {
                charge_id,
                amount_capturable: *amount_capturable,
            },
            PaymentTarget::Failed(error) => ChargeOutcome::Declined {
                charge_id: Some(charge_id),
                error: error.clone(),
            },
            PaymentTarget::RequiresAction { redirect_url } => ChargeOutcome::RequiresAction {
                charge_id,
                redirect_url: redirect_url.clone(),
            },
        }
    }
}

/// A notification's `data`, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Refund(RefundNotice),
    Payment(PaymentNotice),
    Dispute(crate::dispute_events::DisputeNotice),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefundData {
    id: String,
    reference: String,
    amount: i64,
    currency: String,
    failure_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChargeData {
    id: String,
    reference: String,
    amount: i64,
    currency: String,
    status: String,
    #[serde(default)]
    amount_captured: i64,
    code: Option<String>,
    decline_code: Option<String>,
    message: Option<String>,
    redirect_url: Option<String>,
}

pub(crate) fn data_of<T: serde::de::DeserializeOwned>(
    data: &serde_json::Value,
) -> Result<T, ProcessError> {
    serde_json::from_value(data.clone()).map_err(|e| {
        // Name the field, never a value: notifications may carry customer data.
        let text = e.to_string();
        let what = if text.starts_with("missing field") {
            text
        } else {
            "a field has the wrong type".to_owned()
        };
        unusable(format!("the notification's data is malformed: {what}"))
    })
}

pub(crate) fn acquirer_id(raw: &str, prefix: &str, what: &str) -> Result<String, ProcessError> {
    let ok = raw.len() > prefix.len()
        && raw.len() <= 100
        && raw.starts_with(prefix)
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    ok.then(|| raw.to_owned())
        .ok_or_else(|| unusable(format!("`data.id` is not {what} id")))
}

impl Notice {
    /// Parses a notification's type and `data`.
    pub fn parse(event_type: &str, data: &serde_json::Value) -> Result<Self, ProcessError> {
        let kind: ProviderEventType = event_type.parse().map_err(|_| {
            unusable(format!(
                "`{}` is not a notification type paystream handles",
                event_type.chars().take(100).collect::<String>()
            ))
        })?;
        let money = |amount: i64, currency: &str| -> Result<(Amount, Currency), ProcessError> {
            let amount = Amount::parse_charge(amount, "data.amount")
                .map_err(|e| unusable(format!("`data.amount`: {e}")))?;
            let currency =
                Currency::parse(currency).map_err(|e| unusable(format!("`data.currency`: {e}")))?;
            Ok((amount, currency))
        };
        match kind {
            ProviderEventType::RefundPending
            | ProviderEventType::RefundSucceeded
            | ProviderEventType::RefundFailed => {
                let d: RefundData = data_of(data)?;
                let (amount, currency) = money(d.amount, &d.currency)?;
                let refund_id = IdKind::Refund
                    .parse(&d.reference, "data.reference")
                    .map_err(|_| unusable("`data.reference` is not a refund id"))?;
                let target = match kind {
                    ProviderEventType::RefundPending => RefundTarget::Pending,
                    ProviderEventType::RefundSucceeded => RefundTarget::Succeeded,
                    _ => RefundTarget::Failed {
                        reason: d
                            .failure_reason
                            .filter(|r| !r.is_empty() && r.len() <= 200)
                            .unwrap_or_else(|| "declined_by_acquirer".to_owned()),
                    },
                };
                Ok(Notice::Refund(RefundNotice {
                    target,
                    acquirer_refund_id: acquirer_id(&d.id, "rf_", "a refund")?,
                    refund_id,
                    amount,
                    currency,
                }))
            }
            ProviderEventType::DisputeCreated | ProviderEventType::DisputeClosed => {
                let d = crate::dispute_events::DisputeNotice::parse(kind, data)?;
                Ok(Notice::Dispute(d))
            }
            ProviderEventType::PaymentSucceeded
            | ProviderEventType::PaymentFailed
            | ProviderEventType::PaymentRequiresAction => {
                let d: ChargeData = data_of(data)?;
                let (amount, currency) = money(d.amount, &d.currency)?;
                let payment_intent_id = IdKind::PaymentIntent
                    .parse(&d.reference, "data.reference")
                    .map_err(|_| unusable("`data.reference` is not a payment intent id"))?;
                let target = match (kind, d.status.as_str()) {
                    (ProviderEventType::PaymentSucceeded, "captured") => PaymentTarget::Captured {
                        amount_received: Amount::parse_charge(d.amount_captured, "amountCaptured")
                            .map_err(|_| unusable("`data.amountCaptured` must be positive"))?,
                    },
                    (ProviderEventType::PaymentSucceeded, "authorized") => {
                        PaymentTarget::Authorized {
                            amount_capturable: amount,
                        }
                    }
                    (ProviderEventType::PaymentFailed, "declined") => {
                        PaymentTarget::Failed(PaymentError {
                            code: d.code.unwrap_or_else(|| "card_declined".to_owned()),
                            decline_code: d.decline_code,
                            message: d
                                .message
                                .unwrap_or_else(|| "The card was declined.".to_owned()),
                        })
                    }
                    (ProviderEventType::PaymentRequiresAction, "requires_action") => {
                        let redirect_url = d
                            .redirect_url
                            .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
                            .ok_or_else(|| {
                                unusable("`data.redirectUrl` is missing or not an http(s) URL")
                            })?;
                        PaymentTarget::RequiresAction { redirect_url }
                    }
                    (kind, status) => {
                        return Err(unusable(format!(
                            "a `{kind}` notification cannot carry a charge in status `{}`",
                            status.chars().take(40).collect::<String>()
                        )))
                    }
                };
                Ok(Notice::Payment(PaymentNotice {
                    target,
                    charge_id: acquirer_id(&d.id, "ch_", "a charge")?,
                    payment_intent_id,
                    amount,
                    currency,
                }))
            }
        }
    }
}

pub struct ProviderEventProcessor {
    pool: PgPool,
    schedule: RetrySchedule,
}

impl ProviderEventProcessor {
    pub fn new(pool: PgPool, schedule: RetrySchedule) -> Self {
        Self { pool, schedule }
    }

    /// Applies one stored notification. `Ok(None)`: it had been processed already.
    pub async fn apply(&self, event_id: &str) -> Result<Option<ProcessingOutcome>, ProcessError> {
        let mut tx = self.pool.begin().await?;
        let Some(event) = provider_events::lock(&mut tx, event_id).await? else {
            return Err(unusable(format!("provider event {event_id} is not stored")));
        };
        if event.processed_at.is_some() {
            return Ok(None);
        }
        let notice = Notice::parse(&event.event_type, &event.payload["data"])?;
        let outcome = match &notice {
            Notice::Refund(n) => apply_refund(&mut tx, &event, n).await?,
            Notice::Payment(n) => apply_payment(&mut tx, &event, n).await?,
            Notice::Dispute(n) => crate::dispute_events::apply(&mut tx, &event, n).await?,
        };
        provider_events::mark_processed(&mut tx, event_id, outcome).await?;
        tx.commit().await?;
        Ok(Some(outcome))
    }

    async fn process(&self, event_id: &str, delivery: &DeliveryInfo) -> Outcome {
        match self.apply(event_id).await {
            Ok(Some(outcome)) => {
                tracing::info!(
                    provider_event = event_id,
                    outcome = outcome.as_str(),
                    "provider event processed"
                );
                Outcome::Ack
            }
            Ok(None) => Outcome::Ack,
            Err(ProcessError::Unusable(reason)) => self.dead_letter(event_id, reason).await,
            Err(ProcessError::Store(
                e
                @ (StoreError::NotFound(_) | StoreError::Corrupt { .. } | StoreError::Rejected(_)),
            )) => self.dead_letter(event_id, e.to_string()).await,
            // The database is unavailable, or another writer moved the object between our
            // read and our write: try again later, from the top.
            Err(ProcessError::Store(e)) => {
                tracing::warn!(provider_event = event_id, error = %e, delivered = delivery.delivered, "provider event will be retried");
                let attempt = u32::try_from(delivery.delivered).unwrap_or(u32::MAX);
                Outcome::retry(self.schedule.delay_for_attempt(attempt), e.to_string())
            }
        }
    }

    async fn dead_letter(&self, event_id: &str, reason: String) -> Outcome {
        // Best effort: the dead letter itself carries the reason whatever happens here.
        if let Err(e) = provider_events::mark_dead_lettered(&self.pool, event_id, &reason).await {
            tracing::warn!(provider_event = event_id, error = %e, "cannot record the dead letter on the event");
        }
        tracing::warn!(provider_event = event_id, %reason, "provider event cannot be applied");
        Outcome::DeadLetter(reason)
    }
}

/// Records, in the audit log of the object it is about, a notification that was not applied
/// because it would have moved the object backwards.
pub(crate) async fn record_ignored(
    conn: &mut PgConnection,
    merchant_id: &str,
    object_type: &str,
    object_id: &str,
    object: serde_json::Value,
    event: &ProviderEvent,
    reason: &str,
) -> Result<(), ProcessError> {
    tracing::info!(provider_event = %event.id, object = object_id, reason, "provider event ignored");
    audit::append(
        conn,
        NewEntry {
            merchant_id: Some(merchant_id),
            object_type,
            object_id,
            action: IGNORED_ACTION,
            actor: &ACTOR,
            before: Some(object),
            after: Some(json!({
                "providerEvent": {
                    "id": event.id,
                    "type": event.event_type,
                    "createdAt": event.created_at,
                },
                "reason": reason,
            })),
        },
    )
    .await?;
    Ok(())
}

async fn apply_refund(
    conn: &mut PgConnection,
    event: &ProviderEvent,
    notice: &RefundNotice,
) -> Result<ProcessingOutcome, ProcessError> {
    let Some(found) = refunds::get_any(&mut *conn, &notice.refund_id).await? else {
        return Err(unusable(format!(
            "no refund {} for this notification",
            notice.refund_id
        )));
    };
    // Every settlement locks the intent first; holding that lock, nobody settles this refund
    // between our decision and our write.
    paystream_shared::store::payment_intents::get_for_update(
        conn,
        &found.merchant_id,
        &found.payment_intent_id,
    )
    .await?;
    let Some(refund) = refunds::get_any(&mut *conn, &notice.refund_id).await? else {
        return Err(unusable(format!("refund {} vanished", notice.refund_id)));
    };
    check_refund_matches(&refund, notice)?;
    let target = match notice.target {
        RefundTarget::Pending => RefundStatus::Pending,
        RefundTarget::Succeeded => RefundStatus::Succeeded,
        RefundTarget::Failed { .. } => RefundStatus::Failed,
    };
    match refund_verdict(refund.status, target) {
        Verdict::Unchanged if refund.acquirer_refund_id.is_none() => {
            // `refund.pending` for a pending refund: remember the acquirer's id, as the
            // refund worker does when its own call answers `pending`.
            refunds::record_acquirer_id(conn, &refund.id, &notice.acquirer_refund_id).await?;
            Ok(ProcessingOutcome::Applied)
        }
        Verdict::Unchanged => Ok(ProcessingOutcome::Unchanged),
        Verdict::Ignore(reason) => {
            record_ignored(
                conn,
                &refund.merchant_id,
                "refund",
                &refund.id,
                refund.to_json(),
                event,
                &reason,
            )
            .await?;
            Ok(ProcessingOutcome::Ignored)
        }
        Verdict::Apply(_) => {
            let settlement = match &notice.target {
                RefundTarget::Failed { reason } => Settlement::Failed {
                    reason: reason.clone(),
                },
                _ => Settlement::Succeeded {
                    acquirer_refund_id: Some(notice.acquirer_refund_id.clone()),
                },
            };
            match refunds::settle(conn, &refund.id, settlement, &ACTOR).await? {
                Some(_) => Ok(ProcessingOutcome::Applied),
                // Cannot happen while we hold the intent's lock; if it does, the refund was
                // settled by someone else and the next delivery decides again.
                None => Err(ProcessError::Store(StoreError::Conflict {
                    object: "refund",
                    id: refund.id.clone(),
                    expected: "pending".to_owned(),
                })),
            }
        }
    }
}

fn check_refund_matches(refund: &Refund, notice: &RefundNotice) -> Result<(), ProcessError> {
    if refund.amount != notice.amount || refund.currency != notice.currency {
        return Err(unusable(format!(
            "the notification says {} {} but refund {} is {} {}",
            notice.amount,
            notice.currency.code(),
            refund.id,
            refund.amount,
            refund.currency.code()
        )));
    }
    match &refund.acquirer_refund_id {
        Some(known) if *known != notice.acquirer_refund_id => Err(unusable(format!(
            "refund {} is {known} at the acquirer, not {}",
            refund.id, notice.acquirer_refund_id
        ))),
        _ => Ok(()),
    }
}

async fn apply_payment(
    conn: &mut PgConnection,
    event: &ProviderEvent,
    notice: &PaymentNotice,
) -> Result<ProcessingOutcome, ProcessError> {
    let Some(found) = payment_intents::get_any(&mut *conn, &notice.payment_intent_id).await? else {
        return Err(unusable(format!(
            "no payment intent {} for this notification",
            notice.payment_intent_id
        )));
    };
    let intent = paystream_shared::store::payment_intents::get_for_update(
        conn,
        &found.merchant_id,
        &found.id,
    )
    .await?
    .ok_or_else(|| unusable(format!("payment intent {} vanished", found.id)))?;
    check_payment_matches(&intent, notice)?;
    let outcome = notice.target.outcome(&notice.charge_id);
    let applied =
        payment_intents::apply_acquirer_outcome(conn, intent, &outcome, event.created_at, &ACTOR)
            .await?;
    match applied {
        OutcomeApplied::Applied(_) => Ok(ProcessingOutcome::Applied),
        OutcomeApplied::Unchanged(_) => Ok(ProcessingOutcome::Unchanged),
        OutcomeApplied::Ignored { intent, reason } => {
            if outcome.holds_money()
                && matches!(
                    intent.status,
                    PaymentIntentStatus::Failed | PaymentIntentStatus::Canceled
                )
            {
                // An orphan charge: the customer paid (or is held) for an intent that says it
                // did not. The money goes back, through the confirm worker, which talks to the
                // acquirer; queued in this transaction, so the notification is marked processed
                // only together with it.
                tracing::error!(payment_intent = %intent.id, charge = %notice.charge_id, status = %intent.status, "the acquirer charged an intent that is not payable; returning the money");
                let command = PaymentCommand::ReturnOrphanV1 {
                    payment_intent_id: intent.id.clone(),
                    merchant_id: intent.merchant_id.clone(),
                    charge_id: notice.charge_id.clone(),
                };
                outbox::enqueue(&mut *conn, command.subject(), &command.to_json()).await?;
            }
            record_ignored(
                conn,
                &intent.merchant_id,
                "payment_intent",
                &intent.id,
                intent.to_json(),
                event,
                &reason,
            )
            .await?;
            Ok(ProcessingOutcome::Ignored)
        }
    }
}

fn check_payment_matches(
    intent: &PaymentIntent,
    notice: &PaymentNotice,
) -> Result<(), ProcessError> {
    if intent.amount != notice.amount || intent.currency != notice.currency {
        return Err(unusable(format!(
            "the notification says {} {} but payment intent {} is {} {}",
            notice.amount,
            notice.currency.code(),
            intent.id,
            intent.amount,
            intent.currency.code()
        )));
    }
    match &intent.acquirer_charge_id {
        Some(known) if *known != notice.charge_id => Err(unusable(format!(
            "payment intent {} is charge {known} at the acquirer, not {}",
            intent.id, notice.charge_id
        ))),
        _ => Ok(()),
    }
}

#[async_trait::async_trait]
impl Handler for ProviderEventProcessor {
    type Command = ProviderEventCommand;

    async fn handle(&self, cmd: ProviderEventCommand, delivery: &DeliveryInfo) -> Outcome {
        self.process(cmd.event_id(), delivery).await
    }

    fn object_id(cmd: &ProviderEventCommand) -> Option<String> {
        Some(cmd.event_id().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn charge(status: &str) -> Value {
        json!({"id": "ch_1", "reference": "pi_1", "amount": 1099, "currency": "usd",
               "status": status, "amountCaptured": 1099, "amountRefunded": 0,
               "createdAt": "2026-01-01T00:00:00Z"})
    }

    fn refund() -> Value {
        json!({"id": "rf_1", "payment": "ch_1", "reference": "re_1", "amount": 300,
               "currency": "usd", "status": "succeeded", "createdAt": "2026-01-01T00:00:00Z"})
    }

    fn reason(result: Result<Notice, ProcessError>) -> String {
        match result {
            Err(ProcessError::Unusable(r)) => r,
            other => panic!("expected an unusable notification, got {other:?}"),
        }
    }

    #[test]
    fn refund_notices_parse() {
        let Notice::Refund(n) = Notice::parse("refund.succeeded", &refund()).unwrap() else {
            panic!("a refund");
        };
        assert_eq!(n.target, RefundTarget::Succeeded);
        assert_eq!(
            (n.acquirer_refund_id.as_str(), n.refund_id.as_str()),
            ("rf_1", "re_1")
        );
        assert_eq!(n.amount.minor_units(), 300);
        assert_eq!(n.currency.code(), "usd");
        let Notice::Refund(n) = Notice::parse("refund.pending", &refund()).unwrap() else {
            panic!("a refund");
        };
        assert_eq!(n.target, RefundTarget::Pending);
        let mut failed = refund();
        failed["failureReason"] = json!("refund_declined");
        let Notice::Refund(n) = Notice::parse("refund.failed", &failed).unwrap() else {
            panic!("a refund");
        };
        assert_eq!(
            n.target,
            RefundTarget::Failed {
                reason: "refund_declined".into()
            }
        );
        let Notice::Refund(n) = Notice::parse("refund.failed", &refund()).unwrap() else {
            panic!("a refund");
        };
        assert_eq!(
            n.target,
            RefundTarget::Failed {
                reason: "declined_by_acquirer".into()
            }
        );
    }

    #[test]
    fn payment_notices_parse() {
        let parse = |t: &str, data: Value| match Notice::parse(t, &data).unwrap() {
            Notice::Payment(n) => n,
            _ => panic!("a payment"),
        };
        let n = parse("payment.succeeded", charge("captured"));
        assert_eq!(
            n.target,
            PaymentTarget::Captured {
                amount_received: Amount::from_stored(1099)
            }
        );
        assert_eq!(n.target.status(), PaymentIntentStatus::Succeeded);
        assert_eq!(
            (n.charge_id.as_str(), n.payment_intent_id.as_str()),
            ("ch_1", "pi_1")
        );
        let n = parse("payment.succeeded", charge("authorized"));
        assert_eq!(n.target.status(), PaymentIntentStatus::RequiresCapture);
        let mut declined = charge("declined");
        declined["code"] = json!("card_declined");
        declined["declineCode"] = json!("insufficient_funds");
        declined["message"] = json!("The card has insufficient funds.");
        let n = parse("payment.failed", declined);
        assert_eq!(
            n.target,
            PaymentTarget::Failed(PaymentError {
                code: "card_declined".into(),
                decline_code: Some("insufficient_funds".into()),
                message: "The card has insufficient funds.".into()
            })
        );
        let n = parse("payment.failed", charge("declined"));
        assert_eq!(n.target.status(), PaymentIntentStatus::Failed);
        let mut challenged = charge("requires_action");
        challenged["redirectUrl"] = json!("https://acquirer.test/3ds/ch_1");
        let n = parse("payment.requires_action", challenged);
        assert_eq!(
            n.target,
            PaymentTarget::RequiresAction {
                redirect_url: "https://acquirer.test/3ds/ch_1".into()
            }
        );
    }

    #[test]
    fn unusable_notices_say_why() {
        assert!(reason(Notice::parse("dispute.updated", &json!({}))).contains("dispute.updated"));
        assert!(reason(Notice::parse("dispute.created", &json!({}))).contains("missing field"));
        assert!(
            reason(Notice::parse("refund.succeeded", &json!({"id": "rf_1"})))
                .contains("missing field")
        );
        let mut bad = refund();
        bad["amount"] = json!("300");
        assert!(reason(Notice::parse("refund.succeeded", &bad)).contains("wrong type"));
        let mut bad = refund();
        bad["amount"] = json!(0);
        assert!(reason(Notice::parse("refund.succeeded", &bad)).contains("data.amount"));
        let mut bad = refund();
        bad["currency"] = json!("xyz");
        assert!(reason(Notice::parse("refund.succeeded", &bad)).contains("data.currency"));
        let mut bad = refund();
        bad["reference"] = json!("pi_1");
        assert!(reason(Notice::parse("refund.succeeded", &bad)).contains("refund id"));
        let mut bad = refund();
        bad["id"] = json!("ch_1");
        assert!(reason(Notice::parse("refund.succeeded", &bad)).contains("refund id"));
        let mut bad = charge("captured");
        bad["reference"] = json!("re_1");
        assert!(reason(Notice::parse("payment.succeeded", &bad)).contains("payment intent id"));
        assert!(reason(Notice::parse("payment.succeeded", &charge("voided"))).contains("voided"));
        assert!(reason(Notice::parse("payment.failed", &charge("captured"))).contains("captured"));
        assert!(reason(Notice::parse(
            "payment.requires_action",
            &charge("requires_action")
        ))
        .contains("redirectUrl"));
        let mut bad = charge("captured");
        bad["amountCaptured"] = json!(0);
        assert!(reason(Notice::parse("payment.succeeded", &bad)).contains("amountCaptured"));
        let mut bad = charge("captured");
        bad["id"] = json!("x");
        assert!(reason(Notice::parse("payment.succeeded", &bad)).contains("charge id"));
    }

    #[tokio::test]
    async fn an_unreachable_database_is_retried_on_the_schedule() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(std::time::Duration::from_millis(300))
            .connect_lazy("postgres://postgres@127.0.0.1:1/none")
            .unwrap();
        let schedule = RetrySchedule::new(std::time::Duration::from_millis(10), 5);
        let processor = ProviderEventProcessor::new(pool, schedule);
        let delivery = DeliveryInfo {
            subject: "cmd.provider_event.process".into(),
            delivered: 2,
            stream_sequence: 1,
            message_id: None,
            last: false,
        };
        let cmd = ProviderEventCommand::ProcessV1 {
            event_id: "aevt_1".into(),
        };
        assert_eq!(
            ProviderEventProcessor::object_id(&cmd).as_deref(),
            Some("aevt_1")
        );
        let Outcome::Retry { delay, .. } = processor.handle(cmd, &delivery).await else {
            panic!("a database outage is retried");
        };
        assert!(delay >= schedule.deterministic_part(2), "{delay:?}");
    }
}
