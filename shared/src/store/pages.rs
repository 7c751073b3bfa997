//! Keyset pagination, one definition for the lists that share its shape: newest first by
//! `(created_at, id)`, scoped to the merchant, optionally filtered by one column, after a
//! cursor row the caller has checked with [`owned_row_exists`].

use sqlx::PgExecutor;

use super::StoreError;

/// Whether `id` names a row of `table` that this merchant owns: a list cursor must.
pub(crate) async fn owned_row_exists<'e>(
    db: impl PgExecutor<'e>,
    table: &'static str,
    merchant_id: &str,
    id: &str,
) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM {table} WHERE id = $1 AND merchant_id = $2)"
    ))
    .bind(id)
    .bind(merchant_id)
    .fetch_one(db)
    .await?)
}

/// The page query: binds `$1` merchant, `$2` the filter's value (NULL for none), `$3` the
/// cursor id (NULL for the first page) and `$4` the limit. `table` and `filter_column` are
/// names from the store's own code, never input.
pub(crate) fn newest_first(
    table: &'static str,
    columns: &str,
    filter_column: &'static str,
) -> String {
    format!(
        "SELECT {columns} FROM {table}
         WHERE merchant_id = $1
           AND ($2::text IS NULL OR {filter_column} = $2)
           AND ($3::text IS NULL OR (created_at, id) < (SELECT c.created_at, c.id FROM {table} c WHERE c.id = $3 AND c.merchant_id = $1))
         ORDER BY created_at DESC, id DESC LIMIT $4"
    )
}
