"""Helpers the tests share: real databases per backend, temporary script directories, apps,
sign-in, and jobs. Fixtures live in conftest.py; tests import these from here."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import queue
import re
import shutil
import tempfile
import textwrap
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from dashboard import create_app
from dashboard.environments import environment_named, get_project
from dashboard.extensions import db
from dashboard.htmx import HTMX_CDN_URL
from dashboard.jobs import service as jobs
from dashboard.jobs.models import Job
from dashboard.plans.service import build_plan
from dashboard.tasks.service import task_keeper
from dashboard.users import service as users
from dashboard.users.models import Role

REPO = Path(__file__).resolve().parent.parent


DEMO_SCRIPTS = REPO / "examples" / "shop" / "migrations"


IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


SERVERS = {
    "postgresql": os.environ.get(
        "TEST_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    ),
    "mariadb": os.environ.get("TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}


BACKENDS = ["sqlite", "postgresql", "mariadb"]


# Where a test marked `stores` puts the dashboard's own store, in turn. Other tests keep it on
# SQLite, or on TEST_STORE_BACKEND (e.g. `TEST_STORE_BACKEND=postgresql pytest tests/x.py`).
STORE_BACKENDS = ["sqlite", "postgresql"]
DEFAULT_STORE_BACKEND = os.environ.get("TEST_STORE_BACKEND", "sqlite")
assert DEFAULT_STORE_BACKEND in STORE_BACKENDS, f"TEST_STORE_BACKEND is one of {STORE_BACKENDS}"
# For `parametrize(("backend", "store_backend"), TARGETS_AND_STORES, indirect=True)`: every
# target backend with the store on SQLite (the ids `backend` gives), plus a PostgreSQL target with
# its store on PostgreSQL too: the PostgreSQL store at the cost of one more run, not three.
TARGETS_AND_STORES = [
    pytest.param("sqlite", "sqlite", id="sqlite"),
    pytest.param("postgresql", "sqlite", id="postgresql"),
    pytest.param("mariadb", "sqlite", id="mariadb"),
    pytest.param("postgresql", "postgresql", id="postgresql-postgresql-store"),
]
STORE_MIGRATIONS = REPO / "migrations"


def _admin_engine(backend: str) -> sa.Engine:
    """An autocommit engine on the backend's server (the test fails in CI, or is skipped
    elsewhere, when the server does not answer)."""
    admin_url = make_url(SERVERS[backend])
    admin = sa.create_engine(
        admin_url,
        isolation_level="AUTOCOMMIT",
        poolclass=sa.pool.NullPool,
        connect_args={"connect_timeout": 3},
    )
    try:
        with admin.connect():
            pass
    except sa.exc.OperationalError as error:
        message = f"{backend} server at {admin_url} is not available: {error.orig}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return admin


class DatabaseFactory:
    """Create throwaway databases on one backend and drop them all at the end of a test."""

    def __init__(self, backend: str, tmp_path: Path) -> None:
        self.backend = backend
        self.tmp_path = tmp_path
        self.created: list[URL] = []
        self._admin = None if backend == "sqlite" else _admin_engine(backend)

    def create(self, template: URL | None = None) -> URL:
        """Return the URL of a new database: empty, or a copy of `template` (a SQLite file, a
        PostgreSQL database nobody is connected to, or a MariaDB database)."""
        name = f"dash_{uuid.uuid4().hex[:12]}"
        if self.backend == "sqlite":
            path = self.tmp_path / f"{name}.db"
            if template is None:
                path.touch()  # an empty file is an empty SQLite database
            else:
                shutil.copyfile(str(template.database), path)
            url = make_url(f"sqlite:///{path}")
        else:
            assert self._admin is not None
            copy = ""
            if template is not None and self.backend == "postgresql":
                copy = f" TEMPLATE {template.database}"
            with self._admin.connect() as connection:
                connection.execute(sa.text(f"CREATE DATABASE {name}{copy}"))
                if template is not None and self.backend == "mariadb":
                    _copy_mariadb_database(connection, str(template.database), name)
            url = self._admin.url.set(database=name)
        self.created.append(url)
        return url

    def drop_all(self) -> None:
        """Stop the apps on these databases and have them dropped (by DROPPER, in the
        background: a drop waits for a server checkpoint, up to seconds on a busy host)."""
        if self._admin is None:
            return
        _shut_down_apps_on(self.created)
        DROPPER.drop(self.backend, [str(url.database) for url in self.created])
        self._admin.dispose()


def _copy_mariadb_database(connection: sa.Connection, source: str, target: str) -> None:
    """Copy every table of `source` into the empty `target`, rows and all: MariaDB has no
    CREATE DATABASE … TEMPLATE. Each table gets its own CREATE TABLE (foreign keys included,
    which CREATE TABLE … LIKE leaves out)."""
    tables = connection.scalars(
        sa.text(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = :schema AND table_type = 'BASE TABLE'"
        ),
        {"schema": source},
    ).all()
    connection.exec_driver_sql(f"USE `{target}`")
    connection.exec_driver_sql("SET SESSION foreign_key_checks = 0")
    try:
        for table in tables:
            ddl = connection.exec_driver_sql(f"SHOW CREATE TABLE `{source}`.`{table}`").one()[1]
            connection.exec_driver_sql(ddl)
            connection.exec_driver_sql(
                f"INSERT INTO `{target}`.`{table}` SELECT * FROM `{source}`.`{table}`"
            )
    finally:
        connection.exec_driver_sql("SET SESSION foreign_key_checks = 1")


class Dropper:
    """Drops throwaway databases in a thread of its own, in the order asked; `wait()` (at the end
    of the run) returns once every one is dropped, and fails naming any that could not be."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[str, list[str]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._failures: list[str] = []

    def drop(self, backend: str, names: list[str]) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="drop-databases", daemon=True)
            self._thread.start()
        self._queue.put((backend, names))

    def wait(self) -> None:
        self._queue.join()
        failures, self._failures = self._failures, []
        if failures:
            raise AssertionError("throwaway databases left behind:\n" + "\n".join(failures))

    def _run(self) -> None:
        while True:
            backend, names = self._queue.get()
            try:
                engine = sa.create_engine(
                    SERVERS[backend], isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
                )
                force = " WITH (FORCE)" if backend == "postgresql" else ""
                with engine.connect() as connection:
                    for name in names:
                        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name}{force}"))
                engine.dispose()
            except Exception as error:  # reported by wait(); this thread must go on
                self._failures.append(f"{backend} {', '.join(names)}: {error}")
            finally:
                self._queue.task_done()


# One per test process; conftest's `store_templates` fixture waits for it at the end of the run.
DROPPER = Dropper()


def execute(url: URL, *statements: str) -> None:
    """Run SQL statements on a database and commit."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(sa.text(statement))
    finally:
        engine.dispose()


def table_names(url: URL) -> set[str]:
    """Return the table names a database holds."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)), *parts)


REVISION_TEMPLATE = '''"""{message}

Revision ID: {revision}
Revises: {revises}
Create Date: 2026-01-01 00:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


revision = {revision!r}
down_revision = {down_revision!r}
branch_labels = {branch_labels!r}
depends_on = None


def upgrade():
{upgrade}


def downgrade():
{downgrade}
'''


class ScriptTree:
    """A real Alembic script directory in a temporary folder, built revision by revision."""

    def __init__(self, root: Path, style: str = "flask") -> None:
        self.path = root / "migrations"
        (self.path / "versions").mkdir(parents=True)
        if style == "flask":
            templates = _package_file("flask_migrate", "templates", "flask")
            ini_folder = self.path
        else:
            templates = _package_file("alembic", "templates", "generic")
            ini_folder = root
        shutil.copy(templates / "env.py", self.path / "env.py")
        shutil.copy(templates / "script.py.mako", self.path / "script.py.mako")
        ini = (templates / "alembic.ini.mako").read_text()
        ini = ini.replace("${script_location}", str(self.path))
        (ini_folder / "alembic.ini").write_text(ini)
        self.style = style

    def add(
        self,
        revision: str,
        down: str | tuple[str, ...] | None,
        message: str | None = None,
        *,
        upgrade: str = "pass",
        downgrade: str = "pass",
        branch_labels: tuple[str, ...] | None = None,
    ) -> str:
        """Write a revision file; `upgrade`/`downgrade` are Python bodies."""
        revises = ", ".join(down) if isinstance(down, tuple) else (down or "")
        text = REVISION_TEMPLATE.format(
            message=message or f"revision {revision}",
            revision=revision,
            revises=revises,
            down_revision=down,
            branch_labels=branch_labels,
            upgrade=textwrap.indent(textwrap.dedent(upgrade).strip(), "    "),
            downgrade=textwrap.indent(textwrap.dedent(downgrade).strip(), "    "),
        )
        (self.path / "versions" / f"{revision}_rev.py").write_text(text)
        return revision

    def add_table(self, revision: str, down: str | tuple[str, ...] | None, table: str) -> str:
        """Write a revision that creates one table (and drops it on downgrade)."""
        return self.add(
            revision,
            down,
            f"create {table}",
            upgrade=f"op.create_table({table!r}, sa.Column('id', sa.Integer, primary_key=True))",
            downgrade=f"op.drop_table({table!r})",
        )

    def linear(self, count: int, prefix: str = "r") -> list[str]:
        """Write `count` revisions in a line, each creating a table; return their ids."""
        ids: list[str] = []
        for index in range(count):
            ids.append(
                self.add_table(f"{prefix}{index:02d}", ids[-1] if ids else None, f"t{index}")
            )
        return ids


def write_environments(folder: Path, text: str) -> Path:
    """Write an environments.yaml into `folder` and return its path."""
    path = folder / "environments.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def write_demo_environments(folder: Path) -> Path:
    """Copy the shipped environments.yaml into `folder`, its SQLite files under folder/demo."""
    text = (REPO / "environments.yaml").read_text()
    text = text.replace("migrations: examples/shop/migrations", f"migrations: {DEMO_SCRIPTS}")
    text = text.replace("sqlite:///instance/demo/", "sqlite:///demo/")
    path = folder / "environments.yaml"
    path.write_text(text)
    return path


def build_demo(folder: Path) -> None:
    from dashboard.extensions import db

    environments = write_demo_environments(folder)
    demo_app = create_app(
        "testing",
        {
            "ENVIRONMENTS_FILE": str(environments),
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{folder / 'store.db'}",
        },
    )
    result = demo_app.test_cli_runner().invoke(args=["dashboard", "demo"])
    with demo_app.app_context():
        db.engine.dispose()  # no connection outlives the build (the folder may move)
    assert result.exit_code == 0, result.output
    # The demo prints each role's user and password once; keep them for signing in.
    passwords = dict(re.findall(r"^\s+(\w+)\s+password (\S+)$", result.output, re.M))
    assert sorted(passwords) == ["admin", "approver", "operator", "viewer"], result.output
    (folder / "passwords.json").write_text(json.dumps(passwords))


# Every app `make_app` built, so that dropping a store database first stops the apps on it.
_APPS: list[weakref.ref] = []


def make_app(folder: Path, **overrides):
    """Create the dashboard for the environments.yaml in `folder`, its store beside it."""
    app = create_app(
        "testing",
        {
            "ENVIRONMENTS_FILE": str(folder / "environments.yaml"),
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{folder / 'store.db'}",
            **overrides,
        },
    )
    _APPS[:] = [ref for ref in _APPS if ref() is not None]
    _APPS.append(weakref.ref(app))
    return app


def _shut_down_apps_on(stores: list[URL]) -> None:
    """Stop every app made by `make_app` on one of these store databases (its background
    refresher would look for a dropped database)."""
    uris = {url.render_as_string(hide_password=False) for url in stores}
    for ref in list(_APPS):
        app = ref()
        if app is not None and str(app.config["SQLALCHEMY_DATABASE_URI"]) in uris:
            shut_down(app)
            _APPS.remove(ref)


TEST_PASSWORD = "correct horse battery staple"


_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"|"X-CSRFToken": "([^"]+)"')


class Auth:
    """Sign a test client in and out the way a browser does, CSRF token included."""

    def __init__(self, client) -> None:
        self.client = client

    def csrf_token(self, path: str = "/login") -> str:
        html = self.client.get(path).get_data(as_text=True)
        match = _CSRF.search(html)
        assert match, f"no CSRF token on {path}"
        return match.group(1) or match.group(2)

    def login(self, username: str, password: str = TEST_PASSWORD, expect: int = 302):
        response = self.client.post(
            "/login",
            data={"username": username, "password": password, "csrf_token": self.csrf_token()},
        )
        assert response.status_code == expect, response.get_data(as_text=True)[:500]
        return response

    def post(self, path: str, data: dict | None = None, **kwargs):
        """POST with this session's CSRF token, as a form on one of our pages would."""
        token = self.csrf_token("/account")
        return self.client.post(path, data={**(data or {}), "csrf_token": token}, **kwargs)

    def logout(self):
        return self.post("/logout")


def upgrade_store(app) -> None:
    """Create or upgrade the app's own store with its migrations."""
    import flask_migrate

    with app.app_context():
        flask_migrate.upgrade(directory=app.extensions["migrate"].directory)


def _store_revisions(app) -> set[str] | None:
    """The revisions the app's store is at, or None before its version table exists."""
    from dashboard.extensions import db

    with app.app_context(), db.engine.connect() as connection:
        if not sa.inspect(connection).has_table("alembic_version"):
            return None
        return set(connection.scalars(sa.text("SELECT version_num FROM alembic_version")))


def shut_down(app) -> None:
    """Stop the app's background refresher and close its store connections (before its store
    database is dropped)."""
    app.extensions["dashboard.status_board"].stop()
    task_keeper(app).stop()  # a task a test left queued or running is beaten no more
    with app.app_context():
        db.engine.dispose()


def store_migrations_digest() -> str:
    """A short hash of the store's migrations folder: another migration, another template."""
    digest = hashlib.sha256()
    for path in sorted(STORE_MIGRATIONS.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(path.relative_to(STORE_MIGRATIONS).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:10]


def _process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreTemplates:
    """The dashboard's store upgraded once per test process, for tests to copy (`create(template=
    …)` of a DatabaseFactory): on SQLite an upgraded file; on PostgreSQL template databases that
    `CREATE DATABASE … TEMPLATE` copies in tens of milliseconds — the upgraded store, and the
    demo's store (its four users). A PostgreSQL template is named after a hash of the store's
    migrations, the xdist worker and the process, so no worker or concurrent run shares one and a
    changed migration makes a new one; it takes no connections once built (a copy needs none);
    `drop()` removes them at the end of the run, and the next one built drops those left by a
    process that died."""

    PREFIX = "dash_tpl_"
    # pg_advisory_lock key: one process at a time builds templates or clears dead ones.
    LOCK_KEY = 0x7E57_5709

    def __init__(self) -> None:
        self._folder: Path | None = None
        self._made: dict[tuple[str, str], URL] = {}

    def store(self, backend: str) -> URL:
        """An upgraded store on `backend` ("sqlite", "postgresql" or "mariadb") to copy."""
        if ("store", backend) not in self._made:
            self._made["store", backend] = self._build(backend, "store", None)
        return self._made["store", backend]

    def demo(self, passwords: Mapping[str, str]) -> URL:
        """The demo's store on PostgreSQL, its users holding `passwords`, to copy (the demo
        builds SQLite files only; its SQLite store is the one in the demo folder)."""
        if ("demo", "postgresql") not in self._made:
            base = self.store("postgresql")
            self._made["demo", "postgresql"] = self._build("postgresql", "demo", base, passwords)
        return self._made["demo", "postgresql"]

    def drop(self) -> None:
        """Drop every template this process made."""
        made, self._made = self._made, {}
        for server in ("postgresql", "mariadb"):
            names = [url.database for (_, backend), url in made.items() if backend == server]
            if not names:
                continue
            force = " WITH (FORCE)" if server == "postgresql" else ""
            admin = _admin_engine(server)
            try:
                with admin.connect() as connection:
                    for name in names:
                        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name}{force}"))
            finally:
                admin.dispose()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def _build(
        self, backend: str, kind: str, base: URL | None, passwords: Mapping[str, str] | None = None
    ) -> URL:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        name = f"{self.PREFIX}{kind}_{store_migrations_digest()}_{worker}_{os.getpid()}"
        if backend == "sqlite":
            url = make_url(f"sqlite:///{self._app_folder() / (name + '.db')}")
            self._fill(url, kind, passwords)
            return url
        if backend == "mariadb":
            return self._build_on_mariadb(name, kind, passwords)
        admin = _admin_engine(backend)
        try:
            with admin.connect() as connection:
                connection.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": self.LOCK_KEY})
                try:
                    self._drop_dead_templates(connection)
                    copy = f" TEMPLATE {base.database}" if base is not None else ""
                    url = self._create_and_fill(
                        connection, name, kind, passwords, copy=copy, force=" WITH (FORCE)"
                    )
                    connection.execute(sa.text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
                finally:
                    connection.execute(
                        sa.text("SELECT pg_advisory_unlock(:key)"), {"key": self.LOCK_KEY}
                    )
        finally:
            admin.dispose()
        return url

    def _build_on_mariadb(
        self, name: str, kind: str, passwords: Mapping[str, str] | None
    ) -> URL:
        """The template on MariaDB: a database of its own that copies read from (its name is
        this process's alone, so no lock is needed)."""
        admin = _admin_engine("mariadb")
        try:
            with admin.connect() as connection:
                for dead in self._dead_templates(
                    connection,
                    "SELECT schema_name FROM information_schema.schemata "
                    "WHERE schema_name LIKE :prefix",
                ):
                    connection.execute(sa.text(f"DROP DATABASE IF EXISTS {dead}"))
                url = self._create_and_fill(connection, name, kind, passwords)
        finally:
            admin.dispose()
        return url

    def _create_and_fill(
        self,
        connection: sa.Connection,
        name: str,
        kind: str,
        passwords: Mapping[str, str] | None,
        *,
        copy: str = "",
        force: str = "",
    ) -> URL:
        """(Re)create database `name` on the connection's server and fill it; drop it on failure."""
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name}{force}"))
        connection.execute(sa.text(f"CREATE DATABASE {name}{copy}"))
        url = connection.engine.url.set(database=name)
        try:
            self._fill(url, kind, passwords)
        except BaseException:
            connection.execute(sa.text(f"DROP DATABASE {name}{force}"))
            raise
        return url

    def _app_folder(self) -> Path:
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="dash-store-templates-"))
            write_demo_environments(self._folder)
        return self._folder

    def _fill(self, url: URL, kind: str, passwords: Mapping[str, str] | None) -> None:
        """Upgrade the store at `url` (kind "store"), or add the demo's users (kind "demo")."""
        app = make_app(self._app_folder(), SQLALCHEMY_DATABASE_URI=url.render_as_string(False))
        try:
            if kind == "store":
                upgrade_store(app)
            else:
                assert passwords is not None
                with app.app_context():
                    for role in Role:  # as `flask dashboard demo` does, in the same order
                        users.create_user(
                            username=role.value,
                            password=passwords[role.value],
                            role=role,
                            actor=None,
                        )
        finally:
            with app.app_context():
                db.engine.dispose()

    def _drop_dead_templates(self, connection: sa.Connection) -> None:
        """Drop templates whose process is gone (a run that was killed before its end)."""
        for name in self._dead_templates(
            connection, "SELECT datname FROM pg_database WHERE datname LIKE :prefix"
        ):
            connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))

    def _dead_templates(self, connection: sa.Connection, query: str) -> list[str]:
        """The templates `query` lists (it takes the LIKE pattern :prefix) whose process is gone."""
        pattern = self.PREFIX.replace("_", "\\_") + "%"  # its underscores as themselves
        names = connection.scalars(sa.text(query), {"prefix": pattern})
        dead = []
        for name in list(names):
            pid = name.rsplit("_", 1)[-1]
            if pid.isdigit() and not _process_is_alive(int(pid)):
                dead.append(name)
        return dead


# One per test process; conftest's `store_templates` fixture drops them at the end of the run.
STORE_TEMPLATES = StoreTemplates()


def add_user(app, username: str, role: str = "viewer", password: str = TEST_PASSWORD) -> None:
    """Create a user in the app's store (upgrading the store first)."""
    # Running the store's migrations again costs far more than a user; skip them while the
    # store is still at the revisions this helper last upgraded it to.
    upgraded = app.extensions.get("tests.upgraded_store_revisions")
    if upgraded is None or _store_revisions(app) != upgraded:
        upgrade_store(app)
        app.extensions["tests.upgraded_store_revisions"] = _store_revisions(app)
    with app.app_context():
        users.create_user(username=username, password=password, role=role, actor=None)


def signed_in_client(app, role: str = "viewer"):
    """A client of `app` signed in as a new user with `role`."""
    username = f"{role}-{uuid.uuid4().hex[:6]}"
    add_user(app, username, role)
    client = app.test_client()
    Auth(client).login(username)
    return client


AUDIT_HMAC_KEY = "audit-checkpoint-key-for-tests"


def app_for_tree(
    folder: Path,
    tree: ScriptTree,
    environments: dict[str, URL | str],
    *,
    store: URL | None = None,
    **config,
):
    """The dashboard on `tree` with one environment per URL (a dict of extra keys per name allowed
    through `ENV_EXTRA`), its store upgraded: a SQLite file in `folder`, or the `store` database
    (e.g. the `store_database` fixture's)."""
    if store is not None:
        config["SQLALCHEMY_DATABASE_URI"] = store.render_as_string(hide_password=False)
    extra: dict[str, dict[str, object]] = config.pop("ENV_EXTRA", {})
    lines = [f"migrations: {tree.path}", "environments:"]
    for name, url in environments.items():
        rendered = url.render_as_string(hide_password=False) if isinstance(url, URL) else url
        lines += [f"  - name: {name}", f"    url: {rendered}"]
        if rendered.startswith("sqlite:///") and not rendered.startswith("sqlite:////"):
            (folder / rendered.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            (folder / rendered.removeprefix("sqlite:///")).touch()  # an empty database
        lines += [f"    {key}: {json.dumps(value)}" for key, value in extra.get(name, {}).items()]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "environments.yaml").write_text("\n".join(lines) + "\n")
    app = make_app(folder, **config)
    upgrade_store(app)
    return app


def project_for(
    folder: Path, scripts: ScriptTree | Path, urls: dict[str, URL | str], extra: str = ""
):
    """Write an environments.yaml for a script directory, one environment per URL, and load it."""
    from dashboard.environments import load_project

    location = scripts.path if isinstance(scripts, ScriptTree) else scripts
    lines = [f"migrations: {location}", extra, "environments:"]
    for name, url in urls.items():
        rendered = url.render_as_string(hide_password=False) if isinstance(url, URL) else url
        lines += [f"  - name: {name}", f"    url: {rendered}"]
    return load_project(write_environments(folder, "\n".join(lines) + "\n"), environ={})


def versions(url: URL | str) -> list[str]:
    """Return the revisions a database's version table holds (none without the table)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            if "alembic_version" not in sa.inspect(connection).get_table_names():
                return []
            return sorted(connection.scalars(sa.text("SELECT version_num FROM alembic_version")))
    finally:
        engine.dispose()


def upgrade_in_child(*, environment, project, target: str = "head") -> None:
    """Upgrade an environment straight through the runner (no job, no store)."""
    from dashboard.target.runner import run_in_child

    result = run_in_child(project.database(environment), operation="upgrade", target=target)
    assert result.succeeded, "\n".join(result.lines)


def upgrade_with_a_job(app, environment: str, target: str = "head") -> None:
    """Run an upgrade job to the end in the calling thread (e.g. staging before production)."""
    finished = run_job_to_the_end(app, environment, "upgrade", target)
    assert finished.state == "succeeded", finished.error


def fingerprint_of(environment: str, operation: str = "upgrade", target: str = "head") -> str:
    """The fingerprint of the plan a person would review now (call inside an app context)."""
    plan = build_plan(
        project=get_project(),
        environment=environment_named(environment),
        direction=operation,
        target=target,
    )
    return plan.fingerprint


def queue_job(environment: str = "dev", operation: str = "upgrade", target: str = "head"):
    """Queue a job for the plan a person would review now, without running it (inside an app
    context)."""
    return jobs.request_job(
        environment_name=environment,
        operation=operation,
        target=target,
        actor=None,
        actor_name="cli:test",
        expected_fingerprint=fingerprint_of(environment, operation, target),
        submit=False,
    )


def run_job_to_the_end(
    app,
    environment: str = "dev",
    operation: str = "upgrade",
    target: str = "head",
    *,
    actor=None,
    fingerprint: str | None = None,
):
    """Request a job for the plan a person would review now and run it in this thread, as the
    CLI does; return the finished job, detached from the session."""
    with app.app_context():
        if fingerprint is None and operation != "stamp":
            fingerprint = fingerprint_of(environment, operation, target)
        job = jobs.request_job(
            environment_name=environment,
            operation=operation,
            target=target,
            actor=actor,
            actor_name="cli:test",
            expected_fingerprint=fingerprint,
            submit=False,
        )
        finished = jobs.run_job(job_id=job.id)
        db.session.refresh(finished)
        db.session.expunge(finished)
        return finished


# --- the browser ---------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
HTMX_COPY = REPO / "node_modules" / "htmx.org" / "dist" / "htmx.min.js"
DOCS = REPO / "docs"


def open_tab(browser, **options):
    """A new browser context and page whose requests for the htmx CDN get the npm copy."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, **options)
    body = HTMX_COPY.read_bytes()

    def serve_htmx(route):
        # The SRI check needs a CORS response for a crossorigin script.
        route.fulfill(
            status=200,
            body=body,
            headers={
                "Content-Type": "application/javascript",
                "Access-Control-Allow-Origin": "*",
            },
        )

    context.route(HTMX_CDN_URL, serve_htmx)
    tab = context.new_page()
    errors: list[str] = []
    tab.on(
        "console", lambda message: errors.append(message.text) if message.type == "error" else None
    )
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.console_errors = errors
    return context, tab


def sign_in(page, base: str, username: str, password: str) -> None:
    """Sign in through the form, as a person would."""
    page.goto(base + "/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(base + "/")


# --- Redis (the RQ executor, issue 16) -------------------------------------------------------

TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def require_redis(url: str = TEST_REDIS_URL) -> str:
    """The test Redis URL once it answers a PING; the test fails in CI, or is skipped elsewhere,
    when it does not."""
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except redis.exceptions.RedisError as error:
        message = f"Redis at {url} is not available: {error}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return url


def drop_redis_keys(url: str, prefix: str) -> None:
    """Delete every key of one test's queues (RQ names its keys after the queue and job ids)."""
    import redis

    client = redis.Redis.from_url(url)
    for key in client.scan_iter(f"*{prefix}*", count=1000):
        client.delete(key)


def alice_upgrades_staging(app) -> tuple[object, int]:
    """In the demo, the operator alice upgrades staging to head by a job; (alice, the job's id).
    Call inside an app context."""
    from dashboard.jobs import service as jobs
    from dashboard.users import service as users

    alice = users.create_user(username="alice", password=TEST_PASSWORD, role="operator", actor=None)
    job = jobs.request_job(
        environment_name="staging",
        operation="upgrade",
        target="head",
        actor=alice,
        expected_fingerprint=fingerprint_of("staging"),
        submit=False,
    )
    assert jobs.run_job(job_id=job.id).state == "succeeded"
    return alice, job.id


def wait_for_job(app, job_id: int, seconds: float = 30) -> Job:
    """Wait until a job submitted to the executor has finished; return it."""
    deadline = time.monotonic() + seconds
    with app.app_context():
        while True:
            job = db.session.get(Job, job_id)
            if job.is_finished or time.monotonic() > deadline:
                db.session.expunge(job)
                return job
            db.session.rollback()  # never sit on the SQLite store's write lock while waiting
            time.sleep(0.1)
