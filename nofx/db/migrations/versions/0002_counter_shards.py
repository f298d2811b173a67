"""counter shards, seeded status totals

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 19:20:00

Counters get a shard column (writers spread over a few rows) and the run and step status
totals behind /metrics become counters, seeded from the rows that exist now.
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('counters', schema=None) as batch_op:
        batch_op.add_column(sa.Column('shard', sa.SmallInteger(), server_default='0',
                                      nullable=False))
        batch_op.drop_constraint('pk_counters', type_='primary')
        batch_op.create_primary_key('pk_counters', ['name', 'labels', 'shard'])
    op.execute("INSERT INTO counters (name, labels, shard, value) "
               "SELECT 'runs', 'status=' || status, 0, count(*) FROM runs GROUP BY status")
    op.execute("INSERT INTO counters (name, labels, shard, value) "
               "SELECT 'steps', 'tool=' || tool || ',status=' || status, 0, count(*) "
               "FROM steps GROUP BY tool, status")


def downgrade() -> None:
    op.execute("DELETE FROM counters WHERE name IN ('runs', 'steps')")
    op.execute("CREATE TABLE counters_sum AS SELECT name, labels, sum(value) AS value "
               "FROM counters GROUP BY name, labels")
    op.execute("DELETE FROM counters")
    with op.batch_alter_table('counters', schema=None) as batch_op:
        batch_op.drop_constraint('pk_counters', type_='primary')
        batch_op.drop_column('shard')
        batch_op.create_primary_key('pk_counters', ['name', 'labels'])
    op.execute("INSERT INTO counters (name, labels, value) SELECT name, labels, value "
               "FROM counters_sum")
    op.drop_table('counters_sum')
