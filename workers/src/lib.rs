#![forbid(unsafe_code)]
//! The workers: each step is a library function; each binary is a thin wrapper.
pub mod acquirer;
pub mod confirm;
pub mod deadlines;
pub mod dispute_deadlines;
pub mod dispute_events;
pub mod health;
pub mod provider_events;
pub mod reconcile;
pub mod refund;
pub mod runtime;
pub mod scheduler;
pub mod settlement;
pub mod webhooks;
