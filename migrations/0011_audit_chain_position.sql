-- The audit chain stays linear under concurrent appends.
--
-- Until now an entry's `seq` came from the column default, evaluated before the trigger took
-- the object's lock, and the trigger chained onto the entry with the highest `seq`. Two
-- appends to one object could therefore take their `seq` in one order and the lock in the
-- other: the chain (lock order) and `seq` disagreed, the verifier (walking by `seq`) reported
-- a break nobody made, and a third append chaining onto the highest `seq` forked the chain.
--
-- From here on each entry records its place in its object's chain, `object_seq` (1, 2, 3 ...),
-- computed by the trigger while it holds the object's lock; `seq` is drawn under the same lock,
-- so within one object both orders are the lock order. A unique index on
-- (object_id, object_seq) makes a fork impossible even for a writer that could not see the
-- entry before it (a REPEATABLE READ snapshot, say): it fails instead of forking.
-- What the hash covers (`audit_payload`) is unchanged, so every existing hash stays valid.

ALTER TABLE audit_log ADD COLUMN object_seq BIGINT;

-- Existing entries get their place by following the links themselves, from the first entry
-- (prev_hash all zeros) to the entry naming it as prev_hash, and so on: that is the order the
-- trigger chained them in, whatever `seq` says. A chain that already forked (two entries
-- naming one predecessor) keeps its main line first, the line later appends followed (the
-- entry with the highest `seq` at each step), and the entries forked off it after; the
-- verifier reports those as a fork, not as an edit. Entries no walk reaches (their link was
-- damaged) come last, where the verifier reports them too.
CREATE TEMPORARY TABLE audit_chain_walk ON COMMIT DROP AS
WITH RECURSIVE walk AS (
    SELECT a.seq, a.object_id, a.hash, 1::bigint AS depth
    FROM audit_log a
    WHERE a.prev_hash = '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea
  UNION ALL
    SELECT c.seq, c.object_id, c.hash, w.depth + 1
    FROM walk w
    JOIN audit_log c ON c.object_id = w.object_id AND c.prev_hash = w.hash
)
SELECT seq, object_id, hash, depth FROM walk;

CREATE INDEX ON audit_chain_walk (object_id, depth);

-- An entry is off the main line when nothing follows it and it is not the chain's tip; the
-- old trigger only ever extended the entry with the highest `seq`, so a fork leaves single
-- entries hanging off the line, never a second line.
CREATE TEMPORARY TABLE audit_chain_place ON COMMIT DROP AS
WITH placed AS (
    SELECT a.seq, a.object_id, w.depth,
           w.depth IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM audit_log c
                           WHERE c.object_id = a.object_id AND c.prev_hash = a.hash)
           AND a.seq <> (SELECT t.seq FROM audit_chain_walk t
                         WHERE t.object_id = a.object_id
                         ORDER BY t.depth DESC, t.seq DESC LIMIT 1) AS off_line
    FROM audit_log a
    LEFT JOIN audit_chain_walk w ON w.seq = a.seq
)
SELECT seq,
       row_number() OVER (
           PARTITION BY object_id ORDER BY depth IS NULL, off_line, depth, seq
       ) AS object_seq
FROM placed;

-- The one UPDATE this table ever sees: the new column's backfill, inside this migration's
-- transaction, with the append-only guard lifted for it alone.
ALTER TABLE audit_log DISABLE TRIGGER audit_append_only;
UPDATE audit_log a SET object_seq = p.object_seq FROM audit_chain_place p WHERE p.seq = a.seq;
ALTER TABLE audit_log ENABLE TRIGGER audit_append_only;

ALTER TABLE audit_log ALTER COLUMN object_seq SET NOT NULL;
CREATE UNIQUE INDEX audit_log_chain ON audit_log (object_id, object_seq);

CREATE OR REPLACE FUNCTION audit_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    previous BYTEA;
    place BIGINT;
BEGIN
    -- Everything that orders the chain is decided after this lock, which is held to commit,
    -- so the next writer of this object reads this entry as its predecessor.
    PERFORM pg_advisory_xact_lock(hashtextextended('audit:' || NEW.object_id, 0));
    SELECT a.hash, a.object_seq INTO previous, place FROM audit_log a
        WHERE a.object_id = NEW.object_id ORDER BY a.object_seq DESC LIMIT 1;
    NEW.object_seq := coalesce(place, 0) + 1;
    -- The default's value was taken before the lock; a fresh one keeps `seq` (the order
    -- listings use) in chain order within the object. The hash covers this one.
    NEW.seq := nextval(pg_get_serial_sequence('audit_log', 'seq'));
    NEW.prev_hash := coalesce(previous, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);
    NEW.hash := sha256(NEW.prev_hash || convert_to(audit_payload(NEW), 'UTF8'));
    RETURN NEW;
END;
$$;
