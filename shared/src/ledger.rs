//! Posting money movements: each function builds a balanced [`Posting`] for one source event,
//! writes it with its balance transaction in the caller's database transaction (the one that
//! changes the object that moved the money), and is idempotent per source. The chart of
//! accounts and the signs are in `domain::ledger`.
//!
//! Architecture Invariant: the ledger changes only here, and only inside the transaction of
//! the state change that caused it; nothing outside `store::ledger` writes its tables.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use sqlx::{PgConnection, PgExecutor};

use crate::domain::fees::FeeSchedule;
use crate::domain::ledger::{Account, BalanceStatus, BalanceTransactionType, Posting, PostingKind};
use crate::domain::money::{Amount, Currency};
use crate::domain::payment_intent::PaymentIntent;
use crate::domain::DomainError;
use crate::store::balance_transactions::{self, BalanceTransaction, NewBalanceTransaction};
use crate::store::refunds::Refund;
use crate::store::{ledger, StoreError};

static FEES: OnceLock<FeeSchedule> = OnceLock::new();

/// The fee schedule every capture is charged by: the one a process installed at start-up with
/// [`install_fee_schedule`] (from its `Config`), else `PAYSTREAM_FEE_PERCENT_BPS` and
/// `PAYSTREAM_FEE_FIXED` as `Config` reads them (which validates them at start-up), else the
/// defaults. Process-wide because one process charges one schedule.
pub fn fee_schedule() -> FeeSchedule {
    *FEES.get_or_init(|| {
        crate::config::fee_schedule_from(|k| std::env::var(k).ok()).unwrap_or_default()
    })
}

/// Sets the process's fee schedule; the first call wins (a process has one configuration).
pub fn install_fee_schedule(schedule: FeeSchedule) {
    let _ = FEES.set(schedule);
}

fn rejected(e: DomainError) -> StoreError {
    StoreError::Rejected(e)
}

/// Writes `posting` and, when it is new, the balance transaction `shown`. `None` when the source
/// already posted (a redelivery): nothing is written.
pub async fn record(
    conn: &mut PgConnection,
    posting: &Posting,
    shown: Option<NewBalanceTransaction<'_>>,
) -> Result<Option<Option<BalanceTransaction>>, StoreError> {
    let Some(ledger_id) = ledger::post(conn, posting).await? else {
        return Ok(None);
    };
    let Some(shown) = shown else {
        return Ok(Some(None));
    };
    let bt = balance_transactions::insert(
        conn,
        posting.merchant_id(),
        posting.currency(),
        &ledger_id,
        &shown,
    )
    .await?;
    Ok(Some(Some(bt)))
}

/// Posts a captured intent's charge and its fee (by [`fee_schedule`]). Called by the one place
/// an intent becomes `succeeded` (`store::payment_intents::transition_queueing`), in its
/// transaction. Once per intent: `None` when it already posted.
pub async fn post_charge(
    conn: &mut PgConnection,
    intent: &PaymentIntent,
) -> Result<Option<BalanceTransaction>, StoreError> {
    let amount = intent.amount_received;
    if amount.is_zero() {
        return Ok(None);
    }
    let fee = fee_schedule().fee(amount, intent.currency);
    let posting = Posting::charge(
        &intent.merchant_id,
        intent.currency,
        &intent.id,
        amount,
        fee,
    )
    .map_err(rejected)?;
    let shown = NewBalanceTransaction {
        kind: BalanceTransactionType::Charge,
        reporting_category: "charge",
        amount: amount.minor_units(),
        fee: fee.minor_units(),
        source: &intent.id,
        status: BalanceStatus::Pending,
        payout_id: None,
    };
    Ok(record(conn, &posting, Some(shown)).await?.flatten())
}

/// Posts a succeeded refund, in the transaction that settles it (`store::refunds::settle`).
/// The capture's fee is not returned. Once per refund.
pub async fn post_refund(
    conn: &mut PgConnection,
    refund: &Refund,
) -> Result<Option<BalanceTransaction>, StoreError> {
    let posting = Posting::refund(
        &refund.merchant_id,
        refund.currency,
        &refund.id,
        refund.amount,
    )
    .map_err(rejected)?;
    let shown = NewBalanceTransaction {
        kind: BalanceTransactionType::Refund,
        reporting_category: "refund",
        amount: -refund.amount.minor_units(),
        fee: 0,
        source: &refund.id,
        status: BalanceStatus::Pending,
        payout_id: None,
    };
    Ok(record(conn, &posting, Some(shown)).await?.flatten())
}

/// Settles a pending balance transaction into payout `payout_id`: its net moves from pending to
/// available (`Posting::settlement`) and it shows `available` with the payout. Answers `false`
/// when it was already settled, so a report processed twice changes nothing.
pub async fn settle(
    conn: &mut PgConnection,
    merchant_id: &str,
    balance_transaction_id: &str,
    payout_id: &str,
) -> Result<bool, StoreError> {
    let bt = balance_transactions::get(&mut *conn, merchant_id, balance_transaction_id)
        .await?
        .ok_or_else(|| StoreError::NotFound(balance_transaction_id.to_owned()))?;
    if bt.status == BalanceStatus::Available {
        return Ok(false);
    }
    let original = ledger::get(&mut *conn, &bt.ledger_transaction_id)
        .await?
        .ok_or_else(|| StoreError::NotFound(bt.ledger_transaction_id.clone()))?;
    let posting = Posting::settlement(&original.posting, &bt.id).map_err(rejected)?;
    if ledger::post(conn, &posting).await?.is_none() {
        return Ok(false);
    }
    balance_transactions::mark_available(conn, &bt.id, payout_id).await
}

/// Posts a payout of `amount` (what the acquirer paid to the merchant's bank) out of the
/// available balance, shown as a `payout` balance transaction of `-amount`. Once per payout.
pub async fn post_payout(
    conn: &mut PgConnection,
    merchant_id: &str,
    currency: Currency,
    payout_id: &str,
    amount: i64,
) -> Result<Option<BalanceTransaction>, StoreError> {
    let posting = Posting::payout(merchant_id, currency, payout_id, amount).map_err(rejected)?;
    let shown = NewBalanceTransaction {
        kind: BalanceTransactionType::Payout,
        reporting_category: "payout",
        amount: -amount,
        fee: 0,
        source: payout_id,
        status: BalanceStatus::Available,
        payout_id: Some(payout_id),
    };
    Ok(record(conn, &posting, Some(shown)).await?.flatten())
}

/// Posts an adjustment: any balanced `posting` of kind `adjustment` (or a dispute kind), shown
/// to the merchant as an `adjustment` with `reporting_category` and the merchant-side `amount`
/// and `fee` (signed like every balance transaction). Once per (kind, source).
pub async fn post_adjustment(
    conn: &mut PgConnection,
    posting: &Posting,
    reporting_category: &'static str,
    amount: i64,
    fee: i64,
    status: BalanceStatus,
) -> Result<Option<BalanceTransaction>, StoreError> {
    let shown = NewBalanceTransaction {
        kind: BalanceTransactionType::Adjustment,
        reporting_category,
        amount,
        fee,
        source: posting.source_id(),
        status,
        payout_id: None,
    };
    Ok(record(conn, posting, Some(shown)).await?.flatten())
}

static DISPUTE_FEE: OnceLock<Amount> = OnceLock::new();

/// What the acquirer charges for a chargeback: the fee installed with [`install_dispute_fee`]
/// (from `Config.dispute_fee`), else `PAYSTREAM_DISPUTE_FEE`, else the default (1500).
pub fn dispute_fee() -> Amount {
    *DISPUTE_FEE.get_or_init(|| {
        std::env::var("PAYSTREAM_DISPUTE_FEE")
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|v| *v >= 0)
            .map_or(
                Amount::from_stored(crate::domain::fees::DEFAULT_DISPUTE_FEE),
                Amount::from_stored,
            )
    })
}

/// Sets the process's dispute fee; the first call wins.
pub fn install_dispute_fee(fee: Amount) {
    let _ = DISPUTE_FEE.set(fee);
}

/// Posts a new dispute's withdrawal (the disputed amount and [`dispute_fee`]), in the
/// transaction that creates the dispute. Shown as an `adjustment` with reporting category
/// `dispute`. Once per dispute.
pub async fn post_dispute_withdrawal(
    conn: &mut PgConnection,
    merchant_id: &str,
    currency: Currency,
    dispute_id: &str,
    amount: Amount,
) -> Result<Option<BalanceTransaction>, StoreError> {
    let fee = dispute_fee();
    let posting = Posting::dispute_withdrawal(merchant_id, currency, dispute_id, amount, fee)
        .map_err(rejected)?;
    post_adjustment(
        conn,
        &posting,
        "dispute",
        -amount.minor_units(),
        fee.minor_units(),
        BalanceStatus::Pending,
    )
    .await
}

/// Posts a won dispute's reinstatement of the amount (not the fee), reporting category
/// `dispute_reversal`. Once per dispute.
pub async fn post_dispute_reinstatement(
    conn: &mut PgConnection,
    merchant_id: &str,
    currency: Currency,
    dispute_id: &str,
    amount: Amount,
) -> Result<Option<BalanceTransaction>, StoreError> {
    let posting = Posting::dispute_reinstatement(merchant_id, currency, dispute_id, amount)
        .map_err(rejected)?;
    post_adjustment(
        conn,
        &posting,
        "dispute_reversal",
        amount.minor_units(),
        0,
        BalanceStatus::Pending,
    )
    .await
}

/// A merchant's balance per currency: what it is owed, settled (`available`) and not yet
/// (`pending`), in minor units. Liabilities are credits, so the amounts are the accounts'
/// balances negated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Balance {
    pub available: BTreeMap<String, i64>,
    pub pending: BTreeMap<String, i64>,
}

pub async fn balance<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
) -> Result<Balance, StoreError> {
    let mut out = Balance::default();
    for (currency, accounts) in ledger::balances(db, merchant_id).await? {
        let get = |a: Account| -accounts.get(&a).copied().unwrap_or(0);
        out.available
            .insert(currency.clone(), get(Account::MerchantAvailable));
        out.pending.insert(currency, get(Account::MerchantPending));
    }
    Ok(out)
}

/// The first thing `paystream ledger verify` found wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("ledger transaction {id} does not balance: its entries sum to {sum}")]
    Unbalanced { id: String, sum: i64 },
    #[error("ledger transaction {id}: entry {seq} is filed under another merchant or currency")]
    Misfiled { id: String, seq: i64 },
    #[error("account {merchant_id}/{currency}/{account}: balance {balance}, but its entries sum to {sum}")]
    Drifted {
        merchant_id: String,
        currency: String,
        account: String,
        balance: i64,
        sum: i64,
    },
    #[error("payment intent {id} disagrees with the ledger: {detail}")]
    Mismatch { id: String, detail: String },
}

/// Checks the whole ledger: every transaction balances, no entry strays to another merchant or
/// currency, every running balance equals the sum of its entries, and every intent's captured
/// and refunded amounts equal what the ledger posted for it. `Ok(Err(v))` names the first
/// violation.
pub async fn verify(conn: &mut PgConnection) -> Result<Result<(), Violation>, StoreError> {
    if let Some((id, sum)) = ledger::first_unbalanced(&mut *conn).await? {
        return Ok(Err(Violation::Unbalanced { id, sum }));
    }
    if let Some((id, seq)) = ledger::first_misfiled_entry(&mut *conn).await? {
        return Ok(Err(Violation::Misfiled { id, seq }));
    }
    if let Some((merchant_id, currency, account, balance, sum)) =
        ledger::first_drifted_account(&mut *conn).await?
    {
        return Ok(Err(Violation::Drifted {
            merchant_id,
            currency,
            account,
            balance,
            sum,
        }));
    }
    if let Some((id, detail)) = ledger::first_intent_mismatch(&mut *conn).await? {
        return Ok(Err(Violation::Mismatch { id, detail }));
    }
    Ok(Ok(()))
}

/// What a capture of `amount` in `currency` costs by the process's schedule.
pub fn fee_for(amount: Amount, currency: Currency) -> Amount {
    fee_schedule().fee(amount, currency)
}

/// Whether `kind` already posted for `source_id` (for callers that want to skip work).
pub async fn posted<'e>(
    db: impl PgExecutor<'e>,
    kind: PostingKind,
    source_id: &str,
) -> Result<bool, StoreError> {
    ledger::posted(db, kind, source_id).await
}
