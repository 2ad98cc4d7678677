"""merge sku and address branches

Revision ID: 1aec4c5d1964
Revises: 5cb588266835, d11b293a31f2
Create Date: 2026-11-25 05:14:52.456278

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '1aec4c5d1964'
down_revision = ('5cb588266835', 'd11b293a31f2')
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
