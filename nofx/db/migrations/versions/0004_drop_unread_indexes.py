"""drop two indexes no query reads

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 22:30:00

``ix_steps_tool_status`` and ``ix_events_type`` served status totals computed with
``GROUP BY`` before migration 0002 made them counters; no statement NOFX sends has used
them since (the running-step gauges read the partial index ``ix_steps_running``). Every
step transition still paid for them: each status change of a step is a non-HOT update
that adds an entry to every index on ``steps``, and every event adds one to every index
on ``events`` (docs/benchmarks.md).
"""

from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        # CONCURRENTLY: no lock that would queue the running workers' writes behind it.
        with op.get_context().autocommit_block():
            op.execute('DROP INDEX CONCURRENTLY IF EXISTS ix_steps_tool_status')
            op.execute('DROP INDEX CONCURRENTLY IF EXISTS ix_events_type')
        return
    with op.batch_alter_table('steps', schema=None) as batch_op:
        batch_op.drop_index('ix_steps_tool_status')
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_type')


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        with op.get_context().autocommit_block():
            # A CREATE ... CONCURRENTLY that failed leaves an invalid index of that name:
            # drop it first, so a second try builds a valid one.
            for name, table, columns in (('ix_events_type', 'events', 'type, id'),
                                         ('ix_steps_tool_status', 'steps', 'tool, status')):
                op.execute(f'DROP INDEX CONCURRENTLY IF EXISTS {name}')
                op.execute(f'CREATE INDEX CONCURRENTLY {name} ON {table} ({columns})')
        return
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index('ix_events_type', ['type', 'id'], unique=False)
    with op.batch_alter_table('steps', schema=None) as batch_op:
        batch_op.create_index('ix_steps_tool_status', ['tool', 'status'], unique=False)
