"""Shared fixtures: apps, real databases per backend, and temporary script directories."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import re
import shutil
import socket
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from dashboard import create_app
from tests.helpers import run_job_to_the_end
from tests.servers import Server, start_gunicorn, stop_group, wait_until_serving

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


# --- databases ------------------------------------------------------------------------------


class DatabaseFactory:
    """Create throwaway databases on one backend and drop them all at the end of a test."""

    def __init__(self, backend: str, tmp_path: Path) -> None:
        self.backend = backend
        self.tmp_path = tmp_path
        self.created: list[URL] = []
        self._admin: sa.Engine | None = None
        if backend != "sqlite":
            admin_url = make_url(SERVERS[backend])
            self._admin = sa.create_engine(
                admin_url,
                isolation_level="AUTOCOMMIT",
                poolclass=sa.pool.NullPool,
                connect_args={"connect_timeout": 3},
            )
            try:
                with self._admin.connect():
                    pass
            except sa.exc.OperationalError as error:
                message = f"{backend} server at {admin_url} is not available: {error.orig}"
                if IN_CI:
                    pytest.fail(message)
                pytest.skip(message)

    def create(self) -> URL:
        """Return the URL of a new, empty database."""
        name = f"dash_{uuid.uuid4().hex[:12]}"
        if self.backend == "sqlite":
            path = self.tmp_path / f"{name}.db"
            path.touch()  # an empty file is an empty SQLite database
            url = make_url(f"sqlite:///{path}")
        else:
            assert self._admin is not None
            with self._admin.connect() as connection:
                connection.execute(sa.text(f"CREATE DATABASE {name}"))
            url = self._admin.url.set(database=name)
        self.created.append(url)
        return url

    def drop_all(self) -> None:
        if self._admin is None:
            return
        with self._admin.connect() as connection:
            for url in self.created:
                if self.backend == "postgresql":
                    connection.execute(
                        sa.text(f"DROP DATABASE IF EXISTS {url.database} WITH (FORCE)")
                    )
                else:
                    connection.execute(sa.text(f"DROP DATABASE IF EXISTS {url.database}"))
        self._admin.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each test using this runs once per database backend."""
    return request.param


@pytest.fixture
def databases(backend: str, tmp_path: Path) -> Iterator[DatabaseFactory]:
    """A factory of throwaway databases on the current backend."""
    factory = DatabaseFactory(backend, tmp_path)
    yield factory
    factory.drop_all()


@pytest.fixture
def database_url(databases: DatabaseFactory) -> URL:
    """One empty throwaway database on the current backend."""
    return databases.create()


@pytest.fixture
def pg_databases(tmp_path: Path) -> Iterator[DatabaseFactory]:
    """A factory of throwaway PostgreSQL databases, whatever the test's backend."""
    factory = DatabaseFactory("postgresql", tmp_path)
    yield factory
    factory.drop_all()


@pytest.fixture
def pg_store(pg_databases: DatabaseFactory) -> URL:
    """An empty PostgreSQL database for the dashboard's own store (upgrade it with
    `upgrade_store`); dropped, connections and all, after the test and its servers."""
    return pg_databases.create()


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


# --- unreachable servers --------------------------------------------------------------------


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = server.accept()
                accepted.append(connection)
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=2)
    for connection in accepted:
        connection.close()
    server.close()


# --- servers --------------------------------------------------------------------------------


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start gunicorn servers of the dashboard: `gunicorn(env, workers=2, threads=4)` returns a
    Server once it answers; every one started is killed, process group and all, at teardown."""
    started: list[Server] = []

    def start(env: Mapping[str, str], **options: object) -> Server:
        log = tmp_path / f"gunicorn-{len(started) + 1}.log"
        server = start_gunicorn(log=log, env=env, **options)
        started.append(server)
        wait_until_serving(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            stop_group(server.process)


# --- script directories ---------------------------------------------------------------------


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


@pytest.fixture
def script_tree(tmp_path: Path) -> ScriptTree:
    """An empty script directory with a stock Flask-Migrate env.py."""
    return ScriptTree(tmp_path / "app", style="flask")


@pytest.fixture
def plain_script_tree(tmp_path: Path) -> ScriptTree:
    """An empty script directory with a stock plain-Alembic env.py (alembic.ini beside it)."""
    return ScriptTree(tmp_path / "plain", style="plain")


def write_environments(folder: Path, text: str) -> Path:
    """Write an environments.yaml into `folder` and return its path."""
    path = folder / "environments.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


# --- the app --------------------------------------------------------------------------------


def write_demo_environments(folder: Path) -> Path:
    """Copy the shipped environments.yaml into `folder`, its SQLite files under folder/demo."""
    text = (REPO / "environments.yaml").read_text()
    text = text.replace("migrations: examples/shop/migrations", f"migrations: {DEMO_SCRIPTS}")
    text = text.replace("sqlite:///instance/demo/", "sqlite:///demo/")
    path = folder / "environments.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def demo_environments(tmp_path: Path) -> Path:
    """An environments.yaml for the demo shop with its SQLite files in a temporary folder."""
    return write_demo_environments(tmp_path)


@pytest.fixture
def app(tmp_path: Path, demo_environments: Path):
    """The dashboard on the demo environments, with its store in a temporary folder."""
    return create_app(
        "testing",
        {
            "ENVIRONMENTS_FILE": str(demo_environments),
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'store.db'}",
        },
    )


@pytest.fixture
def runner(app):
    """A CLI runner for `flask dashboard …` commands."""
    return app.test_cli_runner()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def built_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo built once per run by `flask dashboard demo`: environments.yaml and databases.
    Under pytest-xdist the first worker to need it builds it; the others wait and share it."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        folder = tmp_path_factory.mktemp("built-demo")
        _build_demo(folder)
        return folder
    # Every worker's basetemp is a folder of this run's own basetemp.
    shared = tmp_path_factory.getbasetemp().parent / "built-demo"
    with (shared.parent / "built-demo.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not shared.exists():
            partial = shared.with_name("built-demo.partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            _build_demo(partial)
            partial.rename(shared)
    return shared


def _build_demo(folder: Path) -> None:
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


@pytest.fixture
def demo_folder(built_demo: Path, tmp_path: Path) -> Path:
    """A private copy of the built demo, free to change."""
    folder = tmp_path / "demo-copy"
    shutil.copytree(built_demo, folder)
    return folder


def make_app(folder: Path, **overrides):
    """Create the dashboard for the environments.yaml in `folder`, its store beside it."""
    return create_app(
        "testing",
        {
            "ENVIRONMENTS_FILE": str(folder / "environments.yaml"),
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{folder / 'store.db'}",
            **overrides,
        },
    )


@pytest.fixture
def demo_app(demo_folder: Path):
    """The dashboard on a built demo: dev at head, staging 2 behind, production 5 behind."""
    return make_app(demo_folder)


@pytest.fixture
def demo_passwords(demo_folder: Path) -> dict[str, str]:
    """The password of each demo user (named after its role)."""
    return json.loads((demo_folder / "passwords.json").read_text())


@pytest.fixture
def demo_client(demo_app, demo_passwords):
    """A client of the demo signed in as the viewer."""
    client = demo_app.test_client()
    Auth(client).login("viewer", demo_passwords["viewer"])
    return client


@pytest.fixture
def clients(demo_app, demo_passwords):
    """A signed-in client per role, and `anonymous`: clients['operator'] and so on."""
    signed_in = {"anonymous": demo_app.test_client()}
    for role, password in demo_passwords.items():
        client = demo_app.test_client()
        Auth(client).login(role, password)
        signed_in[role] = client
    return signed_in


# --- signing in -----------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def cheap_password_hashes() -> Iterator[None]:
    """Hash passwords in this process with argon2id at its cheapest cost, not the production
    cost (about 0.1-0.5 s a hash or check on a busy 2-core host, and most tests sign in several
    times). Same algorithm, same code paths; servers and CLIs started as child processes still
    use the real cost (and rehash a cheap hash on sign-in, as for any outdated hash)."""
    from argon2 import PasswordHasher

    from dashboard.users import service as users

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(users, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
        yield


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


def add_user(app, username: str, role: str = "viewer", password: str = TEST_PASSWORD) -> None:
    """Create a user in the app's store (upgrading the store first)."""
    from dashboard.users import service as users

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


# --- the audit log --------------------------------------------------------------------------

AUDIT_HMAC_KEY = "audit-checkpoint-key-for-tests"


@pytest.fixture(params=BACKENDS)
def audit_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[URL]:
    """An empty throwaway store database on each backend."""
    factory = DatabaseFactory(request.param, tmp_path)
    yield factory.create()
    factory.drop_all()


@pytest.fixture
def audit_app(audit_store: URL, demo_environments: Path):
    """The dashboard on `audit_store`, upgraded by its migrations, with a fixed checkpoint key."""
    from dashboard.extensions import db

    app = create_app(
        "testing",
        {
            "ENVIRONMENTS_FILE": str(demo_environments),
            "SQLALCHEMY_DATABASE_URI": audit_store.render_as_string(hide_password=False),
            "AUDIT_HMAC_KEY": AUDIT_HMAC_KEY,
        },
    )
    upgrade_store(app)
    yield app
    with app.app_context():
        db.engine.dispose()


def app_for_tree(folder: Path, tree: ScriptTree, environments: dict[str, URL | str], **config):
    """The dashboard on `tree` with one environment per URL (a dict of extra keys per name allowed
    through `ENV_EXTRA`), its store upgraded, and a `runner` for CLI calls."""
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


@pytest.fixture
def merge_script_tree(script_tree: ScriptTree) -> ScriptTree:
    """a1 → (b2 | c3) → m4 (merge) → d5: a branch point, two branches and a merge."""
    script_tree.add_table("a1", None, "ta")
    script_tree.add_table("b2", "a1", "tb")
    script_tree.add_table("c3", "a1", "tc")
    script_tree.add("m4", ("b2", "c3"), "merge b2 and c3")
    script_tree.add_table("d5", "m4", "td")
    return script_tree


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


# --- target databases, read and moved directly ----------------------------------------------


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
