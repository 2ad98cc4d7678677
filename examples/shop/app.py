"""Demo "shop" application whose schema is managed with Flask-Migrate.

Run the migration commands from this directory, e.g.::

    flask --app app db upgrade

The database URL is taken from ``SHOP_DATABASE_URL`` and defaults to a SQLite
file (``shop.db``) in the Flask instance folder.
"""

from __future__ import annotations

import os

from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import MetaData

# Deterministic constraint names, so that SQLite batch mode can recreate
# tables and MariaDB/PostgreSQL can drop constraints by name.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

db = SQLAlchemy(metadata=MetaData(naming_convention=NAMING_CONVENTION))
# Batch mode lets Alembic emulate ALTER TABLE on SQLite.
migrate = Migrate(render_as_batch=True)


def create_app(database_url: str | None = None) -> Flask:
    """Create the Flask app bound to ``database_url`` (or ``SHOP_DATABASE_URL``)."""
    app = Flask(__name__, instance_relative_config=True)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url or os.environ.get(
        "SHOP_DATABASE_URL", "sqlite:///shop.db"
    )

    db.init_app(app)
    migrate.init_app(app, db)

    # Register the models on db.metadata so autogenerate can see them.
    import models  # noqa: F401

    return app
