"""backfill customer display_name

Data migration: give every existing customer a display_name, taken from
legacy_username (which is about to be dropped) or else from the local part of
the e-mail address.  Plain SELECT/UPDATE through lightweight table constructs,
so it runs the same on SQLite, PostgreSQL and MariaDB.

Revision ID: 8f60afaad46c
Revises: 4add470122e6
Create Date: 2026-11-25 05:15:04.286623

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '8f60afaad46c'
down_revision = '4add470122e6'
branch_labels = None
depends_on = None


# Snapshot of the columns this migration needs; do not import the app models,
# they describe the *current* schema, not the one at this revision.
customer = sa.table(
    'customer',
    sa.column('id', sa.Integer),
    sa.column('email', sa.String),
    sa.column('legacy_username', sa.String),
    sa.column('display_name', sa.String),
)

DISPLAY_NAME_LENGTH = 120


def upgrade():
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(customer.c.id, customer.c.email, customer.c.legacy_username)
        .where(customer.c.display_name.is_(None))
    ).all()
    values = [
        {
            'customer_id': row.id,
            'name': (row.legacy_username or row.email.split('@', 1)[0])[
                :DISPLAY_NAME_LENGTH
            ],
        }
        for row in rows
    ]
    if values:
        conn.execute(
            customer.update()
            .where(customer.c.id == sa.bindparam('customer_id'))
            .values(display_name=sa.bindparam('name')),
            values,
        )


def downgrade():
    # Before this revision display_name was never filled in.
    op.execute(customer.update().values(display_name=None))
