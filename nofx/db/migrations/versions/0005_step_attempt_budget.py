"""a step's attempt budget, so attempts number on across resumes

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 17:30:00

Resuming a run used to start its unsuccessful steps again at attempt 0, so a step's second
"attempt 1" could be finished, failed or kept beating by the first one (a worker whose
revoke never came): every guard tells attempts apart by number. Attempts now number on
across resumes, and a resume gives each step a fresh budget instead: ``max_attempts``
becomes the attempts made so far plus ``attempt_budget``, the attempts a step gets each
time its run starts or resumes. NULL, as in every row written before this revision and
every step never resumed, means ``max_attempts`` (then unchanged since the run was created).
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('steps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('attempt_budget', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('steps', schema=None) as batch_op:
        batch_op.drop_column('attempt_budget')
