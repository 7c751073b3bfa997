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

use chrono::TimeDelta;
use sqlx::PgPool;

use paystream_nats::consumer::{DeliveryInfo, Handler, Outcome};
use paystream_shared::audit::Actor;
use paystream_shared::commands::PaymentCommand;
use paystream_shared::domain::money::Amount;
use paystream_shared::domain::payment_intent::{
    CaptureMethod, PaymentError, PaymentIntent, PaymentIntentStatus, RedirectAction,
};
use paystream_shared::retry::RetrySchedule;
use paystream_shared::store::payment_intents as store;
use paystream_shared::store::StoreError;

use crate::acquirer::{
    with_retries, Acquirer, AcquirerError, AuthorizeRequest, CaptureRequest, PaymentOutcome,
    VoidRequest,
};

pub const WORKER: &str = "confirm-worker";
/// How long an uncaptured authorization is held (CONTRACT.md: 7 days).
pub const AUTHORIZATION_TTL: TimeDelta = TimeDelta::days(7);

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

    async fn confirm(&self, id: &str, merchant_id: &str, delivery: &DeliveryInfo) -> Outcome {
        let intent = match self.load(id, merchant_id).await {
            Ok(Some(pi)) => pi,
            Ok(None) => return Outcome::DeadLetter(format!("payment intent {id} does not exist")),
            Err(e) => return self.retry_after(e.to_string(), delivery),
        };
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
            Ok(outcome) => self.record_authorization(&intent, outcome, delivery).await,
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
                    PaymentOutcome::Declined {
                        code: "processing_error".to_owned(),
                        decline_code: None,
                        message: "An error occurred while processing the card. Try again later."
                            .to_owned(),
                    },
                    delivery,
                )
                .await
            }
            Err(e) if e.is_transient() => self.retry_after(e.to_string(), delivery),
            Err(AcquirerError::Rejected {
                status,
                code,
                message,
            }) => {
                tracing::warn!(payment_intent = id, status, %code, "acquirer rejected the authorization");
                // The acquirer refused the request itself: retrying cannot help, so the payment
                // fails with the acquirer's reason, like a decline.
                self.record_authorization(
                    &intent,
                    PaymentOutcome::Declined {
                        code,
                        decline_code: None,
                        message,
                    },
                    delivery,
                )
                .await
            }
            Err(e) => self.retry_after(e.to_string(), delivery),
        }
    }

    async fn record_authorization(
        &self,
        intent: &PaymentIntent,
        outcome: PaymentOutcome,
        delivery: &DeliveryInfo,
    ) -> Outcome {
        let actor = Actor::Worker(WORKER);
        let result = async {
            // Each outcome is one transition, and a transition is one statement: atomic without
            // a transaction around it.
            let mut conn = self.pool.acquire().await?;
            match outcome {
                PaymentOutcome::Captured { charge_id, amount } => {
                    store::transition(
                        &mut conn,
                        intent,
                        PaymentIntentStatus::Succeeded,
                        &actor,
                        Some("payment_intent.succeeded"),
                        |pi| {
                            pi.acquirer_charge_id = Some(charge_id);
                            pi.amount_received = Amount::from_stored(amount);
                            pi.amount_capturable = Amount::ZERO;
                            pi.next_action = None;
                        },
                    )
                    .await?;
                }
                PaymentOutcome::Authorized { charge_id, amount } => {
                    store::transition(
                        &mut conn,
                        intent,
                        PaymentIntentStatus::RequiresCapture,
                        &actor,
                        Some("payment_intent.amount_capturable_updated"),
                        |pi| {
                            pi.acquirer_charge_id = Some(charge_id);
                            pi.amount_capturable = Amount::from_stored(amount);
                            pi.authorization_expires_at =
                                Some(paystream_shared::domain::now() + AUTHORIZATION_TTL);
                            pi.next_action = None;
                        },
                    )
                    .await?;
                }
                PaymentOutcome::Declined {
                    code,
                    decline_code,
                    message,
                } => {
                    store::transition(
                        &mut conn,
                        intent,
                        PaymentIntentStatus::Failed,
                        &actor,
                        Some("payment_intent.payment_failed"),
                        |pi| {
                            pi.last_payment_error = Some(PaymentError {
                                code,
                                decline_code,
                                message,
                            });
                            pi.next_action = None;
                        },
                    )
                    .await?;
                }
                PaymentOutcome::ActionRequired {
                    charge_id,
                    redirect_url,
                } => {
                    store::transition(
                        &mut conn,
                        intent,
                        PaymentIntentStatus::RequiresAction,
                        &actor,
                        Some("payment_intent.requires_action"),
                        |pi| {
                            pi.acquirer_charge_id = Some(charge_id);
                            pi.next_action = Some(RedirectAction {
                                url: redirect_url,
                                return_url: pi.return_url.clone(),
                            });
                        },
                    )
                    .await?;
                }
            }
            Ok::<(), StoreError>(())
        }
        .await;
        self.settle(intent, result, delivery)
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
        delivery: &DeliveryInfo,
    ) -> Outcome {
        let intent = match self.load(id, merchant_id).await {
            Ok(Some(pi)) => pi,
            Ok(None) => return Outcome::DeadLetter(format!("payment intent {id} does not exist")),
            Err(e) => return self.retry_after(e.to_string(), delivery),
        };
        let Some(charge_id) = intent.acquirer_charge_id.clone() else {
            return Outcome::DeadLetter(format!(
                "payment intent {id} has no authorization to capture"
            ));
        };
        if intent.status != PaymentIntentStatus::Processing {
            return Outcome::Ack;
        }
        let request = CaptureRequest {
            charge_id,
            amount: Some(amount),
        };
        let acquirer = self.acquirer.clone();
        match with_retries(&self.schedule, || acquirer.capture(&request)).await {
            Ok(charge) => {
                let actor = Actor::Worker(WORKER);
                let result = async {
                    let mut tx = self.pool.begin().await?;
                    store::transition(
                        &mut tx,
                        &intent,
                        PaymentIntentStatus::Succeeded,
                        &actor,
                        Some("payment_intent.succeeded"),
                        |pi| {
                            pi.amount_received =
                                Amount::from_stored(charge.amount_captured.max(amount));
                            pi.amount_capturable = Amount::ZERO;
                        },
                    )
                    .await?;
                    tx.commit().await?;
                    Ok::<(), StoreError>(())
                }
                .await;
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
            Ok(_) => Outcome::Ack,
            Err(e) if e.is_transient() => self.retry_after(e.to_string(), delivery),
            // The acquirer captured before our cancel reached it (a 3-D Secure authentication
            // that completed at the last moment): the customer paid for a canceled intent.
            // That must reach an operator, so it is filed where operators look, with what to do.
            Err(AcquirerError::Rejected { code, .. }) if code == "charge_already_captured" => {
                tracing::error!(payment_intent = id, charge = %request.charge_id, "canceled intent's charge was captured at the acquirer");
                Outcome::DeadLetter(format!(
                    "charge {} of payment intent {id} was captured at the acquirer although the intent is {}: refund it at the acquirer",
                    request.charge_id, intent.status
                ))
            }
            // Already voided or captured at the acquirer: nothing left to release.
            Err(e) => {
                tracing::warn!(payment_intent = id, error = %e, "void refused by the acquirer; nothing to release");
                Outcome::Ack
            }
        }
    }
}

#[async_trait::async_trait]
impl Handler for ConfirmWorker {
    type Command = PaymentCommand;

    async fn handle(&self, cmd: PaymentCommand, delivery: &DeliveryInfo) -> Outcome {
        match cmd {
            PaymentCommand::ConfirmV1 {
                payment_intent_id,
                merchant_id,
            } => {
                self.confirm(&payment_intent_id, &merchant_id, delivery)
                    .await
            }
            PaymentCommand::CaptureV1 {
                payment_intent_id,
                merchant_id,
                amount_to_capture,
            } => {
                self.capture(
                    &payment_intent_id,
                    &merchant_id,
                    amount_to_capture,
                    delivery,
                )
                .await
            }
            PaymentCommand::CancelV1 {
                payment_intent_id,
                merchant_id,
            } => self.void(&payment_intent_id, &merchant_id, delivery).await,
        }
    }

    fn object_id(cmd: &PaymentCommand) -> Option<String> {
        Some(cmd.payment_intent_id().to_owned())
    }
}
