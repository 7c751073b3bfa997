//! Operations endpoints: liveness, readiness (database and NATS) and metrics. No auth: they
//! reveal nothing about any merchant.

use poem::http::StatusCode;
use poem::web::{Data, Json};
use poem::{handler, IntoResponse, Response};

use crate::AppState;

#[handler]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

#[handler]
pub async fn readyz(state: Data<&AppState>) -> Response {
    let db_ok = sqlx::query_scalar::<_, i32>("SELECT 1")
        .fetch_one(&state.pool)
        .await
        .is_ok();
    // Connected is not enough: a node of a cluster without JetStream quorum accepts the
    // connection but cannot store a command (paystream_nats::health).
    let nats_ok = match &state.nats {
        Some(client) => paystream_nats::health::jetstream_ready(client).await,
        None => false,
    };
    let status = if db_ok && nats_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    Json(serde_json::json!({"database": word(db_ok), "nats": word(nats_ok)}))
        .with_status(status)
        .into_response()
}

#[handler]
pub async fn metrics(state: Data<&AppState>) -> Response {
    Response::builder()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
