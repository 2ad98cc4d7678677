"""background tasks with progress

Revision ID: 3e5a7c9d1f24
Revises: c4e8a2f61d37
Create Date: 2026-12-14 09:00:00.000000

Schema diffs, rehearsals, drift checks and plan renders run off the request; each is a row with
its progress and result. `active_key` is set only while a task is queued or running, and unique,
so that two web processes asked for the same work at once make one task.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '3e5a7c9d1f24'
down_revision = 'c4e8a2f61d37'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('task',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('environment', sa.String(length=64), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('active_key', sa.String(length=64), nullable=True),
    sa.Column('progress_done', sa.Integer(), nullable=False),
    sa.Column('progress_total', sa.Integer(), nullable=False),
    sa.Column('progress_text', sa.String(length=255), nullable=False),
    sa.Column('requested_by', sa.String(length=120), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('result', sa.JSON(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('active_key', name='uq_task_active_key')
    )
    with op.batch_alter_table('task', schema=None) as batch_op:
        batch_op.create_index('ix_task_kind_environment_key', ['kind', 'environment', 'key'], unique=False)
        batch_op.create_index(batch_op.f('ix_task_state'), ['state'], unique=False)


def downgrade():
    op.drop_table('task')
