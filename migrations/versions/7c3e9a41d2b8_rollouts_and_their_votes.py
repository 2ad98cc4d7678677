"""rollouts, their votes, and the job that executes each

Revision ID: 7c3e9a41d2b8
Revises: 16bab61f6bdc
Create Date: 2026-11-25 12:40:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '7c3e9a41d2b8'
down_revision = '16bab61f6bdc'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('rollout',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('environment', sa.String(length=64), nullable=False),
    sa.Column('direction', sa.String(length=16), nullable=False),
    sa.Column('requested_target', sa.String(length=255), nullable=False),
    sa.Column('target_revision', sa.String(length=255), nullable=False),
    sa.Column('from_revisions', sa.JSON(), nullable=False),
    sa.Column('revision_ids', sa.JSON(), nullable=False),
    sa.Column('plan', sa.JSON(), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('approvals_required', sa.Integer(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('ticket_url', sa.String(length=500), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('state_reason', sa.Text(), nullable=True),
    sa.Column('requested_by_id', sa.Integer(), nullable=True),
    sa.Column('requested_by', sa.String(length=120), nullable=False),
    sa.Column('override_justification', sa.Text(), nullable=True),
    sa.Column('override_by', sa.String(length=120), nullable=True),
    sa.Column('gate_refusal', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('executed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('rollout', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rollout_environment'), ['environment'], unique=False)
        batch_op.create_index(batch_op.f('ix_rollout_state'), ['state'], unique=False)

    op.create_table('rollout_vote',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('rollout_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('username', sa.String(length=120), nullable=False),
    sa.Column('decision', sa.String(length=16), nullable=False),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['rollout_id'], ['rollout.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('rollout_id', 'user_id', name='uq_rollout_vote_rollout_user')
    )
    with op.batch_alter_table('rollout_vote', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rollout_vote_rollout_id'), ['rollout_id'], unique=False)

    # Batch mode so SQLite (which cannot add a foreign key in place) rebuilds the table.
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rollout_id', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_job_rollout_id'), ['rollout_id'], unique=False)
        batch_op.create_foreign_key('fk_job_rollout_id_rollout', 'rollout', ['rollout_id'], ['id'])


def downgrade():
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_constraint('fk_job_rollout_id_rollout', type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_job_rollout_id'))
        batch_op.drop_column('rollout_id')

    with op.batch_alter_table('rollout_vote', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rollout_vote_rollout_id'))

    op.drop_table('rollout_vote')
    with op.batch_alter_table('rollout', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rollout_state'))
        batch_op.drop_index(batch_op.f('ix_rollout_environment'))

    op.drop_table('rollout')
