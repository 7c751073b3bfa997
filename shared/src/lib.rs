//! Everything the paystream processes share: the domain (money, ids, state machines), queue
//! payloads, configuration, telemetry and the persistence helpers that keep the transactional
//! rules (state + audit + outbox in one transaction) in one place.
#![forbid(unsafe_code)]

pub mod audit;
pub mod change;
pub mod commands;
pub mod config;
pub mod db;
pub mod domain;
pub mod outbox;
pub mod retry;
pub mod secret;
pub mod shutdown;
pub mod store;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod views;
pub mod webhooks;
