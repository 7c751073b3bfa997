//! What each role may do, as data, in one place: every operation of the API (and the vault's
//! token endpoint) names the permission it needs in [`OPERATIONS`], and [`ROLE_TABLE`] says
//! which permissions each role holds. The API's guard and the vault ask [`Role::permits`];
//! nothing else decides. A test walks every operation of `/openapi.json` and fails, naming
//! it, when one is missing from [`OPERATIONS`], so a new route cannot be left unprotected.
//!
//! To add a route: add its line to [`OPERATIONS`] with the permission it needs (a new
//! permission also gets a line in each role of [`ROLE_TABLE`] that should hold it).

use crate::store::merchants::Role;

/// What an operation needs. Reads and writes are apart so `read_only` can hold only reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    PaymentsRead,
    PaymentsWrite,
    RefundsRead,
    RefundsWrite,
    BalanceRead,
    WebhooksRead,
    WebhooksWrite,
    EventsRead,
    AuditRead,
    DisputesRead,
    DisputesWrite,
    /// Uploading and reading dispute evidence, which support staff handle.
    DisputeEvidence,
    /// Creating, rolling and revoking API keys.
    KeysManage,
    /// Resolving a settlement discrepancy: an operator's (admin's) decision about money.
    SettlementResolve,
    /// Creating vault tokens (`POST /vault/tokens`), what a publishable key exists for.
    Tokenize,
}

/// Every permission that only reads: what `read_only` holds, and what `support` starts from.
const READS: &[Permission] = &[
    Permission::PaymentsRead,
    Permission::RefundsRead,
    Permission::BalanceRead,
    Permission::WebhooksRead,
    Permission::EventsRead,
    Permission::AuditRead,
    Permission::DisputesRead,
];

/// Role -> the permissions it holds. `admin` holds every permission by definition (see
/// [`Role::permits`]), so a permission added later is never out of its reach.
pub const ROLE_TABLE: &[(Role, &[Permission])] = &[
    (Role::Admin, &[]),
    (
        Role::Developer,
        &[
            Permission::PaymentsRead,
            Permission::PaymentsWrite,
            Permission::RefundsRead,
            Permission::RefundsWrite,
            Permission::BalanceRead,
            Permission::WebhooksRead,
            Permission::WebhooksWrite,
            Permission::EventsRead,
            Permission::AuditRead,
            Permission::DisputesRead,
            Permission::DisputesWrite,
            Permission::DisputeEvidence,
            Permission::Tokenize,
        ],
    ),
    (
        Role::Support,
        &[
            Permission::PaymentsRead,
            Permission::RefundsRead,
            Permission::RefundsWrite,
            Permission::BalanceRead,
            Permission::WebhooksRead,
            Permission::EventsRead,
            Permission::AuditRead,
            Permission::DisputesRead,
            Permission::DisputeEvidence,
        ],
    ),
    (Role::ReadOnly, READS),
    (Role::Publishable, &[Permission::Tokenize]),
];

impl Role {
    /// The one check point for what a role may do.
    pub fn permits(self, permission: Permission) -> bool {
        self == Role::Admin
            || ROLE_TABLE
                .iter()
                .any(|(role, held)| *role == self && held.contains(&permission))
    }
}

/// How an operation is admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A merchant key whose role holds this permission.
    Key(Permission),
    /// No merchant key at all: the caller proves itself otherwise (the acquirer's signature,
    /// the 3-D Secure callback's signed token), so no role applies.
    Signed,
}

/// One operation: its method and its path as the OpenAPI document spells it (`{id}` for a
/// path parameter), without the `/api` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
}

impl Operation {
    /// Whether a key of `role` may call this operation; a signed operation takes no key.
    pub fn permitted_to(&self, role: Role) -> bool {
        match self.access {
            Access::Key(permission) => role.permits(permission),
            Access::Signed => false,
        }
    }
}

const fn op(method: &'static str, path: &'static str, permission: Permission) -> Operation {
    Operation {
        method,
        path,
        access: Access::Key(permission),
    }
}

use Permission as P;

/// Every operation of the API, and the permission each one needs.
pub const OPERATIONS: &[Operation] = &[
    op("POST", "/payment-intents", P::PaymentsWrite),
    op("GET", "/payment-intents", P::PaymentsRead),
    op("GET", "/payment-intents/{id}", P::PaymentsRead),
    op("POST", "/payment-intents/{id}/confirm", P::PaymentsWrite),
    op("POST", "/payment-intents/{id}/capture", P::PaymentsWrite),
    op("POST", "/payment-intents/{id}/cancel", P::PaymentsWrite),
    op("POST", "/payment-intents/{id}/refund", P::RefundsWrite),
    op("POST", "/payment-methods", P::PaymentsWrite),
    op("GET", "/payment-methods", P::PaymentsRead),
    op("GET", "/payment-methods/{id}", P::PaymentsRead),
    op("POST", "/payment-methods/{id}/detach", P::PaymentsWrite),
    op("POST", "/refunds", P::RefundsWrite),
    op("GET", "/refunds", P::RefundsRead),
    op("GET", "/refunds/{id}", P::RefundsRead),
    op("GET", "/balance", P::BalanceRead),
    op("GET", "/balance-transactions", P::BalanceRead),
    op("POST", "/webhooks/subscribe", P::WebhooksWrite),
    op("GET", "/webhooks/subscriptions", P::WebhooksRead),
    op("DELETE", "/webhooks/subscriptions/{id}", P::WebhooksWrite),
    op(
        "POST",
        "/webhooks/subscriptions/{id}/rotate-secret",
        P::WebhooksWrite,
    ),
    op("GET", "/webhooks/events", P::WebhooksRead),
    op("GET", "/events", P::EventsRead),
    op("GET", "/events/{id}", P::EventsRead),
    op("POST", "/events/{id}/redeliver", P::WebhooksWrite),
    op("GET", "/audit-log", P::AuditRead),
    op("GET", "/payouts", P::BalanceRead),
    op("GET", "/payouts/{id}", P::BalanceRead),
    op("GET", "/settlement/discrepancies", P::BalanceRead),
    op(
        "POST",
        "/settlement/discrepancies/{id}/resolve",
        P::SettlementResolve,
    ),
    op("GET", "/disputes", P::DisputesRead),
    op("GET", "/disputes/{id}", P::DisputesRead),
    op("GET", "/disputes/{id}/files/{file_id}", P::DisputesRead),
    op("POST", "/disputes/{id}/evidence", P::DisputeEvidence),
    op("POST", "/disputes/{id}/submit", P::DisputesWrite),
    op("POST", "/disputes/{id}/close", P::DisputesWrite),
    Operation {
        method: "POST",
        path: "/provider/webhooks",
        access: Access::Signed,
    },
    Operation {
        method: "GET",
        path: "/payment-intents/{id}/3ds/callback",
        access: Access::Signed,
    },
];

/// The client-side calls of a payment intent: the only API operations a publishable key may
/// make, and only with that intent's `clientSecret` (checked by the handler, which answers 404
/// to a wrong one). Every other operation is 403 `role_not_allowed` to a publishable key. These
/// and [`VAULT_TOKENIZE`] are also the only operations that answer CORS.
pub const CLIENT_SIDE: &[(&str, &str)] = &[
    ("GET", "/payment-intents/{id}"),
    ("POST", "/payment-intents/{id}/confirm"),
];

/// Whether `o` is one of [`CLIENT_SIDE`].
pub fn is_client_side(o: &Operation) -> bool {
    CLIENT_SIDE
        .iter()
        .any(|(m, p)| o.method.eq_ignore_ascii_case(m) && o.path == *p)
}

/// Whether a key of `role` may call `o`: its permission, or, for a publishable key, one of
/// the client-side calls (whose client secret the handler checks).
pub fn admits(role: Role, o: &Operation) -> bool {
    o.permitted_to(role) || (role == Role::Publishable && is_client_side(o))
}

/// The vault's token endpoint, outside the API's document but under the same table.
pub const VAULT_TOKENIZE: Operation = op("POST", "/vault/tokens", P::Tokenize);

/// The operation a request is for: `path` is the concrete path (`/payment-intents/pi_1`),
/// without the `/api` prefix. A literal segment outranks a parameter, so a fixed path is
/// never taken for a parameterised one.
pub fn operation(method: &str, path: &str) -> Option<&'static Operation> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    OPERATIONS
        .iter()
        .filter(|o| o.method.eq_ignore_ascii_case(method))
        .filter(|o| {
            let pattern: Vec<&str> = o.path.split('/').collect();
            pattern.len() == segments.len()
                && pattern.iter().zip(&segments).all(|(p, s)| {
                    if p.starts_with('{') {
                        !s.is_empty()
                    } else {
                        p == s
                    }
                })
        })
        .min_by_key(|o| o.path.matches('{').count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_has_a_line_and_admin_holds_everything() {
        for role in Role::ALL {
            assert!(
                ROLE_TABLE.iter().any(|(r, _)| *r == role),
                "{role:?} has no line in ROLE_TABLE"
            );
        }
        assert!(Role::Admin.permits(P::KeysManage));
        assert!(!Role::Developer.permits(P::KeysManage));
        assert!(Role::Developer.permits(P::WebhooksWrite));
        assert!(!Role::Support.permits(P::WebhooksWrite) && Role::Support.permits(P::RefundsWrite));
        assert!(Role::Support.permits(P::DisputeEvidence));
        assert!(READS.iter().all(|p| Role::ReadOnly.permits(*p)));
        assert!(!Role::ReadOnly.permits(P::PaymentsWrite));
        assert!(
            Role::Publishable.permits(P::Tokenize) && !Role::Publishable.permits(P::PaymentsRead)
        );
        assert!(VAULT_TOKENIZE.permitted_to(Role::Publishable));
        assert!(!VAULT_TOKENIZE.permitted_to(Role::Support));
        assert!(!operation("POST", "/provider/webhooks")
            .unwrap()
            .permitted_to(Role::Admin));
    }

    #[test]
    fn a_publishable_key_may_make_the_client_side_calls_and_nothing_else() {
        for o in OPERATIONS {
            let client_side = CLIENT_SIDE.contains(&(o.method, o.path));
            assert_eq!(
                admits(Role::Publishable, o),
                client_side,
                "{} {}",
                o.method,
                o.path
            );
            assert_eq!(is_client_side(o), client_side);
        }
        for (m, p) in CLIENT_SIDE {
            let o = operation(m, &p.replace("{id}", "pi_1")).expect("a listed operation");
            assert!(admits(Role::Developer, o) && admits(Role::Publishable, o));
        }
    }

    #[test]
    fn read_only_holds_only_what_get_operations_need() {
        for o in OPERATIONS {
            if let Access::Key(p) = o.access {
                assert_eq!(
                    Role::ReadOnly.permits(p),
                    o.method == "GET",
                    "{} {}",
                    o.method,
                    o.path
                );
            }
        }
    }

    #[test]
    fn requests_find_their_operation() {
        let found = |m, p| operation(m, p).map(|o| o.path);
        assert_eq!(found("GET", "/payment-intents"), Some("/payment-intents"));
        assert_eq!(found("GET", "/payment-intents/"), Some("/payment-intents"));
        assert_eq!(
            found("GET", "/payment-intents/pi_1"),
            Some("/payment-intents/{id}")
        );
        assert_eq!(
            found("post", "/payment-intents/pi_1/confirm"),
            Some("/payment-intents/{id}/confirm")
        );
        assert_eq!(found("DELETE", "/payment-intents/pi_1"), None);
        assert_eq!(found("POST", "/payment-intents//confirm"), None);
        assert_eq!(found("GET", "/nothing"), None);
        assert_eq!(
            operation("GET", "/payment-intents/pi_1/3ds/callback").map(|o| o.access),
            Some(Access::Signed)
        );
    }
}
