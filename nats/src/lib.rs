#![forbid(unsafe_code)]
//! The NATS side of paystream: the JetStream topology (streams, subjects, consumer names), the
//! transactional-outbox relay, the generic consume loop every worker runs with its
//! max-deliveries safety net, and the dead-letter
//! library behind `paystream dlq`.
//!
//! Every arrow through here is at-least-once: the relay may publish a row twice (JetStream's
//! duplicate window absorbs it), a worker may see a command twice (handlers are idempotent), and
//! a dead letter may be written twice (the operator sees a duplicate, never a loss).

pub mod consumer;
pub mod dlq;
pub mod health;
pub mod max_deliveries;
pub mod metrics;
pub mod relay;
pub mod topology;

mod backoff;

pub use async_trait::async_trait;
pub use consumer::{ConsumerSpec, DeliveryInfo, Handler, Outcome};
pub use metrics::WorkerMetrics;
pub use topology::{connect, connect_with, NatsError, Stream, Topology};
