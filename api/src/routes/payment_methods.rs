//! Payment methods: a customer's card or bank account, stored from a vault token. The API
//! never sees a number: it asks the vault to consume the token (service credential) and keeps
//! the vault's reference and the display fields it answers with.

use poem::http::StatusCode;
use poem::Request;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::{Deserialize, Serialize};

use paystream_shared::domain::ids::IdKind;
use paystream_shared::store::payment_methods::{self as store, PaymentMethod};
use paystream_shared::views::{PaymentMethodType, PaymentMethodView};
use paystream_vault::client::{ClientError, VaultClient};

use crate::auth::{AuthContext, MerchantKey};
use crate::error::ApiError;
use crate::extract::{parse_limit, JsonBody, SerdeJson};
use crate::responses::{Errors, BAD_REQUEST, NOT_FOUND, READ, UNAVAILABLE, WRITE};
use crate::routes::ApiTags;
use crate::{idempotency, AppState};

#[derive(Debug, Deserialize, Object)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[oai(rename_all = "camelCase")]
pub struct CreatePaymentMethod {
    /// What the token holds; a token of the other kind is refused and left unused.
    #[serde(rename = "type")]
    #[oai(rename = "type")]
    pub method_type: PaymentMethodType,
    /// A `tok_...` from `POST /vault/tokens`, of this merchant, unused and not expired.
    pub token: String,
    /// Your own customer reference; not checked.
    pub customer_id: String,
}

#[derive(Object, Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct PaymentMethodList {
    pub data: Vec<PaymentMethodView>,
    pub has_more: bool,
}

#[derive(ApiResponse)]
pub enum PaymentMethodCreated {
    /// The payment method was stored; the token is used up.
    #[oai(status = 201)]
    Created(SerdeJson<PaymentMethodView>),
    /// A replay of an earlier request with this Idempotency-Key, with
    /// `Idempotent-Replayed: true`.
    #[oai(status = 200)]
    Replayed(SerdeJson<PaymentMethodView>),
}

#[derive(ApiResponse)]
pub enum PaymentMethodResponse {
    /// The payment method.
    #[oai(status = 200)]
    Ok(SerdeJson<PaymentMethodView>),
}

#[derive(ApiResponse)]
pub enum PaymentMethodListResponse {
    /// One page, newest first.
    #[oai(status = 200)]
    Ok(SerdeJson<PaymentMethodList>),
}

/// Creating also reaches the vault, which may be down.
const CREATE: u32 = WRITE | BAD_REQUEST | UNAVAILABLE;
/// Detaching names a method by id.
const DETACH: u32 = WRITE | NOT_FOUND;

/// The vault's client, built once per application from `PAYSTREAM_VAULT_URL` and
/// `PAYSTREAM_VAULT_SERVICE_TOKEN`; `None` when the credential is not configured.
#[derive(Clone)]
pub struct Vault(pub Option<VaultClient>);

impl Vault {
    pub fn from_config(config: &paystream_shared::config::Config) -> Self {
        let client = config.vault_service_token.clone().and_then(|token| {
            VaultClient::trusting(&config.vault_url, token, config.tls.ca_cert.as_deref())
                .map_err(|e| tracing::error!(error = %e, "cannot build the vault client"))
                .ok()
        });
        Vault(client)
    }
}

/// A token as the vault issues them. Checked before it goes into the vault's URL, so nothing
/// a caller sends can name another path there.
fn parse_token(raw: &str) -> Result<&str, ApiError> {
    let ok = raw.len() <= 255
        && raw.strip_prefix("tok_").is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric())
        });
    if ok {
        Ok(raw)
    } else {
        Err(token_invalid())
    }
}

fn token_invalid() -> ApiError {
    ApiError::invalid(
        "token_invalid",
        "The token is unknown, expired, already used, or not yours",
    )
    .with_param("token")
}

fn vault_unavailable(e: &ClientError) -> ApiError {
    tracing::warn!(error = %e, "the vault did not answer");
    ApiError::unavailable("The vault is unavailable; retry later with the same Idempotency-Key")
}

/// Turns the vault's refusal into the API's answer: the caller's mistakes keep their code,
/// anything else (a refused credential, a vault error) is the service's problem, a 503.
fn vault_refusal(status: u16, body: &serde_json::Value) -> ApiError {
    let code = body["error"]["code"].as_str().unwrap_or("");
    match (status, code) {
        (400, "token_invalid") | (404, _) => token_invalid(),
        (400, "parameter_invalid") if body["error"]["param"] == "type" => ApiError::invalid(
            "parameter_invalid",
            "`type` does not match the token; the token was not used",
        )
        .with_param("type"),
        _ => {
            tracing::error!(status, code, "the vault refused to consume a token");
            ApiError::unavailable("The vault could not store the payment method; retry later")
        }
    }
}

/// Consumes a vault token of `auth`'s merchant and makes it a payment method of `customer_id`
/// (not yet stored): what `POST /payment-methods` and a confirm with `paymentMethod` share.
pub(crate) async fn from_token(
    vault: &Vault,
    auth: &AuthContext,
    method_type: PaymentMethodType,
    token: &str,
    customer_id: &str,
) -> Result<PaymentMethod, ApiError> {
    let token = parse_token(token)?;
    let Some(client) = vault.0.as_ref() else {
        return Err(ApiError::unavailable(
            "The vault is not configured here (PAYSTREAM_VAULT_SERVICE_TOKEN is unset)",
        ));
    };
    let consumed = client
        .consume(token, &auth.merchant_id, Some(method_type.as_str()))
        .await
        .map_err(|e| vault_unavailable(&e))?
        .map_err(|(status, body)| vault_refusal(status, &body))?;
    PaymentMethod::from_vault(
        IdKind::PaymentMethod.generate(),
        &auth.merchant_id,
        customer_id,
        &consumed,
        paystream_shared::domain::now(),
    )
    .ok_or_else(|| {
        ApiError::internal(&std::io::Error::other(
            "the vault's consume answer lacks type, vaultRef or display fields",
        ))
    })
}

async fn load(state: &AppState, auth: &AuthContext, id: &str) -> Result<PaymentMethod, ApiError> {
    if IdKind::PaymentMethod.parse(id, "id").is_err() {
        return Err(ApiError::not_found("payment_method", id));
    }
    store::get(&state.pool, &auth.merchant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("payment_method", id))
}

pub struct PaymentMethodsApi;

#[OpenApi(tag = "ApiTags::PaymentMethods")]
impl PaymentMethodsApi {
    /// Store a payment method from a vault token.
    ///
    /// The token (from `POST /vault/tokens`, made with a publishable or secret key of this
    /// merchant) is used once; only display fields are kept. A used, expired, unknown or other
    /// merchant's token is 400 `token_invalid`; a `type` that does not match the token is 400
    /// `parameter_invalid` and leaves the token unused. 503 when the vault is unreachable.
    #[oai(path = "/payment-methods", method = "post")]
    async fn create(
        &self,
        req: &Request,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        vault: poem::web::Data<&Vault>,
        /// Makes the request safe to retry: the same key with the same body answers the
        /// original response (200, `Idempotent-Replayed: true`) instead of running again.
        #[oai(name = "Idempotency-Key")]
        _idempotency_key: Header<Option<String>>,
        body: JsonBody<CreatePaymentMethod, true>,
    ) -> Result<PaymentMethodCreated, Errors<CREATE>> {
        let auth = auth.0;
        let b = body.0;
        let customer_id = b.customer_id.trim().to_owned();
        if customer_id.is_empty() || customer_id.len() > 255 {
            return Err(ApiError::invalid(
                "parameter_invalid",
                "`customerId` must be 1 to 255 characters",
            )
            .with_param("customerId")
            .into());
        }
        let pm = from_token(vault.0, &auth, b.method_type, &b.token, &customer_id).await?;
        let mut tx = state.pool.begin().await?;
        store::insert(&mut tx, &pm, &auth.actor()).await?;
        let view = pm.view();
        let body = serde_json::to_vec(&view).map_err(|e| ApiError::internal(&e))?;
        idempotency::complete(req, &mut tx, StatusCode::CREATED, &body).await?;
        tx.commit().await?;
        Ok(PaymentMethodCreated::Created(SerdeJson(view)))
    }

    /// Retrieve a payment method. Another merchant's is 404.
    #[oai(path = "/payment-methods/:id", method = "get")]
    async fn get(
        &self,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        id: Path<String>,
    ) -> Result<PaymentMethodResponse, Errors<{ READ | NOT_FOUND }>> {
        let pm = load(&state, &auth.0, &id.0).await?;
        auth.0
            .record_read(&state, "payment_method", &pm.id, serde_json::json!([pm.id]))
            .await?;
        Ok(PaymentMethodResponse::Ok(SerdeJson(pm.view())))
    }

    /// List payment methods, newest first, optionally of one customer.
    #[oai(path = "/payment-methods", method = "get")]
    async fn list(
        &self,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        #[oai(name = "customerId")] customer_id: Query<Option<String>>,
        limit: Query<Option<String>>,
        #[oai(name = "startingAfter")] starting_after: Query<Option<String>>,
    ) -> Result<PaymentMethodListResponse, Errors<READ>> {
        let limit = parse_limit(limit.0.as_deref())?;
        if let Some(cursor) = starting_after.0.as_deref() {
            if !store::exists(&state.pool, &auth.0.merchant_id, cursor).await? {
                return Err(ApiError::invalid(
                    "resource_missing",
                    "`startingAfter` names no payment method of yours",
                )
                .with_param("startingAfter")
                .into());
            }
        }
        let mut rows = store::list(
            &state.pool,
            &auth.0.merchant_id,
            customer_id.0.as_deref(),
            starting_after.0.as_deref(),
            limit + 1,
        )
        .await?;
        let wanted = usize::try_from(limit).unwrap_or(usize::MAX);
        let has_more = rows.len() > wanted;
        rows.truncate(wanted);
        // A page is one read, of the merchant's payment methods, naming each one it showed.
        let seen: Vec<&str> = rows.iter().map(|pm| pm.id.as_str()).collect();
        auth.0
            .record_read(
                &state,
                "payment_method_list",
                &format!("payment_methods:{}", auth.0.merchant_id),
                serde_json::json!(seen),
            )
            .await?;
        Ok(PaymentMethodListResponse::Ok(SerdeJson(
            PaymentMethodList {
                data: rows.iter().map(PaymentMethod::view).collect(),
                has_more,
            },
        )))
    }

    /// Detach a payment method from its customer: `customerId` becomes `null` and the
    /// method can no longer be used to confirm. Detaching twice is 400
    /// `payment_method_detached`.
    #[oai(path = "/payment-methods/:id/detach", method = "post")]
    async fn detach(
        &self,
        req: &Request,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        id: Path<String>,
        /// Makes the request safe to retry: the same key answers the original response
        /// instead of running again.
        #[oai(name = "Idempotency-Key")]
        _idempotency_key: Header<Option<String>>,
    ) -> Result<PaymentMethodResponse, Errors<DETACH>> {
        let auth = auth.0;
        let pm = load(&state, &auth, &id.0).await?;
        if pm.detached_at.is_some() {
            return Err(detached_error("id").into());
        }
        let mut tx = state.pool.begin().await?;
        let detached = match store::detach(&mut tx, &pm, &auth.actor()).await {
            Err(paystream_shared::store::StoreError::Conflict { .. }) => {
                return Err(detached_error("id").into())
            }
            other => other?,
        };
        let view = detached.view();
        let body = serde_json::to_vec(&view).map_err(|e| ApiError::internal(&e))?;
        idempotency::complete(req, &mut tx, StatusCode::OK, &body).await?;
        tx.commit().await?;
        Ok(PaymentMethodResponse::Ok(SerdeJson(view)))
    }
}

/// A detached method is no longer attached to anyone: it cannot be detached again or used.
pub fn detached_error(param: &str) -> ApiError {
    ApiError::invalid(
        "payment_method_detached",
        "This payment method was detached from its customer and can no longer be used",
    )
    .with_param(param)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_before_they_reach_the_vault() {
        assert!(parse_token("tok_abc123").is_ok());
        for bad in [
            "",
            "tok_",
            "tok_../forward",
            "4242424242424242",
            "tok_a/b",
            "tok_a?b",
        ] {
            assert_eq!(parse_token(bad).unwrap_err().code, "token_invalid", "{bad}");
        }
    }
}
