"""Shared fixtures: apps, real databases per backend, and temporary script directories."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL
from werkzeug.serving import make_server

from dashboard import create_app
from tests.helpers import (
    AUDIT_HMAC_KEY,
    BACKENDS,
    CHROMIUM,
    DEFAULT_STORE_BACKEND,
    DROPPER,
    HTMX_COPY,
    IN_CI,
    STORE_BACKENDS,
    STORE_TEMPLATES,
    Auth,
    DatabaseFactory,
    ScriptTree,
    StoreTemplates,
    build_demo,
    make_app,
    open_tab,
    shut_down,
    upgrade_store,
    write_demo_environments,
)
from tests.servers import Server, private_postgresql, start_gunicorn, stop_group, wait_until_serving


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "stores: the test runs once per store backend (SQLite, PostgreSQL): `store_backend` and "
        "the fixtures built on it (`app`, `demo_app`, `clients`, `store_database`, …) put the "
        "dashboard's own store there",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that starts gunicorn servers is `slow`, as are those marked so by hand.

    Slow tests run first: pytest-xdist hands out the first items round-robin, so they start at
    once on every worker instead of one of them landing last and running alone at the end.
    """
    for item in items:
        if "gunicorn" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked `stores` whose fixtures reach `store_backend` runs once per store backend
    (unless it parametrizes `store_backend` itself, e.g. with TARGETS_AND_STORES)."""
    chosen = any(
        "store_backend" in str(mark.args[0])
        for mark in metafunc.definition.iter_markers("parametrize")
    )
    if (
        "store_backend" in metafunc.fixturenames
        and metafunc.definition.get_closest_marker("stores")
        and not chosen
    ):
        metafunc.parametrize(
            "store_backend",
            STORE_BACKENDS,
            indirect=True,
            ids=[f"{backend}-store" for backend in STORE_BACKENDS],
        )


@pytest.fixture
def store_backend(request: pytest.FixtureRequest) -> str:
    """Where the dashboard's own store lives: each of STORE_BACKENDS in turn for a test marked
    `stores`, else SQLite (or TEST_STORE_BACKEND, to run any test on a PostgreSQL store)."""
    return getattr(request, "param", DEFAULT_STORE_BACKEND)


@pytest.fixture(scope="session", autouse=True)
def store_templates() -> Iterator[StoreTemplates]:
    """The upgraded stores this process copies for tests; at the end of the run they are
    dropped, once every throwaway database the tests asked DROPPER to drop is gone."""
    yield STORE_TEMPLATES
    try:
        DROPPER.wait()
    finally:
        STORE_TEMPLATES.drop()


@pytest.fixture
def store_database(store_backend: str, tmp_path: Path) -> Iterator[URL]:
    """A throwaway store on `store_backend`, already upgraded to head (a copy of a template);
    dropped, connections and all, after the test."""
    factory = DatabaseFactory(store_backend, tmp_path)
    yield factory.create(template=STORE_TEMPLATES.store(store_backend))
    factory.drop_all()


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


@pytest.fixture
def script_tree(tmp_path: Path) -> ScriptTree:
    """An empty script directory with a stock Flask-Migrate env.py."""
    return ScriptTree(tmp_path / "app", style="flask")


@pytest.fixture
def plain_script_tree(tmp_path: Path) -> ScriptTree:
    """An empty script directory with a stock plain-Alembic env.py (alembic.ini beside it)."""
    return ScriptTree(tmp_path / "plain", style="plain")


@pytest.fixture
def demo_environments(tmp_path: Path) -> Path:
    """An environments.yaml for the demo shop with its SQLite files in a temporary folder."""
    return write_demo_environments(tmp_path)


@pytest.fixture
def app(tmp_path: Path, demo_environments: Path, store_backend: str):
    """The dashboard on the demo environments, with an empty store: a file in a temporary folder,
    or an empty PostgreSQL database (see `store_backend`)."""
    if store_backend == "sqlite":
        yield create_app(
            "testing",
            {
                "ENVIRONMENTS_FILE": str(demo_environments),
                "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'store.db'}",
            },
        )
        return
    factory = DatabaseFactory(store_backend, tmp_path)
    store = factory.create()
    app = create_app(
        "testing",
        {
            "ENVIRONMENTS_FILE": str(demo_environments),
            "SQLALCHEMY_DATABASE_URI": store.render_as_string(hide_password=False),
        },
    )
    yield app
    shut_down(app)
    factory.drop_all()


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
        build_demo(folder)
        return folder
    # Every worker's basetemp is a folder of this run's own basetemp.
    shared = tmp_path_factory.getbasetemp().parent / "built-demo"
    with (shared.parent / "built-demo.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not shared.exists():
            partial = shared.with_name("built-demo.partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            build_demo(partial)
            partial.rename(shared)
    return shared


@pytest.fixture
def demo_folder(built_demo: Path, tmp_path: Path) -> Path:
    """A private copy of the built demo, free to change."""
    folder = tmp_path / "demo-copy"
    shutil.copytree(built_demo, folder)
    return folder


@pytest.fixture
def demo_app(demo_folder: Path, store_backend: str, tmp_path: Path):
    """The dashboard on a built demo: dev at head, staging 2 behind, production 5 behind. Its
    store is the demo's SQLite file, or (see `store_backend`) a PostgreSQL copy of the demo's
    store: the same users, with the same passwords."""
    if store_backend == "sqlite":
        yield make_app(demo_folder)
        return
    factory = DatabaseFactory(store_backend, tmp_path)
    passwords = json.loads((demo_folder / "passwords.json").read_text())
    store = factory.create(template=STORE_TEMPLATES.demo(passwords))
    app = make_app(demo_folder, SQLALCHEMY_DATABASE_URI=store.render_as_string(hide_password=False))
    yield app
    shut_down(app)
    factory.drop_all()


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


@pytest.fixture(params=BACKENDS)
def audit_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[URL]:
    """A throwaway store database on each backend, a copy of a template already at head (each
    template was upgraded by the store's migrations on its backend: MariaDB's are run there)."""
    factory = DatabaseFactory(request.param, tmp_path)
    yield factory.create(template=STORE_TEMPLATES.store(request.param))
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


@pytest.fixture
def merge_script_tree(script_tree: ScriptTree) -> ScriptTree:
    """a1 → (b2 | c3) → m4 (merge) → d5: a branch point, two branches and a merge."""
    script_tree.add_table("a1", None, "ta")
    script_tree.add_table("b2", "a1", "tb")
    script_tree.add_table("c3", "a1", "tc")
    script_tree.add("m4", ("b2", "c3"), "merge b2 and c3")
    script_tree.add_table("d5", "m4", "td")
    return script_tree


# --- the browser ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium driven by Playwright; never a downloaded browser."""
    missing = [str(path) for path in (CHROMIUM, HTMX_COPY) if not path.exists()]
    if missing:
        message = f"browser tests need {', '.join(missing)} (scripts/test installs them)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def live_server(demo_app) -> Iterator[str]:
    """The demo dashboard served on a free loopback port."""
    server = make_server("127.0.0.1", 0, demo_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def page(browser):
    """A fresh browser page whose requests for the htmx CDN get the npm copy."""
    context, tab = open_tab(browser)
    yield tab
    context.close()


@pytest.fixture
def private_pg_database() -> Iterator[URL]:
    """A database on a PostgreSQL server of the test's own (stock settings), for a test that
    exhausts what the whole server shares."""
    with private_postgresql() as server:
        engine = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        with engine.connect() as connection:
            connection.execute(sa.text("CREATE DATABASE target"))
        engine.dispose()
        yield server.set(database="target")
