//! The webhook pipeline's shared pieces that are not domain values: the queue payload of a
//! delivery command, the views clients see (subscriptions, deliveries, events), and the
//! encryption that keeps signing secrets unreadable at rest.
//!
//! The flow: an event row and its `evt.<type>` outbox row commit with the change they
//! announce; the webhook worker's fan-out consumer turns each event into one delivery row per
//! matching subscription plus a `cmd.webhook.deliver` outbox row, in one transaction; its
//! delivery consumer signs and POSTs, recording every attempt.

pub mod queue;
pub mod rotation;
pub mod secret_box;
pub mod views;
