//! The vault: the one process that ever holds a card number, CVC or bank account number.
//!
//! | call | who | what |
//! |---|---|---|
//! | `POST /vault/tokens` | a merchant's secret or publishable key | validate, seal, store; a single-use `tok_` (15 min) with display fields; CORS for the key's origins only (`cors`) |
//! | `GET /vault/elements?key=pk_&origin=` | a browser, for a publishable key listing `origin` | the card fields as an iframe page; hands the `tok_` to the parent by `postMessage` (`elements`) |
//! | `POST /vault/internal/tokens/{tok}/consume` `{merchantId}` | service credential | use the token once: `{vaultRef, type, card\|bankAccount}` |
//! | `POST /vault/internal/forward` `{merchantId, vaultRef, path, body, idempotencyKey}` | service credential | POST `body` with the number put in to the acquirer; its status and body back |
//! | `POST /vault/internal/kek/rewrap` `{batchSize?}` | service credential | re-wrap one batch of data keys under the current KEK: `{rewrapped, remaining}` |
//! | `GET /healthz`, `GET /readyz` | anyone | process up; database reachable |
//!
//! Its tables live in schema `vault` of the same database, migrated by the vault itself from
//! `vault/migrations/`; no other crate's code reads them (ARCHITECTURE.md, "The vault").
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod cors;
pub mod crypto;
pub mod elements;
pub mod error;
pub mod http;
pub mod instrument;
pub mod internal;
pub mod store;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use poem::error::{MethodNotAllowedError, NotFoundError};
use poem::middleware::Tracing;
use poem::web::Data;
use poem::{get, handler, post, EndpointExt, IntoResponse, Response, Route};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::config::VaultConfig;
use crate::crypto::{DataKey, Keyring};
use crate::error::VaultError;

/// The vault's own migrations, applied to schema `vault` only.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] paystream_shared::db::DbError),
    #[error("vault migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("cannot load the vault's fingerprint secret: {0}")]
    Keys(#[from] crypto::CryptoError),
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Serve(#[from] paystream_shared::tls::ServeError),
    #[error(transparent)]
    Config(#[from] paystream_shared::config::ConfigError),
    #[error("cannot build the acquirer client: {0}")]
    Http(#[from] reqwest::Error),
}

/// What every request handler shares.
#[derive(Clone)]
pub struct State {
    pub pool: PgPool,
    pub config: Arc<VaultConfig>,
    pub keyring: Keyring,
    /// The HMAC secret behind fingerprints and Idempotency-Key request MACs.
    pub fingerprint_key: Arc<DataKey>,
    pub http: reqwest::Client,
}

/// Creates schema `vault` if missing and applies the vault's migrations on a connection whose
/// `search_path` is `vault`, so sqlx's bookkeeping table is `vault._sqlx_migrations`, apart
/// from the main schema's.
pub async fn migrate(database_url: &str) -> Result<(), StartError> {
    let options: PgConnectOptions = database_url
        .parse()
        .map_err(paystream_shared::db::DbError::Url)?;
    let mut conn = sqlx::PgConnection::connect_with(&options).await?;
    sqlx::query("CREATE SCHEMA IF NOT EXISTS vault")
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    // A pool of one rather than a bare connection: the migrator's future is then `Send`, so
    // `run` can be spawned.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(
            options
                .options([("search_path", "vault")])
                .log_statements(tracing::log::LevelFilter::Trace),
        )
        .await?;
    MIGRATOR.run(&pool).await?;
    pool.close().await;
    Ok(())
}

/// Connects, migrates and loads the fingerprint secret: everything but the listener.
pub async fn state(config: VaultConfig) -> Result<State, StartError> {
    let url = config.database_url.expose().clone();
    paystream_shared::db::ensure_database(&url).await?;
    migrate(&url).await?;
    let pool = paystream_shared::db::connect(&url, config.db_pool_size).await?;
    let keyring = Keyring::new(config.kek.clone(), config.kek_previous.clone());
    let fingerprint_key = store::data_keys::fingerprint_key(&pool, &keyring).await?;
    let http = paystream_shared::tls::client_builder(config.tls.ca_cert.as_deref())?
        .timeout(config.acquirer_timeout)
        // The acquirer's URL is configuration; nothing the caller sends may redirect the
        // number elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()?;
    Ok(State {
        pool,
        config: Arc::new(config),
        keyring,
        fingerprint_key: Arc::new(fingerprint_key),
        http,
    })
}

#[handler]
fn healthz() -> &'static str {
    "ok"
}

#[handler]
async fn readyz(Data(state): Data<&State>) -> Response {
    match sqlx::query("SELECT 1").execute(&state.pool).await {
        Ok(_) => "ready".into_response(),
        Err(e) => VaultError::new(
            poem::http::StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "service_unavailable",
            format!("database unreachable: {e}"),
        )
        .into_response(),
    }
}

pub fn app(state: State) -> impl poem::Endpoint {
    Route::new()
        .at("/healthz", get(healthz))
        .at("/readyz", get(readyz))
        // The only route with CORS: a checkout page calls it from the merchant's origin.
        .at("/vault/tokens", post(tokens::create).around(cors::tokens))
        .at("/vault/elements", get(elements::page))
        .at(
            "/vault/internal/tokens/:token/consume",
            post(internal::consume),
        )
        .at("/vault/internal/forward", post(internal::forward))
        .at("/vault/internal/kek/rewrap", post(internal::rewrap))
        .data(state)
        .catch_error(|_: NotFoundError| async {
            VaultError::not_found("Unrecognized request URL").into_response()
        })
        .catch_error(|_: MethodNotAllowedError| async {
            VaultError::new(
                poem::http::StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "method_not_allowed",
                "This method is not allowed on this URL",
            )
            .into_response()
        })
        .with(Tracing)
}

/// How often expired tokens (with their records) and Idempotency-Key answers are forgotten.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// Every replica runs it; the statements are idempotent, so running them twice costs nothing.
async fn purge_loop(pool: PgPool, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PURGE_EVERY) => {}
        }
        match store::tokens::purge_expired(&pool).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "expired tokens and their records purged"),
            Err(e) => tracing::warn!(error = %e, "purging expired tokens failed"),
        }
        if let Err(e) = store::idempotency::purge_expired(&pool).await {
            tracing::warn!(error = %e, "purging expired idempotency keys failed");
        }
    }
}

/// Serves the vault on `listener` until `shutdown` is cancelled, then drains requests in
/// flight for up to 10 s.
pub async fn run(
    listener: std::net::TcpListener,
    config: VaultConfig,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let io = |context| move |source| StartError::Io { context, source };
    listener
        .set_nonblocking(true)
        .map_err(io("cannot make the listener non-blocking"))?;
    let addr = listener
        .local_addr()
        .map_err(io("the listener has no local address"))?;
    // Refuse a plain listener on the network before touching the database.
    paystream_shared::tls::check_listener("vault", "PAYSTREAM_VAULT_ADDR", addr, &config.tls)?;
    let state = state(config).await?;
    tracing::info!(
        %addr,
        kek = state.keyring.current_id(),
        previous_kek = ?state.keyring.previous_id(),
        "vault listening"
    );
    let purger = tokio::spawn(purge_loop(state.pool.clone(), shutdown.clone()));
    let tls = state.config.tls.clone();
    let listener = paystream_shared::tls::Listener {
        process: "vault",
        addr_var: "PAYSTREAM_VAULT_ADDR",
        listener,
    };
    let served = paystream_shared::tls::serve(
        listener,
        &tls,
        app(state.clone()),
        shutdown,
        Duration::from_secs(10),
    )
    .await;
    purger.abort();
    served?;
    state.pool.close().await;
    tracing::info!("vault stopped");
    Ok(())
}
