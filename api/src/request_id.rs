//! Every answer carries a `Request-Id` header (`req_` + 32 hex digits, made here; one a client
//! sends is ignored, as Stripe does), and every log line written while the request runs carries
//! the same id as the `request_id` field of its `request` span, so a support question quoting
//! the header finds the request's lines. Rejections are logged at info with their code;
//! successes at debug, to keep the log quiet under load.

use std::sync::Arc;
use std::time::Instant;

use poem::http::HeaderValue;
use poem::{Endpoint, IntoResponse, Request, Response};
use tracing::Instrument;

use crate::error::{to_contract_response, ErrorCode};

pub const HEADER: &str = "Request-Id";

/// A new request id.
pub fn generate() -> String {
    format!("req_{}", uuid::Uuid::new_v4().simple())
}

/// Runs `ep` inside the request's span and stamps the id on its answer, errors included.
pub async fn around<E: Endpoint>(ep: Arc<E>, req: Request) -> poem::Result<Response> {
    let id = generate();
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
    );
    async move {
        let started = Instant::now();
        let mut resp = match ep.call(req).await {
            Ok(r) => r.into_response(),
            Err(e) => to_contract_response(e),
        };
        if let Ok(value) = HeaderValue::from_str(&id) {
            resp.headers_mut().insert(HEADER, value);
        }
        let status = resp.status().as_u16();
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match resp.extensions().get::<ErrorCode>() {
            Some(ErrorCode(code)) => {
                tracing::info!(status, code = %code, elapsed_ms, "request rejected");
            }
            None if status >= 400 => tracing::info!(status, elapsed_ms, "request rejected"),
            None => tracing::debug!(status, elapsed_ms, "request answered"),
        }
        Ok(resp)
    }
    .instrument(span)
    .await
}
