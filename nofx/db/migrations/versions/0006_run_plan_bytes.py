"""a run's plan size, as an answer writes it

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 22:00:00

``GET /runs`` ends a page once the plans on it pass ``NOFX_PAGE_MAX_BYTES``. Measured in the
database, a plan's length is in characters, and an answer writes a character outside ASCII
as up to 12 bytes (two ``\\u`` escapes), so a page could be 12 times its budget. A run now
records ``plan_bytes``, its plan's length in JSON as the API writes it, when it is created.
NULL, as in every row written before this revision, means "measure the stored plan".
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('plan_bytes', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_column('plan_bytes')
