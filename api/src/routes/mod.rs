pub mod audit;
pub mod balance;
pub mod dispute_evidence;
pub mod disputes;
pub mod ops;
pub mod payment_intents;
pub mod payment_methods;
pub mod provider;
pub mod refunds;
pub mod settlement;
pub mod three_ds;
pub mod webhooks;

/// The groups the API document shows its operations in.
#[derive(poem_openapi::Tags)]
pub enum ApiTags {
    /// Create, confirm, capture and cancel payments.
    PaymentIntents,
    /// Customers' cards and bank accounts, stored from vault tokens (display fields only).
    PaymentMethods,
    /// Give back captured money.
    Refunds,
    /// What the merchant is owed, and every movement of money behind it.
    Balance,
    /// Chargebacks: answer them with evidence, or accept the loss.
    Disputes,
    /// Subscribe endpoints to events and follow their deliveries.
    Webhooks,
    /// What happened: the events webhooks deliver.
    Events,
    /// Every state change and operator action, hash-chained.
    AuditLog,
    /// Signed notifications from the acquirer (no API key).
    Acquirer,
    /// What the acquirer paid out, and how its settlement reports reconciled.
    Payouts,
}
