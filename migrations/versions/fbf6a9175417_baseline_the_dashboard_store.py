"""baseline: the dashboard store

Revision ID: fbf6a9175417
Revises: 
Create Date: 2026-11-25 05:16:57.357138

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'fbf6a9175417'
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
