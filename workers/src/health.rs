//! A worker process's health and metrics endpoint, served on `PAYSTREAM_HEALTH_ADDR` when it is
//! set. `paystream up` waits for every process's `/healthz` before it prints READY, and
//! `/metrics` serves the consumers' counters in Prometheus text beside the periodic log line.
//!
//! Healthy means able to work: PostgreSQL answers and the NATS connection is up (for the
//! processes that use NATS). A worker that cannot reach either answers 503 with the reason,
//! the same shape as the API's `/readyz`.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use poem::http::StatusCode;
use poem::listener::TcpAcceptor;
use poem::web::{Data, Json};
use poem::{get, handler, EndpointExt, IntoResponse, Response, Route, Server};
use serde_json::json;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use paystream_nats::metrics::WorkerMetrics;
use paystream_shared::config::Config;

/// How long a dependency may take to answer a health check.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("cannot serve health checks on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the endpoint checks and reports.
#[derive(Clone)]
pub struct Health {
    pool: PgPool,
    nats: Option<async_nats::Client>,
    consumers: Vec<(String, Arc<WorkerMetrics>)>,
}

impl Health {
    /// `nats` is `None` for a process that does not use NATS (the scheduler).
    pub fn new(pool: PgPool, nats: Option<async_nats::Client>) -> Self {
        Self {
            pool,
            nats,
            consumers: Vec::new(),
        }
    }

    /// Adds a consumer's counters to `/metrics`, labelled `worker="<name>"`.
    #[must_use]
    pub fn with_consumer(mut self, name: impl Into<String>, metrics: Arc<WorkerMetrics>) -> Self {
        self.consumers.push((name.into(), metrics));
        self
    }

    /// The dependencies' state: `(healthy, body)`.
    pub async fn check(&self) -> (bool, serde_json::Value) {
        let database = matches!(
            tokio::time::timeout(
                PROBE_TIMEOUT,
                sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&self.pool)
            )
            .await,
            Ok(Ok(_))
        );
        // JetStream answering, not just a connection (paystream_nats::health).
        let nats = match &self.nats {
            Some(client) => Some(paystream_nats::health::jetstream_ready(client).await),
            None => None,
        };
        let healthy = database && nats.unwrap_or(true);
        let word = |up: bool| if up { "ok" } else { "unavailable" };
        let mut body = json!({
            "status": word(healthy),
            "database": word(database),
        });
        if let Some(up) = nats {
            body["nats"] = json!(word(up));
        }
        (healthy, body)
    }

    /// Every consumer's counters as one Prometheus text document: each metric family once,
    /// with one sample per consumer.
    pub fn render_metrics(&self) -> String {
        let mut families: Vec<(String, Vec<String>)> = Vec::new();
        let mut current: Option<usize> = None;
        for (name, metrics) in &self.consumers {
            for line in metrics.render_prometheus(name).lines() {
                if let Some(rest) = line.strip_prefix("# HELP ") {
                    let family = rest.split(' ').next().unwrap_or_default().to_owned();
                    let idx = match families.iter().position(|(f, _)| *f == family) {
                        Some(i) => i,
                        None => {
                            families.push((family, vec![line.to_owned()]));
                            families.len() - 1
                        }
                    };
                    current = Some(idx);
                } else if line.starts_with("# TYPE ") {
                    if let Some(i) = current {
                        if families[i].1.len() == 1 {
                            families[i].1.push(line.to_owned());
                        }
                    }
                } else if let Some(i) = current {
                    families[i].1.push(line.to_owned());
                }
            }
        }
        let mut out = String::new();
        for (_, lines) in families {
            for line in lines {
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }
}

#[handler]
async fn healthz(Data(health): Data<&Health>) -> Response {
    let (healthy, body) = health.check().await;
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Json(body).with_status(status).into_response()
}

#[handler]
fn metrics_text(Data(health): Data<&Health>) -> Response {
    Response::builder()
        .content_type("text/plain; version=0.0.4")
        .body(health.render_metrics())
}

/// Serves `/healthz` and `/metrics` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, health: Health, shutdown: CancellationToken) {
    let app = Route::new()
        .at("/healthz", get(healthz))
        .at("/metrics", get(metrics_text))
        .data(health);
    let served = async {
        listener.set_nonblocking(true)?;
        Server::new_with_acceptor(TcpAcceptor::from_std(listener)?)
            .run_with_graceful_shutdown(
                app,
                shutdown.cancelled_owned(),
                Some(Duration::from_secs(1)),
            )
            .await
    };
    if let Err(e) = served.await {
        tracing::error!(error = %e, "the health endpoint stopped");
    }
}

/// Starts [`serve`] on `config.health_addr` if one is configured. With `uses_nats`, the
/// endpoint keeps a NATS connection of its own to report on.
pub async fn start(
    config: &Config,
    pool: PgPool,
    uses_nats: bool,
    consumers: Vec<(String, Arc<WorkerMetrics>)>,
    shutdown: &CancellationToken,
) -> Result<Option<JoinHandle<()>>, crate::runtime::WorkerError> {
    let Some(addr) = config.health_addr else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr).map_err(|source| HealthError::Bind { addr, source })?;
    let nats = if uses_nats {
        Some(
            paystream_nats::topology::connect_with(&config.nats)
                .await?
                .0,
        )
    } else {
        None
    };
    let health = consumers
        .into_iter()
        .fold(Health::new(pool, nats), |h, (name, m)| {
            h.with_consumer(name, m)
        });
    tracing::info!(%addr, "serving /healthz and /metrics");
    Ok(Some(tokio::spawn(serve(
        listener,
        health,
        shutdown.clone(),
    ))))
}
