//! Reconciliation: we never trust a single message for financial state. The acquirer's books
//! are authoritative for what happened to money, so intents stuck in `processing` or
//! `requires_action` (a 3-D Secure outcome whose notification was lost), canceled intents
//! whose hold the acquirer never confirmed released, and refunds stuck in `pending` are looked
//! up there and corrected through the same state machines and the same outcome rule
//! (`paystream_shared::domain::outcome`), audited as `actor=reconciliation`. Nothing is
//! guessed: an intent the acquirer has never heard of is not failed (its confirm command may
//! still be on its way, and failing it could strand a later charge); its command is queued
//! again instead, which is safe because the acquirer call is idempotent. A capture is queued
//! again with the amount recorded when the merchant asked for it, never the whole hold.

use std::sync::Arc;

use chrono::TimeDelta;
use serde::Serialize;
use sqlx::PgPool;

use paystream_shared::audit::{self, Actor, NewEntry};
use paystream_shared::commands::{PaymentCommand, RefundCommand, SUBJECT_REFUND_PROCESS};
use paystream_shared::domain::outcome::event_type_for;
use paystream_shared::domain::payment_intent::{PaymentIntent, PaymentIntentStatus};
use paystream_shared::domain::provider_event::{payment_verdict, Verdict};
use paystream_shared::outbox;
use paystream_shared::store::payment_intents as intents;
use paystream_shared::store::StoreError;

use crate::acquirer::{Acquirer, AcquirerError, Charge, ChargeStatus};

pub const ACTOR: Actor = Actor::System("reconciliation");
/// How many stuck objects one pass looks at; the next pass takes the rest.
const BATCH: i64 = 500;
/// The statuses in which an intent waits on the acquirer: its word may have been lost.
const WAITING_ON_ACQUIRER: [PaymentIntentStatus; 2] = [
    PaymentIntentStatus::Processing,
    PaymentIntentStatus::RequiresAction,
];

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub intents_checked: u64,
    pub intents_corrected: u64,
    pub commands_requeued: u64,
    pub voids_checked: u64,
    pub refunds_checked: u64,
    pub refunds_corrected: u64,
    pub errors: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("could not ask the acquirer: {0}")]
    Acquirer(#[from] AcquirerError),
}

/// One pass over everything stuck for longer than `stuck_after`.
pub async fn run_once(
    pool: &PgPool,
    acquirer: &Arc<dyn Acquirer>,
    stuck_after: TimeDelta,
) -> Result<Report, ReconcileError> {
    let mut report = Report::default();
    let before = paystream_shared::domain::now() - stuck_after;
    let stuck = intents::stuck(pool, &WAITING_ON_ACQUIRER, before, BATCH).await?;
    for (id, merchant_id) in stuck {
        report.intents_checked += 1;
        match ask_and_correct(pool, acquirer, &merchant_id, &id).await {
            Ok(fix) => report.count(fix),
            Err(e) => {
                tracing::warn!(payment_intent = %id, error = %e, "reconciliation could not correct an intent");
                report.errors += 1;
            }
        }
    }
    let unreleased = intents::unconfirmed_voids(pool, before, BATCH).await?;
    for (id, merchant_id) in unreleased {
        report.voids_checked += 1;
        let fix = match acquirer.charges_for_reference(&id).await {
            Ok(charges) => reconcile_void(pool, &merchant_id, &id, &charges).await,
            Err(e) => Err(ReconcileError::from(e)),
        };
        match fix {
            Ok(fix) => report.count(fix),
            Err(e) => {
                tracing::warn!(payment_intent = %id, error = %e, "reconciliation could not settle a canceled intent's hold");
                report.errors += 1;
            }
        }
    }
    reconcile_refunds(pool, acquirer, stuck_after, &mut report).await?;
    tracing::info!(?report, "reconciliation pass finished");
    Ok(report)
}

impl Report {
    fn count(&mut self, fix: Fix) {
        match fix {
            Fix::Corrected => self.intents_corrected += 1,
            Fix::Requeued => self.commands_requeued += 1,
            Fix::Nothing => {}
        }
    }
}

/// What reconciling one object did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fix {
    Corrected,
    Requeued,
    Nothing,
}

/// Asks the acquirer about one intent waiting on it and moves the intent to where the
/// acquirer's books say it is. The abandonment job asks this too before it cancels an intent
/// that has a charge.
pub async fn ask_and_correct(
    pool: &PgPool,
    acquirer: &Arc<dyn Acquirer>,
    merchant_id: &str,
    id: &str,
) -> Result<Fix, ReconcileError> {
    let charges = acquirer.charges_for_reference(id).await?;
    reconcile_intent(pool, merchant_id, id, charges.last()).await
}

async fn reconcile_intent(
    pool: &PgPool,
    merchant_id: &str,
    id: &str,
    charge: Option<&Charge>,
) -> Result<Fix, ReconcileError> {
    let mut tx = pool.begin().await?;
    let Some(intent) = intents::get_for_update(&mut tx, merchant_id, id).await? else {
        return Ok(Fix::Nothing);
    };
    if !WAITING_ON_ACQUIRER.contains(&intent.status) {
        return Ok(Fix::Nothing); // settled since we listed it
    }
    let fix = match charge {
        None if intent.status == PaymentIntentStatus::Processing => {
            let command = PaymentCommand::ConfirmV1 {
                payment_intent_id: intent.id.clone(),
                merchant_id: intent.merchant_id.clone(),
                intent_version: Some(intent.version),
            };
            requeue(&mut tx, &intent, command).await?;
            Fix::Requeued
        }
        // A challenge the acquirer never heard of cannot complete; abandonment ends it.
        None => Fix::Nothing,
        Some(charge) => apply_charge(&mut tx, &intent, charge).await?,
    };
    tx.commit().await?;
    Ok(fix)
}

/// Moves an intent waiting on the acquirer to where the acquirer's charge says it is.
async fn apply_charge(
    conn: &mut sqlx::PgConnection,
    intent: &PaymentIntent,
    charge: &Charge,
) -> Result<Fix, ReconcileError> {
    let capture_in_flight = intent.status == PaymentIntentStatus::Processing
        && (intent.amount_to_capture.is_some() || intent.acquirer_charge_id.is_some());
    if charge.status == ChargeStatus::Authorized && capture_in_flight {
        // A capture was asked for and never reached the acquirer (its command was lost or
        // dead-lettered): ask again, for exactly what the merchant asked.
        let amount = intent
            .amount_to_capture
            .unwrap_or(intent.amount_capturable)
            .minor_units();
        let command = PaymentCommand::CaptureV1 {
            payment_intent_id: intent.id.clone(),
            merchant_id: intent.merchant_id.clone(),
            amount_to_capture: amount,
            intent_version: Some(intent.version),
        };
        requeue(conn, intent, command).await?;
        return Ok(Fix::Requeued);
    }
    if charge.status == ChargeStatus::Pending {
        return Ok(Fix::Nothing); // a debit the bank has not decided yet
    }
    let Some(outcome) = charge.outcome() else {
        // Voided at the acquirer while we still wait on it: nobody can capture it any more.
        // The state machine has no processing -> canceled edge, so this is left for an
        // operator, loudly.
        tracing::error!(payment_intent = %intent.id, charge = %charge.id, "acquirer voided a charge of an intent waiting on it");
        return Ok(Fix::Nothing);
    };
    let now = paystream_shared::domain::now();
    let Verdict::Apply(path) =
        payment_verdict(intent.status, intent.updated_at, outcome.status(), now)
    else {
        return Ok(Fix::Nothing); // the acquirer says what we already know
    };
    let mut current = intent.clone();
    for step in path {
        current = intents::transition(
            conn,
            &current,
            step,
            &ACTOR,
            Some(event_type_for(step)),
            |pi| outcome.apply(pi, step, now),
        )
        .await?;
    }
    Ok(Fix::Corrected)
}

/// A canceled intent whose hold the acquirer never confirmed released: release it, or give the
/// money back if the acquirer captured it after all.
async fn reconcile_void(
    pool: &PgPool,
    merchant_id: &str,
    id: &str,
    charges: &[Charge],
) -> Result<Fix, ReconcileError> {
    let mut tx = pool.begin().await?;
    let Some(intent) = intents::get_for_update(&mut tx, merchant_id, id).await? else {
        return Ok(Fix::Nothing);
    };
    if intent.status != PaymentIntentStatus::Canceled || intent.void_confirmed_at.is_some() {
        return Ok(Fix::Nothing);
    }
    let charge = charges
        .iter()
        .find(|c| Some(&c.id) == intent.acquirer_charge_id.as_ref());
    let fix = match charge.map(|c| c.status) {
        Some(ChargeStatus::Authorized | ChargeStatus::RequiresAction) => {
            let command = PaymentCommand::CancelV1 {
                payment_intent_id: intent.id.clone(),
                merchant_id: intent.merchant_id.clone(),
            };
            requeue(&mut tx, &intent, command).await?;
            Fix::Requeued
        }
        Some(ChargeStatus::Captured) => {
            let command = PaymentCommand::ReturnOrphanV1 {
                payment_intent_id: intent.id.clone(),
                merchant_id: intent.merchant_id.clone(),
                charge_id: charge.map(|c| c.id.clone()).unwrap_or_default(),
            };
            requeue(&mut tx, &intent, command).await?;
            Fix::Requeued
        }
        // Voided, declined or refunded, or never made: nothing is held.
        _ => {
            intents::mark_void_confirmed(&mut tx, &intent, &ACTOR).await?;
            Fix::Corrected
        }
    };
    tx.commit().await?;
    Ok(fix)
}

async fn requeue(
    conn: &mut sqlx::PgConnection,
    intent: &PaymentIntent,
    command: PaymentCommand,
) -> Result<(), ReconcileError> {
    outbox::enqueue(&mut *conn, command.subject(), &command.to_json()).await?;
    audit::append(
        &mut *conn,
        NewEntry {
            merchant_id: Some(&intent.merchant_id),
            object_type: "payment_intent",
            object_id: &intent.id,
            action: "reconciliation.requeued",
            actor: &ACTOR,
            before: None,
            after: Some(command.to_json()),
        },
    )
    .await?;
    // Touch it, so the next pass waits another `stuck_after` before asking again.
    intents::touch(&mut *conn, &intent.id, intent.status).await?;
    Ok(())
}

async fn reconcile_refunds(
    pool: &PgPool,
    acquirer: &Arc<dyn Acquirer>,
    stuck_after: TimeDelta,
    report: &mut Report,
) -> Result<(), ReconcileError> {
    use paystream_shared::store::refunds::{self, Settlement};
    let stuck = refunds::stale_pending(pool, stuck_after, BATCH).await?;
    for refund in stuck {
        report.refunds_checked += 1;
        let receipt = match acquirer.refund_by_reference(&refund.id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(refund = %refund.id, error = %e, "reconciliation could not ask the acquirer");
                report.errors += 1;
                continue;
            }
        };
        let mut tx = pool.begin().await?;
        match receipt.map(|r| (r.status, r.id)) {
            Some((crate::acquirer::RefundStatus::Succeeded, acquirer_id)) => {
                refunds::settle(
                    &mut tx,
                    &refund.id,
                    Settlement::Succeeded {
                        acquirer_refund_id: Some(acquirer_id),
                    },
                    &ACTOR,
                )
                .await?;
                report.refunds_corrected += 1;
            }
            Some((crate::acquirer::RefundStatus::Failed, _)) => {
                refunds::settle(
                    &mut tx,
                    &refund.id,
                    Settlement::Failed {
                        reason: "declined_by_acquirer".into(),
                    },
                    &ACTOR,
                )
                .await?;
                report.refunds_corrected += 1;
            }
            Some((crate::acquirer::RefundStatus::Pending, _)) => {}
            None => {
                // The acquirer never got it: send it again (the key is derived from the refund id).
                let command = RefundCommand::ProcessV1 {
                    refund_id: refund.id.clone(),
                    merchant_id: refund.merchant_id.clone(),
                };
                outbox::enqueue(&mut tx, SUBJECT_REFUND_PROCESS, &command.to_json()).await?;
                refunds::touch_pending(&mut tx, &refund.id).await?;
                report.commands_requeued += 1;
            }
        }
        tx.commit().await?;
    }
    Ok(())
}
