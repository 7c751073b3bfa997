//! [`Acquirer`] over HTTP: the protocol the `acquirer-sim` crate documents, and how its answers
//! map to outcomes and to the three error classes of [`AcquirerError`].

use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use paystream_vault::client::{ClientError, Forwarded, VaultClient};

use super::{
    Acquirer, AcquirerError, AuthorizeRequest, CaptureRequest, Charge, ChargeStatus, Instrument,
    PaymentOutcome, RefundReceipt, RefundRequest, VoidRequest,
};

#[derive(Debug, thiserror::Error)]
pub enum AcquirerSetupError {
    #[error("the acquirer URL {url:?} is not an http(s) URL")]
    Url { url: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error(transparent)]
    Ca(#[from] paystream_shared::config::ConfigError),
}

/// The acquirer over HTTP. Authorizations of stored payment methods go through the vault
/// (`vault`), which alone can put the number in; everything that names the acquirer's charge
/// (capture, void, refund, lookups) goes to the acquirer directly.
#[derive(Debug, Clone)]
pub struct HttpAcquirer {
    base: Url,
    timeout: Duration,
    http: reqwest::Client,
    vault: Option<VaultClient>,
}

impl HttpAcquirer {
    /// `timeout` bounds each call as a whole; a call that exceeds it is a transient failure.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, AcquirerSetupError> {
        Self::trusting(base_url, timeout, None)
    }

    /// As `new`, also trusting the CA bundle at `ca_cert` (`PAYSTREAM_CA_CERT`) for an https
    /// acquirer signed by a private CA.
    pub fn trusting(
        base_url: &str,
        timeout: Duration,
        ca_cert: Option<&std::path::Path>,
    ) -> Result<Self, AcquirerSetupError> {
        let bad = || AcquirerSetupError::Url {
            url: base_url.to_owned(),
        };
        // The trailing slash makes `join` append to the base's path instead of replacing its
        // last segment.
        let base =
            Url::parse(&format!("{}/", base_url.trim_end_matches('/'))).map_err(|_| bad())?;
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            return Err(bad());
        }
        let http = paystream_shared::tls::client_builder(ca_cert)?
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(AcquirerSetupError::Client)?;
        Ok(Self {
            base,
            timeout,
            http,
            vault: None,
        })
    }

    /// Sends the authorizations of stored payment methods through `vault`. Without one they
    /// are refused (an integration error: the process lacks `PAYSTREAM_VAULT_SERVICE_TOKEN`).
    #[must_use]
    pub fn with_vault(mut self, vault: Option<VaultClient>) -> Self {
        self.vault = vault;
        self
    }

    /// An authorization of a stored payment method, forwarded by the vault under the same
    /// idempotency key a direct call would carry.
    async fn authorize_through_vault(
        &self,
        req: &AuthorizeRequest,
        merchant_id: &str,
        vault_ref: &str,
    ) -> Result<PaymentOutcome, AcquirerError> {
        let Some(vault) = &self.vault else {
            return Err(AcquirerError::Rejected {
                status: 503,
                code: "vault_not_configured".to_owned(),
                message: "this process has no vault credential (PAYSTREAM_VAULT_SERVICE_TOKEN), so it cannot charge a stored payment method".to_owned(),
            });
        };
        let body = serde_json::json!({
            "reference": req.reference,
            "amount": req.amount,
            "currency": req.currency,
            "capture": req.capture,
            "returnUrl": req.return_url,
        });
        let forwarded = vault
            .forward(
                merchant_id,
                vault_ref,
                "/v1/payments",
                &body,
                &req.idempotency_key(),
            )
            .await
            .map_err(|e| vault_error(&e))?;
        forwarded_outcome(&forwarded)
    }

    fn url(&self, path: &str) -> Result<Url, AcquirerError> {
        self.base.join(path).map_err(|e| AcquirerError::Protocol {
            reason: format!("cannot build a URL for {path}: {e}"),
        })
    }

    async fn call(
        &self,
        method: Method,
        url: Url,
        idempotency_key: Option<&str>,
        body: Option<&(impl Serialize + Sync)>,
    ) -> Result<(StatusCode, Vec<u8>), AcquirerError> {
        let mut req = self.http.request(method, url);
        if let Some(key) = idempotency_key {
            req = req.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        Ok((status, bytes.to_vec()))
    }

    fn transport_error(&self, e: &reqwest::Error) -> AcquirerError {
        let reason = if e.is_timeout() {
            format!("no answer within {} ms", self.timeout.as_millis())
        } else {
            e.to_string()
        };
        AcquirerError::Transient { reason, code: None }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AuthorizeBody<'a> {
    reference: &'a str,
    amount: i64,
    currency: &'a str,
    payment_method: &'a str,
    capture: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    return_url: Option<&'a str>,
}

#[derive(Serialize)]
struct CaptureBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    amount: Option<i64>,
}

#[derive(Serialize)]
struct EmptyBody {}

#[derive(Serialize)]
struct RefundBody<'a> {
    payment: &'a str,
    amount: i64,
    reference: &'a str,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeclineBody {
    code: String,
    decline_code: Option<String>,
    message: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

#[derive(Deserialize)]
struct ChargeList {
    data: Vec<Charge>,
}

#[derive(Deserialize)]
struct RefundList {
    data: Vec<RefundReceipt>,
}

#[async_trait]
impl Acquirer for HttpAcquirer {
    async fn authorize(&self, req: &AuthorizeRequest) -> Result<PaymentOutcome, AcquirerError> {
        let payment_method = match &req.payment_method {
            Instrument::Test(pm) => pm,
            Instrument::Vault {
                merchant_id,
                vault_ref,
            } => {
                return self
                    .authorize_through_vault(req, merchant_id, vault_ref)
                    .await
            }
        };
        let body = AuthorizeBody {
            reference: &req.reference,
            amount: req.amount,
            currency: &req.currency,
            payment_method,
            capture: req.capture,
            return_url: req.return_url.as_deref(),
        };
        let (status, bytes) = self
            .call(
                Method::POST,
                self.url("v1/payments")?,
                Some(&req.idempotency_key()),
                Some(&body),
            )
            .await?;
        authorize_outcome(status, &bytes)
    }

    async fn capture(&self, req: &CaptureRequest) -> Result<Charge, AcquirerError> {
        let url = self.url(&format!(
            "v1/payments/{}/capture",
            path_segment(&req.charge_id)?
        ))?;
        let body = CaptureBody { amount: req.amount };
        let (status, bytes) = self
            .call(Method::POST, url, Some(&req.idempotency_key()), Some(&body))
            .await?;
        success_body(status, &bytes)
    }

    async fn void(&self, req: &VoidRequest) -> Result<Charge, AcquirerError> {
        let url = self.url(&format!(
            "v1/payments/{}/void",
            path_segment(&req.charge_id)?
        ))?;
        let (status, bytes) = self
            .call(
                Method::POST,
                url,
                Some(&req.idempotency_key()),
                Some(&EmptyBody {}),
            )
            .await?;
        success_body(status, &bytes)
    }

    async fn submit_dispute_evidence(
        &self,
        acquirer_dispute_id: &str,
        idempotency_key: &str,
        evidence: &serde_json::Value,
    ) -> Result<(), AcquirerError> {
        let body = serde_json::json!({ "evidence": evidence });
        let (status, bytes) = self
            .call(
                Method::POST,
                self.url(&format!("v1/disputes/{acquirer_dispute_id}/evidence"))?,
                Some(idempotency_key),
                Some(&body),
            )
            .await?;
        success_body::<serde_json::Value>(status, &bytes).map(|_| ())
    }

    async fn refund(&self, req: &RefundRequest) -> Result<RefundReceipt, AcquirerError> {
        let body = RefundBody {
            payment: &req.charge_id,
            amount: req.amount,
            reference: &req.reference,
        };
        let (status, bytes) = self
            .call(
                Method::POST,
                self.url("v1/refunds")?,
                Some(&req.idempotency_key()),
                Some(&body),
            )
            .await?;
        success_body(status, &bytes)
    }

    async fn charges_for_reference(&self, reference: &str) -> Result<Vec<Charge>, AcquirerError> {
        let mut url = self.url("v1/payments")?;
        url.query_pairs_mut().append_pair("reference", reference);
        let (status, bytes) = self
            .call(Method::GET, url, None, None::<&EmptyBody>)
            .await?;
        success_body::<ChargeList>(status, &bytes).map(|list| list.data)
    }

    async fn refund_by_reference(
        &self,
        reference: &str,
    ) -> Result<Option<RefundReceipt>, AcquirerError> {
        let mut url = self.url("v1/refunds")?;
        url.query_pairs_mut().append_pair("reference", reference);
        let (status, bytes) = self
            .call(Method::GET, url, None, None::<&EmptyBody>)
            .await?;
        // One refund per reference is the rule (the key derives from it); should there ever be
        // more, the newest is the one a retry would have found.
        success_body::<RefundList>(status, &bytes).map(|list| list.data.into_iter().last())
    }
}

/// Ids go into URL paths; one that would change the path is refused before it is sent.
fn path_segment(id: &str) -> Result<&str, AcquirerError> {
    if !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(id)
    } else {
        Err(AcquirerError::Rejected {
            status: 400,
            code: "charge_id_invalid".to_owned(),
            message: "a charge id may hold only letters, digits, `_` and `-`".to_owned(),
        })
    }
}

/// A vault that could not be reached, or whose answer could not be read: the forward may or may
/// not have reached the acquirer, so it is retried under the same key.
fn vault_error(e: &ClientError) -> AcquirerError {
    AcquirerError::Transient {
        reason: format!("vault: {e}"),
        code: None,
    }
}

/// Maps the vault's answer to a forwarded authorization. Only an answer marked as the
/// acquirer's is read as the acquirer's; the vault's own 502/504 (the acquirer did not answer
/// it) and 503 are transient, any other answer of the vault is a refusal of our request.
fn forwarded_outcome(forwarded: &Forwarded) -> Result<PaymentOutcome, AcquirerError> {
    let status = StatusCode::from_u16(forwarded.status).map_err(|_| AcquirerError::Protocol {
        reason: format!("the vault answered HTTP {}", forwarded.status),
    })?;
    if forwarded.from_acquirer {
        return authorize_outcome(status, &forwarded.body);
    }
    let code = serde_json::from_slice::<ErrorBody>(&forwarded.body)
        .map(|b| b.error.code)
        .unwrap_or_else(|_| "unknown".to_owned());
    if status.is_server_error() {
        return Err(AcquirerError::Transient {
            reason: format!("vault: HTTP {} ({code})", status.as_u16()),
            code: None,
        });
    }
    Err(AcquirerError::Rejected {
        status: status.as_u16(),
        code,
        message: "the vault refused the forward".to_owned(),
    })
}

/// Maps an answer to `POST /v1/payments`. A 402 is the issuer's decline, which is an outcome
/// and not an error.
fn authorize_outcome(status: StatusCode, body: &[u8]) -> Result<PaymentOutcome, AcquirerError> {
    if status == StatusCode::PAYMENT_REQUIRED {
        let decline: DeclineBody = parse(status, body)?;
        return Ok(PaymentOutcome::Declined {
            code: decline.code,
            decline_code: decline.decline_code,
            message: decline.message,
        });
    }
    let charge: Charge = success_body(status, body)?;
    match charge.status {
        ChargeStatus::Captured => Ok(PaymentOutcome::Captured {
            charge_id: charge.id,
            amount: charge.amount_captured,
        }),
        ChargeStatus::Authorized => Ok(PaymentOutcome::Authorized {
            charge_id: charge.id,
            amount: charge.amount,
        }),
        ChargeStatus::Pending => Ok(PaymentOutcome::Pending {
            charge_id: charge.id,
        }),
        ChargeStatus::RequiresAction => match charge.redirect_url {
            Some(redirect_url) => Ok(PaymentOutcome::ActionRequired {
                charge_id: charge.id,
                redirect_url,
            }),
            None => Err(AcquirerError::Protocol {
                reason: "a charge requires action but has no redirect URL".to_owned(),
            }),
        },
        other => Err(AcquirerError::Protocol {
            reason: format!("a new charge cannot be {other:?}"),
        }),
    }
}

/// The body of a 2xx answer, or the error the status stands for.
fn success_body<T: DeserializeOwned>(status: StatusCode, body: &[u8]) -> Result<T, AcquirerError> {
    if status.is_success() {
        return parse(status, body);
    }
    let detail = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.error);
    let code = detail
        .as_ref()
        .map_or_else(|| "unknown".to_owned(), |d| d.code.clone());
    if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        return Err(AcquirerError::Transient {
            reason: format!("HTTP {} ({code})", status.as_u16()),
            code: detail.map(|d| d.code),
        });
    }
    if status.is_client_error() {
        return Err(AcquirerError::Rejected {
            status: status.as_u16(),
            code,
            message: detail.map_or_else(|| "no error details".to_owned(), |d| d.message),
        });
    }
    Err(AcquirerError::Protocol {
        reason: format!("unexpected HTTP {}", status.as_u16()),
    })
}

fn parse<T: DeserializeOwned>(status: StatusCode, body: &[u8]) -> Result<T, AcquirerError> {
    serde_json::from_slice(body).map_err(|e| {
        // The reason ends up in logs and dead-letter headers, so it names the place and, for a
        // missing field, the field, but never repeats a value from the body.
        let text = e.to_string();
        let what = if text.starts_with("missing field") {
            text.split(" at line ")
                .next()
                .unwrap_or_default()
                .to_owned()
        } else {
            format!("{:?} error", e.classify())
        };
        AcquirerError::Protocol {
            reason: format!(
                "HTTP {} with an unreadable body: {what} at line {} column {}",
                status.as_u16(),
                e.line(),
                e.column()
            ),
        }
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::acquirer::{CaptureRequest, PaymentOutcome, VoidRequest};

    #[test]
    fn answers_are_classified() {
        let outcome = |status: u16, body: &str| {
            authorize_outcome(StatusCode::from_u16(status).unwrap(), body.as_bytes())
        };
        let err = outcome(200, "<html>").unwrap_err();
        assert!(matches!(err, AcquirerError::Protocol { .. }) && err.is_transient());
        assert!(!err.to_string().contains("html"), "{err}");
        let err = outcome(200, r#"{"id":"ch_1"}"#).unwrap_err();
        assert!(
            err.to_string().contains("missing field `reference`"),
            "{err}"
        );
        let charge = |status: &str| {
            json!({"id": "ch_1", "reference": "pi", "amount": 5, "currency": "usd",
                   "status": status})
            .to_string()
        };
        assert!(matches!(
            outcome(200, &charge("requires_action")),
            Err(AcquirerError::Protocol { .. })
        ));
        assert!(matches!(
            outcome(200, &charge("voided")),
            Err(AcquirerError::Protocol { .. })
        ));
        assert!(matches!(
            outcome(200, &charge("lost")),
            Err(AcquirerError::Protocol { .. })
        ));
        assert!(matches!(
            outcome(402, "{}"),
            Err(AcquirerError::Protocol { .. })
        ));
        assert!(matches!(
            outcome(302, ""),
            Err(AcquirerError::Protocol { .. })
        ));
        for status in [429, 408, 502, 503] {
            assert!(outcome(status, "").unwrap_err().is_transient(), "{status}");
        }
        assert_eq!(
            outcome(404, "").unwrap_err(),
            AcquirerError::Rejected {
                status: 404,
                code: "unknown".to_owned(),
                message: "no error details".to_owned()
            }
        );
        assert_eq!(
            outcome(
                402,
                r#"{"code":"expired_card","message":"The card has expired."}"#
            )
            .unwrap(),
            PaymentOutcome::Declined {
                code: "expired_card".to_owned(),
                decline_code: None,
                message: "The card has expired.".to_owned()
            }
        );
    }

    #[test]
    fn only_answers_marked_as_the_acquirers_are_read_as_its_own() {
        let forwarded = |status: u16, from_acquirer: bool, body: &str| Forwarded {
            status,
            from_acquirer,
            body: body.as_bytes().to_vec(),
        };
        let charge =
            r#"{"id":"ch_1","reference":"pi","amount":5,"currency":"usd","status":"pending"}"#;
        assert_eq!(
            forwarded_outcome(&forwarded(200, true, charge)).unwrap(),
            PaymentOutcome::Pending {
                charge_id: "ch_1".into()
            }
        );
        let vault_error =
            r#"{"error":{"type":"api_error","code":"acquirer_timeout","message":"m"}}"#;
        for status in [502, 503, 504] {
            assert!(
                forwarded_outcome(&forwarded(status, false, vault_error))
                    .unwrap_err()
                    .is_transient(),
                "{status}"
            );
        }
        // The acquirer's own 500 stays the acquirer's, with its code.
        let err = forwarded_outcome(&forwarded(
            500,
            true,
            r#"{"error":{"code":"processing_error","message":"m"}}"#,
        ))
        .unwrap_err();
        assert!(err.is_processing_error());
        let err = forwarded_outcome(&forwarded(404, false, "not json")).unwrap_err();
        assert!(
            matches!(err, AcquirerError::Rejected { status: 404, ref code, .. } if code == "unknown")
        );
        assert!(forwarded_outcome(&forwarded(1000, false, "")).is_err());
    }

    #[tokio::test]
    async fn stored_methods_need_a_vault_and_an_unreachable_vault_is_transient() {
        let vault_request = AuthorizeRequest {
            reference: "pi_1".into(),
            amount: 100,
            currency: "usd".into(),
            payment_method: Instrument::Vault {
                merchant_id: "mer_1".into(),
                vault_ref: "vr_1".into(),
            },
            capture: true,
            return_url: None,
        };
        let acq = HttpAcquirer::new("http://127.0.0.1:9", Duration::from_secs(1)).unwrap();
        let err = acq.authorize(&vault_request).await.unwrap_err();
        assert!(
            matches!(err, AcquirerError::Rejected { status: 503, .. }),
            "{err}"
        );
        // Port 9 (discard) refuses connections here: the vault is down.
        let vault = VaultClient::configured(
            "http://127.0.0.1:9",
            paystream_shared::secret::Secret::new("t".to_owned()),
            Duration::from_secs(1),
            None,
        )
        .unwrap();
        let err = acq
            .with_vault(Some(vault))
            .authorize(&vault_request)
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err}");
    }

    #[tokio::test]
    async fn setup_and_ids_are_checked_before_anything_is_sent() {
        for bad in ["ftp://acquirer", "not a url", "http://", "file:///tmp/x"] {
            assert!(
                HttpAcquirer::new(bad, Duration::from_secs(1)).is_err(),
                "{bad}"
            );
        }
        let acq = HttpAcquirer::new("http://127.0.0.1:9/base/", Duration::from_secs(1)).unwrap();
        assert_eq!(
            acq.url("v1/payments").unwrap().as_str(),
            "http://127.0.0.1:9/base/v1/payments"
        );
        let err = acq
            .void(&VoidRequest {
                charge_id: "../refunds".to_owned(),
            })
            .await
            .unwrap_err();
        assert!(matches!(err, AcquirerError::Rejected { status: 400, .. }));
        let err = acq
            .capture(&CaptureRequest {
                charge_id: String::new(),
                amount: None,
            })
            .await
            .unwrap_err();
        assert!(!err.is_transient());
    }
}
