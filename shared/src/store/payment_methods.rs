//! Stored payment methods (`payment_methods`): the vault's reference to a card or bank account
//! and the display fields the vault returned when the token was consumed. Numbers never reach
//! this table; the vault alone holds them. Create and detach are audited in the statement
//! that writes the row (`crate::change`).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use super::change::{self, Change};
use super::StoreError;
use crate::audit::Actor;
use crate::views::{BankAccountView, CardView, PaymentMethodType, PaymentMethodView};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentMethod {
    pub id: String,
    pub merchant_id: String,
    pub method_type: PaymentMethodType,
    pub customer_id: Option<String>,
    /// The vault's record id, named in forwards; never shown to merchants.
    pub vault_ref: String,
    pub card: Option<CardView>,
    pub bank_account: Option<BankAccountView>,
    pub created_at: DateTime<Utc>,
    pub detached_at: Option<DateTime<Utc>>,
}

impl PaymentMethod {
    /// Builds a new, attached method from what the vault's consume answered: `type`,
    /// `vaultRef` and the display fields under `card` or `bankAccount`. `None` when the
    /// answer lacks any of them.
    pub fn from_vault(
        id: String,
        merchant_id: &str,
        customer_id: &str,
        consumed: &serde_json::Value,
        created_at: DateTime<Utc>,
    ) -> Option<Self> {
        let method_type = PaymentMethodType::parse(consumed["type"].as_str()?)?;
        let vault_ref = consumed["vaultRef"].as_str()?.to_owned();
        let (card, bank_account) = match method_type {
            PaymentMethodType::Card => (
                Some(serde_json::from_value(consumed["card"].clone()).ok()?),
                None,
            ),
            PaymentMethodType::BankAccount => (
                None,
                Some(serde_json::from_value(consumed["bankAccount"].clone()).ok()?),
            ),
        };
        Some(PaymentMethod {
            id,
            merchant_id: merchant_id.to_owned(),
            method_type,
            customer_id: Some(customer_id.to_owned()),
            vault_ref,
            card,
            bank_account,
            created_at,
            detached_at: None,
        })
    }

    pub fn view(&self) -> PaymentMethodView {
        PaymentMethodView {
            id: self.id.clone(),
            method_type: self.method_type,
            customer_id: self.customer_id.clone(),
            card: self.card.clone(),
            bank_account: self.bank_account.clone(),
            created_at: self.created_at,
            detached_at: self.detached_at,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.view()).unwrap_or_default()
    }

    fn display(&self) -> serde_json::Value {
        match (&self.card, &self.bank_account) {
            (Some(card), _) => serde_json::to_value(card).unwrap_or_default(),
            (_, Some(bank)) => serde_json::to_value(bank).unwrap_or_default(),
            _ => serde_json::Value::Null,
        }
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    merchant_id: String,
    #[sqlx(rename = "type")]
    method_type: String,
    customer_id: Option<String>,
    vault_ref: String,
    display: serde_json::Value,
    created_at: DateTime<Utc>,
    detached_at: Option<DateTime<Utc>>,
}

impl TryFrom<Row> for PaymentMethod {
    type Error = StoreError;

    fn try_from(r: Row) -> Result<Self, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            id: r.id.clone(),
            reason,
        };
        let method_type = PaymentMethodType::parse(&r.method_type)
            .ok_or_else(|| corrupt(format!("unknown type {}", r.method_type)))?;
        let (card, bank_account) = match method_type {
            PaymentMethodType::Card => (
                Some(
                    serde_json::from_value(r.display.clone())
                        .map_err(|e| corrupt(e.to_string()))?,
                ),
                None,
            ),
            PaymentMethodType::BankAccount => (
                None,
                Some(
                    serde_json::from_value(r.display.clone())
                        .map_err(|e| corrupt(e.to_string()))?,
                ),
            ),
        };
        Ok(PaymentMethod {
            id: r.id,
            merchant_id: r.merchant_id,
            method_type,
            customer_id: r.customer_id,
            vault_ref: r.vault_ref,
            card,
            bank_account,
            created_at: r.created_at,
            detached_at: r.detached_at,
        })
    }
}

const COLUMNS: &str =
    "id, merchant_id, type, customer_id, vault_ref, display, created_at, detached_at";

/// Inserts a new method with its `payment_method.created` audit entry, in one statement.
pub async fn insert(
    conn: &mut PgConnection,
    pm: &PaymentMethod,
    actor: &Actor,
) -> Result<(), StoreError> {
    let change = Change::new(
        &pm.merchant_id,
        "payment_method",
        &pm.id,
        "payment_method.created",
        actor,
        None,
        pm.to_json(),
    );
    let sql = Change::sql(
        "changed AS (
            INSERT INTO payment_methods (id, merchant_id, type, customer_id, vault_ref, display, created_at)
            VALUES ($15, $16, $17, $18, $19, $20, $21)
            RETURNING 1)",
    );
    let query = change
        .bind(sqlx::query(&sql))
        .bind(&pm.id)
        .bind(&pm.merchant_id)
        .bind(pm.method_type.as_str())
        .bind(&pm.customer_id)
        .bind(&pm.vault_ref)
        .bind(pm.display())
        .bind(pm.created_at);
    change::apply(conn, query).await?;
    Ok(())
}

/// Detaches an attached method (its customer becomes `null`) with its `payment_method.detached`
/// audit entry. The update is guarded on `detached_at IS NULL`, so of two concurrent detaches
/// one wins and the other gets [`StoreError::Conflict`].
pub async fn detach(
    conn: &mut PgConnection,
    pm: &PaymentMethod,
    actor: &Actor,
) -> Result<PaymentMethod, StoreError> {
    let detached = PaymentMethod {
        customer_id: None,
        detached_at: Some(crate::domain::now()),
        ..pm.clone()
    };
    let change = Change::new(
        &pm.merchant_id,
        "payment_method",
        &pm.id,
        "payment_method.detached",
        actor,
        Some(pm.to_json()),
        detached.to_json(),
    );
    let sql = Change::sql(
        "changed AS (
            UPDATE payment_methods SET customer_id = NULL, detached_at = $17
            WHERE id = $15 AND merchant_id = $16 AND detached_at IS NULL
            RETURNING 1)",
    );
    let query = change
        .bind(sqlx::query(&sql))
        .bind(&pm.id)
        .bind(&pm.merchant_id)
        .bind(detached.detached_at);
    if !change::apply(conn, query).await? {
        return Err(StoreError::Conflict {
            object: "payment_method",
            id: pm.id.clone(),
            expected: "attached".into(),
        });
    }
    Ok(detached)
}

/// A method of `merchant_id`; another merchant's is `None`, as an unknown one.
pub async fn get<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
    id: &str,
) -> Result<Option<PaymentMethod>, StoreError> {
    sqlx::query_as::<_, Row>(&format!(
        "SELECT {COLUMNS} FROM payment_methods WHERE id = $1 AND merchant_id = $2"
    ))
    .bind(id)
    .bind(merchant_id)
    .fetch_optional(db)
    .await?
    .map(PaymentMethod::try_from)
    .transpose()
}

pub async fn exists<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
    id: &str,
) -> Result<bool, StoreError> {
    super::pages::owned_row_exists(db, "payment_methods", merchant_id, id).await
}

/// Newest first, optionally of one customer (detached methods have none, so they drop out of
/// a customer's list), after the `starting_after` method (checked by the caller with
/// [`exists`]).
pub async fn list<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
    customer_id: Option<&str>,
    starting_after: Option<&str>,
    limit: i64,
) -> Result<Vec<PaymentMethod>, StoreError> {
    sqlx::query_as::<_, Row>(&super::pages::newest_first(
        "payment_methods",
        COLUMNS,
        "customer_id",
    ))
    .bind(merchant_id)
    .bind(customer_id)
    .bind(starting_after)
    .bind(limit)
    .fetch_all(db)
    .await?
    .into_iter()
    .map(PaymentMethod::try_from)
    .collect()
}
