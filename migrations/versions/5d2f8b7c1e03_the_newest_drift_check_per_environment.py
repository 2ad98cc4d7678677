"""the newest drift check per environment

Revision ID: 5d2f8b7c1e03
Revises: 7c3e9a41d2b8
Create Date: 2026-11-25 13:20:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '5d2f8b7c1e03'
down_revision = '7c3e9a41d2b8'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('drift_check',
    sa.Column('environment', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('revisions', sa.JSON(), nullable=False),
    sa.Column('differences', sa.JSON(), nullable=True),
    sa.Column('checked_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('checked_by', sa.String(length=120), nullable=False),
    sa.PrimaryKeyConstraint('environment')
    )


def downgrade():
    op.drop_table('drift_check')
