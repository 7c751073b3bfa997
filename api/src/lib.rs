//! The merchant-facing REST API: poem + poem-openapi. Handlers write state, audit and outbox in
//! one transaction and never publish to NATS themselves (the relay does).
#![forbid(unsafe_code)]

pub mod auth;
pub mod card_guard;
pub mod client_side;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod key_cache;
pub mod metrics;
pub mod rate_limit;
pub mod request_id;
pub mod responses;
pub mod routes;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use poem::middleware::CatchPanic;
use poem::{Endpoint, EndpointExt, IntoEndpoint, Route};
use poem_openapi::OpenApiService;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use paystream_shared::config::Config;

/// JSON bodies above this are refused with 413 before they are parsed.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// `None` only in tests that run without a broker; `/readyz` then reports NATS as down.
    pub nats: Option<async_nats::Client>,
    pub config: Arc<Config>,
    pub metrics: Arc<metrics::ApiMetrics>,
    /// Wakes this process's outbox relay after a write request, so its rows go out at once.
    pub relay_waker: paystream_nats::relay::Waker,
}

/// Every API of the service, in the order the docs show them.
pub type Apis = (
    routes::payment_intents::PaymentIntentsApi,
    routes::payment_methods::PaymentMethodsApi,
    routes::three_ds::ThreeDsApi,
    routes::refunds::RefundsApi,
    routes::balance::BalanceApi,
    routes::settlement::SettlementApi,
    routes::disputes::DisputesApi,
    routes::dispute_evidence::DisputeEvidenceApi,
    routes::webhooks::WebhooksApi,
    routes::webhooks::EventsApi,
    routes::audit::AuditApi,
    routes::provider::ProviderApi,
);

fn apis() -> Apis {
    (
        routes::payment_intents::PaymentIntentsApi,
        routes::payment_methods::PaymentMethodsApi,
        routes::three_ds::ThreeDsApi,
        routes::refunds::RefundsApi,
        routes::balance::BalanceApi,
        routes::settlement::SettlementApi,
        routes::disputes::DisputesApi,
        routes::dispute_evidence::DisputeEvidenceApi,
        routes::webhooks::WebhooksApi,
        routes::webhooks::EventsApi,
        routes::audit::AuditApi,
        routes::provider::ProviderApi,
    )
}

pub fn openapi_service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(apis(), "paystream", env!("CARGO_PKG_VERSION")).server("/api")
}

/// The whole HTTP application: `/api` behind authentication, the per-key rate limit and
/// idempotency, operations endpoints beside it, and every error in the contract's shape.
pub fn app(state: AppState) -> impl Endpoint {
    // One limiter per application, so the limit is per process (see `rate_limit`).
    let limiter = Arc::new(rate_limit::RateLimiter::new(
        state.config.rate_limit_per_sec,
    ));
    // Likewise one key cache: a revoked key is refused within its second (`key_cache`).
    let keys = Arc::new(key_cache::KeyCache::default());
    // Failed client-secret checks, per publishable key and per client address.
    let secret_limits = Arc::new(client_side::SecretLimits::default());
    let api = openapi_service();
    let spec = api.spec_endpoint();
    let docs = api.swagger_ui();
    let metrics = state.metrics.clone();
    let waker = state.relay_waker.clone();
    let vault = routes::payment_methods::Vault::from_config(&state.config);
    // The acquirer has no merchant key; its notifications carry a signature instead. The
    // route is the same operation the docs list under `/api`, served from a service of its
    // own outside the guard (so no merchant's rate limit applies to it either). A static path
    // outranks the `/api` nest's catch-all in poem's router, so requests for it never reach the
    // guarded copy.
    let provider = OpenApiService::new(
        routes::provider::ProviderApi,
        "paystream",
        env!("CARGO_PKG_VERSION"),
    );
    // The 3-D Secure callback likewise: the cardholder's browser has no key, the acquirer's
    // signed token authenticates it.
    let three_ds = OpenApiService::new(
        routes::three_ds::ThreeDsApi,
        "paystream",
        env!("CARGO_PKG_VERSION"),
    );
    Route::new()
        .at(
            "/api/provider/webhooks",
            Route::new().nest("/api", provider),
        )
        .at(
            "/api/payment-intents/:id/3ds/callback",
            Route::new().nest("/api", three_ds),
        )
        .nest(
            "/api",
            api.around(move |ep, req| {
                auth::guard(
                    ep,
                    req,
                    limiter.clone(),
                    keys.clone(),
                    secret_limits.clone(),
                )
            }),
        )
        .at("/openapi.json", spec)
        .nest("/docs", docs)
        .at("/healthz", poem::get(routes::ops::healthz))
        .at("/readyz", poem::get(routes::ops::readyz))
        .at("/metrics", poem::get(routes::ops::metrics))
        .catch_all_error(|e| async move { error::to_contract_response(e) })
        // Every route, whatever it is: a panic becomes the opaque 500 and a log line with its
        // cause, never a dropped connection. Keyed POSTs catch it earlier, in
        // `idempotency::around`, which also frees their key.
        .with(CatchPanic::new().with_handler(error::PanicAnswer))
        .around(move |ep, req| {
            let (metrics, waker) = (metrics.clone(), waker.clone());
            async move {
                // Any request but a read may have committed outbox rows; a spurious wake
                // costs the relay one empty query.
                let writes = req.method() != poem::http::Method::GET;
                let resp = metrics.observe(ep, req).await;
                if writes {
                    waker.wake();
                }
                resp
            }
        })
        // Before authentication: a CORS preflight carries no key.
        .around(client_side::preflight)
        .data(state)
        .data(vault)
        .around(request_id::around)
        // Outermost: a request carrying a card number is refused before anything logs it.
        .around(card_guard::around)
        .into_endpoint()
}

/// Serves on `listener` until `shutdown` fires, then lets requests in flight finish. HTTPS
/// only when the configuration names a certificate; plain HTTP only on loopback or behind
/// trusted proxies (`paystream_shared::tls`).
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> Result<(), paystream_shared::tls::ServeError> {
    let tls = state.config.tls.clone();
    let listener = paystream_shared::tls::Listener {
        process: "paystream-api",
        addr_var: "PAYSTREAM_API_ADDR",
        listener,
    };
    paystream_shared::tls::serve(
        listener,
        &tls,
        app(state),
        shutdown,
        Duration::from_secs(10),
    )
    .await
}

/// Everything `paystream-api` does after reading its configuration: connect, migrate, serve.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // The 3-D Secure callback can capture a payment: its fee by this configuration.
    paystream_shared::ledger::install_fee_schedule(config.fees);
    paystream_shared::ledger::install_dispute_fee(config.dispute_fee);
    // Refuse a plain listener on the network before touching the database.
    paystream_shared::tls::check_listener(
        "paystream-api",
        "PAYSTREAM_API_ADDR",
        listener.local_addr()?,
        &config.tls,
    )?;
    let url = config.database_url.expose().clone();
    paystream_shared::db::ensure_database(&url).await?;
    let pool = paystream_shared::db::connect(&url, config.db_pool_size).await?;
    paystream_shared::db::migrate(&pool).await?;
    let (nats, js) = paystream_nats::topology::connect_with(&config.nats).await?;
    let topology = paystream_nats::topology::Topology::from_config(&config);
    topology.ensure(&js).await?;
    // Every API replica also drains the outbox; SKIP LOCKED lets several relays share it.
    let relay_waker = paystream_nats::relay::Waker::new();
    let relay = tokio::spawn(paystream_nats::relay::run(
        pool.clone(),
        js,
        topology,
        relay_waker.clone(),
        shutdown.clone(),
    ));
    let state = AppState {
        pool,
        nats: Some(nats),
        config: Arc::new(config),
        metrics: Arc::default(),
        relay_waker,
    };
    let served = run(listener, state, shutdown.clone()).await;
    shutdown.cancel();
    if let Ok(Err(e)) = relay.await {
        tracing::error!(error = %e, "outbox relay stopped with an error");
    }
    served?;
    Ok(())
}
