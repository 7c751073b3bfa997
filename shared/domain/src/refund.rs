//! The refund state machine: `pending` until the acquirer settles it, then `succeeded` or
//! `failed`, both final. Notifications and reconciliation that arrive late or twice ask this
//! module, so nothing ever moves a refund backwards.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::DomainError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    Pending,
    Succeeded,
    Failed,
}

impl RefundStatus {
    pub const ALL: [RefundStatus; 3] = [
        RefundStatus::Pending,
        RefundStatus::Succeeded,
        RefundStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Pending => "pending",
            RefundStatus::Succeeded => "succeeded",
            RefundStatus::Failed => "failed",
        }
    }

    pub fn can_transition(self, to: RefundStatus) -> bool {
        matches!(
            (self, to),
            (
                RefundStatus::Pending,
                RefundStatus::Succeeded | RefundStatus::Failed
            )
        )
    }

    pub fn transition(self, to: RefundStatus) -> Result<RefundStatus, DomainError> {
        if self.can_transition(to) {
            Ok(to)
        } else {
            Err(DomainError::new(
                "invalid_state_transition",
                None,
                format!("A refund in status `{self}` cannot move to `{to}`"),
            ))
        }
    }

    pub fn is_final(self) -> bool {
        !matches!(self, RefundStatus::Pending)
    }
}

impl fmt::Display for RefundStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RefundStatus {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, DomainError> {
        RefundStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                DomainError::new(
                    "parameter_invalid",
                    Some("status".into()),
                    "unknown refund status",
                )
            })
    }
}

/// Why a merchant refunds, as Stripe names it.
pub const REFUND_REASONS: &[&str] = &["duplicate", "fraudulent", "requested_by_customer"];

pub fn parse_reason(raw: Option<String>) -> Result<Option<String>, DomainError> {
    match raw {
        Some(r) if !REFUND_REASONS.contains(&r.as_str()) => Err(DomainError::new(
            "parameter_invalid",
            Some("reason".into()),
            format!("`reason` must be one of {}", REFUND_REASONS.join(", ")),
        )),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn only_pending_moves() {
        use RefundStatus::*;
        for from in RefundStatus::ALL {
            for to in RefundStatus::ALL {
                assert_eq!(
                    from.can_transition(to),
                    from == Pending && to != Pending,
                    "{from} -> {to}"
                );
            }
        }
        assert_eq!(
            Succeeded.transition(Pending).unwrap_err().code,
            "invalid_state_transition"
        );
        assert!(Succeeded.is_final() && Failed.is_final() && !Pending.is_final());
    }

    #[test]
    fn parsing() {
        for s in RefundStatus::ALL {
            assert_eq!(s.as_str().parse::<RefundStatus>().unwrap(), s);
        }
        assert!("refunded".parse::<RefundStatus>().is_err());
        assert_eq!(
            parse_reason(Some("duplicate".into())).unwrap().as_deref(),
            Some("duplicate")
        );
        assert!(parse_reason(Some("because".into())).is_err());
        assert!(parse_reason(None).unwrap().is_none());
    }

    proptest! {
        /// Whatever order settlements arrive in, a refund that left `pending` never returns to it
        /// and never changes its final answer.
        #[test]
        fn settlements_never_move_backwards(choices in proptest::collection::vec(0usize..3, 0..20)) {
            let mut current = RefundStatus::Pending;
            for c in choices {
                if let Ok(next) = current.transition(RefundStatus::ALL[c]) {
                    prop_assert!(!current.is_final());
                    current = next;
                }
            }
        }
    }
}
