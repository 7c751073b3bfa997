//! Integration tests of the nats crate against the real NATS (`NATS_URL`) and PostgreSQL
//! (`DATABASE_URL`'s server). One binary, so the helpers compile once; every test has its own
//! stream prefix (and database), so they run in parallel.

mod consumer;
mod dlq;
mod helpers;
mod relay;
mod restart;
mod topology;
