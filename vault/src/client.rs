//! A small HTTP client for the vault's service endpoints, for paystream's own processes (the
//! operator's `paystream vault rotate-kek` today; the payment-methods API and the confirm
//! worker next). It speaks only to the vault and never sees a number: consume returns display
//! fields, a forward returns the acquirer's answer.

use std::time::Duration;

use serde_json::{json, Value};

use paystream_shared::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the vault did not answer: {0}")]
    Unreachable(#[source] reqwest::Error),
    #[error("the vault answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("unreadable answer from the vault: {0}")]
    Protocol(String),
}

#[derive(Debug, Clone)]
pub struct VaultClient {
    base: String,
    token: Secret<String>,
    http: reqwest::Client,
}

/// The answer to a forward. `from_acquirer` is true only when the vault marked it as the
/// acquirer's own (header `Vault-Forwarded: acquirer`); any other answer is the vault's, and a
/// 502 or 504 of the vault means the acquirer's outcome is unknown.
#[derive(Debug, Clone, PartialEq)]
pub struct Forwarded {
    pub status: u16,
    pub from_acquirer: bool,
    /// The raw body: the acquirer's JSON when `from_acquirer`, the vault's error otherwise.
    pub body: Vec<u8>,
}

/// One answer of the re-wrap endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RewrapProgress {
    pub rewrapped: u64,
    pub remaining: u64,
}

impl VaultClient {
    pub fn new(base: &str, token: Secret<String>) -> Result<Self, ClientError> {
        Self::configured(base, token, Duration::from_secs(60), None)
    }

    /// As `new`, also trusting the CA bundle at `ca_cert` (`PAYSTREAM_CA_CERT`), for a vault
    /// served over HTTPS with a certificate of a private CA.
    pub fn trusting(
        base: &str,
        token: Secret<String>,
        ca_cert: Option<&std::path::Path>,
    ) -> Result<Self, ClientError> {
        Self::configured(base, token, Duration::from_secs(60), ca_cert)
    }

    /// A client whose every call gives up after `timeout` (the confirm worker bounds a forward
    /// like a direct acquirer call, plus the vault's own hop), trusting `ca_cert` if given.
    pub fn configured(
        base: &str,
        token: Secret<String>,
        timeout: Duration,
        ca_cert: Option<&std::path::Path>,
    ) -> Result<Self, ClientError> {
        Ok(VaultClient {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: paystream_shared::tls::client_builder(ca_cert)
                .map_err(|e| ClientError::Protocol(e.to_string()))?
                .timeout(timeout)
                .connect_timeout(timeout)
                .build()
                .map_err(ClientError::Unreachable)?,
        })
    }

    async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), ClientError> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(self.token.expose())
            .json(body)
            .send()
            .await
            .map_err(ClientError::Unreachable)?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(ClientError::Unreachable)?;
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// Re-wraps one batch of data keys under the vault's current KEK.
    pub async fn rewrap_batch(&self, batch_size: u32) -> Result<RewrapProgress, ClientError> {
        let (status, body) = self
            .post(
                "/vault/internal/kek/rewrap",
                &json!({"batchSize": batch_size}),
            )
            .await?;
        if status != 200 {
            return Err(ClientError::Refused {
                status,
                body: body.to_string(),
            });
        }
        let field = |name: &str| {
            body[name]
                .as_u64()
                .ok_or_else(|| ClientError::Protocol(format!("no `{name}` in {body}")))
        };
        Ok(RewrapProgress {
            rewrapped: field("rewrapped")?,
            remaining: field("remaining")?,
        })
    }

    /// Re-wraps batches until no data key is left under another KEK, calling `progress` after
    /// each. Each batch is committed on its own, so an interrupted run loses nothing and the
    /// next run continues.
    pub async fn rotate_kek(
        &self,
        batch_size: u32,
        mut progress: impl FnMut(RewrapProgress),
    ) -> Result<u64, ClientError> {
        let mut total = 0;
        let mut idle_rounds = 0;
        loop {
            let p = self.rewrap_batch(batch_size).await?;
            total += p.rewrapped;
            progress(p);
            if p.remaining == 0 {
                return Ok(total);
            }
            if p.rewrapped == 0 {
                // Another run holds the rest (SKIP LOCKED); wait for it to commit.
                idle_rounds += 1;
                if idle_rounds > 100 {
                    return Err(ClientError::Protocol(format!(
                        "{} data keys stayed locked by another rotation",
                        p.remaining
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            } else {
                idle_rounds = 0;
            }
        }
    }

    /// Consumes a token of `merchant_id`: `Ok(Ok(record))` with `vaultRef` and display fields,
    /// `Ok(Err((status, error body)))` when the vault refused (e.g. 400 `token_invalid`, or 400
    /// `parameter_invalid` param `type` when `expected_type` is given and the token is of
    /// another kind; such a token stays unused).
    pub async fn consume(
        &self,
        token: &str,
        merchant_id: &str,
        expected_type: Option<&str>,
    ) -> Result<Result<Value, (u16, Value)>, ClientError> {
        let mut body = json!({"merchantId": merchant_id});
        if let Some(t) = expected_type {
            body["type"] = json!(t);
        }
        let (status, body) = self
            .post(&format!("/vault/internal/tokens/{token}/consume"), &body)
            .await?;
        Ok(if status == 200 {
            Ok(body)
        } else {
            Err((status, body))
        })
    }

    /// Forwards `body` to the acquirer's `path` with the stored instrument put in. A transport
    /// failure is `Err(Unreachable)`; every answer, the acquirer's or the vault's own, is
    /// `Ok`, told apart by [`Forwarded::from_acquirer`].
    pub async fn forward(
        &self,
        merchant_id: &str,
        vault_ref: &str,
        path: &str,
        body: &Value,
        idempotency_key: &str,
    ) -> Result<Forwarded, ClientError> {
        let resp = self
            .http
            .post(format!("{}/vault/internal/forward", self.base))
            .bearer_auth(self.token.expose())
            .json(&json!({
                "merchantId": merchant_id,
                "vaultRef": vault_ref,
                "path": path,
                "body": body,
                "idempotencyKey": idempotency_key,
            }))
            .send()
            .await
            .map_err(ClientError::Unreachable)?;
        let status = resp.status().as_u16();
        let from_acquirer = resp
            .headers()
            .get(crate::internal::FORWARDED_HEADER)
            .is_some_and(|v| v.as_bytes() == b"acquirer");
        let body = resp.bytes().await.map_err(ClientError::Unreachable)?;
        Ok(Forwarded {
            status,
            from_acquirer,
            body: body.to_vec(),
        })
    }
}
