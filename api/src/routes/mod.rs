pub mod audit;
pub mod ops;
pub mod payment_intents;
pub mod payment_methods;
pub mod provider;
pub mod refunds;
pub mod webhooks;
