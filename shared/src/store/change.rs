//! One write, one statement: a state change together with its audit entry, its event and its
//! outbox rows, sent to PostgreSQL as a single statement.
//!
//! A statement is atomic on its own, so the invariant "state, audit and outbox change together"
//! holds without a surrounding transaction, and a transition costs one round trip instead of
//! four (or six with BEGIN and COMMIT). The row change itself is the `changed` common table
//! expression the caller supplies; every side effect selects `FROM changed`, so when the guard
//! in that change matches no row (someone else moved the object first), nothing else is
//! written either and the statement answers 0.

use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{PgConnection, Postgres};
use uuid::Uuid;

use crate::audit::Actor;
use crate::domain::ids::IdKind;
use crate::outbox::{event_subject, EventEnvelope};

/// Parameters `$1`..`$14` belong to the side effects; the caller's `changed` expression
/// numbers its own from `$15`.
pub const FIRST_CHANGE_PARAM: usize = 15;

const SIDE_EFFECTS: &str = "
, audit AS (
    INSERT INTO audit_log (id, merchant_id, object_type, object_id, action, actor, before, after, prev_hash, hash)
    SELECT $8, $1, $2, $3, $4, $5, $6, $7, '', '' FROM changed
), event AS (
    INSERT INTO events (id, merchant_id, type, object_id, data, created_at)
    SELECT $9, $1, $10, $3, $7, $11 FROM changed WHERE $9::text IS NOT NULL
), queued AS (
    INSERT INTO outbox (id, subject, payload)
    SELECT o.id, o.subject, o.payload
    FROM changed, UNNEST($12::uuid[], $13::text[], $14::jsonb[]) WITH ORDINALITY AS o(id, subject, payload, n)
    ORDER BY o.n
)
SELECT count(*) FROM changed";

/// What one change writes besides the row itself.
#[derive(Debug, Clone)]
pub struct Change {
    merchant_id: String,
    object_type: &'static str,
    object_id: String,
    action: String,
    actor: String,
    before: Option<serde_json::Value>,
    after: serde_json::Value,
    event: Option<EventEnvelope>,
    outbox: Vec<(Uuid, String, serde_json::Value)>,
}

impl Change {
    /// An audited change of `object_id` from `before` to `after`.
    pub fn new(
        merchant_id: &str,
        object_type: &'static str,
        object_id: &str,
        action: &str,
        actor: &Actor,
        before: Option<serde_json::Value>,
        after: serde_json::Value,
    ) -> Self {
        Self {
            merchant_id: merchant_id.to_owned(),
            object_type,
            object_id: object_id.to_owned(),
            action: action.to_owned(),
            actor: actor.render(),
            before,
            after,
            event: None,
            outbox: Vec::new(),
        }
    }

    /// Also records the event `event_type`, whose data is the object after the change, and
    /// queues it for the EVENTS stream.
    pub fn with_event(mut self, event_type: &str) -> Self {
        let envelope = EventEnvelope {
            id: IdKind::Event.generate(),
            event_type: event_type.to_owned(),
            merchant_id: self.merchant_id.clone(),
            created_at: crate::domain::now(),
            data: self.after.clone(),
        };
        let payload = serde_json::to_value(&envelope).unwrap_or(serde_json::Value::Null);
        self.outbox
            .push((Uuid::now_v7(), event_subject(event_type), payload));
        self.event = Some(envelope);
        self
    }

    /// Also queues `payload` on `subject` (a command), after the event if there is one.
    pub fn with_message(mut self, subject: &str, payload: serde_json::Value) -> Self {
        self.outbox
            .push((Uuid::now_v7(), subject.to_owned(), payload));
        self
    }

    /// The event this change records, if any.
    pub fn event(&self) -> Option<&EventEnvelope> {
        self.event.as_ref()
    }

    /// The statement: `changed` is `changed AS (...)`, an INSERT or guarded UPDATE that
    /// returns the rows it wrote, with its parameters numbered from [`FIRST_CHANGE_PARAM`].
    pub fn sql(changed: &str) -> String {
        format!("WITH {changed}{SIDE_EFFECTS}")
    }

    /// Binds `$1`..`$14`; the caller binds its own parameters after these.
    pub fn bind<'q>(
        &self,
        query: Query<'q, Postgres, PgArguments>,
    ) -> Query<'q, Postgres, PgArguments> {
        let (ids, subjects, payloads): (Vec<Uuid>, Vec<String>, Vec<serde_json::Value>) =
            self.outbox.iter().cloned().fold(
                (vec![], vec![], vec![]),
                |(mut i, mut s, mut p), (id, subj, pay)| {
                    i.push(id);
                    s.push(subj);
                    p.push(pay);
                    (i, s, p)
                },
            );
        query
            .bind(self.merchant_id.clone())
            .bind(self.object_type)
            .bind(self.object_id.clone())
            .bind(self.action.clone())
            .bind(self.actor.clone())
            .bind(self.before.clone())
            .bind(self.after.clone())
            .bind(IdKind::Audit.generate())
            .bind(self.event.as_ref().map(|e| e.id.clone()))
            .bind(self.event.as_ref().map(|e| e.event_type.clone()))
            .bind(self.event.as_ref().map(|e| e.created_at))
            .bind(ids)
            .bind(subjects)
            .bind(payloads)
    }
}

/// Runs a statement built by [`Change::sql`] and bound by [`Change::bind`] plus the caller's
/// parameters. Returns whether the guarded change matched its row (`false`: nothing was
/// written at all).
pub async fn apply(
    conn: &mut PgConnection,
    query: Query<'_, Postgres, PgArguments>,
) -> Result<bool, sqlx::Error> {
    use sqlx::Row;
    let row = query.fetch_one(conn).await?;
    Ok(row.try_get::<i64, _>(0)? == 1)
}
