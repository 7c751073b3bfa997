//! The double-entry ledger's vocabulary: the chart of accounts, and a [`Posting`] that cannot
//! be built unbalanced.
//!
//! Every account belongs to one merchant and one currency. An entry's amount is signed:
//! positive is a debit, negative a credit, and the entries of one posting sum to zero. An
//! account's balance is the sum of its entries.
//!
//! | account | normal side | holds |
//! |---|---|---|
//! | `acquirer_receivable` | debit | gross captured money the acquirer holds and has not yet settled |
//! | `merchant_pending` | credit | owed to the merchant, not yet settled by the acquirer |
//! | `merchant_available` | credit | owed to the merchant, settled, not yet paid out |
//! | `fees` | credit | fees charged to the merchant, not yet deducted by the acquirer in a settlement |
//! | `refunds` | credit | refunds the acquirer paid to cardholders, not yet netted in a settlement |
//! | `disputes` | credit | chargebacks the acquirer withdrew, not yet netted in a settlement |
//! | `payouts` | debit | settled into an acquirer payout, not yet paid out to the merchant's bank |
//!
//! The money's path: a capture of A with fee F debits `acquirer_receivable` A and credits
//! `merchant_pending` A−F and `fees` F. A refund R debits `merchant_pending` R and credits
//! `refunds` R (the fee is not returned). When the acquirer settles a balance transaction into
//! a payout, [`Posting::settlement`] moves its net from pending to available and clears its
//! acquirer-side legs into `payouts`; the payout itself debits `merchant_available` and credits
//! `payouts`. So after a clean settlement and payout every account of it is back at zero.

use std::collections::BTreeMap;
use std::fmt;

use super::money::{Amount, Currency};
use super::DomainError;

/// The chart of accounts (see the module table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Account {
    AcquirerReceivable,
    MerchantPending,
    MerchantAvailable,
    Fees,
    Refunds,
    Disputes,
    Payouts,
}

impl Account {
    pub const ALL: [Account; 7] = [
        Account::AcquirerReceivable,
        Account::MerchantPending,
        Account::MerchantAvailable,
        Account::Fees,
        Account::Refunds,
        Account::Disputes,
        Account::Payouts,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Account::AcquirerReceivable => "acquirer_receivable",
            Account::MerchantPending => "merchant_pending",
            Account::MerchantAvailable => "merchant_available",
            Account::Fees => "fees",
            Account::Refunds => "refunds",
            Account::Disputes => "disputes",
            Account::Payouts => "payouts",
        }
    }

    pub fn parse(raw: &str) -> Option<Account> {
        Account::ALL.into_iter().find(|a| a.as_str() == raw)
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What caused a ledger transaction. With the source's id it is the transaction's idempotency
/// key: one posting per (kind, source), so a redelivered command or notification never posts
/// twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PostingKind {
    /// A capture (source: the payment intent).
    Charge,
    /// A succeeded refund (source: the refund).
    Refund,
    /// Money withdrawn for a dispute (source: the dispute).
    DisputeWithdrawal,
    /// Money given back when a dispute is won (source: the dispute).
    DisputeReinstatement,
    /// A balance transaction settled into a payout (source: the balance transaction).
    Settlement,
    /// A payout to the merchant's bank (source: the payout).
    Payout,
    /// A correction (source: whatever the caller names, e.g. a settlement discrepancy).
    Adjustment,
}

impl PostingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PostingKind::Charge => "charge",
            PostingKind::Refund => "refund",
            PostingKind::DisputeWithdrawal => "dispute_withdrawal",
            PostingKind::DisputeReinstatement => "dispute_reinstatement",
            PostingKind::Settlement => "settlement",
            PostingKind::Payout => "payout",
            PostingKind::Adjustment => "adjustment",
        }
    }
}

/// One leg of a posting: positive debits the account, negative credits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub account: Account,
    pub amount: i64,
}

/// A balanced set of entries for one merchant, one currency and one source event. The only
/// constructor checks the balance, so an unbalanced posting cannot exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    merchant_id: String,
    currency: Currency,
    kind: PostingKind,
    source_id: String,
    entries: Vec<Entry>,
}

fn unbalanced(message: String) -> DomainError {
    DomainError::new("ledger_unbalanced", None, message)
}

impl Posting {
    /// Checks and normalizes `legs`: legs on one account are summed into one entry, zero
    /// entries are dropped (in account order, so the same movement always writes the same
    /// rows), and the rest must sum to zero. A posting that moves nothing is refused too.
    pub fn new(
        merchant_id: &str,
        currency: Currency,
        kind: PostingKind,
        source_id: &str,
        legs: &[(Account, i64)],
    ) -> Result<Self, DomainError> {
        let mut by_account: BTreeMap<Account, i128> = BTreeMap::new();
        let mut total: i128 = 0;
        for (account, amount) in legs {
            *by_account.entry(*account).or_default() += i128::from(*amount);
            total += i128::from(*amount);
        }
        if total != 0 {
            return Err(unbalanced(format!(
                "{} {source_id}: debits and credits differ by {total}",
                kind.as_str()
            )));
        }
        let mut entries = Vec::with_capacity(by_account.len());
        for (account, amount) in by_account.into_iter().filter(|(_, a)| *a != 0) {
            let amount = i64::try_from(amount).map_err(|_| {
                unbalanced(format!("{} {source_id}: an entry overflows", kind.as_str()))
            })?;
            entries.push(Entry { account, amount });
        }
        if entries.is_empty() {
            return Err(unbalanced(format!(
                "{} {source_id}: a posting must move money",
                kind.as_str()
            )));
        }
        Ok(Self {
            merchant_id: merchant_id.to_owned(),
            currency,
            kind,
            source_id: source_id.to_owned(),
            entries,
        })
    }

    /// A capture of `amount` costing `fee` (at most the amount, [`crate::fees::FeeSchedule`]).
    pub fn charge(
        merchant_id: &str,
        currency: Currency,
        payment_intent_id: &str,
        amount: Amount,
        fee: Amount,
    ) -> Result<Self, DomainError> {
        let (a, f) = (amount.minor_units(), fee.minor_units());
        Self::new(
            merchant_id,
            currency,
            PostingKind::Charge,
            payment_intent_id,
            &[
                (Account::AcquirerReceivable, a),
                (Account::MerchantPending, -(a - f)),
                (Account::Fees, -f),
            ],
        )
    }

    /// A succeeded refund of `amount`: out of the merchant's pending balance, owed to the
    /// acquirer until the next settlement nets it. The capture's fee stays charged.
    pub fn refund(
        merchant_id: &str,
        currency: Currency,
        refund_id: &str,
        amount: Amount,
    ) -> Result<Self, DomainError> {
        let r = amount.minor_units();
        Self::new(
            merchant_id,
            currency,
            PostingKind::Refund,
            refund_id,
            &[(Account::MerchantPending, r), (Account::Refunds, -r)],
        )
    }

    /// A chargeback of `amount` plus the acquirer's dispute `fee`: out of the merchant's pending
    /// balance, the amount owed to the acquirer (which already took it back from us) and the
    /// fee charged, until a settlement nets them.
    pub fn dispute_withdrawal(
        merchant_id: &str,
        currency: Currency,
        dispute_id: &str,
        amount: Amount,
        fee: Amount,
    ) -> Result<Self, DomainError> {
        let (a, f) = (amount.minor_units(), fee.minor_units());
        Self::new(
            merchant_id,
            currency,
            PostingKind::DisputeWithdrawal,
            dispute_id,
            &[
                (Account::MerchantPending, a + f),
                (Account::Disputes, -a),
                (Account::Fees, -f),
            ],
        )
    }

    /// A won dispute: the disputed amount comes back to the merchant; the fee does not.
    pub fn dispute_reinstatement(
        merchant_id: &str,
        currency: Currency,
        dispute_id: &str,
        amount: Amount,
    ) -> Result<Self, DomainError> {
        let a = amount.minor_units();
        Self::new(
            merchant_id,
            currency,
            PostingKind::DisputeReinstatement,
            dispute_id,
            &[(Account::MerchantPending, -a), (Account::Disputes, a)],
        )
    }

    /// Settles the movement `original` posted (one balance transaction's, whose net sits in
    /// `merchant_pending`) into a payout: the net moves from pending to available, and every
    /// acquirer-side leg is reversed into `payouts`, where the payout posting picks it up.
    /// `source_id` is the balance transaction's id, so each settles once.
    pub fn settlement(original: &Posting, source_id: &str) -> Result<Self, DomainError> {
        let mut legs = Vec::with_capacity(original.entries.len() + 2);
        let mut net: i64 = 0;
        for entry in &original.entries {
            match entry.account {
                // The merchant's net: a credit of `net` to pending becomes one to available.
                Account::MerchantPending => net = -entry.amount,
                Account::MerchantAvailable | Account::Payouts => {
                    return Err(unbalanced(format!(
                        "{source_id}: only a posting into merchant_pending can be settled"
                    )))
                }
                other => legs.push((other, -entry.amount)),
            }
        }
        legs.push((Account::MerchantPending, net));
        legs.push((Account::MerchantAvailable, -net));
        legs.push((Account::Payouts, net));
        Self::new(
            &original.merchant_id,
            original.currency,
            PostingKind::Settlement,
            source_id,
            &legs,
        )
    }

    /// A payout of `amount` to the merchant's bank: out of available, clearing `payouts`.
    pub fn payout(
        merchant_id: &str,
        currency: Currency,
        payout_id: &str,
        amount: i64,
    ) -> Result<Self, DomainError> {
        Self::new(
            merchant_id,
            currency,
            PostingKind::Payout,
            payout_id,
            &[
                (Account::MerchantAvailable, amount),
                (Account::Payouts, -amount),
            ],
        )
    }

    pub fn merchant_id(&self) -> &str {
        &self.merchant_id
    }
    pub fn currency(&self) -> Currency {
        self.currency
    }
    pub fn kind(&self) -> PostingKind {
        self.kind
    }
    pub fn source_id(&self) -> &str {
        &self.source_id
    }
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The signed amount of `account` in this posting (0 when it has no leg there).
    pub fn amount_on(&self, account: Account) -> i64 {
        self.entries
            .iter()
            .filter(|e| e.account == account)
            .map(|e| e.amount)
            .sum()
    }
}

/// The merchant-facing type of a balance transaction (docs/api.md "Balance and fees").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalanceTransactionType {
    Charge,
    Refund,
    Adjustment,
    Payout,
}

impl BalanceTransactionType {
    pub fn as_str(self) -> &'static str {
        match self {
            BalanceTransactionType::Charge => "charge",
            BalanceTransactionType::Refund => "refund",
            BalanceTransactionType::Adjustment => "adjustment",
            BalanceTransactionType::Payout => "payout",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [
            BalanceTransactionType::Charge,
            BalanceTransactionType::Refund,
            BalanceTransactionType::Adjustment,
            BalanceTransactionType::Payout,
        ]
        .into_iter()
        .find(|t| t.as_str() == raw)
    }
}

/// Whether a balance transaction's net is still pending or settled (available).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalanceStatus {
    Pending,
    Available,
}

impl BalanceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BalanceStatus::Pending => "pending",
            BalanceStatus::Available => "available",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "pending" => Some(BalanceStatus::Pending),
            "available" => Some(BalanceStatus::Available),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::parse("usd").unwrap()
    }
    fn amt(v: i64) -> Amount {
        Amount::from_stored(v)
    }

    #[test]
    fn an_unbalanced_or_empty_posting_cannot_be_built() {
        let err = Posting::new(
            "mer_1",
            usd(),
            PostingKind::Adjustment,
            "x",
            &[(Account::Fees, 5), (Account::MerchantPending, -4)],
        )
        .unwrap_err();
        assert_eq!(err.code, "ledger_unbalanced");
        assert!(err.message.contains("differ by 1"), "{}", err.message);
        let empty = Posting::new("mer_1", usd(), PostingKind::Adjustment, "x", &[]);
        assert!(empty.unwrap_err().message.contains("must move money"));
        let zero = Posting::new(
            "mer_1",
            usd(),
            PostingKind::Adjustment,
            "x",
            &[(Account::Fees, 5), (Account::Fees, -5)],
        );
        assert!(zero.is_err());
        let overflow = Posting::new(
            "mer_1",
            usd(),
            PostingKind::Adjustment,
            "x",
            &[
                (Account::Fees, i64::MAX),
                (Account::Fees, i64::MAX),
                (Account::Payouts, i64::MIN),
                (Account::Payouts, i64::MIN),
                (Account::Refunds, 2),
            ],
        );
        assert!(overflow.unwrap_err().message.contains("overflows"));
    }

    #[test]
    fn legs_on_one_account_merge_and_come_in_account_order() {
        let p = Posting::new(
            "mer_1",
            usd(),
            PostingKind::Adjustment,
            "x",
            &[
                (Account::Payouts, 3),
                (Account::Fees, -1),
                (Account::Payouts, -2),
            ],
        )
        .unwrap();
        assert_eq!(
            p.entries(),
            &[
                Entry {
                    account: Account::Fees,
                    amount: -1
                },
                Entry {
                    account: Account::Payouts,
                    amount: 1
                }
            ]
        );
        assert_eq!(
            (p.merchant_id(), p.kind(), p.source_id()),
            ("mer_1", PostingKind::Adjustment, "x")
        );
    }

    #[test]
    fn charge_refund_settlement_and_payout_bring_every_account_back_to_zero() {
        let charge = Posting::charge("mer_1", usd(), "pi_1", amt(1000), amt(59)).unwrap();
        assert_eq!(charge.amount_on(Account::MerchantPending), -941);
        assert_eq!(charge.amount_on(Account::Fees), -59);
        assert_eq!(charge.amount_on(Account::AcquirerReceivable), 1000);
        let refund = Posting::refund("mer_1", usd(), "re_1", amt(400)).unwrap();
        let settle_charge = Posting::settlement(&charge, "txn_1").unwrap();
        let settle_refund = Posting::settlement(&refund, "txn_2").unwrap();
        assert_eq!(settle_charge.kind(), PostingKind::Settlement);
        assert_eq!(settle_charge.amount_on(Account::MerchantAvailable), -941);
        let payout = Posting::payout("mer_1", usd(), "po_1", 541).unwrap();
        let mut sums: BTreeMap<Account, i64> = BTreeMap::new();
        for p in [&charge, &refund, &settle_charge, &settle_refund, &payout] {
            for e in p.entries() {
                *sums.entry(e.account).or_default() += e.amount;
            }
        }
        assert!(sums.values().all(|v| *v == 0), "{sums:?}");
        assert!(Posting::settlement(&payout, "txn_3").is_err());
    }

    #[test]
    fn names_round_trip() {
        for a in Account::ALL {
            assert_eq!(Account::parse(a.as_str()), Some(a));
            assert_eq!(a.to_string(), a.as_str());
        }
        assert_eq!(Account::parse("cash"), None);
        for t in ["charge", "refund", "adjustment", "payout"] {
            assert_eq!(BalanceTransactionType::parse(t).unwrap().as_str(), t);
        }
        assert!(BalanceTransactionType::parse("fee").is_none());
        for s in ["pending", "available"] {
            assert_eq!(BalanceStatus::parse(s).unwrap().as_str(), s);
        }
        assert!(BalanceStatus::parse("paid").is_none());
        for k in [
            PostingKind::Charge,
            PostingKind::Refund,
            PostingKind::DisputeWithdrawal,
            PostingKind::DisputeReinstatement,
            PostingKind::Settlement,
            PostingKind::Payout,
            PostingKind::Adjustment,
        ] {
            assert!(!k.as_str().is_empty());
        }
    }
}
