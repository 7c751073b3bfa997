//! The per-request half of the transport rule. Over TLS, or through a trusted proxy that
//! terminated TLS, every answer carries `Strict-Transport-Security`. Behind trusted proxies,
//! a request that did not come from one of them with `X-Forwarded-Proto: https` is refused
//! with 403 `tls_required` before any route sees it.

use std::sync::Arc;

use poem::http::{header, HeaderValue, StatusCode};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};

use super::TlsSettings;

/// One year, and subdomains: browsers then refuse plain HTTP to this host outright.
pub const HSTS: &str = "max-age=31536000; includeSubDomains";

/// Probes of an orchestrator reach a pod directly, not through the proxy; they carry no data.
const PROBES: &[&str] = &["/healthz", "/readyz"];

#[derive(Clone)]
pub struct Guard {
    settings: Arc<TlsSettings>,
}

impl Guard {
    pub fn new(settings: Arc<TlsSettings>) -> Self {
        Guard { settings }
    }
}

impl<E: Endpoint> Middleware<E> for Guard {
    type Output = GuardEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        GuardEndpoint {
            inner: ep,
            settings: self.settings.clone(),
        }
    }
}

pub struct GuardEndpoint<E> {
    inner: E,
    settings: Arc<TlsSettings>,
}

/// What the rule says about one request.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Encrypted on the way here: answer, with HSTS.
    Secure,
    /// A plain loopback listener (development): answer as is.
    Local,
    Refused,
}

impl<E> GuardEndpoint<E> {
    fn verdict(&self, req: &Request) -> Verdict {
        if self.settings.files.is_some() {
            return Verdict::Secure;
        }
        if self.settings.trusted_proxies.is_empty() {
            return Verdict::Local;
        }
        let from_proxy = req
            .remote_addr()
            .as_socket_addr()
            .is_some_and(|addr| self.settings.is_trusted_proxy(addr.ip()));
        let forwarded_https = req
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
        if from_proxy && forwarded_https {
            Verdict::Secure
        } else if PROBES.contains(&req.uri().path()) {
            Verdict::Local
        } else {
            Verdict::Refused
        }
    }
}

impl<E: Endpoint> Endpoint for GuardEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Self::Output> {
        match self.verdict(&req) {
            Verdict::Refused => Ok(tls_required()),
            Verdict::Local => Ok(self.inner.call(req).await?.into_response()),
            Verdict::Secure => {
                let mut resp = match self.inner.call(req).await {
                    Ok(r) => r.into_response(),
                    Err(e) => e.into_response(),
                };
                resp.headers_mut().insert(
                    header::STRICT_TRANSPORT_SECURITY,
                    HeaderValue::from_static(HSTS),
                );
                Ok(resp)
            }
        }
    }
}

/// The contract's error shape, built here because both the API and the vault answer it.
fn tls_required() -> Response {
    let body = serde_json::json!({
        "error": {
            "type": "invalid_request_error",
            "code": "tls_required",
            "message": "This endpoint is served over HTTPS only: connect through the TLS-terminating proxy (https://).",
        }
    });
    Response::builder()
        .status(StatusCode::FORBIDDEN)
        .content_type("application/json")
        .body(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use poem::test::TestClient;
    use poem::{handler, EndpointExt, Route};

    #[handler]
    fn ok() -> &'static str {
        "ok"
    }

    fn app(settings: TlsSettings) -> impl Endpoint {
        Route::new()
            .at("/x", ok)
            .at("/healthz", ok)
            .with(Guard::new(Arc::new(settings)))
    }

    fn proxies(cidrs: &str) -> TlsSettings {
        TlsSettings::from_lookup(|k| {
            (k == super::super::TRUSTED_PROXIES_VAR).then(|| cidrs.to_owned())
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_loopback_listener_without_proxies_answers_plainly() {
        let resp = TestClient::new(app(TlsSettings::default()))
            .get("/x")
            .send()
            .await;
        resp.assert_status_is_ok();
        resp.assert_header_is_not_exist(header::STRICT_TRANSPORT_SECURITY);
    }

    #[tokio::test]
    async fn a_request_not_from_a_trusted_proxy_is_refused() {
        // poem's test client has no peer address: it is no trusted proxy, whatever it says.
        let client = TestClient::new(app(proxies("10.0.0.0/8")));
        let resp = client
            .get("/x")
            .header("X-Forwarded-Proto", "https")
            .send()
            .await;
        resp.assert_status(StatusCode::FORBIDDEN);
        let body: serde_json::Value = resp.json().await.value().deserialize();
        assert_eq!(body["error"]["code"], "tls_required");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        // Probes still answer, and say nothing.
        client.get("/healthz").send().await.assert_status_is_ok();
    }
}
