"""the failing step of a job

Revision ID: 9b1f3c5d7e20
Revises: 5d2f8b7c1e03
Create Date: 2026-12-03 07:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '9b1f3c5d7e20'
down_revision = '5d2f8b7c1e03'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('failed_revision', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('failed_step', sa.Integer(), nullable=True))


def downgrade():
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_column('failed_step')
        batch_op.drop_column('failed_revision')
