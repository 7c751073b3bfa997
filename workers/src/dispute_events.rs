//! Chargeback notifications (`dispute.created`, `dispute.closed`), a step of the provider
//! event processor (`provider_events.rs`), in its transaction.
//!
//! - `dispute.created`: the intent is locked (the refund guard takes the same lock), the
//!   chargeback is checked against it (currency equal, amount at most what was captured,
//!   the charge the intent knows), and the dispute is created once per acquirer dispute id
//!   (`store::disputes::create`, a UNIQUE key with `ON CONFLICT DO NOTHING`: a duplicate is
//!   `unchanged`, never an error), withdrawing the amount and the fee.
//! - `dispute.closed`: the decision. If it overtook its `dispute.created`, the dispute is
//!   created from it first (the closed notice carries the whole chargeback); then the state
//!   machine decides: a move it allows is applied (a win reinstates the amount), the same
//!   status is `unchanged`, anything else would move it backwards and is ignored.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::PgConnection;

use paystream_shared::domain::dispute::{reason_of, DisputeStatus};
use paystream_shared::domain::ids::IdKind;
use paystream_shared::domain::money::{Amount, Currency};
use paystream_shared::domain::payment_intent::PaymentIntent;
use paystream_shared::domain::provider_event::{ProcessingOutcome, ProviderEventType};
use paystream_shared::store::disputes::{self, Dispute, Move, NewDispute};
use paystream_shared::store::payment_intents;
use paystream_shared::store::provider_events::ProviderEvent;

use crate::provider_events::{acquirer_id, data_of, record_ignored, unusable, ProcessError, ACTOR};

/// A chargeback as the acquirer's notification describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisputeNotice {
    pub kind: ProviderEventType,
    /// The acquirer's dispute id (`chb_…`).
    pub acquirer_dispute_id: String,
    pub charge_id: String,
    pub payment_intent_id: String,
    pub amount: Amount,
    pub currency: Currency,
    pub reason: &'static str,
    pub status: DisputeStatus,
    pub evidence_due_by: DateTime<Utc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DisputeData {
    id: String,
    payment: String,
    reference: String,
    amount: i64,
    currency: String,
    reason: String,
    status: String,
    evidence_due_by: DateTime<Utc>,
}

impl DisputeNotice {
    pub fn parse(kind: ProviderEventType, data: &serde_json::Value) -> Result<Self, ProcessError> {
        let d: DisputeData = data_of(data)?;
        let amount = Amount::parse_charge(d.amount, "data.amount")
            .map_err(|e| unusable(format!("`data.amount`: {e}")))?;
        let currency =
            Currency::parse(&d.currency).map_err(|e| unusable(format!("`data.currency`: {e}")))?;
        let payment_intent_id = IdKind::PaymentIntent
            .parse(&d.reference, "data.reference")
            .map_err(|_| unusable("`data.reference` is not a payment intent id"))?;
        let status: DisputeStatus = d
            .status
            .parse()
            .map_err(|_| unusable("`data.status` is not a dispute status"))?;
        let fits = match kind {
            ProviderEventType::DisputeCreated => status == DisputeStatus::NeedsResponse,
            _ => status.is_final(),
        };
        if !fits {
            return Err(unusable(format!(
                "a `{kind}` notification cannot carry a dispute in status `{status}`"
            )));
        }
        Ok(Self {
            kind,
            acquirer_dispute_id: acquirer_id(&d.id, "chb_", "a chargeback")?,
            charge_id: acquirer_id(&d.payment, "ch_", "a charge")
                .map_err(|_| unusable("`data.payment` is not a charge id"))?,
            payment_intent_id,
            amount,
            currency,
            reason: reason_of(&d.reason),
            status,
            evidence_due_by: d.evidence_due_by,
        })
    }
}

fn check_matches(intent: &PaymentIntent, notice: &DisputeNotice) -> Result<(), ProcessError> {
    if intent.currency != notice.currency || notice.amount > intent.amount_received {
        return Err(unusable(format!(
            "the chargeback is {} {} but payment intent {} received {} {}",
            notice.amount,
            notice.currency.code(),
            intent.id,
            intent.amount_received,
            intent.currency.code()
        )));
    }
    match &intent.acquirer_charge_id {
        Some(known) if *known == notice.charge_id => Ok(()),
        _ => Err(unusable(format!(
            "payment intent {} is not charge {} at the acquirer",
            intent.id, notice.charge_id
        ))),
    }
}

/// Finds or creates the dispute a notice is about, with its intent locked. `(dispute, created)`.
async fn ensure(
    conn: &mut PgConnection,
    notice: &DisputeNotice,
) -> Result<(Dispute, bool), ProcessError> {
    let Some(found) = payment_intents::get_any(&mut *conn, &notice.payment_intent_id).await? else {
        return Err(unusable(format!(
            "no payment intent {} for this chargeback",
            notice.payment_intent_id
        )));
    };
    let intent = payment_intents::get_for_update(conn, &found.merchant_id, &found.id)
        .await?
        .ok_or_else(|| unusable(format!("payment intent {} vanished", found.id)))?;
    check_matches(&intent, notice)?;
    let created = disputes::create(
        conn,
        &intent,
        NewDispute {
            acquirer_dispute_id: &notice.acquirer_dispute_id,
            acquirer_charge_id: &notice.charge_id,
            amount: notice.amount,
            currency: notice.currency,
            reason: notice.reason,
            evidence_due_by: notice.evidence_due_by,
        },
        &ACTOR,
    )
    .await?;
    let was_created = created.is_some();
    let dispute = match created {
        Some(d) => d,
        None => disputes::get_by_acquirer_id(&mut *conn, &notice.acquirer_dispute_id)
            .await?
            .ok_or_else(|| unusable("the dispute vanished"))?,
    };
    if dispute.payment_intent_id != intent.id {
        return Err(unusable(format!(
            "chargeback {} belongs to payment intent {}, not {}",
            notice.acquirer_dispute_id, dispute.payment_intent_id, intent.id
        )));
    }
    Ok((dispute, was_created))
}

pub async fn apply(
    conn: &mut PgConnection,
    event: &ProviderEvent,
    notice: &DisputeNotice,
) -> Result<ProcessingOutcome, ProcessError> {
    let (dispute, created) = ensure(conn, notice).await?;
    if notice.kind == ProviderEventType::DisputeCreated {
        return Ok(if created {
            ProcessingOutcome::Applied
        } else {
            ProcessingOutcome::Unchanged
        });
    }
    let dispute = disputes::get_for_update(conn, &dispute.merchant_id, &dispute.id)
        .await?
        .ok_or_else(|| unusable("the dispute vanished"))?;
    if dispute.status == notice.status {
        return Ok(ProcessingOutcome::Unchanged);
    }
    if !dispute.status.can_transition(notice.status) {
        let view = disputes::view(&mut *conn, &dispute).await?;
        record_ignored(
            conn,
            &dispute.merchant_id,
            "dispute",
            &dispute.id,
            serde_json::to_value(view).unwrap_or_default(),
            event,
            &format!(
                "the dispute is `{}`, which cannot move to `{}`",
                dispute.status, notice.status
            ),
        )
        .await?;
        return Ok(ProcessingOutcome::Ignored);
    }
    disputes::transition(conn, &dispute, notice.status, Move::Decided, &ACTOR).await?;
    Ok(ProcessingOutcome::Applied)
}

/// The confirm worker's step for `payment.dispute_evidence.v1`: the evidence as the acquirer
/// takes it (text fields, and the files' descriptions; the files themselves stay with us).
/// `Err(reason)`: transient, redeliver. A refusal (the acquirer already decided) is final.
pub async fn send_evidence(
    pool: &sqlx::PgPool,
    acquirer: &dyn crate::acquirer::Acquirer,
    merchant_id: &str,
    dispute_id: &str,
) -> Result<paystream_nats::consumer::Outcome, String> {
    use paystream_nats::consumer::Outcome;
    let mut conn = pool.acquire().await.map_err(|e| e.to_string())?;
    let Some(dispute) = disputes::get(&mut *conn, merchant_id, dispute_id)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(Outcome::DeadLetter(format!(
            "dispute {dispute_id} does not exist"
        )));
    };
    let view = disputes::view(&mut conn, &dispute)
        .await
        .map_err(|e| e.to_string())?;
    let evidence = serde_json::to_value(&view.evidence).unwrap_or_default();
    let key = format!("{}_evidence", dispute.id);
    match acquirer
        .submit_dispute_evidence(&dispute.acquirer_dispute_id, &key, &evidence)
        .await
    {
        Ok(()) => {
            tracing::info!(
                dispute = dispute_id,
                "dispute evidence sent to the acquirer"
            );
            Ok(Outcome::Ack)
        }
        Err(e) if e.is_transient() => Err(e.to_string()),
        Err(e) => {
            tracing::warn!(dispute = dispute_id, error = %e, "the acquirer refused the evidence");
            Ok(Outcome::DeadLetter(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data(status: &str) -> serde_json::Value {
        json!({"id": "chb_1", "payment": "ch_1", "reference": "pi_1", "amount": 1000,
               "currency": "usd", "reason": "fraudulent", "status": status,
               "evidenceDueBy": "2026-01-08T00:00:00Z", "createdAt": "2026-01-01T00:00:00Z"})
    }

    fn refused(kind: ProviderEventType, data: serde_json::Value) -> String {
        match DisputeNotice::parse(kind, &data) {
            Err(ProcessError::Unusable(r)) => r,
            other => panic!("expected an unusable notice, got {other:?}"),
        }
    }

    #[test]
    fn chargebacks_parse_and_refuse_what_cannot_be() {
        let n = DisputeNotice::parse(ProviderEventType::DisputeCreated, &data("needs_response"))
            .unwrap();
        assert_eq!(n.acquirer_dispute_id, "chb_1");
        assert_eq!(n.status, DisputeStatus::NeedsResponse);
        assert_eq!(n.reason, "fraudulent");
        let n = DisputeNotice::parse(ProviderEventType::DisputeClosed, &data("won")).unwrap();
        assert_eq!(n.status, DisputeStatus::Won);
        assert!(refused(ProviderEventType::DisputeCreated, data("won")).contains("cannot carry"));
        assert!(
            refused(ProviderEventType::DisputeClosed, data("under_review"))
                .contains("cannot carry")
        );
        assert!(refused(ProviderEventType::DisputeClosed, data("maybe")).contains("status"));
        let mut bad = data("won");
        bad["id"] = json!("dp_1");
        assert!(refused(ProviderEventType::DisputeClosed, bad).contains("chargeback"));
        let mut bad = data("won");
        bad["payment"] = json!("x");
        assert!(refused(ProviderEventType::DisputeClosed, bad).contains("data.payment"));
        let mut bad = data("won");
        bad["reference"] = json!("re_1");
        assert!(refused(ProviderEventType::DisputeClosed, bad).contains("payment intent"));
        let mut bad = data("won");
        bad["currency"] = json!("zzz");
        assert!(refused(ProviderEventType::DisputeClosed, bad).contains("data.currency"));
        let mut bad = data("won");
        bad["amount"] = json!(-1);
        assert!(refused(ProviderEventType::DisputeClosed, bad).contains("data.amount"));
    }
}
