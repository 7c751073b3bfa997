pub mod audit;
pub mod ops;
pub mod payment_intents;
pub mod provider;
pub mod refunds;
pub mod webhooks;
