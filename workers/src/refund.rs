//! The refund worker's step: send a pending refund to the acquirer, at most once.
//!
//! The acquirer call carries a key derived from our refund id, so a retry after a timeout or a
//! redelivery after a crash finds the refund the acquirer already made instead of making a
//! second. A refund the acquirer accepts for later settlement stays `pending` (its acquirer id
//! recorded) until a notification or reconciliation settles it.

use std::sync::Arc;

use sqlx::PgPool;

use paystream_nats::consumer::{DeliveryInfo, Handler, Outcome};
use paystream_shared::audit::Actor;
use paystream_shared::commands::RefundCommand;
use paystream_shared::domain::refund::RefundStatus;
use paystream_shared::retry::RetrySchedule;
use paystream_shared::store::payment_intents;
use paystream_shared::store::refunds::{self, Settlement};
use paystream_shared::store::StoreError;

use crate::acquirer::{
    with_retries, Acquirer, AcquirerError, RefundRequest, RefundStatus as AcquirerRefundStatus,
};

pub const WORKER: &str = "refund-worker";

pub struct RefundWorker {
    pool: PgPool,
    acquirer: Arc<dyn Acquirer>,
    schedule: RetrySchedule,
}

impl RefundWorker {
    pub fn new(pool: PgPool, acquirer: Arc<dyn Acquirer>, schedule: RetrySchedule) -> Self {
        Self {
            pool,
            acquirer,
            schedule,
        }
    }

    fn retry(&self, reason: String, delivery: &DeliveryInfo) -> Outcome {
        tracing::warn!(%reason, delivered = delivery.delivered, "refund will be retried");
        let attempt = u32::try_from(delivery.delivered).unwrap_or(u32::MAX);
        Outcome::retry(self.schedule.delay_for_attempt(attempt), reason)
    }

    async fn settle(
        &self,
        refund_id: &str,
        settlement: Settlement,
        delivery: &DeliveryInfo,
    ) -> Outcome {
        let result = async {
            let mut tx = self.pool.begin().await?;
            refunds::settle(&mut tx, refund_id, settlement, &Actor::Worker(WORKER)).await?;
            tx.commit().await?;
            Ok::<(), StoreError>(())
        }
        .await;
        match result {
            Ok(()) => Outcome::Ack,
            Err(e @ (StoreError::NotFound(_) | StoreError::Corrupt { .. })) => {
                Outcome::DeadLetter(e.to_string())
            }
            Err(e) => self.retry(e.to_string(), delivery),
        }
    }

    async fn process(
        &self,
        refund_id: &str,
        merchant_id: &str,
        delivery: &DeliveryInfo,
    ) -> Outcome {
        let refund = match refunds::get(&self.pool, merchant_id, refund_id).await {
            Ok(Some(r)) => r,
            Ok(None) => return Outcome::DeadLetter(format!("refund {refund_id} does not exist")),
            Err(e) => return self.retry(e.to_string(), delivery),
        };
        if refund.status != RefundStatus::Pending || refund.acquirer_refund_id.is_some() {
            // Settled already, or accepted by the acquirer and waiting for its notification.
            return Outcome::Ack;
        }
        let intent =
            match payment_intents::get(&self.pool, merchant_id, &refund.payment_intent_id).await {
                Ok(Some(pi)) => pi,
                Ok(None) => {
                    return Outcome::DeadLetter(format!(
                        "payment intent {} does not exist",
                        refund.payment_intent_id
                    ))
                }
                Err(e) => return self.retry(e.to_string(), delivery),
            };
        let Some(charge_id) = intent.acquirer_charge_id else {
            return Outcome::DeadLetter(format!(
                "payment intent {} has no charge to refund",
                intent.id
            ));
        };
        let request = RefundRequest {
            charge_id,
            amount: refund.amount.minor_units(),
            reference: refund.id.clone(),
        };
        let acquirer = self.acquirer.clone();
        match with_retries(&self.schedule, || acquirer.refund(&request)).await {
            Ok(receipt) => match receipt.status {
                AcquirerRefundStatus::Succeeded => {
                    self.settle(
                        refund_id,
                        Settlement::Succeeded {
                            acquirer_refund_id: Some(receipt.id),
                        },
                        delivery,
                    )
                    .await
                }
                AcquirerRefundStatus::Failed => {
                    self.settle(
                        refund_id,
                        Settlement::Failed {
                            reason: "declined_by_acquirer".into(),
                        },
                        delivery,
                    )
                    .await
                }
                AcquirerRefundStatus::Pending => {
                    let marked = async {
                        let mut conn = self.pool.acquire().await?;
                        refunds::record_acquirer_id(&mut conn, refund_id, &receipt.id).await
                    }
                    .await;
                    match marked {
                        Ok(_) => Outcome::Ack,
                        Err(e) => self.retry(e.to_string(), delivery),
                    }
                }
            },
            Err(e) if e.is_transient() => self.retry(e.to_string(), delivery),
            Err(AcquirerError::Rejected { code, .. }) => {
                self.settle(refund_id, Settlement::Failed { reason: code }, delivery)
                    .await
            }
            Err(e) => self.retry(e.to_string(), delivery),
        }
    }
}

#[async_trait::async_trait]
impl Handler for RefundWorker {
    type Command = RefundCommand;

    async fn handle(&self, cmd: RefundCommand, delivery: &DeliveryInfo) -> Outcome {
        match cmd {
            RefundCommand::ProcessV1 {
                refund_id,
                merchant_id,
            } => self.process(&refund_id, &merchant_id, delivery).await,
        }
    }

    fn object_id(cmd: &RefundCommand) -> Option<String> {
        Some(cmd.refund_id().to_owned())
    }
}
