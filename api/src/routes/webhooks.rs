//! Webhooks to merchants: subscriptions (subscribe, list, delete, rotate the secret), the
//! deliveries, and the events they carry (list, get, redeliver).
//!
//! The signing secret is shown in exactly two answers, subscribe and rotate-secret, and is
//! sealed (AES-256-GCM) before it reaches the database. The copy of those answers kept for
//! Idempotency-Key replays is sealed too, so a client that lost the answer gets it again,
//! secret included, by retrying with the same key, and no secret is ever stored in clear.

use poem::http::StatusCode;
use poem::Request;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::{Deserialize, Serialize};

use paystream_shared::domain::ids::IdKind;
use paystream_shared::domain::webhook::{
    DeliveryStatus, EventSelection, EventType, WebhookSecret, WebhookUrl,
};
use paystream_shared::store::webhooks::{self as store, Cursor, DeliveryFilter, Subscription};
use paystream_shared::webhooks::secret_box::SecretBox;
use paystream_shared::webhooks::views::{
    WebhookDeliveryView, WebhookEventView, WebhookSubscriptionView,
};

use crate::auth::{AuthContext, MerchantKey};
use crate::error::ApiError;
use crate::extract::{parse_limit, JsonBody, SerdeJson};
use crate::responses::{Errors, CONFLICT, FORBIDDEN, NOT_FOUND, READ, WRITE};
use crate::routes::ApiTags;
use crate::{idempotency, AppState};

#[derive(Debug, Deserialize, Object)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[oai(rename_all = "camelCase")]
pub struct Subscribe {
    /// Your endpoint: an http(s) URL of at most 2048 characters, without credentials.
    pub url: String,
    /// Event types to receive, or `["*"]` for all.
    pub events: Vec<String>,
}

#[derive(Debug, Default, Deserialize, Object)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[oai(rename_all = "camelCase")]
pub struct Redeliver {
    /// Only this subscription; by default every active subscription that selects the event.
    pub subscription_id: Option<String>,
}

#[derive(Debug, Default, Deserialize, Object)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Object, Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionList {
    pub data: Vec<WebhookSubscriptionView>,
    pub has_more: bool,
}

#[derive(Object, Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct DeliveryList {
    pub data: Vec<WebhookDeliveryView>,
    pub has_more: bool,
}

#[derive(Object, Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct EventList {
    pub data: Vec<WebhookEventView>,
    pub has_more: bool,
}

#[derive(Object, Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct Deleted {
    pub id: String,
    pub deleted: bool,
}

#[derive(ApiResponse)]
pub enum SubscriptionCreated {
    /// Subscribed; `secret` is shown only in this answer (and its Idempotency-Key replay).
    #[oai(status = 201)]
    Created(SerdeJson<WebhookSubscriptionView>),
    /// A replay of an earlier request with this Idempotency-Key, secret included, with
    /// `Idempotent-Replayed: true`.
    #[oai(status = 200)]
    Replayed(SerdeJson<WebhookSubscriptionView>),
}

#[derive(ApiResponse)]
pub enum SubscriptionResponse {
    /// The subscription with its new `secret` (also in a replay of this request).
    #[oai(status = 200)]
    Ok(SerdeJson<WebhookSubscriptionView>),
}

#[derive(ApiResponse)]
pub enum SubscriptionListResponse {
    /// A page of subscriptions, newest first.
    #[oai(status = 200)]
    Ok(SerdeJson<SubscriptionList>),
}

#[derive(ApiResponse)]
pub enum DeletedResponse {
    /// The subscription is deleted.
    #[oai(status = 200)]
    Ok(SerdeJson<Deleted>),
}

#[derive(ApiResponse)]
pub enum DeliveryListResponse {
    /// A page of deliveries, newest first.
    #[oai(status = 200)]
    Ok(SerdeJson<DeliveryList>),
}

#[derive(ApiResponse)]
pub enum RedeliverResponse {
    /// Accepted: the deliveries that will be attempted again.
    #[oai(status = 202)]
    Accepted(SerdeJson<DeliveryList>),
    /// A replay of an earlier request with this Idempotency-Key, with
    /// `Idempotent-Replayed: true`.
    #[oai(status = 200)]
    Replayed(SerdeJson<DeliveryList>),
}

#[derive(ApiResponse)]
pub enum EventResponse {
    /// The event.
    #[oai(status = 200)]
    Ok(SerdeJson<WebhookEventView>),
}

#[derive(ApiResponse)]
pub enum EventListResponse {
    /// A page of events, newest first.
    #[oai(status = 200)]
    Ok(SerdeJson<EventList>),
}

/// Errors of a write on one subscription or event: it may not exist.
const ON_OBJECT: u32 = WRITE | NOT_FOUND;

fn secret_box(state: &AppState) -> SecretBox {
    SecretBox::from_config(&state.config)
}

/// A subscription of this merchant by id, locked in `conn`'s transaction; a foreign, deleted
/// or malformed id is 404.
async fn lock_subscription(
    conn: &mut sqlx::PgConnection,
    auth: &AuthContext,
    id: &str,
) -> Result<Subscription, ApiError> {
    if IdKind::WebhookSubscription.parse(id, "id").is_err() {
        return Err(ApiError::not_found("webhook subscription", id));
    }
    store::get_subscription(conn, &auth.merchant_id, id, true)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook subscription", id))
}

/// Checks a list cursor: it must name an object of this merchant in that list.
async fn check_cursor(
    state: &AppState,
    auth: &AuthContext,
    list: Cursor,
    cursor: Option<&str>,
) -> Result<(), ApiError> {
    let Some(cursor) = cursor else {
        return Ok(());
    };
    if !store::exists(&state.pool, list, &auth.merchant_id, cursor).await? {
        return Err(ApiError::invalid(
            "resource_missing",
            "`startingAfter` names nothing of yours in this list",
        )
        .with_param("startingAfter"));
    }
    Ok(())
}

/// Trims a list read with `limit + 1` rows to `limit` and says whether there was more.
fn page<T>(mut rows: Vec<T>, limit: i64) -> (Vec<T>, bool) {
    let wanted = usize::try_from(limit).unwrap_or(usize::MAX);
    let has_more = rows.len() > wanted;
    rows.truncate(wanted);
    (rows, has_more)
}

/// Commits, storing for Idempotency-Key replays the view in clear without the secret and,
/// sealed, the answer with it; answers with the secret.
async fn finish_with_secret(
    req: &Request,
    state: &AppState,
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    status: StatusCode,
    sub: &Subscription,
    secret: &WebhookSecret,
) -> Result<WebhookSubscriptionView, ApiError> {
    let public = serde_json::to_vec(&sub.view()).map_err(|e| ApiError::internal(&e))?;
    let mut view = sub.view();
    view.secret = Some(secret.expose().to_owned());
    let full = serde_json::to_vec(&view).map_err(|e| ApiError::internal(&e))?;
    idempotency::complete_sealed(req, &mut tx, status, &public, &full, &secret_box(state)).await?;
    tx.commit().await?;
    Ok(view)
}

pub struct WebhooksApi;

#[OpenApi(tag = "ApiTags::Webhooks")]
impl WebhooksApi {
    /// Subscribe an endpoint to events. The answer carries the signing secret; it is shown
    /// only here and on rotation.
    #[oai(path = "/webhooks/subscribe", method = "post")]
    async fn subscribe(
        &self,
        req: &Request,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        /// Makes the request safe to retry: the same key with the same body answers the
        /// original response (200, `Idempotent-Replayed: true`) instead of running again.
        #[oai(name = "Idempotency-Key")]
        _idempotency_key: Header<Option<String>>,
        body: JsonBody<Subscribe, true>,
    ) -> Result<SubscriptionCreated, Errors<WRITE>> {
        let auth = auth.0;
        let url = WebhookUrl::parse(&body.0.url)?;
        url.ensure_reachable(state.config.webhook_allow_private)?;
        let events = EventSelection::parse(&body.0.events)?;
        let id = IdKind::WebhookSubscription.generate();
        let secret = WebhookSecret::generate();
        let sealed = secret_box(&state).seal_secret(&secret, &id);
        let mut tx = state.pool.begin().await?;
        let sub = store::insert_subscription(
            &mut tx,
            &id,
            &auth.merchant_id,
            &url,
            &events,
            sealed,
            &auth.actor(),
        )
        .await?;
        let view = finish_with_secret(req, &state, tx, StatusCode::CREATED, &sub, &secret).await?;
        Ok(SubscriptionCreated::Created(SerdeJson(view)))
    }

    /// List your webhook subscriptions, newest first (without their secrets).
    #[oai(path = "/webhooks/subscriptions", method = "get")]
    async fn list_subscriptions(
        &self,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        limit: Query<Option<String>>,
        #[oai(name = "startingAfter")] starting_after: Query<Option<String>>,
    ) -> Result<SubscriptionListResponse, Errors<READ>> {
        let auth = auth.0;
        let limit = parse_limit(limit.0.as_deref())?;
        check_cursor(
            &state,
            &auth,
            Cursor::Subscriptions,
            starting_after.0.as_deref(),
        )
        .await?;
        let rows = store::list_subscriptions(
            &state.pool,
            &auth.merchant_id,
            limit + 1,
            starting_after.0.as_deref(),
        )
        .await?;
        let (rows, has_more) = page(rows, limit);
        Ok(SubscriptionListResponse::Ok(SerdeJson(SubscriptionList {
            data: rows.iter().map(Subscription::view).collect(),
            has_more,
        })))
    }

    /// Delete a subscription. Its deliveries keep their history; pending ones end `failed`.
    #[oai(path = "/webhooks/subscriptions/:id", method = "delete")]
    async fn delete_subscription(
        &self,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        id: Path<String>,
    ) -> Result<DeletedResponse, Errors<{ READ | FORBIDDEN | NOT_FOUND }>> {
        let auth = auth.0;
        let mut tx = state.pool.begin().await?;
        let sub = lock_subscription(&mut tx, &auth, &id.0).await?;
        store::delete_subscription(&mut tx, &sub, &auth.actor()).await?;
        tx.commit().await?;
        Ok(DeletedResponse::Ok(SerdeJson(Deleted {
            id: sub.id,
            deleted: true,
        })))
    }

    /// Replace the signing secret. The previous one keeps signing beside it for 24 hours.
    #[oai(path = "/webhooks/subscriptions/:id/rotate-secret", method = "post")]
    async fn rotate_secret(
        &self,
        req: &Request,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        id: Path<String>,
        /// Makes the request safe to retry: the same key with the same body answers the
        /// original response (200, `Idempotent-Replayed: true`) instead of running again.
        #[oai(name = "Idempotency-Key")]
        _idempotency_key: Header<Option<String>>,
        _body: JsonBody<Empty>,
    ) -> Result<SubscriptionResponse, Errors<ON_OBJECT>> {
        let auth = auth.0;
        let mut tx = state.pool.begin().await?;
        let sub = lock_subscription(&mut tx, &auth, &id.0).await?;
        let secret = WebhookSecret::generate();
        let sealed = secret_box(&state).seal_secret(&secret, &sub.id);
        let sub = store::rotate_secret(&mut tx, &sub, sealed, &auth.actor()).await?;
        let view = finish_with_secret(req, &state, tx, StatusCode::OK, &sub, &secret).await?;
        Ok(SubscriptionResponse::Ok(SerdeJson(view)))
    }

    /// The deliveries of events to your endpoints, newest first.
    #[oai(path = "/webhooks/events", method = "get")]
    // poem-openapi takes each query parameter as an argument of its own.
    #[allow(clippy::too_many_arguments)]
    async fn list_deliveries(
        &self,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        #[oai(name = "eventId")] event_id: Query<Option<String>>,
        #[oai(name = "subscriptionId")] subscription_id: Query<Option<String>>,
        status: Query<Option<String>>,
        limit: Query<Option<String>>,
        #[oai(name = "startingAfter")] starting_after: Query<Option<String>>,
    ) -> Result<DeliveryListResponse, Errors<{ READ | NOT_FOUND }>> {
        let auth = auth.0;
        let limit = parse_limit(limit.0.as_deref())?;
        let status = status
            .0
            .as_deref()
            .map(str::parse::<DeliveryStatus>)
            .transpose()?;
        // A filter naming another merchant's object answers 404, like fetching it would.
        if let Some(event_id) = event_id.0.as_deref() {
            if !store::exists(&state.pool, Cursor::Events, &auth.merchant_id, event_id).await? {
                return Err(ApiError::not_found("event", event_id)
                    .with_param("eventId")
                    .into());
            }
        }
        if let Some(sub_id) = subscription_id.0.as_deref() {
            // Deleted subscriptions still have deliveries to look at.
            let known: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM webhook_subscriptions WHERE id = $1 AND merchant_id = $2)",
            )
            .bind(sub_id)
            .bind(&auth.merchant_id)
            .fetch_one(&state.pool)
            .await?;
            if !known {
                return Err(ApiError::not_found("webhook subscription", sub_id)
                    .with_param("subscriptionId")
                    .into());
            }
        }
        check_cursor(
            &state,
            &auth,
            Cursor::Deliveries,
            starting_after.0.as_deref(),
        )
        .await?;
        let filter = DeliveryFilter {
            event_id: event_id.0,
            subscription_id: subscription_id.0,
            status,
            starting_after: starting_after.0,
            limit: limit + 1,
        };
        let rows = store::list_deliveries(&state.pool, &auth.merchant_id, &filter).await?;
        let (data, has_more) = page(rows, limit);
        Ok(DeliveryListResponse::Ok(SerdeJson(DeliveryList {
            data,
            has_more,
        })))
    }
}

pub struct EventsApi;

#[OpenApi(tag = "ApiTags::Events")]
impl EventsApi {
    /// List events, newest first, optionally of one type.
    #[oai(path = "/events", method = "get")]
    async fn list_events(
        &self,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        #[oai(name = "type")] event_type: Query<Option<String>>,
        limit: Query<Option<String>>,
        #[oai(name = "startingAfter")] starting_after: Query<Option<String>>,
    ) -> Result<EventListResponse, Errors<READ>> {
        let auth = auth.0;
        let limit = parse_limit(limit.0.as_deref())?;
        let event_type = event_type.0.as_deref().map(EventType::parse).transpose()?;
        check_cursor(&state, &auth, Cursor::Events, starting_after.0.as_deref()).await?;
        let rows = store::list_events(
            &state.pool,
            &auth.merchant_id,
            event_type.map(EventType::as_str),
            limit + 1,
            starting_after.0.as_deref(),
        )
        .await?;
        let (data, has_more) = page(rows, limit);
        Ok(EventListResponse::Ok(SerdeJson(EventList {
            data,
            has_more,
        })))
    }

    /// Retrieve an event.
    #[oai(path = "/events/:id", method = "get")]
    async fn get_event(
        &self,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        id: Path<String>,
    ) -> Result<EventResponse, Errors<{ READ | NOT_FOUND }>> {
        let event = load_event(&state, &auth.0, &id.0).await?;
        Ok(EventResponse::Ok(SerdeJson(event)))
    }

    /// Send an event again: to one subscription, or to every active subscription that selects
    /// it. An existing delivery starts a new attempt cycle with the same `webhook-id` (also
    /// one that failed and sits in the dead letters); a missing one is created.
    #[oai(path = "/events/:id/redeliver", method = "post")]
    async fn redeliver(
        &self,
        req: &Request,
        auth: MerchantKey,
        state: poem::web::Data<&AppState>,
        id: Path<String>,
        /// Makes the request safe to retry: the same key with the same body answers the
        /// original response (200, `Idempotent-Replayed: true`) instead of running again.
        #[oai(name = "Idempotency-Key")]
        _idempotency_key: Header<Option<String>>,
        body: JsonBody<Redeliver>,
    ) -> Result<RedeliverResponse, Errors<{ ON_OBJECT | CONFLICT }>> {
        let auth = auth.0;
        let event = load_event(&state, &auth, &id.0).await?;
        let mut tx = state.pool.begin().await?;
        let targets = match body.0.subscription_id {
            Some(sub_id) => {
                let not_found = || {
                    ApiError::not_found("webhook subscription", &sub_id)
                        .with_param("subscriptionId")
                };
                if IdKind::WebhookSubscription
                    .parse(&sub_id, "subscriptionId")
                    .is_err()
                {
                    return Err(not_found().into());
                }
                let sub = store::get_subscription(&mut tx, &auth.merchant_id, &sub_id, true)
                    .await?
                    .ok_or_else(not_found)?;
                if !sub.active {
                    return Err(ApiError::conflict(
                        "subscription_inactive",
                        "This subscription is disabled (its endpoint answered 410 Gone)",
                    )
                    .with_param("subscriptionId")
                    .into());
                }
                let selects = EventSelection::parse(&sub.events)
                    .map(|s| s.matches(&event.event_type))
                    .unwrap_or(false);
                if !selects {
                    return Err(ApiError::invalid(
                        "parameter_invalid",
                        format!(
                            "This subscription does not receive `{}` events",
                            event.event_type
                        ),
                    )
                    .with_param("subscriptionId")
                    .into());
                }
                vec![(sub.id, sub.url)]
            }
            None => {
                store::matching_subscriptions(&mut *tx, &auth.merchant_id, &event.event_type)
                    .await?
            }
        };
        let data = store::redeliver(
            &mut tx,
            &auth.merchant_id,
            &event.id,
            &targets,
            &auth.actor(),
        )
        .await?;
        let list = DeliveryList {
            data,
            has_more: false,
        };
        let body = serde_json::to_vec(&list).map_err(|e| ApiError::internal(&e))?;
        idempotency::complete(req, &mut tx, StatusCode::ACCEPTED, &body).await?;
        tx.commit().await?;
        Ok(RedeliverResponse::Accepted(SerdeJson(list)))
    }
}

async fn load_event(
    state: &AppState,
    auth: &AuthContext,
    id: &str,
) -> Result<WebhookEventView, ApiError> {
    if IdKind::Event.parse(id, "id").is_err() {
        return Err(ApiError::not_found("event", id));
    }
    store::get_event(&state.pool, &auth.merchant_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("event", id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_trim_and_report_more() {
        assert_eq!(page(vec![1, 2, 3], 2), (vec![1, 2], true));
        assert_eq!(page(vec![1, 2], 2), (vec![1, 2], false));
        assert_eq!(page(Vec::<i32>::new(), 10), (vec![], false));
    }
}
