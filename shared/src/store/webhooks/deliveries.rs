//! The `webhook_deliveries` table: one row per (event, subscription), the state the delivery
//! worker drives, its cycles (redeliveries) and its fan-out.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::audit::{self, Actor, NewEntry};
use crate::domain::ids::IdKind;
use crate::domain::webhook::DeliveryStatus;
use crate::outbox::EventEnvelope;
use crate::store::StoreError;
use crate::webhooks::queue::{WebhookCommand, SUBJECT_WEBHOOK_DELIVER};
use crate::webhooks::views::WebhookDeliveryView;

#[derive(Debug, Clone, sqlx::FromRow)]
struct DeliveryRow {
    id: String,
    event_id: String,
    subscription_id: String,
    url: String,
    attempt: i32,
    status: String,
    response_code: Option<i32>,
    next_retry_at: Option<DateTime<Utc>>,
    delivered_at: Option<DateTime<Utc>>,
    error: Option<String>,
}

impl From<DeliveryRow> for WebhookDeliveryView {
    fn from(r: DeliveryRow) -> Self {
        WebhookDeliveryView {
            id: r.id,
            event_id: r.event_id,
            subscription_id: r.subscription_id,
            url: r.url,
            attempt: r.attempt,
            status: r.status,
            response_code: r.response_code,
            next_retry_at: r.next_retry_at,
            delivered_at: r.delivered_at,
            error: r.error,
        }
    }
}

const DELIVERY_COLUMNS: &str = "id, event_id, subscription_id, url, attempt, status, \
    response_code, next_retry_at, delivered_at, error";

#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub event_id: Option<String>,
    pub subscription_id: Option<String>,
    pub status: Option<DeliveryStatus>,
    pub starting_after: Option<String>,
    pub limit: i64,
}

/// Newest first, scoped to one merchant.
pub async fn list_deliveries<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
    filter: &DeliveryFilter,
) -> Result<Vec<WebhookDeliveryView>, StoreError> {
    let rows = sqlx::query_as::<_, DeliveryRow>(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
         WHERE merchant_id = $1
           AND ($2::text IS NULL OR event_id = $2)
           AND ($3::text IS NULL OR subscription_id = $3)
           AND ($4::text IS NULL OR status = $4)
           AND ($5::text IS NULL OR (created_at, id) < (
                SELECT c.created_at, c.id FROM webhook_deliveries c WHERE c.id = $5 AND c.merchant_id = $1))
         ORDER BY created_at DESC, id DESC
         LIMIT $6"
    ))
    .bind(merchant_id)
    .bind(&filter.event_id)
    .bind(&filter.subscription_id)
    .bind(filter.status.map(DeliveryStatus::as_str))
    .bind(&filter.starting_after)
    .bind(filter.limit)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// The live, active subscriptions of `merchant_id` that select `event_type`.
pub async fn matching_subscriptions<'e>(
    db: impl PgExecutor<'e>,
    merchant_id: &str,
    event_type: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, url FROM webhook_subscriptions
         WHERE merchant_id = $1 AND active AND deleted_at IS NULL
           AND ($2 = ANY(events) OR '*' = ANY(events))
         ORDER BY created_at, id",
    )
    .bind(merchant_id)
    .bind(event_type)
    .fetch_all(db)
    .await?)
}

/// One delivery to (re)start: the subscription, and the command's outbox id, which is also
/// its `Nats-Msg-Id` and so the delivery's `cycle_message_id`.
struct Planned {
    delivery_id: String,
    subscription_id: String,
    url: String,
    message_id: Uuid,
}

impl Planned {
    fn new(subscription_id: &str, url: &str) -> Planned {
        Planned {
            delivery_id: IdKind::WebhookDelivery.generate(),
            subscription_id: subscription_id.to_owned(),
            url: url.to_owned(),
            message_id: Uuid::now_v7(),
        }
    }

    fn command(&self, delivery_id: &str) -> serde_json::Value {
        WebhookCommand::DeliverV1 {
            delivery_id: delivery_id.to_owned(),
            subscription_id: self.subscription_id.clone(),
        }
        .to_json()
    }
}

/// The fan-out of one event: [`fan_out_many`] with one event.
pub async fn fan_out(
    conn: &mut PgConnection,
    event: &EventEnvelope,
) -> Result<Vec<String>, StoreError> {
    let mut created = fan_out_many(conn, std::slice::from_ref(event)).await?;
    Ok(created.pop().unwrap_or_default())
}

/// The fan-out of many events in two statements whatever their number: one reads the
/// matching live, active subscriptions of all of them, one writes every delivery row with
/// its `cmd.webhook.deliver` outbox row (so all or none). A delivery that already exists for
/// an (event, subscription) pair is left alone and gets no second command: that is what makes
/// a redelivered event harmless. Returns the deliveries created, one list per event in
/// `events`' order. An event named twice is fanned out once (its second list is empty).
pub async fn fan_out_many(
    conn: &mut PgConnection,
    events: &[EventEnvelope],
) -> Result<Vec<Vec<String>>, StoreError> {
    let mut out = vec![Vec::new(); events.len()];
    let mut first_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (n, e) in events.iter().enumerate() {
        first_of.entry(e.id.as_str()).or_insert(n);
    }
    let unique: Vec<&EventEnvelope> = first_of.values().map(|&n| &events[n]).collect();
    let ev_ids: Vec<&str> = unique.iter().map(|e| e.id.as_str()).collect();
    let ev_merchants: Vec<&str> = unique.iter().map(|e| e.merchant_id.as_str()).collect();
    let ev_types: Vec<&str> = unique.iter().map(|e| e.event_type.as_str()).collect();
    let matches: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT e.id, e.merchant_id, s.id, s.url
         FROM UNNEST($1::text[], $2::text[], $3::text[]) AS e(id, merchant_id, type)
         JOIN webhook_subscriptions s ON s.merchant_id = e.merchant_id
             AND s.active AND s.deleted_at IS NULL
             AND (e.type = ANY(s.events) OR '*' = ANY(s.events))
         ORDER BY e.id, s.created_at, s.id",
    )
    .bind(&ev_ids)
    .bind(&ev_merchants)
    .bind(&ev_types)
    .fetch_all(&mut *conn)
    .await?;
    if matches.is_empty() {
        return Ok(out);
    }
    let planned: Vec<Planned> = matches
        .iter()
        .map(|(_, _, sub, url)| Planned::new(sub, url))
        .collect();
    let events_col: Vec<&str> = matches.iter().map(|m| m.0.as_str()).collect();
    let merchants_col: Vec<&str> = matches.iter().map(|m| m.1.as_str()).collect();
    let ids: Vec<&str> = planned.iter().map(|p| p.delivery_id.as_str()).collect();
    let subs: Vec<&str> = planned.iter().map(|p| p.subscription_id.as_str()).collect();
    let urls: Vec<&str> = planned.iter().map(|p| p.url.as_str()).collect();
    let msgs: Vec<Uuid> = planned.iter().map(|p| p.message_id).collect();
    let payloads: Vec<serde_json::Value> =
        planned.iter().map(|p| p.command(&p.delivery_id)).collect();
    let created: Vec<(String, String)> = sqlx::query_as(
        "WITH input AS (
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::uuid[], $7::jsonb[])
                 AS i(id, merchant, event, sub, url, msg, payload)
         ), inserted AS (
             INSERT INTO webhook_deliveries
                 (id, merchant_id, event_id, subscription_id, url, status, cycle_message_id)
             SELECT id, merchant, event, sub, url, 'pending', msg::text FROM input
             ON CONFLICT (event_id, subscription_id) DO NOTHING
             RETURNING id, event_id
         ), queued AS (
             INSERT INTO outbox (id, subject, payload)
             SELECT i.msg, $8, i.payload FROM input i JOIN inserted USING (id)
         )
         SELECT event_id, id FROM inserted",
    )
    .bind(&ids)
    .bind(&merchants_col)
    .bind(&events_col)
    .bind(&subs)
    .bind(&urls)
    .bind(&msgs)
    .bind(&payloads)
    .bind(SUBJECT_WEBHOOK_DELIVER)
    .fetch_all(&mut *conn)
    .await?;
    for (event_id, delivery_id) in created {
        if let Some(&n) = first_of.get(event_id.as_str()) {
            out[n].push(delivery_id);
        }
    }
    Ok(out)
}

/// Sends an event again to the given subscriptions (`(id, url)`): an existing delivery starts
/// a new attempt cycle (same row, same `webhook-id`, attempts from 0), a missing one is created,
/// and each gets a fresh command. Audited as the caller's action. Returns the deliveries.
pub async fn redeliver(
    conn: &mut PgConnection,
    merchant_id: &str,
    event_id: &str,
    subscriptions: &[(String, String)],
    actor: &Actor,
) -> Result<Vec<WebhookDeliveryView>, StoreError> {
    let mut out = Vec::with_capacity(subscriptions.len());
    for (sub_id, url) in subscriptions {
        let p = Planned::new(sub_id, url);
        let row = sqlx::query_as::<_, DeliveryRow>(&format!(
            "INSERT INTO webhook_deliveries
                 (id, merchant_id, event_id, subscription_id, url, status, cycle_message_id)
             VALUES ($1, $2, $3, $4, $5, 'pending', $6)
             ON CONFLICT (event_id, subscription_id) DO UPDATE SET
                 status = 'pending', cycle = webhook_deliveries.cycle + 1, attempt = 0,
                 cycle_message_id = EXCLUDED.cycle_message_id, next_retry_at = NULL,
                 response_code = NULL, error = NULL, updated_at = now()
             RETURNING {DELIVERY_COLUMNS}"
        ))
        .bind(&p.delivery_id)
        .bind(merchant_id)
        .bind(event_id)
        .bind(sub_id)
        .bind(url)
        .bind(p.message_id.to_string())
        .fetch_one(&mut *conn)
        .await?;
        crate::outbox::enqueue_with_id(
            &mut *conn,
            p.message_id,
            SUBJECT_WEBHOOK_DELIVER,
            &p.command(&row.id),
        )
        .await?;
        let view = WebhookDeliveryView::from(row);
        audit::append(
            &mut *conn,
            NewEntry {
                merchant_id: Some(merchant_id),
                object_type: "webhook_delivery",
                object_id: &view.id,
                action: "webhook_delivery.redelivery_requested",
                actor,
                before: None,
                after: Some(serde_json::to_value(&view).unwrap_or_default()),
            },
        )
        .await?;
        out.push(view);
    }
    Ok(out)
}

/// Everything the delivery worker needs about one delivery, read in one query.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryWork {
    pub id: String,
    pub merchant_id: String,
    pub event_id: String,
    pub subscription_id: String,
    pub url: String,
    pub status: String,
    pub attempt: i32,
    pub cycle: i32,
    pub cycle_message_id: Option<String>,
    pub next_retry_at: Option<DateTime<Utc>>,
    pub subscription_active: bool,
    pub subscription_deleted: bool,
    pub secret_sealed: Vec<u8>,
    pub previous_secret_sealed: Option<Vec<u8>>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub event_type: String,
    pub event_data: serde_json::Value,
    pub event_created_at: DateTime<Utc>,
}

impl DeliveryWork {
    pub fn status(&self) -> Result<DeliveryStatus, StoreError> {
        self.status.parse().map_err(|_| StoreError::Corrupt {
            id: self.id.clone(),
            reason: format!("unknown delivery status `{}`", self.status),
        })
    }
}

/// [`DeliveryWork`] of many deliveries in one query, in no particular order; ids that name no
/// delivery are missing from the answer.
pub async fn load_work_many<'e>(
    db: impl PgExecutor<'e>,
    delivery_ids: &[String],
) -> Result<Vec<DeliveryWork>, StoreError> {
    Ok(sqlx::query_as::<_, DeliveryWork>(
        "SELECT d.id, d.merchant_id, d.event_id, d.subscription_id, d.url, d.status, d.attempt,
                d.cycle, d.cycle_message_id, d.next_retry_at,
                s.active AS subscription_active, s.deleted_at IS NOT NULL AS subscription_deleted,
                s.secret_sealed, s.previous_secret_sealed, s.previous_secret_expires_at,
                e.type AS event_type, e.data AS event_data, e.created_at AS event_created_at
         FROM webhook_deliveries d
         JOIN webhook_subscriptions s ON s.id = d.subscription_id
         JOIN events e ON e.id = d.event_id
         WHERE d.id = ANY($1)",
    )
    .bind(delivery_ids)
    .fetch_all(db)
    .await?)
}

/// A dead letter replayed for a `failed` delivery: a new cycle with a fresh attempt budget,
/// driven from now on by the replayed message (`message_id`). Returns the new cycle, or `None`
/// when the row changed meanwhile.
pub async fn start_replay_cycle<'e>(
    db: impl PgExecutor<'e>,
    delivery_id: &str,
    expected_cycle: i32,
    message_id: &str,
) -> Result<Option<i32>, StoreError> {
    Ok(sqlx::query_scalar(
        "UPDATE webhook_deliveries
         SET status = 'pending', cycle = cycle + 1, attempt = 0, cycle_message_id = $3,
             next_retry_at = NULL, response_code = NULL, error = NULL, updated_at = now()
         WHERE id = $1 AND cycle = $2 AND status = 'failed'
         RETURNING cycle",
    )
    .bind(delivery_id)
    .bind(expected_cycle)
    .bind(message_id)
    .fetch_optional(db)
    .await?)
}

/// Ends a pending delivery as `failed` without an attempt (its subscription was deleted or
/// disabled, or crashed attempts used up its budget). Guarded on the cycle.
pub async fn fail_without_attempt<'e>(
    db: impl PgExecutor<'e>,
    delivery_id: &str,
    cycle: i32,
    error: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE webhook_deliveries SET status = 'failed', error = $3, next_retry_at = NULL, updated_at = now()
         WHERE id = $1 AND cycle = $2 AND status = 'pending'",
    )
    .bind(delivery_id)
    .bind(cycle)
    .bind(error)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}
