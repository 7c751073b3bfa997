//! Deadlines in a payment intent's life, kept by the scheduler's leader (docs/api.md, payment
//! intents):
//!
//! - an uncaptured authorization is voided when `authorizationExpiresAt` passes: the intent is
//!   `canceled` with reason `expired`, and the void reaches the acquirer through the same
//!   `cmd.payment.cancel` command and confirm-worker path as the API's cancel;
//! - `payment_intent.authorization_expiring` is announced once, [`EXPIRING_NOTICE`] before
//!   that;
//! - an intent left unpaid for `PAYSTREAM_ABANDON_AFTER_SECS` is `canceled` with reason
//!   `abandoned`.
//!
//! Each job is a step function the scheduler's loop calls and tests call directly, with the
//! time as a parameter. A step looks at a bounded batch and answers how many intents it acted
//! on. Candidates are listed without locks; each is then decided on its own, as it is at that
//! moment, and changed through the state machine's guarded writes, so a capture or a confirm
//! racing the job wins or loses cleanly, a second run (or a second leader during a hand-over)
//! finds nothing left to do, and one intent's failure does not hold up the others.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;

use paystream_shared::audit::Actor;
use paystream_shared::commands::PaymentCommand;
use paystream_shared::domain::money::Amount;
use paystream_shared::domain::payment_intent::{PaymentIntent, PaymentIntentStatus};
use paystream_shared::store::intent_deadlines::{self as store, Candidate};
use paystream_shared::store::payment_intents as intents;
use paystream_shared::store::StoreError;

use crate::acquirer::Acquirer;
use crate::reconcile::{self, Fix};

/// Who the audit log names for these jobs; reconciliation, the scheduler's other job, is
/// `reconciliation`.
pub const ACTOR: Actor = Actor::System("scheduler");
/// How long before `authorizationExpiresAt` the merchant is told (Stripe-like: a day, time
/// enough to capture).
pub const EXPIRING_NOTICE: TimeDelta = TimeDelta::hours(24);
/// How many intents one call of a step looks at; the scheduler calls again while batches come
/// back full.
pub const BATCH: i64 = 500;
/// The statuses an intent is abandoned in: waiting on the merchant or the customer, with no
/// money moved. The public API names `requires_payment_method` and `requires_confirmation`; its
/// transition table also allows `requires_action -> canceled`, and a 3-D Secure challenge
/// nobody completed in that time is as abandoned as an unconfirmed intent (Stripe cancels
/// those with reason `abandoned` too when their checkout expires). Its pending charge at the
/// acquirer is voided.
pub const ABANDONABLE: [PaymentIntentStatus; 3] = [
    PaymentIntentStatus::RequiresPaymentMethod,
    PaymentIntentStatus::RequiresConfirmation,
    PaymentIntentStatus::RequiresAction,
];

/// `cancellationReason` of an authorization that expired uncaptured.
pub const REASON_EXPIRED: &str = "expired";
/// `cancellationReason` of an intent nobody paid in time.
pub const REASON_ABANDONED: &str = "abandoned";

#[derive(Debug, thiserror::Error)]
pub enum DeadlineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Cancels, with reason `expired`, up to `limit` `requires_capture` intents whose
/// authorization expired at or before `now`, and voids each authorization at the acquirer.
/// Returns how many it canceled.
pub async fn expire_authorizations(
    pool: &PgPool,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<usize, DeadlineError> {
    let due = store::expired_authorizations(pool, now, limit).await?;
    let still_due = |pi: &PaymentIntent| {
        pi.status == PaymentIntentStatus::RequiresCapture
            && pi.authorization_expires_at.is_some_and(|at| at <= now)
    };
    cancel_each(pool, due, REASON_EXPIRED, still_due).await
}

/// Cancels, with reason `abandoned`, up to `limit` intents in an [`ABANDONABLE`] status that
/// nothing has changed for `abandon_after` before `now`. Returns how many it canceled.
///
/// An intent with a charge (a 3-D Secure challenge) is asked about at the acquirer first: the
/// cardholder may have completed the challenge and paid while the notification saying so was
/// lost, and canceling then would strand the money (its void is refused). Such an intent is
/// moved where the acquirer says instead; one the acquirer cannot be asked about now is left
/// for the next round.
pub async fn cancel_abandoned(
    pool: &PgPool,
    acquirer: &Arc<dyn Acquirer>,
    now: DateTime<Utc>,
    abandon_after: TimeDelta,
    limit: i64,
) -> Result<usize, DeadlineError> {
    let idle_since = now - abandon_after;
    let listed = store::idle_since(pool, &ABANDONABLE, idle_since, limit).await?;
    let mut due = Vec::with_capacity(listed.len());
    for candidate in listed {
        let has_charge = match intents::get(pool, &candidate.merchant_id, &candidate.id).await {
            Ok(Some(pi)) => pi.acquirer_charge_id.is_some(),
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(payment_intent = %candidate.id, error = %e, "could not read an abandoned intent");
                continue;
            }
        };
        if has_charge {
            match reconcile::ask_and_correct(pool, acquirer, &candidate.merchant_id, &candidate.id)
                .await
            {
                Ok(Fix::Nothing) => {}
                Ok(_) => continue, // the acquirer decided it; nothing to abandon
                Err(e) => {
                    tracing::warn!(payment_intent = %candidate.id, error = %e, "could not ask the acquirer before abandoning; trying again next round");
                    continue;
                }
            }
        }
        due.push(candidate);
    }
    let still_due =
        |pi: &PaymentIntent| ABANDONABLE.contains(&pi.status) && pi.updated_at <= idle_since;
    cancel_each(pool, due, REASON_ABANDONED, still_due).await
}

/// Sends `payment_intent.authorization_expiring` for up to `limit` uncaptured authorizations
/// that expire within `notice` after `now` and were not announced yet. Returns how many it
/// announced. Once per intent: the write is guarded on a mark stored with the intent.
pub async fn announce_expiring_authorizations(
    pool: &PgPool,
    now: DateTime<Utc>,
    notice: TimeDelta,
    limit: i64,
) -> Result<usize, DeadlineError> {
    let until = now + notice;
    let due = store::expiring_unannounced(pool, now, until, limit).await?;
    let mut announced = 0;
    for candidate in due {
        match announce(pool, &candidate, now, until).await {
            Ok(true) => announced += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(payment_intent = %candidate.id, error = %e, "could not announce an expiring authorization");
            }
        }
    }
    Ok(announced)
}

async fn announce(
    pool: &PgPool,
    candidate: &Candidate,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<bool, DeadlineError> {
    // No lock: the write is guarded on the intent being exactly as read, so the event carries
    // the intent as it is and a capture in between simply wins.
    let Some(intent) = intents::get(pool, &candidate.merchant_id, &candidate.id).await? else {
        return Ok(false);
    };
    let in_window = intent
        .authorization_expires_at
        .is_some_and(|at| at > now && at <= until);
    if intent.status != PaymentIntentStatus::RequiresCapture || !in_window {
        return Ok(false);
    }
    let mut conn = pool.acquire().await?;
    Ok(store::record_authorization_expiring(&mut conn, &intent, &ACTOR, now).await?)
}

/// Cancels every candidate that `still_due` says still qualifies once locked.
async fn cancel_each(
    pool: &PgPool,
    due: Vec<Candidate>,
    reason: &'static str,
    still_due: impl Fn(&PaymentIntent) -> bool,
) -> Result<usize, DeadlineError> {
    let mut canceled = 0;
    for candidate in due {
        match cancel(pool, &candidate, reason, &still_due).await {
            Ok(true) => canceled += 1,
            Ok(false) => {}
            // The intent moved on between the lock and the write: it is not ours to cancel.
            Err(DeadlineError::Store(
                StoreError::Conflict { .. } | StoreError::InvalidTransition(_),
            )) => {}
            Err(e) => {
                tracing::warn!(payment_intent = %candidate.id, reason, error = %e, "could not cancel an intent past its deadline");
            }
        }
    }
    if canceled > 0 {
        tracing::info!(
            canceled,
            reason,
            "canceled payment intents past their deadline"
        );
    }
    Ok(canceled)
}

async fn cancel(
    pool: &PgPool,
    candidate: &Candidate,
    reason: &'static str,
    still_due: impl Fn(&PaymentIntent) -> bool,
) -> Result<bool, DeadlineError> {
    let mut tx = pool.begin().await?;
    // Locked like the API's capture and cancel lock it, so a capture racing the expiry is
    // decided by the row lock: whichever comes second finds the status moved on.
    let Some(intent) =
        intents::get_for_update(&mut tx, &candidate.merchant_id, &candidate.id).await?
    else {
        return Ok(false);
    };
    if !still_due(&intent) {
        return Ok(false); // captured, confirmed or canceled since it was listed
    }
    // A charge at the acquirer (an authorization, or one awaiting 3-D Secure) is voided the way
    // the API's cancel voids one: a `cmd.payment.cancel` queued in the same statement as the
    // transition, which the confirm worker carries out with an idempotency key derived from
    // the charge. Only the one transition that wins queues it, so the acquirer sees one void.
    let void = PaymentCommand::void_for(&intent);
    let message = void.as_ref().map(PaymentCommand::message);
    intents::transition_queueing(
        &mut tx,
        &intent,
        PaymentIntentStatus::Canceled,
        &ACTOR,
        Some("payment_intent.canceled"),
        message,
        |pi| {
            pi.canceled_at = Some(paystream_shared::domain::now());
            pi.cancellation_reason = Some(reason.to_owned());
            pi.amount_capturable = Amount::ZERO;
            pi.next_action = None;
        },
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}
