//! Prefixed, opaque identifiers (`pi_...`, `evt_...`). The random part is a UUIDv7 in hex, so
//! ids sort roughly by creation time and reveal nothing else.

use uuid::Uuid;

use super::DomainError;

/// The kinds of object paystream names, each with its public prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Merchant,
    ApiKey,
    PaymentIntent,
    PaymentMethod,
    Refund,
    Event,
    WebhookSubscription,
    WebhookDelivery,
    Dispute,
    Audit,
    /// A merchant-facing balance transaction.
    BalanceTransaction,
    /// A double-entry ledger transaction (internal; never shown to merchants).
    LedgerTransaction,
    Payout,
    SettlementDiscrepancy,
    /// A dispute's evidence file.
    File,
}

impl IdKind {
    pub fn prefix(self) -> &'static str {
        match self {
            IdKind::Merchant => "mer_",
            IdKind::ApiKey => "key_",
            IdKind::PaymentIntent => "pi_",
            IdKind::PaymentMethod => "pm_",
            IdKind::Refund => "re_",
            IdKind::Event => "evt_",
            IdKind::WebhookSubscription => "we_",
            IdKind::WebhookDelivery => "wd_",
            IdKind::Dispute => "dp_",
            IdKind::Audit => "aud_",
            IdKind::BalanceTransaction => "txn_",
            IdKind::LedgerTransaction => "ltx_",
            IdKind::Payout => "po_",
            IdKind::SettlementDiscrepancy => "sd_",
            IdKind::File => "file_",
        }
    }

    /// A fresh id of this kind.
    pub fn generate(self) -> String {
        format!("{}{}", self.prefix(), Uuid::now_v7().simple())
    }

    /// Checks the shape of an id a client sent. Ids are opaque, so this only refuses what can
    /// never be ours (wrong prefix, odd characters, absurd length); existence is the caller's job.
    pub fn parse(self, raw: &str, param: &str) -> Result<String, DomainError> {
        let ok = raw.starts_with(self.prefix())
            && raw.len() <= 64
            && raw.len() > self.prefix().len()
            && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if ok {
            Ok(raw.to_owned())
        } else {
            Err(DomainError::new(
                "resource_missing",
                Some(param.to_owned()),
                format!(
                    "No such object: `{param}` must be an id starting with `{}`",
                    self.prefix()
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_carry_their_prefix_and_are_unique() {
        let a = IdKind::PaymentIntent.generate();
        let b = IdKind::PaymentIntent.generate();
        assert!(a.starts_with("pi_"));
        assert_ne!(a, b);
        assert_eq!(IdKind::PaymentIntent.parse(&a, "id").unwrap(), a);
    }

    #[test]
    fn parse_refuses_foreign_prefixes_and_junk() {
        assert!(IdKind::PaymentIntent.parse("re_123", "id").is_err());
        assert!(IdKind::PaymentIntent.parse("pi_", "id").is_err());
        assert!(IdKind::PaymentIntent.parse("pi_abc'--", "id").is_err());
        assert!(IdKind::PaymentIntent
            .parse(&format!("pi_{}", "a".repeat(80)), "id")
            .is_err());
        let err = IdKind::Refund.parse("x", "refund").unwrap_err();
        assert_eq!(err.param.as_deref(), Some("refund"));
    }

    #[test]
    fn every_kind_has_a_distinct_prefix() {
        let kinds = [
            IdKind::Merchant,
            IdKind::ApiKey,
            IdKind::PaymentIntent,
            IdKind::PaymentMethod,
            IdKind::Refund,
            IdKind::Event,
            IdKind::WebhookSubscription,
            IdKind::WebhookDelivery,
            IdKind::Dispute,
            IdKind::Audit,
            IdKind::BalanceTransaction,
            IdKind::LedgerTransaction,
            IdKind::Payout,
            IdKind::SettlementDiscrepancy,
            IdKind::File,
        ];
        let mut prefixes: Vec<_> = kinds.iter().map(|k| k.prefix()).collect();
        prefixes.sort_unstable();
        prefixes.dedup();
        assert_eq!(prefixes.len(), kinds.len());
    }
}
