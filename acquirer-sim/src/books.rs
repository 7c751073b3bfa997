//! What each `/v1` call decides and records: authorize (by test card), capture, void and
//! refund against the ledger, each run at most once per idempotency key. The HTTP side
//! (routing, reading bodies, faults) is in `api.rs`.

use std::time::Duration;

use chrono::{Datelike, Utc};
use paystream_domain::money::{Amount, Currency};
use poem::http::StatusCode;
use poem::{IntoResponse, Request, Response};
use serde::Deserialize;

use crate::api::{check_reference, idempotency_key, parse_body, Reply};
use crate::cards::{self, Verdict, EXPIRED_CARD};
use crate::faults::roll;
use crate::ledger::{
    BodyPrint, Charge, ChargeStatus, Fingerprint, Ledger, Refund, RefundStatus, StoredAnswer,
};
use crate::metrics::bump;
use crate::Sim;

/// How long a bank debit stays `pending` before the customer's bank decides it.
pub const DEBIT_SETTLEMENT: Duration = Duration::from_millis(200);

impl Sim {
    /// Runs `op` at most once per idempotency key. The lookup, the decision and the record of
    /// its answer happen under one lock, so two concurrent requests with one key cannot both
    /// run: the second sees the first one's stored answer.
    pub(crate) fn idempotent(
        &self,
        req: &Request,
        body: &[u8],
        op: impl FnOnce(&mut Ledger) -> Result<Reply, Reply>,
    ) -> Response {
        let key = match idempotency_key(req.headers()) {
            Ok(key) => key,
            Err(reply) => return reply.into_response(),
        };
        let fingerprint = Fingerprint {
            method: req.method().to_string(),
            path: req.original_uri().path().to_owned(),
            body: BodyPrint::of(body),
        };
        let mut ledger = self.ledger();
        if let Some(stored) = ledger.answer(&key) {
            if stored.fingerprint == fingerprint {
                bump(&self.metrics.replays);
                let mut response = Reply {
                    status: StatusCode::from_u16(stored.status)
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    body: stored.body.clone(),
                }
                .into_response();
                response.headers_mut().insert(
                    "idempotent-replayed",
                    "true".parse().expect("static header"),
                );
                return response;
            }
            bump(&self.metrics.key_conflicts);
            return Reply::error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "This idempotency key was already used with a different request.",
            )
            .into_response();
        }
        let reply = op(&mut ledger).unwrap_or_else(|refusal| refusal);
        // A 5xx decided nothing, so a retry with the same key must get to try again.
        if !reply.status.is_server_error() {
            ledger.store_answer(
                key,
                StoredAnswer {
                    fingerprint,
                    status: reply.status.as_u16(),
                    body: reply.body.clone(),
                },
            );
        }
        reply.into_response()
    }

    pub(crate) fn authorize(
        &self,
        ledger: &mut Ledger,
        body: &[u8],
        lost: bool,
    ) -> Result<Reply, Reply> {
        let req: CreatePayment = parse_body(body)?;
        let reference = check_reference(req.reference, "reference")?;
        let amount = Amount::parse_charge(req.amount, "amount")?.minor_units();
        let currency = Currency::parse(&req.currency)?.code();
        if let Some(url) = &req.return_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() > 2048 {
                return Err(Reply::invalid(
                    "url_invalid",
                    Some("returnUrl"),
                    "`returnUrl` must be an http(s) URL of at most 2048 characters",
                ));
            }
        }
        let debit = req.bank_account.is_some()
            || req.payment_method.as_deref() == Some(cards::BANK_TEST_PAYMENT_METHOD);
        if debit && !req.capture {
            return Err(Reply::invalid(
                "capture_required",
                Some("capture"),
                "a bank debit cannot be authorized for a later capture",
            ));
        }
        let (number, expired) = match (&req.payment_method, &req.card, &req.bank_account) {
            (Some(pm), None, None) => (
                cards::number_for_payment_method(pm).ok_or_else(|| {
                    Reply::invalid(
                        "payment_method_unknown",
                        Some("paymentMethod"),
                        "`paymentMethod` is not a payment method this acquirer knows",
                    )
                })?,
                false,
            ),
            (None, Some(card), None) => (card.number.as_str(), card.validate()?),
            (None, None, Some(bank)) => (bank.validate()?, false),
            _ => {
                return Err(Reply::invalid(
                    "parameter_invalid",
                    None,
                    "send exactly one of `paymentMethod`, `card` and `bankAccount`",
                ))
            }
        };
        let verdict = if expired {
            Verdict::Decline(EXPIRED_CARD)
        } else {
            cards::verdict(number)
        };

        let mut charge = Charge {
            id: new_id("ch"),
            reference,
            amount,
            currency,
            status: ChargeStatus::Authorized,
            amount_captured: 0,
            amount_refunded: 0,
            decline: None,
            redirect_url: None,
            return_url: req.return_url,
            capture: req.capture,
            disputes_later: false,
            challenge_result: None,
            created_at: Utc::now(),
        };
        let status = match verdict {
            // A debit is accepted now and decided by the customer's bank later.
            _ if debit => {
                charge.status = ChargeStatus::Pending;
                self.settle_debit_later(&charge.id, cards::debit_verdict(number));
                StatusCode::OK
            }
            Verdict::ProcessingError => {
                return Err(Reply::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "processing_error",
                    "An error occurred while processing the card.",
                ))
            }
            Verdict::Decline(decline) => {
                charge.status = ChargeStatus::Declined;
                charge.decline = Some(decline);
                StatusCode::PAYMENT_REQUIRED
            }
            Verdict::ChallengeRequired => {
                charge.status = ChargeStatus::RequiresAction;
                charge.redirect_url = Some(format!("{}/sim/3ds/{}", self.public_url, charge.id));
                StatusCode::OK
            }
            Verdict::Approve { disputes_later } => {
                charge.disputes_later = disputes_later;
                if req.capture {
                    charge.status = ChargeStatus::Captured;
                    charge.amount_captured = amount;
                }
                StatusCode::OK
            }
        };
        bump(&self.metrics.charges);
        tracing::info!(
            charge = %charge.id,
            reference = %charge.reference,
            amount,
            status = charge.status.as_str(),
            "charge created"
        );
        let reply = Reply {
            status,
            body: charge.to_json(),
        };
        if lost {
            self.notify_charge(&charge);
        }
        if charge.disputes_later && charge.status == ChargeStatus::Captured {
            self.dispute_later(&charge.reference);
        }
        ledger.insert_charge(charge);
        Ok(reply)
    }

    /// Decides a pending debit after [`DEBIT_SETTLEMENT`] and announces it by notification
    /// (`payment.succeeded` or `payment.failed` with the bank's code).
    fn settle_debit_later(&self, id: &str, verdict: Result<(), cards::Decline>) {
        let Some(sim) = self.me.upgrade() else {
            return;
        };
        let id = id.to_owned();
        tokio::spawn(async move {
            sim.pause(DEBIT_SETTLEMENT).await;
            if sim.shutdown.is_cancelled() {
                return;
            }
            let mut ledger = sim.ledger();
            let Some(charge) = ledger.charge_mut(&id) else {
                return; // forgotten by `/sim/reset` meanwhile
            };
            if charge.status != ChargeStatus::Pending {
                return;
            }
            match verdict {
                Ok(()) => {
                    charge.status = ChargeStatus::Captured;
                    charge.amount_captured = charge.amount;
                }
                Err(decline) => {
                    charge.status = ChargeStatus::Declined;
                    charge.decline = Some(decline);
                }
            }
            tracing::info!(charge = %charge.id, status = charge.status.as_str(), "debit settled");
            sim.notify_charge(charge);
        });
    }

    pub(crate) fn capture(
        &self,
        ledger: &mut Ledger,
        id: &str,
        body: &[u8],
        lost: bool,
    ) -> Result<Reply, Reply> {
        let req: CaptureBody = parse_body(body)?;
        let charge = ledger.charge_mut(id).ok_or_else(Reply::no_such_charge)?;
        match charge.status {
            ChargeStatus::Authorized => {}
            ChargeStatus::Captured | ChargeStatus::Refunded => {
                return Err(Reply::conflict(
                    "charge_already_captured",
                    "The charge has already been captured.",
                ))
            }
            other => {
                return Err(Reply::conflict(
                    "charge_not_capturable",
                    format!(
                        "A charge in status `{}` cannot be captured.",
                        other.as_str()
                    ),
                ))
            }
        }
        let amount = match req.amount {
            None => charge.amount,
            Some(raw) => {
                let amount = Amount::parse_charge(raw, "amount")?.minor_units();
                if amount > charge.amount {
                    return Err(Reply::invalid(
                        "amount_too_large",
                        Some("amount"),
                        "`amount` is more than the authorized amount",
                    ));
                }
                amount
            }
        };
        charge.status = ChargeStatus::Captured;
        charge.amount_captured = amount;
        tracing::info!(charge = %charge.id, amount, "charge captured");
        if lost {
            self.notify_charge(charge);
        }
        if charge.disputes_later {
            self.dispute_later(&charge.reference);
        }
        Ok(Reply::ok(charge.to_json()))
    }

    pub(crate) fn void(&self, ledger: &mut Ledger, id: &str, body: &[u8]) -> Result<Reply, Reply> {
        let _: VoidBody = parse_body(body)?;
        let charge = ledger.charge_mut(id).ok_or_else(Reply::no_such_charge)?;
        match charge.status {
            ChargeStatus::Authorized | ChargeStatus::RequiresAction => {}
            ChargeStatus::Captured | ChargeStatus::Refunded => {
                return Err(Reply::conflict(
                    "charge_already_captured",
                    "A captured charge cannot be voided; refund it instead.",
                ))
            }
            ChargeStatus::Voided => {
                return Err(Reply::conflict(
                    "charge_already_voided",
                    "The charge has already been voided.",
                ))
            }
            ChargeStatus::Declined => {
                return Err(Reply::conflict(
                    "charge_not_voidable",
                    "A declined charge cannot be voided.",
                ))
            }
            ChargeStatus::Pending => {
                return Err(Reply::conflict(
                    "charge_not_voidable",
                    "A bank debit cannot be voided; refund it once it settled.",
                ))
            }
        }
        charge.status = ChargeStatus::Voided;
        tracing::info!(charge = %charge.id, "charge voided");
        Ok(Reply::ok(charge.to_json()))
    }

    /// Refunds a captured charge. With `settle_after`, the refund is accepted as `pending`
    /// (its amount reserved at once, so concurrent refunds still cannot exceed the capture),
    /// `refund.pending` is announced, and a task settles it after the delay.
    pub(crate) fn refund(
        &self,
        ledger: &mut Ledger,
        body: &[u8],
        settle_after: Option<Duration>,
        lost: bool,
    ) -> Result<Reply, Reply> {
        let req: RefundBody = parse_body(body)?;
        let reference = check_reference(req.reference, "reference")?;
        let amount = Amount::parse_charge(req.amount, "amount")?.minor_units();
        let charge = ledger
            .charge_mut(&req.payment)
            .ok_or_else(Reply::no_such_charge)?;
        match charge.status {
            ChargeStatus::Captured => {}
            ChargeStatus::Refunded => {
                return Err(Reply::conflict(
                    "charge_already_refunded",
                    "The charge has already been refunded in full.",
                ))
            }
            other => {
                return Err(Reply::conflict(
                    "charge_not_captured",
                    format!(
                        "A charge in status `{}` cannot be refunded.",
                        other.as_str()
                    ),
                ))
            }
        }
        let remaining = charge.amount_captured - charge.amount_refunded;
        if amount > remaining {
            return Err(Reply::invalid(
                "amount_too_large",
                Some("amount"),
                format!("`amount` is more than the {remaining} left to refund"),
            ));
        }
        charge.amount_refunded += amount;
        if charge.amount_refunded == charge.amount_captured {
            charge.status = ChargeStatus::Refunded;
        }
        let refund = Refund {
            id: new_id("rf"),
            charge_id: charge.id.clone(),
            reference,
            amount,
            currency: charge.currency,
            status: if settle_after.is_some() {
                RefundStatus::Pending
            } else {
                RefundStatus::Succeeded
            },
            failure_reason: None,
            created_at: Utc::now(),
        };
        bump(&self.metrics.refunds);
        tracing::info!(refund = %refund.id, charge = %refund.charge_id, amount, status = ?refund.status, "refund created");
        let reply = Reply::ok(refund.to_json());
        match settle_after {
            Some(delay) => {
                self.notify("refund.pending", refund.to_json());
                if let Some(sim) = self.me.upgrade() {
                    let id = refund.id.clone();
                    tokio::spawn(async move {
                        sim.pause(delay).await;
                        if !sim.shutdown.is_cancelled() {
                            sim.settle_refund(&id);
                        }
                    });
                }
            }
            None if lost => self.notify("refund.succeeded", refund.to_json()),
            None => {}
        }
        ledger.insert_refund(refund);
        Ok(reply)
    }

    /// Settles a pending refund: succeeded, or (at `refundFailureRate`) failed with its amount
    /// released back to the charge; announced by notification either way.
    fn settle_refund(&self, id: &str) {
        let fail = {
            let mut chaos = self.chaos();
            let rate = chaos.faults.refund_failure_per_million;
            roll(&mut chaos.rng, rate)
        };
        let settled = {
            let mut ledger = self.ledger();
            let Some(refund) = ledger.refund_mut(id) else {
                // Forgotten by `/sim/reset` meanwhile.
                return;
            };
            if refund.status != RefundStatus::Pending {
                return;
            }
            if fail {
                refund.status = RefundStatus::Failed;
                refund.failure_reason = Some("refund_declined");
            } else {
                refund.status = RefundStatus::Succeeded;
            }
            let (body, charge_id, amount) =
                (refund.to_json(), refund.charge_id.clone(), refund.amount);
            if fail {
                if let Some(charge) = ledger.charge_mut(&charge_id) {
                    charge.amount_refunded -= amount;
                    if charge.status == ChargeStatus::Refunded {
                        charge.status = ChargeStatus::Captured;
                    }
                }
            }
            body
        };
        tracing::info!(refund = id, failed = fail, "refund settled");
        let event = if fail {
            "refund.failed"
        } else {
            "refund.succeeded"
        };
        self.notify(event, settled);
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CreatePayment {
    reference: String,
    amount: i64,
    currency: String,
    payment_method: Option<String>,
    card: Option<CardBody>,
    bank_account: Option<BankAccountBody>,
    capture: bool,
    return_url: Option<String>,
}

// No `Debug`: nothing may ever format a card number into a log line.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CardBody {
    number: String,
    exp_month: u32,
    exp_year: i32,
    /// Absent for a card on file: a vault keeps no CVC, and charging a stored card needs none.
    cvc: Option<String>,
}

// No `Debug`, like the card.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct BankAccountBody {
    #[allow(dead_code)]
    country: String,
    routing_number: String,
    account_number: String,
    #[allow(dead_code)]
    account_holder_name: String,
    #[allow(dead_code)]
    account_holder_type: Option<String>,
}

impl BankAccountBody {
    /// Checks the account's shape (400 when wrong); the account number decides the verdict.
    fn validate(&self) -> Result<&str, Reply> {
        if self.routing_number.len() != 9
            || !self.routing_number.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(Reply::invalid(
                "routing_number_invalid",
                Some("bankAccount.routingNumber"),
                "`bankAccount.routingNumber` must be 9 digits",
            ));
        }
        if !(4..=17).contains(&self.account_number.len())
            || !self.account_number.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(Reply::invalid(
                "account_number_invalid",
                Some("bankAccount.accountNumber"),
                "`bankAccount.accountNumber` must be 4 to 17 digits",
            ));
        }
        Ok(&self.account_number)
    }
}

impl CardBody {
    /// Checks the card's shape (400 when wrong) and tells whether it has expired, which is the
    /// issuer's decline rather than a malformed request.
    fn validate(&self) -> Result<bool, Reply> {
        if !(8..=19).contains(&self.number.len())
            || !self.number.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(Reply::invalid(
                "invalid_number",
                Some("card.number"),
                "`card.number` must be 8 to 19 digits",
            ));
        }
        if !(1..=12).contains(&self.exp_month) {
            return Err(Reply::invalid(
                "invalid_expiry_month",
                Some("card.expMonth"),
                "`card.expMonth` must be 1 to 12",
            ));
        }
        if !(2000..=2199).contains(&self.exp_year) {
            return Err(Reply::invalid(
                "invalid_expiry_year",
                Some("card.expYear"),
                "`card.expYear` must be a four-digit year",
            ));
        }
        let bad_cvc =
            |c: &str| !(3..=4).contains(&c.len()) || !c.bytes().all(|b| b.is_ascii_digit());
        if self.cvc.as_deref().is_some_and(bad_cvc) {
            return Err(Reply::invalid(
                "invalid_cvc",
                Some("card.cvc"),
                "`card.cvc` must be 3 or 4 digits",
            ));
        }
        let today = Utc::now();
        Ok((self.exp_year, self.exp_month) < (today.year(), today.month()))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CaptureBody {
    amount: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VoidBody {}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RefundBody {
    payment: String,
    amount: i64,
    reference: String,
}

pub(crate) fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}
