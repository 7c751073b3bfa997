//! Webhook persistence: subscriptions (secrets sealed), the events merchants list, and the
//! delivery rows the webhook worker drives. Reads are scoped by merchant; the worker's
//! functions act on a delivery id it got from its own command.
//!
//! Every write to a delivery is guarded on the cycle (and attempt) it read, so an attempt
//! that finishes after a redelivery reset the row cannot overwrite the new cycle, and two
//! copies of one command cannot both claim the same attempt.
//!
//! One module per table: [`subscriptions`], [`deliveries`], [`attempts`]; the events merchants
//! list are read from `store::events`. Everything is re-exported here, so callers keep
//! naming `store::webhooks::…`.

mod attempts;
mod deliveries;
mod subscriptions;

pub use super::events::{get_event, list_events};
pub use attempts::*;
pub use deliveries::*;
pub use subscriptions::*;

use sqlx::PgExecutor;

use crate::store::StoreError;

/// Whether `id` names an object of this merchant in `table` (list cursors).
pub async fn exists<'e>(
    db: impl PgExecutor<'e>,
    table: Cursor,
    merchant_id: &str,
    id: &str,
) -> Result<bool, StoreError> {
    let extra = if table == Cursor::Subscriptions {
        " AND deleted_at IS NULL"
    } else {
        ""
    };
    Ok(sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM {} WHERE id = $1 AND merchant_id = $2{extra})",
        table.table()
    ))
    .bind(id)
    .bind(merchant_id)
    .fetch_one(db)
    .await?)
}

/// The lists that take a `startingAfter` cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    Subscriptions,
    Events,
    Deliveries,
}

impl Cursor {
    fn table(self) -> &'static str {
        match self {
            Cursor::Subscriptions => "webhook_subscriptions",
            Cursor::Events => "events",
            Cursor::Deliveries => "webhook_deliveries",
        }
    }
}
