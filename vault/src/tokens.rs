//! `POST /vault/tokens`: a card or bank account in, a single-use `tok_` out. The number is
//! validated, sealed under a fresh data key and stored; the answer carries display fields only.

use base64::Engine;
use chrono::{DateTime, Duration, SubsecRound, Utc};
use poem::http::{HeaderMap, StatusCode};
use poem::web::Data;
use poem::{handler, Body, Response};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use paystream_shared::store::merchants::KeyOwner;

use crate::error::VaultError;
use crate::instrument::{self, Parsed, TokenRequest};
use crate::store::audit::{self, Actor};
use crate::store::idempotency::{self, Claim};
use crate::store::{data_keys, records, tokens};
use crate::{http, State};

/// How long a token stays usable.
pub const TOKEN_TTL_MINUTES: i64 = 15;

#[handler]
pub async fn create(Data(state): Data<&State>, headers: &HeaderMap, body: Body) -> Response {
    match create_inner(state, headers, body).await {
        Ok(r) => r,
        Err(e) => poem::IntoResponse::into_response(e),
    }
}

fn json_response(status: StatusCode, body: &Value, replayed: bool) -> Response {
    let mut r = Response::builder()
        .status(status)
        .content_type("application/json");
    if replayed {
        r = r.header("Idempotent-Replayed", "true");
    }
    r.body(body.to_string())
}

async fn create_inner(
    state: &State,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, VaultError> {
    let owner = http::merchant(state, headers).await?;
    let key = http::idempotency_key(headers)?;
    let bytes = http::read_body(body).await?;
    let Some(key) = key else {
        let mut tx = state.pool.begin().await?;
        let (status, body) = match tokenize(state, &mut tx, &owner, &bytes).await {
            Ok(body) => (StatusCode::CREATED, body),
            Err(e) if e.status.is_client_error() => (e.status, e.body()),
            Err(e) => return Err(e),
        };
        tx.commit().await?;
        return Ok(json_response(status, &body, false));
    };

    // The request is recognised by a MAC under the vault's secret, never by a plain hash: a
    // hash of a body with a card number in it could be brute-forced back to the number.
    let canonical = serde_json::from_slice::<Value>(&bytes)
        .map(|v| http::canonical_json(&v).into_bytes())
        .unwrap_or_else(|_| bytes.clone());
    let mac = state.fingerprint_key.mac(&[
        b"idempotency",
        owner.merchant_id.as_bytes(),
        b"POST /vault/tokens",
        &canonical,
    ]);
    let mut tx = state.pool.begin().await?;
    match idempotency::claim(&mut tx, &owner.merchant_id, &key, &mac).await? {
        Claim::Stored {
            request_mac,
            status,
            body,
        } => {
            tx.commit().await?;
            if !bool::from(request_mac.as_slice().ct_eq(&mac)) {
                return Err(VaultError::idempotency_reused());
            }
            // A success replays as 200, an error as the status it had.
            let status = if status == 201 {
                StatusCode::OK
            } else {
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST)
            };
            Ok(json_response(status, &body, true))
        }
        Claim::Claimed => {
            let (status, body) = match tokenize(state, &mut tx, &owner, &bytes).await {
                Ok(body) => (StatusCode::CREATED, body),
                // Validation errors are part of the answer and stored; a failure of ours is
                // not, and the rollback releases the key for the retry.
                Err(e) if e.status.is_client_error() => (e.status, e.body()),
                Err(e) => return Err(e),
            };
            idempotency::store(&mut tx, &owner.merchant_id, &key, status.as_u16(), &body).await?;
            tx.commit().await?;
            Ok(json_response(status, &body, false))
        }
    }
}

fn fingerprint(state: &State, merchant_id: &str, parsed: &Parsed) -> String {
    let mut parts: Vec<&[u8]> = vec![b"fingerprint", merchant_id.as_bytes()];
    parts.extend(parsed.fingerprint_input.iter().map(Vec::as_slice));
    let mac = state.fingerprint_key.mac(&parts);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&mac[..12])
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Validates, seals and stores; the answer body. Runs in the caller's transaction, so a token
/// and its Idempotency-Key answer commit together.
async fn tokenize(
    state: &State,
    tx: &mut sqlx::PgConnection,
    owner: &KeyOwner,
    bytes: &[u8],
) -> Result<Value, VaultError> {
    let req: TokenRequest = http::parse_json(bytes)?;
    let parsed = match (req.card, req.bank_account) {
        (Some(card), None) => instrument::parse_card(card, instrument::today())?,
        (None, Some(bank)) => instrument::parse_bank_account(bank)?,
        (None, None) => {
            return Err(
                VaultError::invalid("parameter_missing", "Send `card` or `bankAccount`.")
                    .with_param("card"),
            )
        }
        (Some(_), Some(_)) => {
            return Err(VaultError::invalid(
                "parameter_invalid",
                "Send only one of `card` and `bankAccount`.",
            )
            .with_param("bankAccount"))
        }
    };
    let fingerprint = fingerprint(state, &owner.merchant_id, &parsed);
    let mut display = parsed.display.clone();
    display.insert("fingerprint".into(), fingerprint.clone().into());
    let display = Value::Object(display);

    let record_id = format!("vr_{}", uuid::Uuid::new_v4().simple());
    let (data_key_id, dek) = data_keys::create_record_key(tx, &state.keyring).await?;
    let sealed = dek.seal(
        &records::record_aad(&record_id, &owner.merchant_id, parsed.kind),
        &parsed.secret,
    )?;
    drop(parsed.secret);
    records::insert(
        tx,
        records::NewRecord {
            id: &record_id,
            merchant_id: &owner.merchant_id,
            kind: parsed.kind,
            data_key_id: &data_key_id,
            sealed: &sealed,
            display: &display,
            fingerprint: &fingerprint,
        },
    )
    .await?;

    let token_id = format!("tok_{}", uuid::Uuid::new_v4().simple());
    let created_at = Utc::now().trunc_subsecs(6);
    let expires_at = created_at + Duration::minutes(TOKEN_TTL_MINUTES);
    tokens::insert(
        tx,
        tokens::NewToken {
            id: &token_id,
            merchant_id: &owner.merchant_id,
            record_id: &record_id,
            kind: parsed.kind.as_str(),
            created_by: &owner.key_id,
            created_at,
            expires_at,
        },
    )
    .await?;
    audit::append(
        &mut *tx,
        &Actor::ApiKey(owner.key_id.clone()),
        "token.created",
        &token_id,
        Some(&owner.merchant_id),
        json!({"type": parsed.kind.as_str(), "fingerprint": fingerprint}),
    )
    .await?;
    tracing::info!(token = %token_id, kind = parsed.kind.as_str(), merchant = %owner.merchant_id, "token created");
    let mut body = json!({
        "id": token_id,
        "object": "token",
        "type": parsed.kind.as_str(),
        "createdAt": rfc3339(created_at),
        "expiresAt": rfc3339(expires_at),
        "used": false,
    });
    body[parsed.kind.field()] = display;
    Ok(body)
}
