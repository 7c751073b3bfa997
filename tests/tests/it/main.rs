//! The integration suite: one binary, every test against real PostgreSQL, NATS JetStream and
//! the acquirer simulator, each with its own database and stream prefix.

mod access;
mod architecture;
mod audit;
mod auth;
mod browser;
mod card_data;
mod chaos;
mod client_secret;
mod cluster;
mod deadlines;
mod disputes;
mod idempotency;
mod idempotency_fencing;
mod intents;
mod ledger;
mod money_paths;
mod ops;
mod payment_methods;
mod pipeline;
mod provider;
mod reconcile;
mod refunds;
mod request_path;
mod roles;
mod sealing;
mod secrecy;
mod security;
mod settlement;
mod three_ds;
mod token_confirm;
mod validation;
mod vault_charges;
mod webhooks;
mod worker_process;
