//! What every vault route shares: reading a bounded body, parsing JSON so that every 400 names
//! its field without quoting the value, and the two ways a caller authenticates.

use poem::http::HeaderMap;
use poem::Body;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use paystream_shared::store::merchants::{self, KeyOwner};

use crate::error::VaultError;
use crate::State;

/// Bodies above this are refused (413) before they are parsed. A token request is a few
/// hundred bytes; a forwarded acquirer request a few more.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub async fn read_body(body: Body) -> Result<Vec<u8>, VaultError> {
    body.into_bytes_limit(MAX_BODY_BYTES)
        .await
        .map(|b| b.to_vec())
        .map_err(|e| match e {
            poem::error::ReadBodyError::PayloadTooLarge => VaultError::too_large(MAX_BODY_BYTES),
            _ => VaultError::invalid("invalid_body", "The request body could not be read"),
        })
}

/// Parses JSON into `T`. Serde's own messages quote the offending value (`invalid type: string
/// "4242…"`), and a CVC or account number is short enough to slip past the scrubber, so only
/// the path and what was expected are ever shown.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, VaultError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize::<_, T>(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() || inner.is_io() {
            return VaultError::invalid("invalid_json", "The request body is not valid JSON");
        }
        let message = inner.to_string();
        let prefix = if path == "." {
            String::new()
        } else {
            format!("{path}.")
        };
        if let Some(field) = backticked(&message, "missing field `") {
            let param = format!("{prefix}{field}");
            return VaultError::invalid(
                "parameter_missing",
                format!("Missing required param: {param}"),
            )
            .with_param(param);
        }
        if message.starts_with("unknown field `") {
            return VaultError::invalid(
                "parameter_unknown",
                format!("Received unknown parameter: {path}"),
            )
            .with_param(path);
        }
        let expected = message
            .split_once(", expected ")
            .map(|(_, e)| format!(": expected {}", e.split(" at line").next().unwrap_or(e)))
            .unwrap_or_default();
        let err = VaultError::invalid(
            "parameter_invalid",
            format!("Invalid value for `{path}`{expected}"),
        );
        if path == "." {
            err
        } else {
            err.with_param(path)
        }
    })?;
    de.end()
        .map_err(|_| VaultError::invalid("invalid_json", "Unexpected data after the JSON body"))?;
    Ok(value)
}

fn backticked<'a>(message: &'a str, lead: &str) -> Option<&'a str> {
    let start = message.find(lead)? + lead.len();
    let end = message[start..].find('`')? + start;
    Some(&message[start..end])
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("Authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// A merchant's key (secret or publishable), looked up by its hash in the main `api_keys`
/// table through the same function the API uses. Reading keys is the vault's only access to
/// the main schema, and it is read-only.
pub async fn merchant(state: &State, headers: &HeaderMap) -> Result<KeyOwner, VaultError> {
    let secret = bearer(headers).ok_or_else(|| {
        VaultError::unauthorized(
            "No API key provided. Send Authorization: Bearer <secret or publishable key>.",
        )
    })?;
    let owner = merchants::authenticate(&state.pool, secret)
        .await
        .map_err(|e| VaultError::internal(&e))?
        .ok_or_else(|| VaultError::unauthorized("Invalid API key provided."))?;
    if !paystream_shared::roles::VAULT_TOKENIZE.permitted_to(owner.role) {
        return Err(VaultError::forbidden(format!(
            "A `{}` key may not create tokens.",
            owner.role.as_str()
        )));
    }
    Ok(owner)
}

/// The service credential of paystream's own processes, compared in constant time (over
/// SHA-256 digests, so not even its length leaks). Anything else is a 401.
pub fn service(state: &State, headers: &HeaderMap) -> Result<(), VaultError> {
    let presented = bearer(headers).unwrap_or_default();
    let want = Sha256::digest(state.config.service_token.expose().as_bytes());
    let got = Sha256::digest(presented.as_bytes());
    if bool::from(want.ct_eq(&got)) && !presented.is_empty() {
        Ok(())
    } else {
        Err(VaultError::unauthorized(
            "This endpoint is for paystream's services; present the vault service credential.",
        ))
    }
}

/// `Idempotency-Key`: 1..=255 printable ASCII, as everywhere in paystream.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, VaultError> {
    let Some(raw) = headers.get("Idempotency-Key") else {
        return Ok(None);
    };
    let ok = raw
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| (0x20..0x7f).contains(&b)));
    match ok {
        Some(k) => Ok(Some(k.to_owned())),
        None => Err(VaultError::invalid(
            "idempotency_key_invalid",
            "Idempotency-Key must be 1 to 255 printable ASCII characters",
        )
        .with_param("Idempotency-Key")),
    }
}

/// JSON with object keys sorted at every level, so two bodies that differ only in key order
/// or whitespace compare equal.
pub fn canonical_json(value: &serde_json::Value) -> String {
    fn sorted(value: &serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                let mut out = serde_json::Map::new();
                for (k, v) in entries {
                    out.insert(k.clone(), sorted(v));
                }
                serde_json::Value::Object(out)
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.iter().map(sorted).collect())
            }
            other => other.clone(),
        }
    }
    sorted(value).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instrument::TokenRequest;

    #[test]
    fn errors_name_the_field_and_never_quote_it() {
        let e = parse_json::<TokenRequest>(br#"{"card": {"number": 4242424242424242}}"#)
            .err()
            .unwrap();
        assert_eq!(e.param.as_deref(), Some("card.number"));
        assert!(!e.body().to_string().contains("4242"), "{}", e.body());
        let e = parse_json::<TokenRequest>(
            br#"{"card": {"number": "4242424242424242", "expMonth": 1, "expYear": 2030, "cvc": 123}}"#,
        )
        .err()
        .unwrap();
        assert_eq!(e.param.as_deref(), Some("card.cvc"));
        assert!(!e.body().to_string().contains("123"), "{}", e.body());
        let e = parse_json::<TokenRequest>(br#"{"card": {"nummer": "1"}}"#)
            .err()
            .unwrap();
        assert_eq!(e.code, "parameter_unknown");
        assert_eq!(e.param.as_deref(), Some("card.nummer"));
        let e = parse_json::<TokenRequest>(br#"{"card": {"number": "1"}}"#)
            .err()
            .unwrap();
        assert_eq!(e.code, "parameter_missing");
        assert_eq!(e.param.as_deref(), Some("card.expMonth"));
    }

    #[test]
    fn canonical_json_ignores_key_order() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b": 1, "a": {"d": 2, "c": 3}}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{"a": {"c": 3, "d": 2}, "b": 1}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
    }
}
