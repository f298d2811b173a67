"""a step's claim and success as one statement each (Postgres)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 20:30:00

A step's two hot transitions, ``queued -> running`` (claim) and ``running -> succeeded``,
each took a transaction of five to seven statements: a round trip apiece, most of a step's
cost on top of Celery (docs/benchmarks.md). On Postgres they become two functions that
``nofx/status.py`` calls with one statement, which a worker sends in autocommit mode: one
round trip, one transaction. They do what the portable Python path in ``nofx/status.py``
does, statement for statement, and the transition tests hold both to the same table.

Inside a VOLATILE PL/pgSQL function each statement takes a fresh snapshot, so, as in the
Python path, everything after the run-row lock sees what the previous holder committed.
Timestamps come from the caller (``p_at``), like every timestamp NOFX writes.
"""

from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

CLAIM = """
CREATE OR REPLACE FUNCTION nofx_claim_step(
    p_run_id text, p_step_id text, p_task_id text, p_at timestamptz, p_shard smallint)
RETURNS TABLE (o_position integer, o_name text, o_tool text, o_inputs jsonb,
               o_attempt integer, o_max_attempts integer, o_timeout_s double precision)
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_run text;
    s record;
BEGIN
    SELECT r.status INTO v_run FROM runs r WHERE r.id = p_run_id FOR UPDATE;
    IF v_run IS NULL OR v_run NOT IN ('queued', 'running') THEN
        RETURN;
    END IF;
    UPDATE steps AS t
       SET status = 'running', attempt = t.attempt + 1, started_at = p_at,
           heartbeat_at = p_at, ended_at = NULL, error = NULL, task_id = p_task_id,
           due_at = NULL, updated_at = p_at
     WHERE t.id = p_step_id AND t.run_id = p_run_id AND t.status = 'queued'
       AND t.attempt < t.max_attempts
       AND NOT EXISTS (SELECT 1 FROM steps e WHERE e.run_id = t.run_id
                       AND e."index" < t."index" AND e.status <> 'succeeded')
    RETURNING t."index", t.name, t.tool, t.inputs, t.attempt, t.max_attempts, t.timeout_s
      INTO s;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF v_run = 'queued' THEN
        UPDATE runs SET status = 'running', started_at = coalesce(started_at, p_at),
                        updated_at = p_at
         WHERE id = p_run_id;
        INSERT INTO events (run_id, step_id, type, payload, created_at)
        VALUES (p_run_id, NULL, 'run.started', '{}'::jsonb, p_at);
        INSERT INTO counters AS c (name, labels, shard, value)
        VALUES ('runs', 'status=running', p_shard, 1)
        ON CONFLICT (name, labels, shard) DO UPDATE SET value = c.value + 1;
    END IF;
    INSERT INTO events (run_id, step_id, type, payload, created_at)
    VALUES (p_run_id, p_step_id, 'step.started',
            jsonb_build_object('attempt', s.attempt, 'task_id', p_task_id), p_at);
    INSERT INTO counters AS c (name, labels, shard, value)
    VALUES ('steps', 'tool=' || s.tool || ',status=running', p_shard, 1)
    ON CONFLICT (name, labels, shard) DO UPDATE SET value = c.value + 1;
    RETURN QUERY SELECT s."index", s.name::text, s.tool::text, s.inputs, s.attempt,
                        s.max_attempts, s.timeout_s;
END
$fn$
"""

SUCCEED = """
CREATE OR REPLACE FUNCTION nofx_succeed_step(
    p_run_id text, p_step_id text, p_attempt integer, p_outputs jsonb, p_artifacts jsonb,
    p_at timestamptz, p_shard smallint)
RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    s record;
    a record;
    v_next_due boolean;
    v_run_ended boolean := false;
BEGIN
    PERFORM 1 FROM runs WHERE id = p_run_id FOR UPDATE;
    UPDATE steps AS t
       SET status = 'succeeded', outputs = p_outputs, ended_at = p_at, updated_at = p_at
     WHERE t.id = p_step_id AND t.status = 'running' AND t.attempt = p_attempt
    RETURNING t.started_at, t."index", t.tool INTO s;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE steps SET due_at = p_at
     WHERE run_id = p_run_id AND "index" = s."index" + 1 AND status = 'queued';
    v_next_due := FOUND;
    FOR a IN SELECT x.e ->> 'id' AS id, x.e ->> 'name' AS name,
                    x.e ->> 'content_type' AS content_type, (x.e ->> 'size')::bigint AS size,
                    x.e ->> 'sha256' AS sha256, x.e ->> 'storage_key' AS storage_key
               FROM jsonb_array_elements(coalesce(p_artifacts, '[]'::jsonb))
                    WITH ORDINALITY AS x(e, n)
              ORDER BY x.n
    LOOP
        INSERT INTO artifacts (id, run_id, step_id, name, content_type, size, sha256,
                               storage_key, created_at)
        VALUES (a.id, p_run_id, p_step_id, a.name, a.content_type, a.size, a.sha256,
                a.storage_key, p_at);
        INSERT INTO events (run_id, step_id, type, payload, created_at)
        VALUES (p_run_id, p_step_id, 'artifact.created',
                jsonb_build_object('artifact_id', a.id, 'name', a.name, 'size', a.size,
                                   'sha256', a.sha256), p_at);
    END LOOP;
    INSERT INTO events (run_id, step_id, type, payload, created_at)
    VALUES (p_run_id, p_step_id, 'step.finished',
            jsonb_build_object(
                'status', 'succeeded', 'error', NULL, 'attempt', p_attempt,
                'duration_s', CASE WHEN s.started_at IS NULL THEN 0.0
                              ELSE round(extract(epoch FROM p_at - s.started_at)::numeric, 3) END),
            p_at);
    IF NOT v_next_due AND NOT EXISTS (
            SELECT 1 FROM steps WHERE run_id = p_run_id AND status <> 'succeeded') THEN
        -- The last step: the run ends with it (see nofx/status.py, succeed_step).
        UPDATE runs SET status = 'succeeded', ended_at = p_at, updated_at = p_at
         WHERE id = p_run_id AND status IN ('queued', 'running');
        v_run_ended := FOUND;
        IF v_run_ended THEN
            INSERT INTO events (run_id, step_id, type, payload, created_at)
            VALUES (p_run_id, NULL, 'run.finished', '{"status": "succeeded"}'::jsonb, p_at);
        END IF;
    END IF;
    -- Counters last and in (name, labels) order, as nofx/db/counters.py bumps them.
    IF v_run_ended THEN
        INSERT INTO counters AS c (name, labels, shard, value)
        VALUES ('runs', 'status=succeeded', p_shard, 1)
        ON CONFLICT (name, labels, shard) DO UPDATE SET value = c.value + 1;
    END IF;
    INSERT INTO counters AS c (name, labels, shard, value)
    VALUES ('steps', 'tool=' || s.tool || ',status=succeeded', p_shard, 1)
    ON CONFLICT (name, labels, shard) DO UPDATE SET value = c.value + 1;
    RETURN true;
END
$fn$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return  # SQLite runs the same transitions as Python statements (nofx/status.py)
    op.execute(CLAIM)
    op.execute(SUCCEED)


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute('DROP FUNCTION IF EXISTS nofx_succeed_step(text, text, integer, jsonb, jsonb, '
               'timestamptz, smallint)')
    op.execute('DROP FUNCTION IF EXISTS nofx_claim_step(text, text, text, timestamptz, '
               'smallint)')
