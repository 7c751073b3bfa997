//! The dispute state machine and the values a dispute is made of.
//!
//! ```text
//! needs_response ──submit──▶ under_review ──acquirer──▶ won | lost
//!        │
//!        └──close / deadline passed / acquirer──▶ lost
//! ```
//! `won` and `lost` are final. Nothing moves backwards: a late or repeated notification asks
//! [`DisputeStatus::can_transition`] and is ignored when the answer is no.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::DomainError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisputeStatus {
    NeedsResponse,
    UnderReview,
    Won,
    Lost,
}

impl DisputeStatus {
    pub const ALL: [DisputeStatus; 4] = [
        DisputeStatus::NeedsResponse,
        DisputeStatus::UnderReview,
        DisputeStatus::Won,
        DisputeStatus::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DisputeStatus::NeedsResponse => "needs_response",
            DisputeStatus::UnderReview => "under_review",
            DisputeStatus::Won => "won",
            DisputeStatus::Lost => "lost",
        }
    }

    pub fn can_transition(self, to: DisputeStatus) -> bool {
        use DisputeStatus as S;
        matches!(
            (self, to),
            (S::NeedsResponse, S::UnderReview | S::Lost | S::Won)
                | (S::UnderReview, S::Won | S::Lost)
        )
    }

    pub fn transition(self, to: DisputeStatus) -> Result<DisputeStatus, DomainError> {
        if self.can_transition(to) {
            Ok(to)
        } else {
            Err(DomainError::new(
                "invalid_state_transition",
                None,
                format!("A dispute in status `{self}` cannot move to `{to}`"),
            ))
        }
    }

    /// Whether the dispute still holds its charge hostage (refunds are refused meanwhile).
    pub fn is_open(self) -> bool {
        matches!(
            self,
            DisputeStatus::NeedsResponse | DisputeStatus::UnderReview
        )
    }

    pub fn is_final(self) -> bool {
        !self.is_open()
    }
}

impl fmt::Display for DisputeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DisputeStatus {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, DomainError> {
        DisputeStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                DomainError::new(
                    "parameter_invalid",
                    Some("status".into()),
                    "`status` must be one of needs_response, under_review, won, lost",
                )
            })
    }
}

/// Why the cardholder disputes: one of Stripe's reasons.
pub const REASONS: [&str; 8] = [
    "fraudulent",
    "duplicate",
    "product_not_received",
    "product_unacceptable",
    "subscription_canceled",
    "credit_not_processed",
    "unrecognized",
    "general",
];

/// A reason the acquirer sent; anything we do not know is `general`, as Stripe files it.
pub fn reason_of(raw: &str) -> &'static str {
    REASONS.into_iter().find(|r| *r == raw).unwrap_or("general")
}

/// The text fields of dispute evidence (docs/api.md "Disputes"), as form field names.
pub const TEXT_FIELDS: [&str; 6] = [
    "productDescription",
    "customerCommunication",
    "customerEmailAddress",
    "shippingTrackingNumber",
    "refundPolicy",
    "uncategorizedText",
];

/// The form field names files may be sent under; each is the file's `purpose`.
pub const FILE_PURPOSES: [&str; 4] = [
    "receipt",
    "shippingDocumentation",
    "customerCommunicationFile",
    "uncategorizedFile",
];

/// Longest text field accepted (Stripe allows 150 000 characters in total; one field at 20 000
/// keeps six of them under that).
pub const MAX_TEXT_CHARS: usize = 20_000;
/// Largest evidence file.
pub const MAX_FILE_BYTES: usize = 5 * 1024 * 1024;
/// Most files a dispute may hold.
pub const MAX_FILES: usize = 8;

/// What a file's first bytes say it is; only these three are accepted as evidence.
pub fn sniff(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(b"%PDF-") {
        Some("application/pdf")
    } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_machine_never_moves_backwards() {
        use DisputeStatus as S;
        for from in S::ALL {
            for to in S::ALL {
                let allowed = from.can_transition(to);
                assert_eq!(allowed, from.transition(to).is_ok());
                if from.is_final() || from == to {
                    assert!(!allowed, "{from} -> {to}");
                }
            }
            assert_eq!(from.as_str().parse::<S>().unwrap(), from);
            assert_eq!(from.to_string(), from.as_str());
        }
        assert!(S::NeedsResponse.can_transition(S::UnderReview));
        assert!(S::UnderReview.can_transition(S::Won));
        assert!(!S::UnderReview.can_transition(S::NeedsResponse));
        assert!(S::NeedsResponse.is_open() && S::UnderReview.is_open());
        assert!("open".parse::<S>().is_err());
    }

    #[test]
    fn reasons_and_content_sniffing() {
        assert_eq!(reason_of("duplicate"), "duplicate");
        assert_eq!(reason_of("something_new"), "general");
        assert_eq!(sniff(b"%PDF-1.7\n"), Some("application/pdf"));
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), Some("image/png"));
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("image/jpeg"));
        assert_eq!(sniff(b"<html><body>"), None);
        assert_eq!(sniff(b""), None);
    }
}
