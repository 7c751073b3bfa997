//! What must hold after the chaos: gathered from the database, the simulator's books and the
//! webhook sink ([`observe`]), judged by a pure function ([`evaluate`]) so the judging itself
//! is tested against states that break each rule.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;

use super::driver::{Client, Sink, SUBSCRIBED};
use super::stack::Stack;

/// The statuses an intent of this run may end in (it never asks for manual capture).
const FINAL: [&str; 4] = ["succeeded", "failed", "canceled", "refunded"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentObs {
    pub id: String,
    pub status: String,
    pub amount_received: i64,
    pub amount_refunded: i64,
    /// Refunds accepted by paystream (pending or succeeded).
    pub refunds_accepted: i64,
    /// The acquirer's charges for this intent: (status, captured, refunded).
    pub charges: Vec<(String, i64, i64)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observations {
    pub intents: Vec<IntentObs>,
    /// Intents the driver created that the database does not hold.
    pub missing_intents: Vec<String>,
    /// Objects the dead-letter stream holds a message about: a payment not final but dead
    /// lettered is where an operator will find it (`paystream dlq`), not lost.
    pub dead_lettered: HashSet<String>,
    /// Intents whose confirm the API never accepted while the driver retried: they rightly
    /// stay `requires_confirmation`.
    pub unconfirmed: HashSet<String>,
    /// 3-D Secure intents whose challenge the driver could not get through: they rightly
    /// stay `requires_action`.
    pub unchallenged: HashSet<String>,
    pub refunds_total: u64,
    pub refunds_not_final: Vec<String>,
    /// Ids of the subscribed events paystream recorded.
    pub expected_events: Vec<String>,
    /// Event ids the sink received with a valid signature.
    pub delivered: HashSet<String>,
    pub bad_signatures: u64,
    /// Entries verified, or the first bad entry.
    pub audit: Result<u64, String>,
    /// Transactions verified, or the first violation.
    pub ledger: Result<u64, String>,
}

impl Default for Observations {
    fn default() -> Self {
        Observations {
            intents: Vec::new(),
            missing_intents: Vec::new(),
            dead_lettered: HashSet::new(),
            unconfirmed: HashSet::new(),
            unchallenged: HashSet::new(),
            refunds_total: 0,
            refunds_not_final: Vec::new(),
            expected_events: Vec::new(),
            delivered: HashSet::new(),
            bad_signatures: 0,
            audit: Ok(0),
            ledger: Ok(0),
        }
    }
}

impl Default for IntentObs {
    fn default() -> Self {
        IntentObs {
            id: String::new(),
            status: "succeeded".into(),
            amount_received: 0,
            amount_refunded: 0,
            refunds_accepted: 0,
            charges: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRow {
    pub name: &'static str,
    pub checked: u64,
    pub violations: u64,
    /// The first offender, to start looking from.
    pub example: Option<String>,
}

fn row<'a>(
    name: &'static str,
    checked: usize,
    offenders: impl Iterator<Item = &'a str>,
) -> CheckRow {
    let offenders: Vec<&str> = offenders.collect();
    CheckRow {
        name,
        checked: u64::try_from(checked).unwrap_or(u64::MAX),
        violations: u64::try_from(offenders.len()).unwrap_or(u64::MAX),
        example: offenders.first().map(|s| (*s).to_owned()),
    }
}

fn captured(c: &(String, i64, i64)) -> bool {
    matches!(c.0.as_str(), "captured" | "refunded" | "partially_refunded") || c.1 > 0
}

pub fn evaluate(o: &Observations) -> Vec<CheckRow> {
    let n = o.intents.len();
    let paid = |i: &IntentObs| matches!(i.status.as_str(), "succeeded" | "refunded");
    vec![
        row(
            "every payment the driver created exists",
            n + o.missing_intents.len(),
            o.missing_intents.iter().map(String::as_str),
        ),
        row(
            "every payment in a final state, or in the dead letters",
            n,
            o.intents
                .iter()
                .filter(|i| {
                    let never_confirmed =
                        i.status == "requires_confirmation" && o.unconfirmed.contains(&i.id);
                    let never_challenged =
                        i.status == "requires_action" && o.unchallenged.contains(&i.id);
                    !FINAL.contains(&i.status.as_str())
                        && !o.dead_lettered.contains(&i.id)
                        && !never_confirmed
                        && !never_challenged
                })
                .map(|i| i.id.as_str()),
        ),
        row(
            "exactly one acquirer charge per paid intent, none captured for a failed one",
            n,
            o.intents
                .iter()
                .filter(|i| {
                    let held = i.charges.iter().filter(|c| captured(c)).count();
                    if paid(i) {
                        i.charges.len() != 1 || held != 1
                    } else {
                        i.charges.len() > 1 || held != 0
                    }
                })
                .map(|i| i.id.as_str()),
        ),
        row(
            "no refund over the charge (paystream and acquirer)",
            n,
            o.intents
                .iter()
                .filter(|i| {
                    let acq_captured: i64 = i.charges.iter().map(|c| c.1).sum();
                    let acq_refunded: i64 = i.charges.iter().map(|c| c.2).sum();
                    i.amount_refunded > i.amount_received
                        || i.refunds_accepted > i.amount_received
                        || acq_refunded > acq_captured
                })
                .map(|i| i.id.as_str()),
        ),
        row(
            "every refund in a final state",
            usize::try_from(o.refunds_total).unwrap_or(usize::MAX),
            o.refunds_not_final.iter().map(String::as_str),
        ),
        row(
            "every subscribed event delivered with a valid signature",
            o.expected_events.len(),
            o.expected_events
                .iter()
                .filter(|e| !o.delivered.contains(*e))
                .map(String::as_str),
        ),
        CheckRow {
            name: "no delivery with a bad signature",
            checked: u64::try_from(o.delivered.len()).unwrap_or(u64::MAX) + o.bad_signatures,
            violations: o.bad_signatures,
            example: None,
        },
        match &o.audit {
            Ok(entries) => CheckRow {
                name: "audit verify",
                checked: *entries,
                violations: 0,
                example: None,
            },
            Err(e) => CheckRow {
                name: "audit verify",
                checked: 0,
                violations: 1,
                example: Some(e.clone()),
            },
        },
        match &o.ledger {
            Ok(transactions) => CheckRow {
                name: "ledger verify",
                checked: *transactions,
                violations: 0,
                example: None,
            },
            Err(e) => CheckRow {
                name: "ledger verify",
                checked: 0,
                violations: 1,
                example: Some(e.clone()),
            },
        },
    ]
}

pub fn table(rows: &[CheckRow]) -> String {
    let mut out = format!(
        "{:<76} {:>8} {:>10}  first offender\n",
        "check", "checked", "violations"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<76} {:>8} {:>10}  {}\n",
            r.name,
            r.checked,
            r.violations,
            r.example.as_deref().unwrap_or("")
        ));
    }
    out
}

/// Waits for the system to settle (every intent and refund final, every expected event
/// delivered, or `settle` passed), then gathers everything [`evaluate`] judges.
pub async fn observe(
    stack: &Stack,
    client: &Client,
    sink: &Sink,
    driven: &[super::driver::Driven],
    settle: Duration,
) -> anyhow::Result<Observations> {
    let pool = paystream_shared::db::connect(&stack.db_url, 4).await?;
    let deadline = Instant::now() + settle;
    let subscribed: Vec<String> = SUBSCRIBED.iter().map(|s| (*s).to_owned()).collect();
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM payment_intents WHERE NOT (status = ANY($1)))
                  + (SELECT count(*) FROM refunds WHERE status = 'pending')",
        )
        .bind(FINAL.map(str::to_owned).to_vec())
        .fetch_one(&pool)
        .await?;
        let expected: Vec<String> =
            sqlx::query_scalar("SELECT id FROM events WHERE type = ANY($1)")
                .bind(&subscribed)
                .fetch_all(&pool)
                .await?;
        let undelivered = {
            let d = sink
                .state
                .delivered
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            expected.iter().filter(|e| !d.contains(*e)).count()
        };
        if (open == 0 && undelivered == 0) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
        "SELECT pi.id, pi.status, pi.amount_received, pi.amount_refunded,
                COALESCE((SELECT sum(r.amount) FROM refunds r
                          WHERE r.payment_intent_id = pi.id AND r.status <> 'failed'), 0)::BIGINT
           FROM payment_intents pi ORDER BY pi.id",
    )
    .fetch_all(&pool)
    .await
    .context("reading the intents")?;
    let known: HashSet<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let missing_intents = driven
        .iter()
        .filter(|d| !known.contains(d.id.as_str()))
        .map(|d| d.id.clone())
        .collect();
    let unconfirmed = driven
        .iter()
        .filter(|d| !d.confirmed)
        .map(|d| d.id.clone())
        .collect();
    let unchallenged = driven
        .iter()
        .filter(|d| d.confirmed && !d.challenged)
        .map(|d| d.id.clone())
        .collect();
    let intents: Vec<IntentObs> = futures::stream::iter(rows)
        .map(
            |(id, status, amount_received, amount_refunded, refunds_accepted)| async move {
                // The acquirer's own view: its charges for the reference, with their totals.
                let charges = client
                    .sim_get(&stack.sim, &format!("/v1/payments?reference={id}"))
                    .await
                    .map(|v| {
                        v["data"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default()
                            .iter()
                            .map(|c| {
                                (
                                    c["status"].as_str().unwrap_or_default().to_owned(),
                                    c["amountCaptured"].as_i64().unwrap_or(0),
                                    c["amountRefunded"].as_i64().unwrap_or(0),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                IntentObs {
                    id,
                    status,
                    amount_received,
                    amount_refunded,
                    refunds_accepted,
                    charges,
                }
            },
        )
        .buffer_unordered(16)
        .collect()
        .await;
    let refunds_total: i64 = sqlx::query_scalar("SELECT count(*) FROM refunds")
        .fetch_one(&pool)
        .await?;
    let refunds_not_final: Vec<String> =
        sqlx::query_scalar("SELECT id FROM refunds WHERE status = 'pending' ORDER BY id")
            .fetch_all(&pool)
            .await?;
    let expected_events: Vec<String> =
        sqlx::query_scalar("SELECT id FROM events WHERE type = ANY($1) ORDER BY id")
            .bind(&subscribed)
            .fetch_all(&pool)
            .await?;
    let audit = match paystream_shared::audit::verify(&pool).await {
        Ok(r) => match r.first_bad {
            None => Ok(r.entries),
            Some(b) => Err(format!("entry {} (seq {}): {}", b.id, b.seq, b.reason)),
        },
        Err(e) => Err(format!("audit verify failed to run: {e}")),
    };
    let ledger = {
        let mut tx = pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        let transactions: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_transactions")
            .fetch_one(&mut *tx)
            .await?;
        let verdict = paystream_shared::ledger::verify(&mut tx).await;
        tx.rollback().await?;
        match verdict {
            Ok(Ok(())) => Ok(u64::try_from(transactions).unwrap_or(0)),
            Ok(Err(v)) => Err(v.to_string()),
            Err(e) => Err(format!("ledger verify failed to run: {e}")),
        }
    };
    pool.close().await;
    let dead_lettered = dead_letters(stack).await?;
    let delivered = sink
        .state
        .delivered
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Ok(Observations {
        intents,
        missing_intents,
        dead_lettered,
        unconfirmed,
        unchallenged,
        refunds_total: u64::try_from(refunds_total).unwrap_or(0),
        refunds_not_final,
        expected_events,
        delivered,
        bad_signatures: sink
            .state
            .bad_signatures
            .load(std::sync::atomic::Ordering::Relaxed),
        audit,
        ledger,
    })
}

/// The object ids of every message in the stack's dead-letter stream.
async fn dead_letters(stack: &Stack) -> anyhow::Result<HashSet<String>> {
    let (_client, js) = paystream_nats::topology::connect(&stack.nats_url()).await?;
    let letters = paystream_nats::dlq::list(&js, &stack.topology)
        .await
        .context("reading the dead letters")?;
    Ok(letters.into_iter().filter_map(|l| l.object_id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(captured: i64, refunded: i64) -> (String, i64, i64) {
        ("captured".to_owned(), captured, refunded)
    }

    fn clean() -> Observations {
        Observations {
            intents: vec![
                IntentObs {
                    id: "pi_ok".into(),
                    amount_received: 1000,
                    amount_refunded: 300,
                    refunds_accepted: 300,
                    charges: vec![charge(1000, 300)],
                    ..IntentObs::default()
                },
                IntentObs {
                    id: "pi_declined".into(),
                    status: "failed".into(),
                    charges: vec![("declined".into(), 0, 0)],
                    ..IntentObs::default()
                },
            ],
            refunds_total: 1,
            expected_events: vec!["evt_1".into()],
            delivered: HashSet::from(["evt_1".to_owned()]),
            audit: Ok(10),
            ledger: Ok(4),
            ..Observations::default()
        }
    }

    fn violated(o: &Observations) -> Vec<(&'static str, Option<String>)> {
        evaluate(o)
            .into_iter()
            .filter(|r| r.violations > 0)
            .map(|r| (r.name, r.example))
            .collect()
    }

    #[test]
    fn a_clean_state_passes_every_check() {
        let rows = evaluate(&clean());
        assert_eq!(rows.len(), 9);
        assert!(rows.iter().all(|r| r.violations == 0), "{rows:?}");
        assert!(table(&rows).contains("audit verify"));
    }

    #[test]
    fn two_charges_for_one_intent_are_a_violation() {
        let mut o = clean();
        o.intents[0].charges.push(charge(1000, 0));
        assert_eq!(
            violated(&o),
            vec![(
                "exactly one acquirer charge per paid intent, none captured for a failed one",
                Some("pi_ok".into())
            )]
        );
        // A failed intent whose money was captured anyway.
        let mut o = clean();
        o.intents[1].charges = vec![charge(500, 0)];
        assert_eq!(violated(&o).len(), 1);
    }

    #[test]
    fn every_other_rule_can_fail() {
        // Stuck before the acquirer took it.
        let mut o = clean();
        o.intents[1].status = "processing".into();
        assert_eq!(
            violated(&o),
            vec![(
                "every payment in a final state, or in the dead letters",
                Some("pi_declined".into())
            )]
        );
        // The same payment dead lettered is accounted for.
        o.dead_lettered.insert("pi_declined".into());
        assert!(violated(&o).is_empty());
        // Never confirmed: only `requires_confirmation` is right for it.
        let mut o = clean();
        o.intents[1].status = "requires_confirmation".into();
        o.unconfirmed.insert("pi_declined".into());
        assert!(violated(&o).is_empty());
        o.intents[1].status = "processing".into();
        assert_eq!(violated(&o).len(), 1);
        // A challenge the cardholder never got through waits in `requires_action`, rightly.
        let mut o = clean();
        o.intents[1].status = "requires_action".into();
        assert_eq!(violated(&o).len(), 1);
        o.unchallenged.insert("pi_declined".into());
        assert!(violated(&o).is_empty());

        let mut o = clean();
        o.intents[0].refunds_accepted = 1001;
        assert_eq!(
            violated(&o)[0].0,
            "no refund over the charge (paystream and acquirer)"
        );
        let mut o = clean();
        o.intents[0].charges = vec![charge(1000, 1200)];
        assert_eq!(
            violated(&o)[0].0,
            "no refund over the charge (paystream and acquirer)"
        );

        let mut o = clean();
        o.expected_events.push("evt_lost".into());
        assert_eq!(
            violated(&o),
            vec![(
                "every subscribed event delivered with a valid signature",
                Some("evt_lost".into())
            )]
        );

        let mut o = clean();
        o.bad_signatures = 1;
        assert_eq!(violated(&o)[0].0, "no delivery with a bad signature");

        let mut o = clean();
        o.refunds_not_final = vec!["re_1".into()];
        assert_eq!(violated(&o)[0].0, "every refund in a final state");

        let mut o = clean();
        o.missing_intents = vec!["pi_gone".into()];
        assert_eq!(violated(&o)[0].0, "every payment the driver created exists");

        let mut o = clean();
        o.audit = Err("entry 3: hash".into());
        o.ledger = Err("unbalanced".into());
        let v = violated(&o);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].1.as_deref(), Some("entry 3: hash"));
    }
}
