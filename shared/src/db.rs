//! Connecting to PostgreSQL, creating the database when it is missing, and running migrations.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot reach PostgreSQL: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("cannot create database {name}: {source}")]
    Create { name: String, source: sqlx::Error },
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("bad DATABASE_URL: {0}")]
    Url(#[source] sqlx::Error),
}

/// A pool sized for a small service. Each process gets its own; PostgreSQL's own limit is the
/// real ceiling.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    let options: PgConnectOptions = url.parse().map_err(DbError::Url)?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        // A ping before every checkout was ~15% of the API's CPU in the benchmark; a dead
        // connection surfaces as an error on first use instead, and every caller retries.
        .test_before_acquire(false)
        .connect_with(options.log_statements(tracing::log::LevelFilter::Trace))
        .await
        .map_err(DbError::Connect)
}

/// Creates the database named in `url` if it does not exist yet, connecting to the server's
/// `postgres` database to do it.
pub async fn ensure_database(url: &str) -> Result<(), DbError> {
    let options: PgConnectOptions = url.parse().map_err(DbError::Url)?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let mut admin = sqlx::PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .map_err(DbError::Connect)?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .map_err(DbError::Connect)?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match sqlx::query(&format!("CREATE DATABASE {quoted}"))
            .execute(&mut admin)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Two processes starting at once may race to create it; the loser is fine.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(source) => return Err(DbError::Create { name, source }),
        }
    }
    let _ = admin.close().await;
    Ok(())
}

pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    // Planner statistics, so pooled connections do not keep generic plans chosen for empty
    // tables (measured: index scans of the wrong index until the first ANALYZE) on servers
    // that run without autovacuum.
    sqlx::query("ANALYZE")
        .execute(pool)
        .await
        .map_err(DbError::Connect)?;
    Ok(())
}
