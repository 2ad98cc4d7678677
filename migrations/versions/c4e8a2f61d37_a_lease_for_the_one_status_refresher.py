"""a lease for the one status refresher, and the statuses it reads

Revision ID: c4e8a2f61d37
Revises: 78c19855b9aa
Create Date: 2026-12-14 10:00:00.000000

One process of a deployment holds the `status-refresher` lease: it alone reads the target
databases and runs the housekeeping chores, and writes each environment's status into
`environment_status`, which every process's pages read.
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

# Microseconds on MariaDB too: these times are compared with each other.
PRECISE_TIME = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), 'mysql', 'mariadb')


# revision identifiers, used by Alembic.
revision = 'c4e8a2f61d37'
down_revision = '78c19855b9aa'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('lease',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('holder', sa.String(length=120), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('run_requested_at', PRECISE_TIME, nullable=True),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('environment_status',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('behind', sa.Integer(), nullable=False),
    sa.Column('current', sa.JSON(), nullable=False),
    sa.Column('pending', sa.JSON(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('asked_at', PRECISE_TIME, nullable=False),
    sa.Column('checked_at', PRECISE_TIME, nullable=True),
    sa.Column('duration', sa.Float(), nullable=True),
    sa.Column('read_by', sa.String(length=120), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )


def downgrade():
    op.drop_table('environment_status')
    op.drop_table('lease')
