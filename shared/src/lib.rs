//! Everything the paystream processes share: the domain (money, ids, state machines), queue
//! payloads, configuration, telemetry and the persistence helpers that keep the transactional
//! rules (state + audit + outbox in one transaction) in one place.
#![forbid(unsafe_code)]

/// The domain lives in its own crate (`shared/domain`), which cannot depend on sqlx, poem or
/// NATS; it is re-exported here so every process names it the same way.
pub use paystream_domain as domain;
pub use paystream_domain::secret;
/// Logs through the scrubbing writer; its own crate so the simulator can log the same way without
/// depending on the store.
pub use paystream_telemetry as telemetry;

pub mod audit;
pub mod client_secret;
pub mod commands;
pub mod config;
pub mod db;
pub mod ledger;
pub mod nats_settings;
pub mod outbox;
pub mod retry;
pub mod roles;
pub mod settlement_views;
pub mod shutdown;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
pub mod views;
pub mod webhooks;
