//! What the issuer answers for each test card. The numbers are the ones Stripe documents for
//! its test mode (docs/acquirer.md lists them), so the same scenarios work against either.

use paystream_domain::payment_intent::TEST_PAYMENT_METHODS;

/// A refusal by the issuer: final, and answered with HTTP 402.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decline {
    pub code: &'static str,
    pub decline_code: &'static str,
    pub message: &'static str,
}

pub const GENERIC_DECLINE: Decline = Decline {
    code: "card_declined",
    decline_code: "generic_decline",
    message: "The card was declined.",
};

pub const INSUFFICIENT_FUNDS: Decline = Decline {
    code: "card_declined",
    decline_code: "insufficient_funds",
    message: "The card has insufficient funds.",
};

pub const EXPIRED_CARD: Decline = Decline {
    code: "expired_card",
    decline_code: "expired_card",
    message: "The card has expired.",
};

/// A bank debit returned because the account is closed.
pub const ACCOUNT_CLOSED: Decline = Decline {
    code: "account_closed",
    decline_code: "account_closed",
    message: "The bank account has been closed.",
};

/// A bank debit returned for lack of funds.
pub const DEBIT_INSUFFICIENT_FUNDS: Decline = Decline {
    code: "insufficient_funds",
    decline_code: "insufficient_funds",
    message: "The bank account has insufficient funds.",
};

/// What the customer's bank decides about a debit, a while after the acquirer accepted it
/// (docs/acquirer.md): the test accounts Stripe documents for ACH.
pub fn debit_verdict(account_number: &str) -> Result<(), Decline> {
    match account_number {
        "000123456789" => Ok(()),
        "000111111116" => Err(ACCOUNT_CLOSED),
        "000222222227" => Err(DEBIT_INSUFFICIENT_FUNDS),
        _ => Err(ACCOUNT_CLOSED),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The issuer approves. `disputes_later` marks the card whose holder will file a chargeback;
    /// the notification sender reads that flag when it exists.
    Approve {
        disputes_later: bool,
    },
    Decline(Decline),
    /// The issuer wants a 3-D Secure challenge before it decides.
    ChallengeRequired,
    /// The acquirer fails on its side: a 5xx, no decision, nothing recorded.
    ProcessingError,
}

/// The test payment method that stands for a bank account: a debit, settled later.
pub const BANK_TEST_PAYMENT_METHOD: &str = "pm_bank_account";

/// The test card a `pm_card_*` / `pm_bank_account` id stands for.
pub fn number_for_payment_method(payment_method: &str) -> Option<&'static str> {
    TEST_PAYMENT_METHODS
        .iter()
        .find(|(pm, _)| *pm == payment_method)
        .map(|(_, number)| *number)
}

/// The issuer's verdict for a well-formed account number.
///
/// A number that is not one of the test cards is declined (`generic_decline`) rather than
/// approved: test mode must never look as if it accepted a real card.
pub fn verdict(number: &str) -> Verdict {
    match number {
        "4242424242424242" | "5555555555554444" | "000123456789" => Verdict::Approve {
            disputes_later: false,
        },
        "4000000000000259" => Verdict::Approve {
            disputes_later: true,
        },
        "4000000000000002" => Verdict::Decline(GENERIC_DECLINE),
        "4000000000009995" => Verdict::Decline(INSUFFICIENT_FUNDS),
        "4000002760003184" => Verdict::ChallengeRequired,
        "4000000000000119" => Verdict::ProcessingError,
        _ => Verdict::Decline(GENERIC_DECLINE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_test_payment_method_maps_to_a_card_with_a_verdict() {
        let expected = [
            (
                "pm_card_visa",
                Verdict::Approve {
                    disputes_later: false,
                },
            ),
            (
                "pm_card_mastercard",
                Verdict::Approve {
                    disputes_later: false,
                },
            ),
            ("pm_card_chargeDeclined", Verdict::Decline(GENERIC_DECLINE)),
            (
                "pm_card_insufficientFunds",
                Verdict::Decline(INSUFFICIENT_FUNDS),
            ),
            ("pm_card_threeDSecureRequired", Verdict::ChallengeRequired),
            ("pm_card_processingError", Verdict::ProcessingError),
            (
                "pm_card_createDispute",
                Verdict::Approve {
                    disputes_later: true,
                },
            ),
            (
                "pm_bank_account",
                Verdict::Approve {
                    disputes_later: false,
                },
            ),
        ];
        for (pm, want) in expected {
            let number = number_for_payment_method(pm).unwrap();
            assert_eq!(verdict(number), want, "{pm}");
        }
        assert_eq!(expected.len(), TEST_PAYMENT_METHODS.len());
        assert_eq!(number_for_payment_method("pm_card_amex"), None);
    }

    #[test]
    fn debits_settle_by_account() {
        assert_eq!(debit_verdict("000123456789"), Ok(()));
        assert_eq!(debit_verdict("000111111116"), Err(ACCOUNT_CLOSED));
        assert_eq!(debit_verdict("000222222227"), Err(DEBIT_INSUFFICIENT_FUNDS));
        assert_eq!(debit_verdict("123456789"), Err(ACCOUNT_CLOSED));
    }

    #[test]
    fn unknown_numbers_are_declined() {
        assert_eq!(
            verdict("4111111111111111"),
            Verdict::Decline(GENERIC_DECLINE)
        );
    }
}
