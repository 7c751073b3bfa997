//! Reconciliation: we never trust a single message for financial state. The acquirer's books
//! are authoritative for what happened to money, so intents stuck in `processing` and refunds
//! stuck in `pending` are looked up there and corrected through the same state machines,
//! audited as `actor=reconciliation`. Nothing is guessed: an intent the acquirer has never
//! heard of is not failed (its confirm command may still be on its way, and failing it could
//! strand a later charge); its command is queued again instead, which is safe because the
//! acquirer call is idempotent.

use std::sync::Arc;

use chrono::TimeDelta;
use serde::Serialize;
use sqlx::PgPool;

use paystream_shared::audit::{self, Actor, NewEntry};
use paystream_shared::commands::{PaymentCommand, RefundCommand, SUBJECT_REFUND_PROCESS};
use paystream_shared::domain::money::Amount;
use paystream_shared::domain::payment_intent::{
    PaymentError, PaymentIntent, PaymentIntentStatus, RedirectAction,
};
use paystream_shared::outbox;
use paystream_shared::store::payment_intents as intents;
use paystream_shared::store::StoreError;

use crate::acquirer::{Acquirer, Charge, ChargeStatus};

pub const ACTOR: Actor = Actor::System("reconciliation");
/// How many stuck objects one pass looks at; the next pass takes the rest.
const BATCH: i64 = 500;

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub intents_checked: u64,
    pub intents_corrected: u64,
    pub commands_requeued: u64,
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
}

/// One pass over everything stuck for longer than `stuck_after`.
pub async fn run_once(
    pool: &PgPool,
    acquirer: &Arc<dyn Acquirer>,
    stuck_after: TimeDelta,
) -> Result<Report, ReconcileError> {
    let mut report = Report::default();
    let stuck: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, merchant_id FROM payment_intents WHERE status = 'processing' AND updated_at < $1 ORDER BY updated_at LIMIT $2",
    )
    .bind(paystream_shared::domain::now() - stuck_after)
    .bind(BATCH)
    .fetch_all(pool)
    .await?;
    for (id, merchant_id) in stuck {
        report.intents_checked += 1;
        let charges = match acquirer.charges_for_reference(&id).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(payment_intent = %id, error = %e, "reconciliation could not ask the acquirer");
                report.errors += 1;
                continue;
            }
        };
        match reconcile_intent(pool, &merchant_id, &id, charges.last()).await {
            Ok(Fix::Corrected) => report.intents_corrected += 1,
            Ok(Fix::Requeued) => report.commands_requeued += 1,
            Ok(Fix::Nothing) => {}
            Err(e) => {
                tracing::warn!(payment_intent = %id, error = %e, "reconciliation could not correct an intent");
                report.errors += 1;
            }
        }
    }
    reconcile_refunds(pool, acquirer, stuck_after, &mut report).await?;
    tracing::info!(?report, "reconciliation pass finished");
    Ok(report)
}

enum Fix {
    Corrected,
    Requeued,
    Nothing,
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
    if intent.status != PaymentIntentStatus::Processing {
        return Ok(Fix::Nothing); // settled since we listed it
    }
    let fix = match charge {
        None => {
            requeue(
                &mut tx,
                &intent,
                PaymentCommand::ConfirmV1 {
                    payment_intent_id: intent.id.clone(),
                    merchant_id: intent.merchant_id.clone(),
                },
            )
            .await?;
            Fix::Requeued
        }
        Some(charge) => apply_charge(&mut tx, &intent, charge).await?,
    };
    tx.commit().await?;
    Ok(fix)
}

/// Moves a `processing` intent to where the acquirer's charge says it is.
async fn apply_charge(
    conn: &mut sqlx::PgConnection,
    intent: &PaymentIntent,
    charge: &Charge,
) -> Result<Fix, ReconcileError> {
    let charge_id = charge.id.clone();
    match charge.status {
        ChargeStatus::Captured | ChargeStatus::Refunded => {
            intents::transition(
                conn,
                intent,
                PaymentIntentStatus::Succeeded,
                &ACTOR,
                Some("payment_intent.succeeded"),
                |pi| {
                    pi.acquirer_charge_id = Some(charge_id);
                    pi.amount_received = Amount::from_stored(charge.amount_captured);
                    pi.amount_capturable = Amount::ZERO;
                },
            )
            .await?;
        }
        ChargeStatus::Authorized if intent.acquirer_charge_id.is_some() => {
            // A capture was asked for and never reached the acquirer: ask again.
            let command = PaymentCommand::CaptureV1 {
                payment_intent_id: intent.id.clone(),
                merchant_id: intent.merchant_id.clone(),
                amount_to_capture: intent.amount_capturable.minor_units(),
            };
            requeue(conn, intent, command).await?;
            return Ok(Fix::Requeued);
        }
        ChargeStatus::Authorized => {
            intents::transition(
                conn,
                intent,
                PaymentIntentStatus::RequiresCapture,
                &ACTOR,
                Some("payment_intent.amount_capturable_updated"),
                |pi| {
                    pi.acquirer_charge_id = Some(charge_id);
                    pi.amount_capturable = Amount::from_stored(charge.amount);
                    pi.authorization_expires_at =
                        Some(paystream_shared::domain::now() + crate::confirm::AUTHORIZATION_TTL);
                },
            )
            .await?;
        }
        ChargeStatus::Declined => {
            intents::transition(
                conn,
                intent,
                PaymentIntentStatus::Failed,
                &ACTOR,
                Some("payment_intent.payment_failed"),
                |pi| {
                    pi.acquirer_charge_id = Some(charge_id);
                    pi.last_payment_error = Some(PaymentError {
                        code: "card_declined".into(),
                        decline_code: None,
                        message: "The acquirer declined the payment".into(),
                    });
                },
            )
            .await?;
        }
        ChargeStatus::RequiresAction => {
            let url = charge.redirect_url.clone().unwrap_or_default();
            intents::transition(
                conn,
                intent,
                PaymentIntentStatus::RequiresAction,
                &ACTOR,
                Some("payment_intent.requires_action"),
                |pi| {
                    pi.acquirer_charge_id = Some(charge_id);
                    pi.next_action = Some(RedirectAction {
                        url,
                        return_url: pi.return_url.clone(),
                    });
                },
            )
            .await?;
        }
        ChargeStatus::Voided => {
            // Voided at the acquirer while we still think it is processing: nobody can capture
            // it any more. The state machine has no processing -> canceled edge, so this is
            // left for an operator, loudly.
            tracing::error!(payment_intent = %intent.id, charge = %charge.id, "acquirer voided a charge of a processing intent");
            return Ok(Fix::Nothing);
        }
    }
    Ok(Fix::Corrected)
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
    sqlx::query(
        "UPDATE payment_intents SET updated_at = now() WHERE id = $1 AND status = 'processing'",
    )
    .bind(&intent.id)
    .execute(&mut *conn)
    .await?;
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
                sqlx::query(
                    "UPDATE refunds SET updated_at = now() WHERE id = $1 AND status = 'pending'",
                )
                .bind(&refund.id)
                .execute(&mut *tx)
                .await?;
                report.commands_requeued += 1;
            }
        }
        tx.commit().await?;
    }
    Ok(())
}
