"""the rehearsal of each rollout: the task that rehearses it and the evidence it left

Revision ID: e61b0d4a9c73
Revises: 3e5a7c9d1f24
Create Date: 2026-12-03 15:30:00.000000

Requesting a rollout rehearses its frozen plan on a scratch database in the background. The
rollout keeps the task that does it and, once it ends, the outcome (the statements each step
really ran, durations, warnings, or why it was not rehearsed), so that every web server shows
the approvers the same evidence.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'e61b0d4a9c73'
down_revision = '3e5a7c9d1f24'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('rollout', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rehearsal_task_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('rehearsal', sa.JSON(), nullable=True))


def downgrade():
    with op.batch_alter_table('rollout', schema=None) as batch_op:
        batch_op.drop_column('rehearsal')
        batch_op.drop_column('rehearsal_task_id')
