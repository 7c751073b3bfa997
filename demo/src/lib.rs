//! The demo checkout: a merchant's web shop reduced to one page, the way a merchant integrates
//! paystream so that card data never reaches their server (docs/pci-scope.md says which SAQ that is).
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the checkout page: card number, expiry, CVC and a Pay button; its script tokenizes the card at the vault with the publishable key |
//! | `POST /pay` `{token}` | the merchant's server: with the secret key it makes the token a payment method and creates a confirmed payment intent, then answers `{redirect}`: the 3-D Secure challenge, or the return page |
//! | `GET /return?payment_intent=` | the return URL: the intent's status, refreshed while it is still moving |
//!
//! `paystream up` serves it next to the stack, and the browser test (tests/tests/it/browser.rs)
//! drives it in headless Chromium. It is a client of the public API and the vault only.
#![forbid(unsafe_code)]

mod page;

use std::time::Duration;

use poem::http::StatusCode;
use poem::listener::TcpAcceptor;
use poem::web::{Data, Json, Query};
use poem::{get, handler, post, EndpointExt, IntoResponse, Response, Route, Server};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// The customer every demo payment belongs to.
pub const CUSTOMER: &str = "cus_demo";
/// What the demo shop sells, in minor units of [`CURRENCY`].
pub const AMOUNT: i64 = 1099;
pub const CURRENCY: &str = "usd";

/// How long `POST /pay` waits for the confirm worker to leave `processing` before it sends the
/// browser to the return page, which keeps refreshing until the outcome is known.
const OUTCOME_WAIT: Duration = Duration::from_secs(20);
const POLL_EVERY: Duration = Duration::from_millis(100);

/// Statuses in which the intent still moves on by itself (the confirm worker is at it).
const MOVING: &[&str] = &["processing"];

#[derive(Clone)]
pub struct DemoConfig {
    /// The API as the demo's server reaches it.
    pub api_url: String,
    /// The vault as the customer's browser reaches it.
    pub vault_url: String,
    /// The merchant's secret key; it stays on this server.
    pub secret_key: String,
    /// The merchant's `pk_` key; it is written into the page.
    pub publishable_key: String,
}

impl std::fmt::Debug for DemoConfig {
    // The secret key is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoConfig")
            .field("api_url", &self.api_url)
            .field("vault_url", &self.vault_url)
            .field("publishable_key", &self.publishable_key)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The shopper's request is not one the page sends.
    #[error("{0}")]
    BadRequest(&'static str),
    /// The API refused; its status and message are shown to the shopper.
    #[error("{message}")]
    Refused { status: StatusCode, message: String },
    #[error("the payment API could not be reached: {0}")]
    Unreachable(#[from] reqwest::Error),
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        source: std::io::Error,
    },
}

impl DemoError {
    fn status(&self) -> StatusCode {
        match self {
            DemoError::BadRequest(_) => StatusCode::BAD_REQUEST,
            // A 5xx of the API is the demo's upstream failing, not the shopper's mistake.
            DemoError::Refused { status, .. } if status.is_client_error() => *status,
            DemoError::Refused { .. } | DemoError::Unreachable(_) | DemoError::Io { .. } => {
                StatusCode::BAD_GATEWAY
            }
        }
    }
}

struct Shop {
    config: DemoConfig,
    /// Where the browser comes back after 3-D Secure: this server's `/return`.
    return_url: String,
    http: reqwest::Client,
}

impl Shop {
    fn api(&self, path: &str) -> String {
        format!("{}{path}", self.config.api_url.trim_end_matches('/'))
    }

    /// One call to the API with the secret key; the JSON answer, or the API's refusal.
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Value, DemoError> {
        let response = request.bearer_auth(&self.config.secret_key).send().await?;
        let status =
            StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("the payment API refused the request")
            .to_owned();
        Err(DemoError::Refused { status, message })
    }

    async fn post(
        &self,
        path: &str,
        idempotency_key: &str,
        body: Value,
    ) -> Result<Value, DemoError> {
        // Keyed by the token, so a shopper's double click or a retried request pays once.
        self.call(
            self.http
                .post(self.api(path))
                .header("Idempotency-Key", idempotency_key)
                .json(&body),
        )
        .await
    }

    async fn intent(&self, id: &str) -> Result<Value, DemoError> {
        self.call(
            self.http
                .get(self.api(&format!("/api/payment-intents/{id}"))),
        )
        .await
    }

    /// The merchant's side of a payment: token → payment method → confirmed intent → where the
    /// browser goes next.
    async fn pay(&self, token: &str) -> Result<String, DemoError> {
        let method = self
            .post(
                "/api/payment-methods",
                &format!("demo-pm-{token}"),
                json!({"type": "card", "token": token, "customerId": CUSTOMER}),
            )
            .await?;
        let method_id = method["id"].as_str().unwrap_or_default();
        let intent = self
            .post(
                "/api/payment-intents",
                &format!("demo-pi-{token}"),
                json!({"amount": AMOUNT, "currency": CURRENCY, "customerId": CUSTOMER,
                       "paymentMethodId": method_id, "confirm": true,
                       "returnUrl": self.return_url}),
            )
            .await?;
        let id = intent["id"].as_str().unwrap_or_default().to_owned();
        let back = format!("{}?payment_intent={id}", self.return_url);
        let deadline = tokio::time::Instant::now() + OUTCOME_WAIT;
        let mut intent = intent;
        while MOVING.contains(&intent["status"].as_str().unwrap_or_default())
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(POLL_EVERY).await;
            intent = self.intent(&id).await?;
        }
        Ok(intent["nextAction"]["redirectToUrl"]["url"]
            .as_str()
            .map_or(back, str::to_owned))
    }
}

#[handler]
fn checkout(Data(shop): Data<&std::sync::Arc<Shop>>) -> Response {
    page::checkout(&shop.config.vault_url, &shop.config.publishable_key)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PayRequest {
    token: String,
}

/// An id of the shape paystream hands out (`tok_...`, `pi_...`): the prefix, then at most 64
/// characters in all of letters, digits and `_`. Anything else never reaches the API or a page.
fn is_id(prefix: &str, raw: &str) -> bool {
    raw.len() <= 64
        && raw.strip_prefix(prefix).is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
}

#[handler]
async fn pay(
    Data(shop): Data<&std::sync::Arc<Shop>>,
    body: poem::Result<Json<PayRequest>>,
) -> Response {
    let result = match body {
        Ok(Json(PayRequest { token })) if is_id("tok_", &token) => shop.pay(&token).await,
        _ => Err(DemoError::BadRequest(
            "send {\"token\": \"tok_...\"} from the vault",
        )),
    };
    match result {
        Ok(redirect) => Json(json!({"redirect": redirect})).into_response(),
        Err(e) => {
            if e.status().is_server_error() {
                tracing::warn!(error = %e, "demo payment failed");
            }
            (
                e.status(),
                Json(json!({"error": {"message": e.to_string()}})),
            )
                .into_response()
        }
    }
}

#[derive(Deserialize)]
struct ReturnQuery {
    payment_intent: Option<String>,
}

#[handler]
async fn return_page(
    Data(shop): Data<&std::sync::Arc<Shop>>,
    Query(query): Query<ReturnQuery>,
) -> Response {
    let Some(id) = query.payment_intent.filter(|id| is_id("pi_", id)) else {
        return page::problem(
            StatusCode::BAD_REQUEST,
            "This page needs ?payment_intent=pi_...",
        );
    };
    match shop.intent(&id).await {
        Ok(intent) => {
            let moving = MOVING.contains(&intent["status"].as_str().unwrap_or_default());
            page::outcome(&id, &intent, moving)
        }
        Err(e) => page::problem(e.status(), &e.to_string()),
    }
}

/// The demo shop's endpoints, for [`run`] and for tests that serve it themselves.
pub fn app(config: DemoConfig, own_url: &str) -> Result<impl poem::Endpoint, DemoError> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let shop = std::sync::Arc::new(Shop {
        config,
        return_url: format!("{}/return", own_url.trim_end_matches('/')),
        http,
    });
    Ok(Route::new()
        .at("/", get(checkout))
        .at("/pay", post(pay))
        .at("/return", get(return_page))
        .data(shop))
}

/// Serves the demo shop on `listener` until `shutdown` is cancelled. Its return URL is the
/// listener's own address.
pub async fn run(
    listener: std::net::TcpListener,
    config: DemoConfig,
    shutdown: CancellationToken,
) -> Result<(), DemoError> {
    let io = |context| move |source| DemoError::Io { context, source };
    listener
        .set_nonblocking(true)
        .map_err(io("cannot make the listener non-blocking"))?;
    let addr = listener
        .local_addr()
        .map_err(io("the listener has no local address"))?;
    let app = app(config, &format!("http://{addr}"))?;
    let acceptor = TcpAcceptor::from_std(listener).map_err(io("cannot adopt the listener"))?;
    Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(
            app,
            shutdown.cancelled_owned(),
            Some(Duration::from_secs(5)),
        )
        .await
        .map_err(io("the demo checkout failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ids_of_the_right_shape_are_accepted() {
        assert!(is_id("tok_", "tok_01HXYZabc"));
        assert!(!is_id("tok_", "tok_"));
        assert!(!is_id("tok_", "pm_card_visa"));
        assert!(!is_id("tok_", "tok_a\"<script>"));
        assert!(!is_id("tok_", &format!("tok_{}", "a".repeat(80))));
        assert!(is_id("pi_", "pi_01HX_y"));
        assert!(!is_id("pi_", "pi_../x"));
    }

    #[test]
    fn the_secret_key_is_never_printed() {
        let config = DemoConfig {
            api_url: "http://127.0.0.1:1".into(),
            vault_url: "http://127.0.0.1:2".into(),
            secret_key: "sk_test_hidden".into(),
            publishable_key: "pk_test_shown".into(),
        };
        let printed = format!("{config:?}");
        assert!(!printed.contains("sk_test_hidden"), "{printed}");
        assert!(printed.contains("pk_test_shown"), "{printed}");
    }
}
