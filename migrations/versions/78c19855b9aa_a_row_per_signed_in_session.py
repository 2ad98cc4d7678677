"""a row per signed-in session

Revision ID: 78c19855b9aa
Revises: 9b1f3c5d7e20
Create Date: 2026-12-10 09:00:00.000000

A session is valid while its row exists, so signing out ends it for every copy of its cookie.
Each user's old per-user token becomes one session row, so browsers signed in before the
upgrade stay signed in; their next sign-out ends them like any other session.
"""
from datetime import datetime, timezone
import hashlib
import secrets

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '78c19855b9aa'
down_revision = '9b1f3c5d7e20'
branch_labels = None
depends_on = None

user_table = sa.table(
    'user',
    sa.column('id', sa.Integer()),
    sa.column('active', sa.Boolean()),
    sa.column('session_token', sa.String(length=64)),
)
user_session_table = sa.table(
    'user_session',
    sa.column('token_digest', sa.String(length=64)),
    sa.column('user_id', sa.Integer()),
    sa.column('created_at', sa.DateTime(timezone=True)),
)


def upgrade():
    op.create_table('user_session',
    sa.Column('token_digest', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['user.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('token_digest')
    )
    with op.batch_alter_table('user_session', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_user_session_user_id'), ['user_id'], unique=False)

    # The old cookie says "id:session_token": keep it valid as a session row of its own.
    connection = op.get_bind()
    now = datetime.now(timezone.utc)
    rows = [
        {
            'token_digest': hashlib.sha256(token.encode()).hexdigest(),
            'user_id': user_id,
            'created_at': now,
        }
        for user_id, token in connection.execute(
            sa.select(user_table.c.id, user_table.c.session_token).where(
                user_table.c.active.is_(True)
            )
        )
    ]
    if rows:
        op.bulk_insert(user_session_table, rows)

    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.drop_column('session_token')


def downgrade():
    # Every user gets a fresh per-user token: sessions opened since the upgrade end.
    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.add_column(sa.Column('session_token', sa.String(length=64), nullable=True))
    connection = op.get_bind()
    for (user_id,) in connection.execute(sa.select(user_table.c.id)).all():
        connection.execute(
            user_table.update()
            .where(user_table.c.id == user_id)
            .values(session_token=secrets.token_hex(16))
        )
    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.alter_column(
            'session_token', existing_type=sa.String(length=64), nullable=False
        )

    # The index goes with the table (MariaDB will not drop it alone: the foreign key needs it).
    op.drop_table('user_session')
