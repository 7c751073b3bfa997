-- One batch of earlier payments (`paystream seed-history`), written in set-based statements.
--
-- Every row is what the running system writes for the same life (the API's create, confirm,
-- cancel and refund, the confirm and refund workers, the relay, the webhook fan-out and
-- delivery): the intent, its events, its audit entries (through the audit_chain trigger), its
-- outbox rows already published, webhook deliveries for the merchant's subscriptions, its
-- refunds, and the ledger postings with their balance transactions and running balances.
--
-- The file has three parts, split at the `-- seed:` markers: the parameters (the one statement
-- with placeholders), the body (plain statements, run in the batch's transaction after it) and
-- the summary (what the batch wrote). Everything the body makes for itself is temporary and
-- dropped at commit.

-- seed:params
CREATE TEMPORARY TABLE seed_params ON COMMIT DROP AS
SELECT $1::text AS merchant_id,
       'api_key:' || $2::text AS api_actor,
       $3::int AS n,
       $4::bigint AS fee_bps,
       $5::bigint AS fee_fixed,
       -- How many payments this seed wrote in earlier batches: the mix below counts from the
       -- seed's first payment, so it does not depend on the batch size.
       $7::bigint AS done_before,
       -- Payments are created over the `days` before now, the latest an hour ago, so every
       -- life (refunds included) is over before the seed runs.
       now() - make_interval(days => $6::int) AS window_start,
       now() - interval '1 hour' AS window_end;

-- seed:body

-- Timestamps inside JSON as the API writes them (chrono's RFC 3339: UTC, `Z`, and as many
-- fractional digits as the value needs, in groups of three).
CREATE OR REPLACE FUNCTION pg_temp.seed_ts(t timestamptz) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN t IS NULL THEN NULL
        WHEN extract(microseconds FROM t)::bigint % 1000000 = 0
            THEN to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
        WHEN extract(microseconds FROM t)::bigint % 1000 = 0
            THEN to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
        ELSE to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    END
$$;

-- A version 7 UUID for the instant `t`, as Uuid::now_v7 makes at that instant: ids stay in time
-- order, the order the real system's indexes receive them in.
CREATE OR REPLACE FUNCTION pg_temp.seed_uuid7(t timestamptz) RETURNS uuid LANGUAGE sql VOLATILE AS $$
    SELECT encode(set_byte(b, 6, (get_byte(b, 6) & 15) | 112), 'hex')::uuid
    FROM (SELECT overlay(uuid_send(gen_random_uuid())
                 PLACING substring(int8send(floor(extract(epoch FROM t) * 1000)::bigint) FROM 3)
                 FROM 1 FOR 6) AS b) AS random_bits
$$;

-- An object id (`pi_`, `evt_` ...) as IdKind::generate makes it at the instant `t`.
CREATE OR REPLACE FUNCTION pg_temp.seed_id(prefix text, t timestamptz) RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT prefix || replace(pg_temp.seed_uuid7(t)::text, '-', '')
$$;

-- A payment intent as its events and audit entries show it (PaymentIntent::to_json).
CREATE OR REPLACE FUNCTION pg_temp.seed_intent(
    id text, amount bigint, status text, created timestamptz, updated timestamptz,
    canceled timestamptz, customer text, received bigint, refunded bigint, method text,
    payment_error jsonb, cancellation_reason text
) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'id', id, 'amount', amount, 'status', status, 'currency', 'usd',
        'metadata', '{}'::jsonb, 'createdAt', pg_temp.seed_ts(created),
        'updatedAt', pg_temp.seed_ts(updated), 'canceledAt', pg_temp.seed_ts(canceled),
        'customerId', customer, 'nextAction', NULL, 'description', NULL,
        'captureMethod', 'automatic', 'amountReceived', received, 'amountRefunded', refunded,
        'paymentMethodId', method, 'amountCapturable', 0, 'lastPaymentError', payment_error,
        'cancellationReason', cancellation_reason, 'authorizationExpiresAt', NULL)
$$;

-- A refund as its events and audit entries show it (Refund::to_json).
CREATE OR REPLACE FUNCTION pg_temp.seed_refund(
    id text, intent text, amount bigint, reason text, status text, created timestamptz,
    processed timestamptz
) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'id', id, 'amount', amount, 'reason', reason, 'status', status, 'currency', 'usd',
        'createdAt', pg_temp.seed_ts(created), 'processedAt', pg_temp.seed_ts(processed),
        'failureReason', NULL, 'paymentIntentId', intent)
$$;

-- The plan: one row per payment with every id and instant of its life. Out of each 100:
-- 75 captured, 10 captured then partly refunded, 2 captured then refunded in full, 8 declined
-- and 5 canceled before confirmation.
CREATE TEMPORARY TABLE seed_plan ON COMMIT DROP AS
SELECT g,
       CASE WHEN (p.done_before + g) % 100 < 10 THEN 'partial'
            WHEN (p.done_before + g) % 100 < 12 THEN 'full'
            WHEN (p.done_before + g) % 100 < 20 THEN 'failed'
            WHEN (p.done_before + g) % 100 < 25 THEN 'canceled'
            ELSE 'succeeded' END AS kind,
       t0,
       (500 + floor(random() * 49500))::bigint AS amount,
       'cus_' || (1 + floor(random() * 5000))::int AS customer_id
FROM seed_params p,
     generate_series(1, p.n) AS g,
     LATERAL (SELECT p.window_start + random() * (p.window_end - p.window_start) AS t0) AS t;

-- The instants: the API's create (and confirm) transaction, the worker's answer, and for a
-- refund the API's request and the refund worker's settlement, spaced as the real pipeline
-- spaces them. A refund comes between ten minutes and three days after the capture, never
-- after the window.
CREATE TEMPORARY TABLE seed_intents ON COMMIT DROP AS
SELECT s.*,
       pg_temp.seed_id('pi_', s.t0) AS id,
       CASE WHEN s.kind = 'canceled' THEN NULL
            WHEN s.kind = 'failed' THEN 'pm_card_chargeDeclined'
            ELSE 'pm_card_visa' END AS payment_method_id,
       s.t0 + interval '5 ms' AS tx1,
       s.t0 + interval '6 ms' AS evt_created_at,
       s.t0 + interval '30 ms' AS processing_at,
       s.t0 + interval '30.1 ms' AS evt_processing_at,
       CASE WHEN s.kind = 'canceled'
            THEN s.t0 + interval '1 minute' + random() * interval '2 hours'
            ELSE s.t0 + interval '140 ms' END AS done_at,
       CASE WHEN s.kind IN ('succeeded', 'partial', 'full')
            THEN 'ch_' || replace(gen_random_uuid()::text, '-', '') END AS charge_id,
       CASE WHEN s.kind IN ('succeeded', 'partial', 'full')
            -- FeeSchedule::fee: the percentage rounded half up, plus the fixed part, never
            -- more than the amount. The schedule is the one the caller's process charges.
            THEN least((s.amount * p.fee_bps + 5000) / 10000 + p.fee_fixed, s.amount) END AS fee,
       CASE s.kind WHEN 'partial' THEN greatest(1, s.amount * (10 + floor(random() * 80))::bigint / 100)
                   WHEN 'full' THEN s.amount END AS refund_amount,
       CASE WHEN s.kind IN ('partial', 'full')
            THEN least(s.t0 + interval '10 minutes' + random() * interval '3 days',
                       greatest(p.window_end, s.t0 + interval '1 minute')
                           + random() * interval '30 minutes') END AS r0
FROM seed_plan s, seed_params p;

ALTER TABLE seed_intents
    ADD COLUMN evt_created_id text, ADD COLUMN evt_processing_id text, ADD COLUMN evt_done_id text,
    ADD COLUMN refund_id text, ADD COLUMN acquirer_refund_id text,
    ADD COLUMN evt_refund_created_id text, ADD COLUMN evt_refund_done_id text;
UPDATE seed_intents SET
    evt_created_id = pg_temp.seed_id('evt_', evt_created_at),
    evt_processing_id = CASE WHEN kind <> 'canceled' THEN pg_temp.seed_id('evt_', evt_processing_at) END,
    evt_done_id = pg_temp.seed_id('evt_', done_at),
    refund_id = CASE WHEN r0 IS NOT NULL THEN pg_temp.seed_id('re_', r0 + interval '10 ms') END,
    acquirer_refund_id = CASE WHEN r0 IS NOT NULL THEN 'rf_' || replace(gen_random_uuid()::text, '-', '') END,
    evt_refund_created_id = CASE WHEN r0 IS NOT NULL THEN pg_temp.seed_id('evt_', r0 + interval '23 ms') END,
    evt_refund_done_id = CASE WHEN r0 IS NOT NULL THEN pg_temp.seed_id('evt_', r0 + interval '88 ms') END;

-- The object snapshots: s0 as created, s1 processing, s2 final (captured, declined or
-- canceled), s3 after its refund; r0 the refund pending, r1 succeeded.
CREATE TEMPORARY TABLE seed_states ON COMMIT DROP AS
SELECT i.*,
       pg_temp.seed_intent(i.id, i.amount,
           CASE WHEN i.kind = 'canceled' THEN 'requires_payment_method' ELSE 'requires_confirmation' END,
           i.t0, i.t0, NULL, i.customer_id, 0, 0, i.payment_method_id, NULL, NULL) AS s0,
       pg_temp.seed_intent(i.id, i.amount, 'processing', i.t0, i.processing_at, NULL,
           i.customer_id, 0, 0, i.payment_method_id, NULL, NULL) AS s1,
       pg_temp.seed_intent(i.id, i.amount, final.status, i.t0, i.done_at,
           CASE WHEN i.kind = 'canceled' THEN i.done_at END, i.customer_id, final.received, 0,
           i.payment_method_id, final.payment_error,
           CASE WHEN i.kind = 'canceled' THEN 'requested_by_customer' END) AS s2,
       CASE WHEN i.r0 IS NOT NULL THEN pg_temp.seed_intent(i.id, i.amount,
           CASE WHEN i.kind = 'full' THEN 'refunded' ELSE 'succeeded' END, i.t0,
           i.r0 + interval '96 ms', NULL, i.customer_id, i.amount, i.refund_amount,
           i.payment_method_id, NULL, NULL) END AS s3,
       CASE WHEN i.r0 IS NOT NULL THEN pg_temp.seed_refund(i.refund_id, i.id, i.refund_amount,
           CASE WHEN i.kind = 'partial' THEN 'requested_by_customer' END, 'pending',
           i.r0 + interval '10 ms', NULL) END AS r0_json,
       CASE WHEN i.r0 IS NOT NULL THEN pg_temp.seed_refund(i.refund_id, i.id, i.refund_amount,
           CASE WHEN i.kind = 'partial' THEN 'requested_by_customer' END, 'succeeded',
           i.r0 + interval '10 ms', i.r0 + interval '66 ms') END AS r1_json,
       final.status
FROM seed_intents i,
     LATERAL (SELECT CASE i.kind WHEN 'failed' THEN 'failed' WHEN 'canceled' THEN 'canceled'
                                 ELSE 'succeeded' END AS status,
                     CASE WHEN i.kind IN ('succeeded', 'partial', 'full') THEN i.amount ELSE 0 END AS received,
                     CASE WHEN i.kind = 'failed' THEN jsonb_build_object(
                         'code', 'card_declined', 'message', 'The card was declined.',
                         'declineCode', 'generic_decline') END AS payment_error) AS final;

-- Every audited step, in the order the real system writes them. `at` is the writing
-- transaction's now() (what audit_log.created_at defaults to); the event of a step, if any,
-- carries its own instant.
CREATE TEMPORARY TABLE seed_steps ON COMMIT DROP AS
SELECT i.id AS intent_id, st.*
FROM seed_states i, seed_params p,
LATERAL (VALUES
    (1, 'payment_intent', i.id, 'payment_intent.created', p.api_actor, NULL::jsonb, i.s0, i.tx1,
     i.evt_created_id, 'payment_intent.created', i.evt_created_at, NULL::text, NULL::jsonb),
    (2, 'payment_intent', i.id, 'payment_intent.processing', p.api_actor, i.s0, i.s1, i.tx1,
     i.evt_processing_id, 'payment_intent.processing', i.evt_processing_at, 'cmd.payment.confirm',
     jsonb_build_object('type', 'payment.confirm.v1', 'merchantId', p.merchant_id,
                        'intentVersion', 1, 'paymentIntentId', i.id)),
    (3, 'payment_intent', i.id,
     CASE i.status WHEN 'failed' THEN 'payment_intent.payment_failed'
                   ELSE 'payment_intent.' || i.status END,
     CASE WHEN i.kind = 'canceled' THEN p.api_actor ELSE 'worker:confirm-worker' END,
     CASE WHEN i.kind = 'canceled' THEN i.s0 ELSE i.s1 END, i.s2,
     i.done_at + interval '0.5 ms', i.evt_done_id,
     CASE i.status WHEN 'failed' THEN 'payment_intent.payment_failed'
                   ELSE 'payment_intent.' || i.status END,
     i.done_at + interval '0.1 ms', NULL, NULL),
    (4, 'refund', i.refund_id, 'refund.created', p.api_actor, NULL, i.r0_json, i.r0,
     i.evt_refund_created_id, 'refund.created', i.r0 + interval '23 ms', 'cmd.refund.process',
     jsonb_build_object('type', 'refund.process.v1', 'refundId', i.refund_id,
                        'merchantId', p.merchant_id)),
    (5, 'refund', i.refund_id, 'refund.succeeded', 'worker:refund-worker', i.r0_json, i.r1_json,
     i.r0 + interval '50 ms', i.evt_refund_done_id, 'refund.succeeded', i.r0 + interval '88 ms',
     NULL, NULL),
    -- The intent's own entry for the refund: a partial one is `refund_applied`; the one that
    -- refunds everything is the move to `refunded`, which has no event of its own.
    (6, 'payment_intent', i.id,
     CASE WHEN i.kind = 'full' THEN 'payment_intent.updated' ELSE 'payment_intent.refund_applied' END,
     'worker:refund-worker', i.s2, i.s3, i.r0 + interval '50 ms', NULL, NULL, NULL, NULL, NULL)
) AS st(step, object_type, object_id, action, actor, before, after, at, event_id, event_type,
        event_at, command_subject, command)
WHERE (st.step <> 2 OR i.kind <> 'canceled') AND (st.step < 4 OR i.r0 IS NOT NULL);

INSERT INTO payment_intents (id, merchant_id, amount, currency, status, amount_capturable,
    amount_received, amount_refunded, customer_id, payment_method_id, capture_method,
    description, metadata, last_payment_error, next_action, return_url, authorization_expires_at,
    canceled_at, cancellation_reason, created_at, updated_at, acquirer_charge_id, version)
SELECT i.id, p.merchant_id, i.amount, 'usd', coalesce(i.s3, i.s2)->>'status', 0,
       (i.s2->>'amountReceived')::bigint, coalesce((i.s3->>'amountRefunded')::bigint, 0),
       i.customer_id, i.payment_method_id, 'automatic', NULL, '{}'::jsonb,
       -- SQL NULL, not JSON null, where there is no error, as the store writes it.
       nullif(i.s2->'lastPaymentError', 'null'::jsonb), NULL, NULL, NULL,
       CASE WHEN i.kind = 'canceled' THEN i.done_at END,
       i.s2->>'cancellationReason', i.t0,
       CASE WHEN i.r0 IS NOT NULL THEN i.r0 + interval '96 ms' ELSE i.done_at END,
       i.charge_id,
       -- One increment per write: create, confirm, the worker's answer, the refund.
       CASE WHEN i.kind = 'canceled' THEN 1 WHEN i.r0 IS NOT NULL THEN 3 ELSE 2 END
FROM seed_states i, seed_params p
ORDER BY i.t0;

-- The audit_chain trigger finds each object's last entry, and a refund's foreign key its
-- intent, with queries whose plans PostgreSQL caches for the connection. Planned while the
-- tables are still small (a fresh database), they are sequential scans, and the batch then
-- reads the whole growing table once per row: the first batch of 5,000 took 66 s instead of
-- 4.5 s. Without sequential scans, for these statements only, the cached plans are the
-- indexes, right at any size. (For the whole batch it costs the other statements 15 %.)
SET LOCAL enable_seqscan = off;

INSERT INTO refunds (id, merchant_id, payment_intent_id, amount, currency, reason, status,
    failure_reason, acquirer_refund_id, created_at, updated_at, processed_at)
SELECT i.refund_id, p.merchant_id, i.id, i.refund_amount, 'usd',
       CASE WHEN i.kind = 'partial' THEN 'requested_by_customer' END, 'succeeded', NULL,
       i.acquirer_refund_id, i.r0 + interval '10 ms', i.r0 + interval '66 ms',
       i.r0 + interval '66 ms'
FROM seed_states i, seed_params p
WHERE i.r0 IS NOT NULL
ORDER BY i.r0;

INSERT INTO events (id, merchant_id, type, object_id, data, created_at)
SELECT s.event_id, p.merchant_id, s.event_type, s.object_id, s.after, s.event_at
FROM seed_steps s, seed_params p
WHERE s.event_id IS NOT NULL
ORDER BY s.event_at;

-- In time order, and within one object in step order, so the trigger chains each object's
-- entries in the order of its life and `seq` follows time as it does in the running system.
INSERT INTO audit_log (id, merchant_id, object_type, object_id, action, actor, before, after,
    created_at, prev_hash, hash)
SELECT pg_temp.seed_id('aud_', s.at), p.merchant_id, s.object_type, s.object_id, s.action,
       s.actor, s.before, s.after, s.at, '', ''
FROM seed_steps s, seed_params p
ORDER BY s.at, s.object_id, s.step;

SET LOCAL enable_seqscan TO DEFAULT;

-- The webhook fan-out: one delivery per (event, matching subscription), delivered at the
-- first attempt, as a healthy endpoint leaves it.
CREATE TEMPORARY TABLE seed_deliveries ON COMMIT DROP AS
SELECT pg_temp.seed_id('wd_', s.at + interval '70 ms') AS id, s.event_id, w.id AS subscription_id,
       w.url, s.at + interval '70 ms' AS created_at,
       pg_temp.seed_uuid7(s.at + interval '70 ms') AS message_id
FROM seed_steps s
JOIN seed_params p ON true
JOIN webhook_subscriptions w ON w.merchant_id = p.merchant_id AND w.active
    AND w.deleted_at IS NULL
    AND (s.event_type = ANY(w.events) OR '*' = ANY(w.events))
WHERE s.event_id IS NOT NULL;

INSERT INTO webhook_deliveries (id, merchant_id, event_id, subscription_id, url, status, attempt,
    cycle, cycle_message_id, response_code, delivered_at, created_at, updated_at)
SELECT d.id, p.merchant_id, d.event_id, d.subscription_id, d.url, 'succeeded', 1, 1,
       d.message_id::text, 200, d.created_at + interval '30 ms', d.created_at,
       d.created_at + interval '30 ms'
FROM seed_deliveries d, seed_params p
ORDER BY d.created_at;

INSERT INTO webhook_delivery_attempts (delivery_id, cycle, attempt, outcome, response_code,
    duration_ms, started_at, finished_at)
SELECT d.id, 1, 1, 'succeeded', 200, 5, d.created_at + interval '20 ms',
       d.created_at + interval '30 ms'
FROM seed_deliveries d
ORDER BY d.created_at;

-- The outbox as the relay leaves it: every row published moments after its transaction.
INSERT INTO outbox (id, subject, payload, created_at, published_at)
SELECT o.id, o.subject, o.payload, o.created_at, o.created_at + interval '40 ms'
FROM (
    SELECT pg_temp.seed_uuid7(s.at) AS id, 'evt.' || s.event_type AS subject,
           jsonb_build_object('id', s.event_id, 'data', s.after, 'type', s.event_type,
                              'createdAt', pg_temp.seed_ts(s.event_at),
                              'merchantId', p.merchant_id) AS payload,
           s.at AS created_at
    FROM seed_steps s, seed_params p WHERE s.event_id IS NOT NULL
  UNION ALL
    SELECT pg_temp.seed_uuid7(s.at), s.command_subject, s.command, s.at
    FROM seed_steps s WHERE s.command IS NOT NULL
  UNION ALL
    SELECT d.message_id, 'cmd.webhook.deliver',
           jsonb_build_object('type', 'webhook.deliver.v1', 'deliveryId', d.id,
                              'subscriptionId', d.subscription_id),
           d.created_at
    FROM seed_deliveries d
) AS o
ORDER BY o.created_at, o.id;

-- The ledger: a charge for every capture (Posting::charge), a refund for every succeeded
-- refund (Posting::refund), each with the balance transaction the merchant sees.
CREATE TEMPORARY TABLE seed_postings ON COMMIT DROP AS
SELECT pg_temp.seed_id('ltx_', i.done_at + interval '25 ms') AS id, 'charge' AS kind,
       i.id AS source_id, i.done_at + interval '25 ms' AS created_at,
       pg_temp.seed_id('txn_', i.done_at + interval '32 ms') AS bt_id,
       i.done_at + interval '32 ms' AS bt_at, i.amount AS amount, i.fee AS fee,
       ARRAY['acquirer_receivable', 'merchant_pending', 'fees'] AS accounts,
       ARRAY[i.amount, -(i.amount - i.fee), -i.fee] AS legs
FROM seed_intents i WHERE i.charge_id IS NOT NULL
UNION ALL
SELECT pg_temp.seed_id('ltx_', i.r0 + interval '98 ms'), 'refund', i.refund_id,
       i.r0 + interval '98 ms', pg_temp.seed_id('txn_', i.r0 + interval '100 ms'),
       i.r0 + interval '100 ms', -i.refund_amount, 0,
       ARRAY['merchant_pending', 'refunds'], ARRAY[i.refund_amount, -i.refund_amount]
FROM seed_intents i WHERE i.r0 IS NOT NULL;

INSERT INTO ledger_transactions (id, merchant_id, currency, kind, source_id, created_at)
SELECT l.id, p.merchant_id, 'usd', l.kind, l.source_id, l.created_at
FROM seed_postings l, seed_params p
ORDER BY l.created_at;

-- A zero leg (a fee of nothing, or one that takes the whole amount) is not written, as
-- Posting::new drops it.
INSERT INTO ledger_entries (transaction_id, merchant_id, currency, account, amount)
SELECT l.id, p.merchant_id, 'usd', leg.account, leg.amount
FROM seed_postings l, seed_params p,
     LATERAL unnest(l.accounts, l.legs) WITH ORDINALITY AS leg(account, amount, n)
WHERE leg.amount <> 0
ORDER BY l.created_at, leg.n;

INSERT INTO balance_transactions (id, merchant_id, ledger_transaction_id, type,
    reporting_category, amount, fee, net, currency, source, status, created_at)
SELECT l.bt_id, p.merchant_id, l.id, l.kind, l.kind, l.amount, l.fee, l.amount - l.fee, 'usd',
       l.source_id, 'pending', l.bt_at
FROM seed_postings l, seed_params p
ORDER BY l.bt_at;

-- The running balances take the batch's sum per account and slot (the slot of each posting's
-- source, `ledger_slot`, as store::ledger::post picks it), in the chart's order, as every
-- posting updates them.
INSERT INTO ledger_accounts AS a (merchant_id, currency, account, slot, balance)
SELECT p.merchant_id, 'usd', leg.account, ledger_slot(l.source_id), sum(leg.amount)::bigint
FROM seed_postings l, seed_params p, LATERAL unnest(l.accounts, l.legs) AS leg(account, amount)
GROUP BY p.merchant_id, leg.account, ledger_slot(l.source_id)
ORDER BY leg.account, ledger_slot(l.source_id)
ON CONFLICT (merchant_id, currency, account, slot) DO UPDATE SET balance = a.balance + EXCLUDED.balance;

-- seed:summary
SELECT (SELECT count(*) FROM seed_intents) AS intents,
       (SELECT count(*) FROM seed_steps WHERE event_id IS NOT NULL) AS events,
       (SELECT count(*) FROM seed_steps) AS audit_entries,
       (SELECT count(*) FROM seed_steps WHERE event_id IS NOT NULL)
         + (SELECT count(*) FROM seed_steps WHERE command IS NOT NULL)
         + (SELECT count(*) FROM seed_deliveries) AS outbox,
       (SELECT count(*) FROM seed_intents WHERE r0 IS NOT NULL) AS refunds,
       (SELECT count(*) FROM seed_deliveries) AS deliveries,
       (SELECT count(*) FROM seed_postings) AS postings,
       (SELECT coalesce(sum(cardinality(array_remove(legs, 0))), 0) FROM seed_postings)::bigint AS entries;
