//! The demo checkout: a merchant's web shop reduced to one page, integrated the way Stripe.js
//! users do, so that neither the card number nor the secret key ever reaches the other's side
//! (docs/pci-scope.md says why that is SAQ A).
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the merchant's server creates a payment intent with its secret key and serves the checkout page with only the intent's id, its `clientSecret` and the publishable key. The card fields are the vault's own page (`/vault/elements`) in an iframe; the page's script asks it for a token by `postMessage`, then confirms the intent at the API with the publishable key and the client secret, and follows the 3-D Secure redirect |
//! | `GET /return?payment_intent=` | the return URL: the intent's status (read with the secret key), refreshed while it is still moving |
//!
//! `paystream up` serves it next to the stack (its publishable key lists the demo's origin),
//! and the browser test (tests/tests/it/browser.rs) drives it in headless Chromium. It is a
//! client of the public API and the vault only.
#![forbid(unsafe_code)]

mod page;

use std::time::Duration;

use poem::http::StatusCode;
use poem::listener::TcpAcceptor;
use poem::web::{Data, Query};
use poem::{get, handler, EndpointExt, Response, Route, Server};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// The customer every demo payment belongs to.
pub const CUSTOMER: &str = "cus_demo";
/// What the demo shop sells, in minor units of [`CURRENCY`].
pub const AMOUNT: i64 = 1099;
pub const CURRENCY: &str = "usd";

/// Statuses in which the intent still moves on by itself (the confirm worker is at it).
const MOVING: &[&str] = &["processing"];

#[derive(Clone)]
pub struct DemoConfig {
    /// The API, as the demo's server and the customer's browser reach it.
    pub api_url: String,
    /// The vault as the customer's browser reaches it.
    pub vault_url: String,
    /// The merchant's secret key; it stays on this server.
    pub secret_key: String,
    /// The merchant's `pk_` key; it is written into the page. It must list the demo's origin
    /// (`--origin`), or the browser's calls to the API and the vault's card fields are refused.
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

    async fn intent(&self, id: &str) -> Result<Value, DemoError> {
        self.call(
            self.http
                .get(self.api(&format!("/api/payment-intents/{id}"))),
        )
        .await
    }

    /// The merchant's side of a payment: a new intent for the basket, with the secret key.
    /// Its `clientSecret` is all of it the page gets.
    async fn new_intent(&self) -> Result<Value, DemoError> {
        self.call(
            self.http
                .post(self.api("/api/payment-intents"))
                .json(&json!({
                    "amount": AMOUNT, "currency": CURRENCY, "customerId": CUSTOMER,
                    "returnUrl": self.return_url,
                })),
        )
        .await
    }
}

#[handler]
async fn checkout(Data(shop): Data<&std::sync::Arc<Shop>>) -> Response {
    let intent = match shop.new_intent().await {
        Ok(intent) => intent,
        Err(e) => {
            tracing::warn!(error = %e, "the demo could not create a payment intent");
            return page::problem(e.status(), &e.to_string());
        }
    };
    let (Some(id), Some(client_secret)) = (
        intent["id"].as_str().filter(|id| is_id("pi_", id)),
        intent["clientSecret"].as_str(),
    ) else {
        return page::problem(StatusCode::BAD_GATEWAY, "the API answered no client secret");
    };
    page::checkout(&page::Checkout {
        api_url: &shop.config.api_url,
        vault_url: &shop.config.vault_url,
        publishable_key: &shop.config.publishable_key,
        intent_id: id,
        client_secret,
        return_url: &shop.return_url,
    })
}

/// An id of the shape paystream hands out (`tok_...`, `pi_...`): the prefix, then at most 64
/// characters in all of letters, digits and `_`. Anything else never reaches the API or a page.
fn is_id(prefix: &str, raw: &str) -> bool {
    raw.len() <= 64
        && raw.strip_prefix(prefix).is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
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
