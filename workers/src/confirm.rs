//! The confirm worker's step: drive a `processing` payment intent through the acquirer.
//!
//! It handles the PAYMENT_COMMANDS stream (confirm, capture, cancel). For each command it loads
//! the intent and decides from its current state whether the command still applies; a command
//! for an intent that already moved on is acked and changes nothing (a redelivery, or a second
//! worker that lost the race). Otherwise it calls the acquirer with an idempotency key derived
//! from the intent, so a retry after a timeout can never create a second charge, and commits
//! the outcome through the state machine with its audit entry and events in one transaction.
//! The consume loop acks only after that commit.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;

use paystream_nats::consumer::{DeliveryInfo, Handler, Outcome};
use paystream_shared::audit::{self, Actor, NewEntry};
use paystream_shared::commands::PaymentCommand;
use paystream_shared::domain::money::Amount;
use paystream_shared::domain::outcome::{event_type_for, ChargeOutcome};
use paystream_shared::domain::payment_intent::{
    is_test_payment_method, CaptureMethod, PaymentError, PaymentIntent, PaymentIntentStatus,
};
use paystream_shared::retry::RetrySchedule;
use paystream_shared::store::payment_intents as store;
use paystream_shared::store::payment_methods;
use paystream_shared::store::StoreError;

use crate::acquirer::{
    with_retries, Acquirer, AcquirerError, AuthorizeRequest, CaptureRequest, ChargeStatus,
    Instrument, RefundRequest, VoidRequest,
};

pub const WORKER: &str = "confirm-worker";
/// The audit action recording that an orphan charge's money went back to the customer.
pub const ORPHAN_RETURNED_ACTION: &str = "payment_intent.orphan_charge_returned";

pub struct ConfirmWorker {
    pool: PgPool,
    acquirer: Arc<dyn Acquirer>,
    schedule: RetrySchedule,
}

impl ConfirmWorker {
    pub fn new(pool: PgPool, acquirer: Arc<dyn Acquirer>, schedule: RetrySchedule) -> Self {
        Self {
            pool,
            acquirer,
            schedule,
        }
    }

    /// The nak delay after the in-process budget is spent: the same schedule, continued by
    /// how often JetStream has delivered the message already.
    fn redelivery_delay(&self, delivery: &DeliveryInfo) -> Duration {
        let attempt = u32::try_from(delivery.delivered).unwrap_or(u32::MAX);
        self.schedule.delay_for_attempt(attempt)
    }

    async fn load(&self, id: &str, merchant_id: &str) -> Result<Option<PaymentIntent>, StoreError> {
        store::get(&self.pool, merchant_id, id).await
    }

    async fn confirm(
        &self,
        id: &str,
        merchant_id: &str,
        version: Option<i64>,
        delivery: &DeliveryInfo,
    ) -> Outcome {
        let intent = match self.load(id, merchant_id).await {
            Ok(Some(pi)) => pi,
            Ok(None) => return Outcome::DeadLetter(format!("payment intent {id} does not exist")),
            Err(e) => return self.retry_after(e.to_string(), delivery),
        };
        if is_stale(&intent, version) {
            return Outcome::Ack;
        }
        // Only a `processing` intent without a charge is waiting for its authorization; a
        // capture in flight also sits in `processing`, but already has its charge.
        if intent.status != PaymentIntentStatus::Processing || intent.acquirer_charge_id.is_some() {
            tracing::info!(payment_intent = id, status = %intent.status, "confirm no longer applies; acking");
            return Outcome::Ack;
        }
        let Some(payment_method) = intent.payment_method_id.clone() else {
            return Outcome::DeadLetter(format!(
                "payment intent {id} is processing without a payment method"
            ));
        };
        let payment_method = match self.instrument(&intent, payment_method).await {
            Ok(instrument) => instrument,
            Err(e) => return self.retry_after(e.to_string(), delivery),
        };
        let request = AuthorizeRequest {
            reference: intent.id.clone(),
            amount: intent.amount.minor_units(),
            currency: intent.currency.code().to_owned(),
            payment_method,
            capture: intent.capture_method == CaptureMethod::Automatic,
            return_url: intent.return_url.clone(),
        };
        let acquirer = self.acquirer.clone();
        let result = with_retries(&self.schedule, || acquirer.authorize(&request)).await;
        match result {
            Ok(outcome) => match outcome.into_charge_outcome() {
                Some(outcome) => self.record_authorization(&intent, outcome, delivery).await,
                // A bank debit: accepted, settled later by the acquirer's notification (or
                // reconciliation); the intent stays `processing` until then.
                None => {
                    tracing::info!(
                        payment_intent = id,
                        "debit accepted; waiting for the acquirer to settle it"
                    );
                    Outcome::Ack
                }
            },
            // The acquirer kept answering that it cannot process this card, through every
            // in-process attempt of every delivery: as Stripe does, the payment fails with
            // `processing_error` and the customer may try again, instead of the intent sitting
            // in `processing` and in the dead letters. An outage or a timeout is different: we
            // do not know the outcome, so those still go to the dead letters.
            Err(e) if delivery.last && e.is_processing_error() => {
                // Only if the acquirer holds no charge for it: an earlier delivery that overran
                // its ack wait may still have charged, and then reconciliation settles it.
                match self.acquirer.charges_for_reference(&intent.id).await {
                    Ok(charges) if charges.is_empty() => {}
                    Ok(_) => {
                        return self.retry_after(
                            format!(
                                "{e}; the acquirer holds a charge for {id}, so it is not failed"
                            ),
                            delivery,
                        )
                    }
                    Err(lookup) => return self.retry_after(lookup.to_string(), delivery),
                }
                self.record_authorization(
                    &intent,
                    ChargeOutcome::Declined {
                        charge_id: None,
                        error: PaymentError {
                            code: "processing_error".to_owned(),
                            decline_code: None,
                            message:
                                "An error occurred while processing the card. Try again later."
                                    .to_owned(),
                        },
                    },
                    delivery,
                )
                .await
            }
            Err(e) if e.is_transient() => self.retry_after(e.to_string(), delivery),
            // A 4xx that is not the issuer's decline (declines are 402s, and outcomes) means the
            // acquirer could not read our request: an integration error, not the customer's
            // card. The intent stays `processing` for reconciliation, and an operator looks.
            Err(e @ AcquirerError::Rejected { .. }) => {
                tracing::error!(payment_intent = id, error = %e, "acquirer rejected the authorization request");
                Outcome::DeadLetter(format!(
                    "the acquirer rejected the authorization of {id} ({e}); this is an integration error, not a decline: the intent stays processing until it is fixed and reconciled"
                ))
            }
            Err(e) => self.retry_after(e.to_string(), delivery),
        }
    }

    /// What the intent's payment method charges: a stored one through the vault, anything
    /// else by name (the test methods; a name the acquirer does not know it refuses, and that
    /// 4xx is dead-lettered as the integration error it is).
    async fn instrument(
        &self,
        intent: &PaymentIntent,
        payment_method: String,
    ) -> Result<Instrument, StoreError> {
        if is_test_payment_method(&payment_method) {
            return Ok(Instrument::Test(payment_method));
        }
        // Charged even if detached since: the confirm that named it was accepted before.
        let stored = payment_methods::get(&self.pool, &intent.merchant_id, &payment_method).await?;
        Ok(match stored {
            Some(pm) => Instrument::Vault {
                merchant_id: pm.merchant_id,
                vault_ref: pm.vault_ref,
            },
            None => Instrument::Test(payment_method),
        })
    }

    async fn record_authorization(
        &self,
        intent: &PaymentIntent,
        outcome: ChargeOutcome,
        delivery: &DeliveryInfo,
    ) -> Outcome {
        let result = self.record(intent, &outcome).await;
        self.settle(intent, result, delivery)
    }

    /// Moves `intent` where the acquirer's `outcome` puts it, guarded on the version read, so an
    /// intent that moved on meanwhile (even back into `processing`, by a capture) is left alone.
    /// One transition is one statement: atomic without a transaction around it.
    async fn record(
        &self,
        intent: &PaymentIntent,
        outcome: &ChargeOutcome,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        let to = outcome.status();
        store::transition(
            &mut conn,
            intent,
            to,
            &Actor::Worker(WORKER),
            Some(event_type_for(to)),
            |pi| outcome.apply(pi, to, paystream_shared::domain::now()),
        )
        .await?;
        Ok(())
    }

    /// Turns a commit result into the message's fate.
    fn settle(
        &self,
        intent: &PaymentIntent,
        result: Result<(), StoreError>,
        delivery: &DeliveryInfo,
    ) -> Outcome {
        match result {
            Ok(()) => Outcome::Ack,
            // Another delivery of the same command got there first: its outcome stands.
            Err(StoreError::Conflict { .. } | StoreError::InvalidTransition(_)) => {
                tracing::info!(payment_intent = %intent.id, "intent moved on concurrently; acking");
                Outcome::Ack
            }
            Err(e) => self.retry_after(e.to_string(), delivery),
        }
    }

    fn retry_after(&self, reason: String, delivery: &DeliveryInfo) -> Outcome {
        tracing::warn!(%reason, delivered = delivery.delivered, "transient failure; the command will be redelivered");
        Outcome::retry(self.redelivery_delay(delivery), reason)
    }

    async fn capture(
        &self,
        id: &str,
        merchant_id: &str,
        amount: i64,
        version: Option<i64>,
        delivery: &DeliveryInfo,
    ) -> Outcome {
        let intent = match self.load(id, merchant_id).await {
            Ok(Some(pi)) => pi,
            Ok(None) => return Outcome::DeadLetter(format!("payment intent {id} does not exist")),
            Err(e) => return self.retry_after(e.to_string(), delivery),
        };
        if is_stale(&intent, version) {
            return Outcome::Ack;
        }
        let Some(charge_id) = intent.acquirer_charge_id.clone() else {
            return Outcome::DeadLetter(format!(
                "payment intent {id} has no authorization to capture"
            ));
        };
        if intent.status != PaymentIntentStatus::Processing {
            return Outcome::Ack;
        }
        // The amount recorded with the capture is the merchant's word; the command's copy only
        // stands in for intents captured before the amount was recorded.
        let amount = intent
            .amount_to_capture
            .map_or(amount, |recorded| recorded.minor_units());
        let request = CaptureRequest {
            charge_id: charge_id.clone(),
            amount: Some(amount),
        };
        let acquirer = self.acquirer.clone();
        match with_retries(&self.schedule, || acquirer.capture(&request)).await {
            Ok(charge) => {
                let received = if charge.amount_captured > 0 {
                    charge.amount_captured
                } else {
                    amount
                };
                let outcome = ChargeOutcome::Captured {
                    charge_id,
                    amount_received: Amount::from_stored(received),
                };
                let result = self.record(&intent, &outcome).await;
                self.settle(&intent, result, delivery)
            }
            Err(e) if e.is_transient() => self.retry_after(e.to_string(), delivery),
            Err(e) => Outcome::DeadLetter(format!("capture of {id} refused: {e}")),
        }
    }

    async fn void(&self, id: &str, merchant_id: &str, delivery: &DeliveryInfo) -> Outcome {
        let intent = match self.load(id, merchant_id).await {
            Ok(Some(pi)) => pi,
            Ok(None) => return Outcome::DeadLetter(format!("payment intent {id} does not exist")),
            Err(e) => return self.retry_after(e.to_string(), delivery),
        };
        let Some(charge_id) = intent.acquirer_charge_id.clone() else {
            return Outcome::Ack; // nothing was ever authorized
        };
        let request = VoidRequest { charge_id };
        let acquirer = self.acquirer.clone();
        match with_retries(&self.schedule, || acquirer.void(&request)).await {
            Ok(_) => self.void_confirmed(&intent, delivery).await,
            Err(e) if e.is_transient() => self.retry_after(e.to_string(), delivery),
            // The acquirer captured before our cancel reached it (a 3-D Secure authentication
            // that completed at the last moment): the customer paid for a canceled intent, and
            // the money goes back.
            Err(AcquirerError::Rejected { code, .. }) if code == "charge_already_captured" => {
                self.return_orphan(&intent, &request.charge_id, delivery)
                    .await
            }
            // Already voided, or declined: nothing is held any more.
            Err(AcquirerError::Rejected { code, .. })
                if code == "charge_already_voided" || code == "charge_not_voidable" =>
            {
                self.void_confirmed(&intent, delivery).await
            }
            Err(e) => Outcome::DeadLetter(format!(
                "the void of payment intent {id}'s charge {} was refused: {e}",
                request.charge_id
            )),
        }
    }

    /// Records that a canceled intent holds no money at the acquirer any more, so
    /// reconciliation stops asking.
    async fn void_confirmed(&self, intent: &PaymentIntent, delivery: &DeliveryInfo) -> Outcome {
        let result = async {
            let mut conn = self.pool.acquire().await?;
            store::mark_void_confirmed(&mut conn, intent, &Actor::Worker(WORKER)).await
        }
        .await;
        match result {
            Ok(_) => Outcome::Ack,
            Err(e) => self.retry_after(e.to_string(), delivery),
        }
    }

    /// Gives back the money of an orphan charge: one the acquirer holds for an intent that is
    /// `failed` or `canceled`. Voided if only authorized, refunded if captured, each with an
    /// idempotency key derived from the charge, so a redelivery or a replay does it once. The
    /// return is audited on the intent, and the operator is told through the dead letters
    /// (where operators look), with what was done: the merchant's customer paid for nothing.
    async fn return_orphan(
        &self,
        intent: &PaymentIntent,
        charge_id: &str,
        delivery: &DeliveryInfo,
    ) -> Outcome {
        if !matches!(
            intent.status,
            PaymentIntentStatus::Failed | PaymentIntentStatus::Canceled
        ) {
            return Outcome::DeadLetter(format!(
                "payment intent {} is {}, so its charge {charge_id} is not an orphan; nothing was returned",
                intent.id, intent.status
            ));
        }
        let charge = match self.acquirer.charges_for_reference(&intent.id).await {
            Ok(charges) => charges.into_iter().find(|c| c.id == charge_id),
            Err(e) => return self.retry_after(e.to_string(), delivery),
        };
        let Some(charge) = charge else {
            return Outcome::DeadLetter(format!(
                "the acquirer holds no charge {charge_id} for payment intent {}",
                intent.id
            ));
        };
        let acquirer = self.acquirer.clone();
        let returned = match charge.status {
            ChargeStatus::Authorized | ChargeStatus::RequiresAction => {
                let request = VoidRequest {
                    charge_id: charge.id.clone(),
                };
                match with_retries(&self.schedule, || acquirer.void(&request)).await {
                    Ok(_) => {
                        json!({"chargeId": charge.id, "returned": "voided", "amount": charge.amount})
                    }
                    Err(e) if e.is_transient() => return self.retry_after(e.to_string(), delivery),
                    // Captured meanwhile: the next delivery refunds it.
                    Err(e) => return self.retry_after(e.to_string(), delivery),
                }
            }
            ChargeStatus::Captured if charge.refundable() > 0 => {
                let request = RefundRequest {
                    charge_id: charge.id.clone(),
                    amount: charge.refundable(),
                    reference: orphan_refund_reference(&charge.id),
                };
                match with_retries(&self.schedule, || acquirer.refund(&request)).await {
                    Ok(receipt) => json!({"chargeId": charge.id, "returned": "refunded",
                        "amount": receipt.amount, "acquirerRefundId": receipt.id}),
                    Err(e) if e.is_transient() => return self.retry_after(e.to_string(), delivery),
                    Err(e) => {
                        return Outcome::DeadLetter(format!(
                            "orphan charge {} of {} payment intent {}: the refund was refused ({e}); refund it at the acquirer by hand",
                            charge.id, intent.status, intent.id
                        ))
                    }
                }
            }
            // Voided, declined or refunded already: the customer has nothing to get back. If
            // the refund was ours, from a delivery that failed before it could record it, it
            // is recorded and reported now.
            _ => match self
                .acquirer
                .refund_by_reference(&orphan_refund_reference(&charge.id))
                .await
            {
                Ok(Some(receipt)) => json!({"chargeId": charge.id, "returned": "refunded",
                    "amount": receipt.amount, "acquirerRefundId": receipt.id}),
                Ok(None) if intent.status == PaymentIntentStatus::Canceled => {
                    return self.void_confirmed(intent, delivery).await
                }
                Ok(None) => return Outcome::Ack,
                Err(e) => return self.retry_after(e.to_string(), delivery),
            },
        };
        let recorded = async {
            let mut tx = self.pool.begin().await?;
            // The intent's row first, then its audit chain: the order every other writer of
            // this intent takes its locks in.
            if intent.status == PaymentIntentStatus::Canceled {
                store::mark_void_confirmed(&mut tx, intent, &Actor::Worker(WORKER)).await?;
            }
            audit::append(
                &mut tx,
                NewEntry {
                    merchant_id: Some(&intent.merchant_id),
                    object_type: "payment_intent",
                    object_id: &intent.id,
                    action: ORPHAN_RETURNED_ACTION,
                    actor: &Actor::Worker(WORKER),
                    before: None,
                    after: Some(returned.clone()),
                },
            )
            .await?;
            tx.commit().await?;
            Ok::<(), StoreError>(())
        }
        .await;
        if let Err(e) = recorded {
            return self.retry_after(e.to_string(), delivery);
        }
        tracing::error!(payment_intent = %intent.id, charge = %charge.id, %returned, "orphan charge returned to the customer");
        Outcome::DeadLetter(format!(
            "orphan charge: the acquirer took money for {} payment intent {} (charge {}); it was given back automatically ({returned}); tell the merchant, nothing else is left to do",
            intent.status, intent.id, charge.id
        ))
    }
}

/// Whether a command issued for intent version `version` finds the intent at another one: it
/// was issued for a state the intent has left (a redelivery after the intent moved on, or a
/// confirm meeting the `processing` of a later capture), so it must not call the acquirer.
fn is_stale(intent: &PaymentIntent, version: Option<i64>) -> bool {
    let stale = version.is_some_and(|v| v != intent.version);
    if stale {
        tracing::info!(payment_intent = %intent.id, version = intent.version, issued_for = ?version, "command is for an earlier state of the intent; acking");
    }
    stale
}

/// Our reference for the refund that returns an orphan charge: derived from the charge, so the
/// refund's idempotency key is too, and the charge is refunded once.
pub fn orphan_refund_reference(charge_id: &str) -> String {
    format!("{charge_id}_orphan")
}

#[async_trait::async_trait]
impl Handler for ConfirmWorker {
    type Command = PaymentCommand;

    async fn handle(&self, cmd: PaymentCommand, delivery: &DeliveryInfo) -> Outcome {
        match cmd {
            PaymentCommand::ConfirmV1 {
                payment_intent_id,
                merchant_id,
                intent_version,
            } => {
                self.confirm(&payment_intent_id, &merchant_id, intent_version, delivery)
                    .await
            }
            PaymentCommand::CaptureV1 {
                payment_intent_id,
                merchant_id,
                amount_to_capture,
                intent_version,
            } => {
                self.capture(
                    &payment_intent_id,
                    &merchant_id,
                    amount_to_capture,
                    intent_version,
                    delivery,
                )
                .await
            }
            PaymentCommand::CancelV1 {
                payment_intent_id,
                merchant_id,
            } => self.void(&payment_intent_id, &merchant_id, delivery).await,
            PaymentCommand::ReturnOrphanV1 {
                payment_intent_id,
                merchant_id,
                charge_id,
            } => {
                let intent = match self.load(&payment_intent_id, &merchant_id).await {
                    Ok(Some(pi)) => pi,
                    Ok(None) => {
                        return Outcome::DeadLetter(format!(
                            "payment intent {payment_intent_id} does not exist"
                        ))
                    }
                    Err(e) => return self.retry_after(e.to_string(), delivery),
                };
                self.return_orphan(&intent, &charge_id, delivery).await
            }
            PaymentCommand::SubmitDisputeEvidenceV1 {
                merchant_id,
                dispute_id,
                ..
            } => crate::dispute_events::send_evidence(
                &self.pool,
                self.acquirer.as_ref(),
                &merchant_id,
                &dispute_id,
            )
            .await
            .unwrap_or_else(|reason| self.retry_after(reason, delivery)),
        }
    }

    fn object_id(cmd: &PaymentCommand) -> Option<String> {
        Some(cmd.payment_intent_id().to_owned())
    }
}
