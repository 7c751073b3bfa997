//! The ledger's tables: `ledger_transactions`, their `ledger_entries` and the running balances
//! in `ledger_accounts`, written together by [`post`] and never apart (one posting is one
//! statement), so they are one store module. Entries and transactions are append-only in the
//! database itself.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use super::StoreError;
use crate::domain::ids::IdKind;
use crate::domain::ledger::{Account, Posting, PostingKind};
use crate::domain::money::Currency;

/// Writes `posting` in the caller's transaction: the ledger transaction, its entries and the
/// accounts' running balances, in one statement. Idempotent per (kind, source): when that
/// source already posted, nothing is written and the answer is `None`; otherwise it is the new
/// ledger transaction's id.
///
/// A concurrent second posting of the same source waits on the first one's unique key and then
/// writes nothing. Accounts are updated in the posting's account order, the same for every
/// posting, so two postings to the same accounts never deadlock on each other. The balances
/// go to the slot of the posting's source (`ledger_slot`, migration 0028): postings of one
/// merchant from different sources mostly touch different rows, instead of all waiting on the
/// one row lock of each account until the holder's commit is flushed.
pub async fn post(
    conn: &mut PgConnection,
    posting: &Posting,
) -> Result<Option<String>, StoreError> {
    let (accounts, amounts): (Vec<&str>, Vec<i64>) = posting
        .entries()
        .iter()
        .map(|e| (e.account.as_str(), e.amount))
        .unzip();
    let id: Option<String> = sqlx::query_scalar(
        "WITH txn AS (
            INSERT INTO ledger_transactions (id, merchant_id, currency, kind, source_id, created_at)
            VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (kind, source_id) DO NOTHING
            RETURNING id
         ), legs AS (
            SELECT l.account, l.amount, l.n
            FROM UNNEST($7::text[], $8::bigint[]) WITH ORDINALITY AS l(account, amount, n)
         ), entries AS (
            INSERT INTO ledger_entries (transaction_id, merchant_id, currency, account, amount)
            SELECT txn.id, $2, $3, legs.account, legs.amount FROM txn, legs ORDER BY legs.n
         ), balances AS (
            INSERT INTO ledger_accounts AS a (merchant_id, currency, account, slot, balance)
            SELECT $2, $3, legs.account, ledger_slot($5), legs.amount FROM txn, legs ORDER BY legs.n
            ON CONFLICT (merchant_id, currency, account, slot)
            DO UPDATE SET balance = a.balance + EXCLUDED.balance
         )
         SELECT id FROM txn",
    )
    .bind(IdKind::LedgerTransaction.generate())
    .bind(posting.merchant_id())
    .bind(posting.currency().code())
    .bind(posting.kind().as_str())
    .bind(posting.source_id())
    .bind(crate::domain::now())
    .bind(&accounts)
    .bind(&amounts)
    .fetch_optional(conn)
    .await?;
    Ok(id)
}

/// A stored ledger transaction with its entries.
#[derive(Debug, Clone)]
pub struct StoredPosting {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub posting: Posting,
}

#[derive(sqlx::FromRow)]
struct EntryRow {
    id: String,
    merchant_id: String,
    currency: String,
    kind: String,
    source_id: String,
    created_at: DateTime<Utc>,
    account: String,
    amount: i64,
}

/// The posting a source made, by ledger transaction id. A stored posting that no longer
/// balances (edited behind the triggers' back) is [`StoreError::Corrupt`].
pub async fn get<'e>(
    db: impl PgExecutor<'e>,
    ledger_transaction_id: &str,
) -> Result<Option<StoredPosting>, StoreError> {
    let rows = sqlx::query_as::<_, EntryRow>(
        "SELECT t.id, t.merchant_id, t.currency, t.kind, t.source_id, t.created_at, e.account, e.amount
         FROM ledger_transactions t JOIN ledger_entries e ON e.transaction_id = t.id
         WHERE t.id = $1 ORDER BY e.seq",
    )
    .bind(ledger_transaction_id)
    .fetch_all(db)
    .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let corrupt = |reason: String| StoreError::Corrupt {
        id: ledger_transaction_id.to_owned(),
        reason,
    };
    let currency = Currency::parse(&first.currency).map_err(|e| corrupt(e.message))?;
    let kind = parse_kind(&first.kind).ok_or_else(|| corrupt(format!("kind {}", first.kind)))?;
    let mut legs = Vec::with_capacity(rows.len());
    for r in &rows {
        let account =
            Account::parse(&r.account).ok_or_else(|| corrupt(format!("account {}", r.account)))?;
        legs.push((account, r.amount));
    }
    let posting = Posting::new(&first.merchant_id, currency, kind, &first.source_id, &legs)
        .map_err(|e| corrupt(e.message))?;
    Ok(Some(StoredPosting {
        id: first.id.clone(),
        created_at: first.created_at,
        posting,
    }))
}

fn parse_kind(raw: &str) -> Option<PostingKind> {
    [
        PostingKind::Charge,
        PostingKind::Refund,
        PostingKind::DisputeWithdrawal,
        PostingKind::DisputeReinstatement,
        PostingKind::Settlement,
        PostingKind::Payout,
        PostingKind::Adjustment,
    ]
    .into_iter()
    .find(|k| k.as_str() == raw)
}

/// Whether `source_id` already posted a transaction of `kind`.
pub async fn posted<'e>(
    db: impl PgExecutor<'e>,
    kind: PostingKind,
    source_id: &str,
) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM ledger_transactions WHERE kind = $1 AND source_id = $2)",
    )
    .bind(kind.as_str())
    .bind(source_id)
    .fetch_one(db)
    .await?)
}

/// A merchant's running account balances: currency code -> account -> signed balance.
pub async fn balances<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
) -> Result<BTreeMap<String, BTreeMap<Account, i64>>, StoreError> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT currency, account, SUM(balance)::bigint FROM ledger_accounts WHERE merchant_id = $1
         GROUP BY currency, account",
    )
    .bind(merchant_id)
    .fetch_all(db)
    .await?;
    let mut out: BTreeMap<String, BTreeMap<Account, i64>> = BTreeMap::new();
    for (currency, account, balance) in rows {
        let account = Account::parse(&account).ok_or_else(|| StoreError::Corrupt {
            id: format!("{merchant_id}/{currency}"),
            reason: format!("unknown account {account}"),
        })?;
        out.entry(currency).or_default().insert(account, balance);
    }
    Ok(out)
}

/// The first ledger transaction whose entries do not sum to zero, with that sum.
pub async fn first_unbalanced<'e>(
    db: impl PgExecutor<'e>,
) -> Result<Option<(String, i64)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT t.id, COALESCE(SUM(e.amount), 0)::bigint
         FROM ledger_transactions t LEFT JOIN ledger_entries e ON e.transaction_id = t.id
         GROUP BY t.id HAVING COALESCE(SUM(e.amount), 0) <> 0 OR COUNT(e.seq) = 0
         ORDER BY t.id LIMIT 1",
    )
    .fetch_optional(db)
    .await?)
}

/// An entry whose merchant or currency differs from its transaction's: such a posting would
/// balance in total and still move money between merchants or currencies.
pub async fn first_misfiled_entry<'e>(
    db: impl PgExecutor<'e>,
) -> Result<Option<(String, i64)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT t.id, e.seq FROM ledger_entries e JOIN ledger_transactions t ON t.id = e.transaction_id
         WHERE e.merchant_id <> t.merchant_id OR e.currency <> t.currency
         ORDER BY e.seq LIMIT 1",
    )
    .fetch_optional(db)
    .await?)
}

/// The first account whose running balance differs from the sum of its entries (including
/// entries whose account has no balance row): (merchant, currency, account, balance, sum).
pub async fn first_drifted_account<'e>(
    db: impl PgExecutor<'e>,
) -> Result<Option<(String, String, String, i64, i64)>, StoreError> {
    Ok(sqlx::query_as(
        "WITH sums AS (
            SELECT merchant_id, currency, account, SUM(amount)::bigint AS total
            FROM ledger_entries GROUP BY merchant_id, currency, account
         ), accounts AS (
            SELECT merchant_id, currency, account, SUM(balance)::bigint AS balance
            FROM ledger_accounts GROUP BY merchant_id, currency, account
         )
         SELECT COALESCE(a.merchant_id, s.merchant_id), COALESCE(a.currency, s.currency),
                COALESCE(a.account, s.account), COALESCE(a.balance, 0), COALESCE(s.total, 0)
         FROM accounts a
         FULL JOIN sums s USING (merchant_id, currency, account)
         WHERE COALESCE(a.balance, 0) <> COALESCE(s.total, 0)
         ORDER BY 1, 2, 3 LIMIT 1",
    )
    .fetch_optional(db)
    .await?)
}

/// The first payment intent whose ledger disagrees with it: what the ledger says it captured
/// (its charge posting's receivable leg) and refunded (its refund postings), against the
/// intent's `amount_received` and `amount_refunded`. Answers (intent, what differs).
pub async fn first_intent_mismatch<'e>(
    db: impl PgExecutor<'e>,
) -> Result<Option<(String, String)>, StoreError> {
    Ok(sqlx::query_as(
        "WITH captured AS (
            SELECT t.source_id AS intent_id, SUM(e.amount)::bigint AS amount
            FROM ledger_transactions t JOIN ledger_entries e ON e.transaction_id = t.id
            WHERE t.kind = 'charge' AND e.account = 'acquirer_receivable'
            GROUP BY t.source_id
         ), refunded AS (
            SELECT r.payment_intent_id AS intent_id, SUM(-e.amount)::bigint AS amount
            FROM ledger_transactions t
            JOIN ledger_entries e ON e.transaction_id = t.id AND e.account = 'refunds'
            JOIN refunds r ON r.id = t.source_id
            WHERE t.kind = 'refund'
            GROUP BY r.payment_intent_id
         ), refunds_succeeded AS (
            SELECT payment_intent_id AS intent_id, SUM(amount)::bigint AS amount
            FROM refunds WHERE status = 'succeeded' GROUP BY payment_intent_id
         )
         SELECT pi.id,
                format('captured %s, refunded %s (succeeded refunds %s); the ledger has captured %s, refunded %s',
                       pi.amount_received, pi.amount_refunded, COALESCE(rs.amount, 0),
                       COALESCE(c.amount, 0), COALESCE(rf.amount, 0))
         FROM payment_intents pi
         LEFT JOIN captured c ON c.intent_id = pi.id
         LEFT JOIN refunded rf ON rf.intent_id = pi.id
         LEFT JOIN refunds_succeeded rs ON rs.intent_id = pi.id
         WHERE pi.amount_received <> COALESCE(c.amount, 0)
            OR pi.amount_refunded <> COALESCE(rf.amount, 0)
            OR COALESCE(rs.amount, 0) <> COALESCE(rf.amount, 0)
         ORDER BY pi.id LIMIT 1",
    )
    .fetch_optional(db)
    .await?)
}
