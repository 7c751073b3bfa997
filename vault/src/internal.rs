//! `/vault/internal/...`: what paystream's own processes call with the service credential.
//! - consume a token into a stored record (the payment-methods API), refusing unspent a token
//!   of another kind than the caller expects,
//! - forward a request to the acquirer with the number put in (the confirm worker),
//! - re-wrap data keys under the current KEK (`paystream vault rotate-kek`).

use poem::http::{HeaderMap, StatusCode};
use poem::web::{Data, Path};
use poem::{handler, Body, IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::VaultError;
use crate::instrument::{BankSecret, CardSecret, Kind};
use crate::store::audit::{self, Actor};
use crate::store::{data_keys, records, tokens};
use crate::{http, State};

/// The acquirer paths a forward may reach: those that need the number. Capture, void and
/// refund name the acquirer's charge and go to the acquirer directly.
pub const FORWARD_PATHS: &[&str] = &["/v1/payments"];

/// Marks an answer that came from the acquirer, so a caller can tell the acquirer's own
/// 4xx/5xx from the vault's.
pub const FORWARDED_HEADER: &str = "Vault-Forwarded";

fn respond(result: Result<Response, VaultError>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConsumeRequest {
    merchant_id: String,
    /// The kind the caller expects; a live token of another kind is refused unspent.
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[handler]
pub async fn consume(
    Data(state): Data<&State>,
    Path(token): Path<String>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    respond(consume_inner(state, &token, headers, body).await)
}

async fn consume_inner(
    state: &State,
    token: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, VaultError> {
    http::service(state, headers)?;
    let req: ConsumeRequest = http::parse_json(&http::read_body(body).await?)?;
    let mut tx = state.pool.begin().await?;
    if let Some(expected) = &req.kind {
        if let Some(actual) = tokens::live_kind(&mut tx, token, &req.merchant_id).await? {
            if &actual != expected {
                return Err(VaultError::invalid(
                    "parameter_invalid",
                    format!("The token is a `{actual}`, not a `{expected}`; it was not used"),
                )
                .with_param("type"));
            }
        }
    }
    let Some(record_id) = tokens::consume(&mut tx, token, &req.merchant_id).await? else {
        return Err(VaultError::token_invalid());
    };
    let (kind, display) = records::mark_stored(&mut tx, &record_id).await?;
    audit::append(
        &mut *tx,
        &Actor::Service,
        "token.consumed",
        token,
        Some(&req.merchant_id),
        json!({"vaultRef": record_id}),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(token, vault_ref = %record_id, "token consumed");
    let field = Kind::parse(&kind).map_or("card", Kind::field);
    let mut body = json!({"vaultRef": record_id, "type": kind});
    body[field] = display;
    Ok(Response::builder()
        .status(StatusCode::OK)
        .content_type("application/json")
        .body(body.to_string()))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ForwardRequest {
    merchant_id: String,
    vault_ref: String,
    path: String,
    body: serde_json::Map<String, Value>,
    idempotency_key: String,
}

#[handler]
pub async fn forward(Data(state): Data<&State>, headers: &HeaderMap, body: Body) -> Response {
    respond(forward_inner(state, headers, body).await)
}

async fn forward_inner(
    state: &State,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, VaultError> {
    http::service(state, headers)?;
    let req: ForwardRequest = http::parse_json(&http::read_body(body).await?)?;
    if !FORWARD_PATHS.contains(&req.path.as_str()) {
        return Err(VaultError::invalid(
            "path_not_allowed",
            format!("The vault forwards only to {}", FORWARD_PATHS.join(", ")),
        )
        .with_param("path"));
    }
    if !(1..=255).contains(&req.idempotency_key.len())
        || !req
            .idempotency_key
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b))
    {
        // Without a key a repeated forward could charge twice; the acquirer needs one.
        return Err(VaultError::invalid(
            "parameter_invalid",
            "`idempotencyKey` must be 1 to 255 printable ASCII characters",
        )
        .with_param("idempotencyKey"));
    }
    // The vault puts the instrument in; the caller may not bring its own.
    for field in ["card", "bankAccount", "paymentMethod"] {
        if req.body.contains_key(field) {
            return Err(VaultError::invalid(
                "parameter_invalid",
                format!("`body.{field}` is set by the vault from `vaultRef`"),
            )
            .with_param(format!("body.{field}")));
        }
    }
    let Some(record) = records::stored(&state.pool, &req.merchant_id, &req.vault_ref).await? else {
        return Err(
            VaultError::not_found("No such stored payment method in the vault")
                .with_param("vaultRef"),
        );
    };
    let kind = Kind::parse(&record.kind)
        .ok_or_else(|| VaultError::internal(&std::io::Error::other("record of an unknown kind")))?;
    let dek = data_keys::open_record_key(&state.pool, &state.keyring, &record.data_key_id).await?;
    let plain = dek.open(
        &records::record_aad(&req.vault_ref, &req.merchant_id, kind),
        &record.sealed,
    )?;
    // The number exists in clear from here to the end of this function, and only in the body
    // sent to the acquirer.
    let (instrument, number) = match kind {
        Kind::Card => {
            let card: CardSecret =
                serde_json::from_slice(&plain).map_err(|e| VaultError::internal(&e))?;
            let number = card.number.clone();
            (
                json!({"number": card.number, "expMonth": card.exp_month, "expYear": card.exp_year}),
                number,
            )
        }
        Kind::BankAccount => {
            let bank: BankSecret =
                serde_json::from_slice(&plain).map_err(|e| VaultError::internal(&e))?;
            let number = bank.account_number.clone();
            (
                json!({
                    "country": bank.country,
                    "routingNumber": bank.routing_number,
                    "accountNumber": bank.account_number,
                    "accountHolderName": bank.account_holder_name,
                    "accountHolderType": bank.account_holder_type,
                }),
                number,
            )
        }
    };
    drop(plain);
    let mut outgoing = req.body;
    outgoing.insert(kind.field().to_owned(), instrument);
    let sent = state
        .http
        .post(format!("{}{}", state.config.acquirer_url, req.path))
        .header("Idempotency-Key", &req.idempotency_key)
        .json(&outgoing)
        .send()
        .await;
    drop(outgoing);
    let detail = |status: Option<u16>, error: Option<&str>| json!({"path": req.path, "idempotencyKey": req.idempotency_key, "acquirerStatus": status, "error": error});
    let answer = match sent {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let content_type = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .to_owned();
            let replayed = resp.headers().get("Idempotent-Replayed").cloned();
            match resp.bytes().await {
                Ok(bytes) => Ok((status, content_type, replayed, bytes)),
                Err(e) => Err(if e.is_timeout() {
                    "timeout"
                } else {
                    "connection"
                }),
            }
        }
        Err(e) => Err(if e.is_timeout() {
            "timeout"
        } else {
            "connection"
        }),
    };
    match answer {
        Ok((status, content_type, replayed, bytes)) => {
            audit::append(
                &state.pool,
                &Actor::Service,
                "forward",
                &req.vault_ref,
                Some(&req.merchant_id),
                detail(Some(status), None),
            )
            .await?;
            tracing::info!(vault_ref = %req.vault_ref, path = %req.path, status, "forwarded to the acquirer");
            // The acquirer has no reason to echo the number; should it ever, it stops here.
            let text = String::from_utf8_lossy(&bytes);
            let body = if text.contains(number.as_str()) {
                tracing::warn!(vault_ref = %req.vault_ref, "the acquirer's answer contained the number; removed");
                text.replace(number.as_str(), "[REDACTED]").into_bytes()
            } else {
                bytes.to_vec()
            };
            let mut r = Response::builder()
                .status(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY))
                .content_type(content_type)
                .header(FORWARDED_HEADER, "acquirer");
            if let Some(v) = replayed {
                r = r.header("Idempotent-Replayed", v);
            }
            Ok(r.body(body))
        }
        Err(reason) => {
            audit::append(
                &state.pool,
                &Actor::Service,
                "forward",
                &req.vault_ref,
                Some(&req.merchant_id),
                detail(None, Some(reason)),
            )
            .await?;
            tracing::warn!(vault_ref = %req.vault_ref, reason, "forward to the acquirer failed");
            // Whether the acquirer acted is unknown: the caller retries under the same key.
            let code = if reason == "timeout" {
                "acquirer_timeout"
            } else {
                "acquirer_unreachable"
            };
            let status = if reason == "timeout" {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::BAD_GATEWAY
            };
            Err(VaultError::new(
                status,
                "api_error",
                code,
                "The acquirer did not answer; retry with the same idempotencyKey.",
            ))
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RewrapRequest {
    batch_size: Option<i64>,
}

#[handler]
pub async fn rewrap(Data(state): Data<&State>, headers: &HeaderMap, body: Body) -> Response {
    respond(rewrap_inner(state, headers, body).await)
}

async fn rewrap_inner(
    state: &State,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, VaultError> {
    http::service(state, headers)?;
    let bytes = http::read_body(body).await?;
    let req: RewrapRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        RewrapRequest::default()
    } else {
        http::parse_json(&bytes)?
    };
    let batch = req.batch_size.unwrap_or(500);
    if !(1..=10_000).contains(&batch) {
        return Err(
            VaultError::invalid("parameter_invalid", "`batchSize` must be 1 to 10000")
                .with_param("batchSize"),
        );
    }
    let report = data_keys::rewrap_batch(&state.pool, &state.keyring, batch).await?;
    if report.rewrapped > 0 {
        audit::append(
            &state.pool,
            &Actor::Service,
            "kek.rewrapped",
            state.keyring.current_id(),
            None,
            json!({"rewrapped": report.rewrapped, "remaining": report.remaining}),
        )
        .await?;
    }
    tracing::info!(
        rewrapped = report.rewrapped,
        remaining = report.remaining,
        kek = state.keyring.current_id(),
        "data keys re-wrapped"
    );
    Ok(Response::builder()
        .status(StatusCode::OK)
        .content_type("application/json")
        .body(
            json!({
                "rewrapped": report.rewrapped,
                "remaining": report.remaining,
                "currentKekId": state.keyring.current_id(),
                "previousKekId": state.keyring.previous_id(),
            })
            .to_string(),
        ))
}
