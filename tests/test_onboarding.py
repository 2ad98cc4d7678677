"""Connecting your own Flask-Migrate app (issue 15, item 7): `flask dashboard init`, a store per
project, "run `flask db upgrade` first" from every command that needs the store, and the README's
section run exactly as written."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from dashboard import create_app
from dashboard.environments import load_project
from dashboard.errors import ConfigurationError
from tests.helpers import REPO, TEST_PASSWORD, ScriptTree, versions
from tests.servers import (
    VENV_BIN,
    HttpSession,
    Server,
    clean_environ,
    free_port,
    stop_group,
    wait_until_answering,
)

UPGRADE_FIRST = "run `flask db upgrade` first"
README = REPO / "README.md"


def flask_migrate_app(folder: Path) -> Path:
    """A small Flask-Migrate app as `flask db init` and one `flask db migrate` leave it, with
    its (empty) dev database in its instance folder; return the folder."""
    folder.mkdir(parents=True)
    (folder / "app.py").write_text(
        "from flask import Flask\n"
        "from flask_migrate import Migrate\n"
        "from flask_sqlalchemy import SQLAlchemy\n\n"
        "app = Flask(__name__)\n"
        'app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///dev.db"\n'
        "db = SQLAlchemy(app)\n"
        "migrate = Migrate(app, db)\n"
    )
    ScriptTree(folder, style="flask").add_table("3f9a0c1d2e4b", None, "note")
    (folder / "instance").mkdir()
    (folder / "instance" / "dev.db").touch()
    return folder


def readme_section_commands(title: str) -> list[str]:
    """The commands of the first `sh` block in the README section called `title`."""
    text = README.read_text()
    section = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, f"no sh block in the README's section {title!r}"
    return [line for line in block.group(1).splitlines() if line.strip()]


# --- the README, as written --------------------------------------------------------------


@pytest.mark.slow  # six `flask` processes, one of them a server
def test_the_readme_commands_connect_a_generated_flask_migrate_app(tmp_path: Path):
    app_folder = flask_migrate_app(tmp_path / "shop")
    commands = readme_section_commands("Use it with your own app")
    assert commands[-1] == ".venv/bin/flask run"
    demo_store = REPO / "instance" / "dashboard.db"
    demo_store_before = demo_store.stat().st_mtime_ns if demo_store.exists() else None
    port = free_port()
    env = clean_environ(
        APP=str(app_folder),
        HOME=str(tmp_path / "home"),
        FLASK_RUN_PORT=str(port),
        # `flask` is not on PATH: the README names .venv/bin/flask.
        PATH=os.pathsep.join(
            part
            for part in os.environ.get("PATH", os.defpath).split(os.pathsep)
            if Path(part) != VENV_BIN
        ),
    )
    log = tmp_path / "readme.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", "\n".join(commands)],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # no terminal: create-user reads its password from stdin
        )
    server = Server(process=process, port=port, log=log)
    try:
        assert process.stdin is not None
        process.stdin.write(f"{TEST_PASSWORD}\n{TEST_PASSWORD}\n".encode())
        process.stdin.close()
        wait_until_answering(process, server.url("/healthz"), server.output, timeout=120)
        session = HttpSession()
        session.login(server, "admin", TEST_PASSWORD)
        overview = session.get(server.url("/"))
    finally:
        stop_group(process)
    printed = server.output()
    assert "Created admin (admin)." in printed, printed
    assert re.search(r"^dev\s+behind \(1\)", printed, re.M), printed
    assert re.search(r"^production\s+not_configured", printed, re.M), printed
    assert overview.status == 200 and "shop" in overview.text and "dev" in overview.text
    # The store is the project's own, beside its environments.yaml; the demo's is untouched.
    assert (app_folder / "instance" / "dashboard.db").is_file()
    assert (demo_store.stat().st_mtime_ns if demo_store.exists() else None) == demo_store_before
    assert versions(f"sqlite:///{app_folder / 'instance' / 'dev.db'}") == []


def test_readme_shell_blocks_name_the_virtualenvs_flask():
    """A reader who did not activate .venv can paste any shell block of the README."""
    text = README.read_text()
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.splitlines():
            assert not re.search(r"(^|\|\s*)flask ", line), line


# --- flask dashboard init ------------------------------------------------------------------


@pytest.fixture
def init(app):
    """Run `flask dashboard init …` in-process; return (exit code, output)."""
    runner = app.test_cli_runner()

    def run(*args: str, answers: str | None = None) -> tuple[int, str]:
        result = runner.invoke(args=["dashboard", "init", *args], input=answers)
        return result.exit_code, result.output

    return run


def test_init_writes_environments_in_promotion_order_and_prints_the_next_commands(
    tmp_path: Path, init
):
    app_folder = flask_migrate_app(tmp_path / "shop")

    code, output = init(
        str(app_folder),
        "--env",
        "dev=sqlite:///instance/dev.db",
        "--env",
        "staging=${STAGING_DATABASE_URL}",
    )

    assert code == 0, output
    written = app_folder / "environments.yaml"
    assert yaml.safe_load(written.read_text()) == {
        "project": "shop",
        "migrations": "migrations",
        "environments": [
            {"name": "dev", "url": "sqlite:///instance/dev.db"},
            {"name": "staging", "url": "${STAGING_DATABASE_URL}", "after": "dev"},
        ],
    }
    project = load_project(written, environ={})
    assert project.script_location == app_folder / "migrations"
    assert str(project.get("dev").url.database) == str(app_folder / "instance" / "dev.db")
    store = app_folder / "instance" / "dashboard.db"
    assert f"Its dashboard store: {store}." in output
    assert "  staging: environment variable STAGING_DATABASE_URL not set (yet)" in output
    flask = VENV_BIN / "flask"
    flask = flask.relative_to(Path.cwd()) if flask.is_relative_to(Path.cwd()) else flask
    next_commands = [
        line.split("#")[0].strip() for line in output.split("Next, in ")[1].splitlines()[1:]
    ]
    assert next_commands == [
        f"export ENVIRONMENTS_FILE={written}",
        f"{flask} db upgrade",
        f"{flask} dashboard create-user admin --role admin",
        f"{flask} run",
    ]


def test_init_never_overwrites_an_environments_file(tmp_path: Path, init):
    app_folder = flask_migrate_app(tmp_path / "shop")
    existing = app_folder / "environments.yaml"
    existing.write_text("# mine\n")

    code, output = init(str(app_folder), "--env", "dev=sqlite:///dev.db")

    assert code == 1
    assert f"Error: {existing} exists already: it is left as it is" in output
    assert existing.read_text() == "# mine\n"


def test_init_asks_for_environments_until_an_empty_name(tmp_path: Path, init):
    app_folder = flask_migrate_app(tmp_path / "shop")

    code, output = init(
        str(app_folder),
        answers="\nbad name\ndev\nnot a url\ndev\nsqlite:///instance/dev.db\nprod\n${PROD_URL}\n\n",
    )

    assert code == 0, output
    assert "At least one environment is needed." in output
    assert "Not taken: 'bad name' is not an environment name" in output
    assert "Not taken: the URL of dev is not a database URL" in output
    assert load_project(app_folder / "environments.yaml", environ={}).names == ["dev", "prod"]


def test_init_finds_a_script_directory_below_the_app_or_says_what_to_do(tmp_path: Path, init):
    nested = tmp_path / "nested"
    ScriptTree(nested / "backend" / "db", style="flask")
    code, output = init(str(nested), "--env", "dev=sqlite:///dev.db")
    assert code == 0, output
    assert "migrations: backend/db/migrations" in (nested / "environments.yaml").read_text()

    empty = tmp_path / "empty"
    empty.mkdir()
    code, output = init(str(empty), "--env", "dev=sqlite:///dev.db")
    assert code == 1
    assert f"no migrations folder (a folder with env.py and versions/) in {empty}" in output
    assert "`flask db init`" in output
    assert not (empty / "environments.yaml").exists()


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("dev", "--env dev=…: expected NAME=URL"),
        ("my env=sqlite:///x.db", "'my env' is not an environment name"),
        ("dev=postgres ql://u:hunter2@h/db", "the URL of dev is not a database URL"),
    ],
)
def test_init_refuses_a_bad_env_pair_without_echoing_the_url(tmp_path: Path, init, pair, message):
    app_folder = flask_migrate_app(tmp_path / "shop")
    code, output = init(str(app_folder), "--env", pair)
    assert code == 1
    assert message in output and "hunter2" not in output
    assert not (app_folder / "environments.yaml").exists()


# --- one store per project -----------------------------------------------------------------


def test_the_default_store_sits_beside_the_environments_file_in_use(tmp_path: Path):
    demo = create_app(
        "development",
        {"ENVIRONMENTS_FILE": str(REPO / "environments.yaml"), "SQLALCHEMY_DATABASE_URI": None},
    )
    # The demo's store and anchors are where they always were: in the app's instance folder.
    assert (demo.config["SQLALCHEMY_DATABASE_URI"], demo.config["AUDIT_ANCHOR_FILE"]) == (
        f"sqlite:///{Path(demo.instance_path) / 'dashboard.db'}",
        str(Path(demo.instance_path) / "audit-anchors.log"),
    )
    stores = []
    for folder, name in (
        ("one", "environments.yaml"),
        ("two", "environments.yaml"),
        ("two", "qa.yaml"),
    ):
        scripts = ScriptTree(tmp_path / folder / name.split(".")[0], style="flask")
        environments = tmp_path / folder / name
        environments.write_text(
            f"migrations: {scripts.path}\nenvironments:\n  - name: dev\n    url: sqlite:///dev.db\n"
        )
        app = create_app(
            "development",
            {"ENVIRONMENTS_FILE": str(environments), "SQLALCHEMY_DATABASE_URI": None},
        )
        stores.append((app.config["SQLALCHEMY_DATABASE_URI"], app.config["AUDIT_ANCHOR_FILE"]))
    assert stores == [
        (
            f"sqlite:///{tmp_path / 'one' / 'instance' / 'dashboard.db'}",
            str(tmp_path / "one" / "instance" / "audit-anchors.log"),
        ),
        (
            f"sqlite:///{tmp_path / 'two' / 'instance' / 'dashboard.db'}",
            str(tmp_path / "two" / "instance" / "audit-anchors.log"),
        ),
        (
            f"sqlite:///{tmp_path / 'two' / 'instance' / 'dashboard-qa.db'}",
            str(tmp_path / "two" / "instance" / "audit-anchors-qa.log"),
        ),
    ]


# --- the store before `flask db upgrade` ----------------------------------------------------


def test_every_command_that_needs_the_store_says_to_upgrade_it_first(app, demo_environments):
    for name in ("dev", "staging", "production"):
        database = demo_environments.parent / "demo" / f"{name}.db"
        database.parent.mkdir(exist_ok=True)
        database.touch()
    runner = app.test_cli_runner()
    for args, answers in (
        (["create-user", "ann", "--role", "admin", "--password-stdin"], TEST_PASSWORD),
        (["set-role", "ann", "admin"], None),
        (["deactivate", "ann"], None),
        (["upgrade", "dev"], None),
        (["stamp", "dev", "base"], None),
        (["jobs"], None),
        (["drift", "dev"], None),
        (["rollouts"], None),
        (["audit", "verify"], None),
        (["audit", "export", "--format", "csv"], None),
    ):
        # `rollouts` is a plain click command: the `flask` command gives it the app context.
        with app.app_context():
            result = runner.invoke(args=["dashboard", *args], input=answers)
        assert result.exit_code == 1, (args, result.output)
        assert UPGRADE_FIRST in result.output, (args, result.output)
        assert "Traceback" not in result.output, (args, result.output)
    # Nothing ran on the target while the store could not record it.
    assert versions(f"sqlite:///{demo_environments.parent / 'demo' / 'dev.db'}") == []


def test_an_environments_file_that_is_not_there_says_how_to_write_one(tmp_path: Path):
    missing = tmp_path / "shop" / "environments.yaml"
    with pytest.raises(ConfigurationError) as raised:
        create_app("testing", {"ENVIRONMENTS_FILE": str(missing)})
    assert str(raised.value) == (
        f"cannot read the environments file {missing}: No such file or directory; "
        f"`flask dashboard init APP_FOLDER --output {missing}` writes one for your app "
        "(run it with ENVIRONMENTS_FILE unset)"
    )
