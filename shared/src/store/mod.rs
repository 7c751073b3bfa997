//! Persistence shared by the API and the workers. Every change to an object goes through its
//! store function, which asks the object's state machine, makes a guarded update, and writes
//! the audit entry and the outbox rows in the caller's transaction.

pub mod audit_log;
pub mod balance_transactions;
pub mod change;
pub mod disputes;
pub mod events;
pub mod history;
pub mod idempotency_keys;
pub mod intent_deadlines;
pub mod ledger;
pub mod merchants;
pub mod outbox;
mod pages;
pub mod payment_intents;
pub mod payment_methods;
pub mod payouts;
pub mod provider_events;
pub mod refunds;
pub mod settlement_discrepancies;
pub mod settlement_reports;
pub mod webhooks;

use crate::domain::DomainError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state machine refused the move (a 409 for API callers).
    #[error(transparent)]
    InvalidTransition(DomainError),
    /// Somebody else moved the object first: the guarded update matched no row.
    #[error("{object} {id} changed concurrently; it is no longer `{expected}`")]
    Conflict {
        object: &'static str,
        id: String,
        expected: String,
    },
    /// The caller asked for something the data does not allow (a 400 for API callers).
    #[error(transparent)]
    Rejected(DomainError),
    #[error("{0} not found")]
    NotFound(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// A stored row no longer parses into a domain value: data corruption, never a caller error.
    #[error("corrupt row for {id}: {reason}")]
    Corrupt { id: String, reason: String },
}
