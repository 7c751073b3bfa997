//! Every SQL statement that touches the vault's tables, one module per table. The main
//! `shared/src/store/` holds paystream's writes; these tables belong to the vault alone, so
//! their statements live here and nowhere else (a test greps the other crates for them).
//! Every table name is written schema-qualified (`vault.records`), so the pool needs no
//! `search_path` and the main schema's `api_keys` stays readable on the same connections.

pub mod audit;
pub mod data_keys;
pub mod idempotency;
pub mod records;
pub mod tokens;
