//! `POST /api/provider/webhooks`: notifications from the acquirer.
//!
//! No merchant key: the acquirer proves itself with the `Acquirer-Signature` header instead,
//! so this route is mounted outside the `/api` guard (see `crate::app`). The order of the
//! work is the point:
//! 1. **verify** the signature over the raw bytes, in constant time, before anything in the
//!    body is parsed or trusted (400 when missing, malformed, wrong, or more than five minutes
//!    from our clock);
//! 2. **parse** the envelope (id, type, createdAt, data);
//! 3. **store** it and queue its processing in one transaction; an id we already have answers
//!    200 and changes nothing;
//! 4. answer. Applying the notification happens later, in the provider-events consumer, so
//!    the acquirer is answered in milliseconds however busy the database rows it touches are.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use poem::http::HeaderMap;
use poem::{Request, RequestBody};
use poem_openapi::param::Header;
use poem_openapi::registry::{MetaMediaType, MetaRequest, Registry};
use poem_openapi::types::Type;
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ApiResponse, ExtractParamOptions, Object, OpenApi,
};
use serde::Serialize;

use paystream_shared::domain::provider_event::{self, Envelope, SIGNATURE_HEADER};
use paystream_shared::store::provider_events::{self, Recorded};

use crate::error::ApiError;
use crate::extract::SerdeJson;
use crate::responses::{Errors, BAD_REQUEST, INTERNAL, TOO_LARGE};
use crate::routes::ApiTags;
use crate::{AppState, MAX_BODY_BYTES};

/// A notification as the acquirer sends it (for the docs; the handler reads raw bytes).
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ProviderNotification {
    /// The acquirer's event id (`aevt_…`); each is processed once.
    pub id: String,
    /// `refund.pending`, `refund.succeeded`, `refund.failed`, `payment.succeeded`,
    /// `payment.failed` or `payment.requires_action`.
    #[oai(rename = "type")]
    pub event_type: String,
    pub created_at: DateTime<Utc>,
    /// The refund or charge as the acquirer's API shows it.
    pub data: serde_json::Value,
}

#[derive(Debug, Object, Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct NotificationReceived {
    pub received: bool,
    /// True when this event id had been received before; nothing was changed.
    pub duplicate: bool,
}

#[derive(ApiResponse)]
pub enum NotificationResponse {
    /// Received (or received before: `duplicate`); it is processed asynchronously.
    #[oai(status = 200)]
    Ok(SerdeJson<NotificationReceived>),
}

/// The request body as bytes, exactly as signed. Parsing waits until the signature checks out.
pub struct SignedBody(pub Bytes);

impl<'a> ApiExtractor<'a> for SignedBody {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        ProviderNotification::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: Some("The notification, signed in the `Acquirer-Signature` header."),
            content: vec![MetaMediaType {
                content_type: "application/json",
                schema: ProviderNotification::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        _request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let bytes = body
            .take()?
            .into_bytes_limit(MAX_BODY_BYTES)
            .await
            .map_err(|_| ApiError::too_large(MAX_BODY_BYTES))?;
        Ok(SignedBody(bytes))
    }
}

pub struct ProviderApi;

#[OpenApi(tag = "ApiTags::Acquirer")]
impl ProviderApi {
    /// Receive a notification from the acquirer. Authenticated by its `Acquirer-Signature`
    /// header (`t=<unix>,v1=<hex HMAC-SHA256(secret, "{t}.{body}")>`), not by an API key.
    #[oai(path = "/provider/webhooks", method = "post")]
    async fn receive(
        &self,
        req: &Request,
        state: poem::web::Data<&AppState>,
        /// `t=<unix seconds>,v1=<hex HMAC-SHA256>`; a missing, stale or wrong one is a 400.
        #[oai(name = "Acquirer-Signature")]
        _signature: Header<Option<String>>,
        body: SignedBody,
    ) -> Result<NotificationResponse, Errors<{ BAD_REQUEST | TOO_LARGE | INTERNAL }>> {
        let received = receive(&state, req.headers(), &body.0, Utc::now()).await?;
        Ok(NotificationResponse::Ok(SerdeJson(received)))
    }
}

/// Verifies, parses and stores one notification; see the module documentation.
pub async fn receive(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<NotificationReceived, ApiError> {
    let header = match headers.get(SIGNATURE_HEADER) {
        None => None,
        // A header that is not even text is as good as a forged one.
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| signature_refused(provider_event::SignatureError::Malformed))?,
        ),
    };
    let secret = state.config.acquirer_webhook_secret.expose().as_bytes();
    provider_event::verify(secret, header, body, now).map_err(signature_refused)?;

    let envelope = Envelope::parse(body)?;
    let payload: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| ApiError::invalid("parameter_invalid", "the body is not JSON"))?;
    let mut tx = state.pool.begin().await?;
    let recorded = provider_events::record(&mut tx, &envelope, &payload).await?;
    tx.commit().await?;
    if recorded == Recorded::Duplicate {
        tracing::info!(provider_event = %envelope.id, "provider event received again; nothing to do");
    }
    Ok(NotificationReceived {
        received: true,
        duplicate: recorded == Recorded::Duplicate,
    })
}

fn signature_refused(e: provider_event::SignatureError) -> ApiError {
    tracing::warn!(reason = %e, "acquirer notification refused");
    ApiError::invalid(e.code(), e.to_string())
}
