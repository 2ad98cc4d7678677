"""environments.yaml after the cleanups: promotion order through graphlib (file order breaks
ties, a cycle is named with file and line), the split reader still reads every key, and a bad
file is one line from every `flask` entry point, never a traceback."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from dashboard import create_app
from dashboard.environments import load_project
from dashboard.errors import ConfigurationError

FLASK = Path(sys.executable).parent / "flask"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder holding a script directory (the loader only checks that env.py is there)."""
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "env.py").write_text("# never run by these tests\n")
    return tmp_path


def write(folder: Path, text: str) -> Path:
    path = folder / "environments.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def environments_yaml(entries: list[tuple[str, str | None]]) -> str:
    """An environments.yaml with (name, after) entries in this file order."""
    lines = ["migrations: migrations", "environments:"]
    for name, after in entries:
        lines += [f"  - name: {name}", f"    url: sqlite:///{name}.db"]
        if after is not None:
            lines.append(f"    after: {after}")
    return "\n".join(lines) + "\n"


def order_of(folder: Path, entries: list[tuple[str, str | None]]) -> list[str]:
    return load_project(write(folder, environments_yaml(entries)), environ={}).names


def error_of(folder: Path, text: str) -> str:
    with pytest.raises(ConfigurationError) as caught:
        load_project(write(folder, text), environ={})
    return str(caught.value)


# --- promotion order ---------------------------------------------------------------------------


def test_file_order_breaks_ties_between_environments_free_to_go_next(folder):
    entries = [("a", "c"), ("b", None), ("c", None), ("d", "b")]
    assert order_of(folder, entries) == ["b", "c", "a", "d"]


def test_several_environments_may_come_after_the_same_one(folder):
    entries = [("prod-eu", "staging"), ("prod-us", "staging"), ("dev", None), ("staging", "dev")]
    assert order_of(folder, entries) == ["dev", "staging", "prod-eu", "prod-us"]


def _first_ready_in_file_order(entries: list[tuple[str, str | None]]) -> list[str]:
    """The rule, spelt out: next is the first environment in the file whose `after` is placed."""
    placed: list[str] = []
    while len(placed) < len(entries):
        placed.append(
            next(
                name
                for name, after in entries
                if name not in placed and (after is None or after in placed)
            )
        )
    return placed


def test_promotion_order_follows_the_rule_for_many_shapes(folder):
    shuffler = random.Random(12)
    for _ in range(150):
        names = [f"env{index}" for index in range(shuffler.randint(1, 7))]
        # Each `after` names an environment earlier in a hidden order: never a cycle.
        hidden = shuffler.sample(names, len(names))
        entries = [(name, shuffler.choice([None, *hidden[: hidden.index(name)]])) for name in names]
        shuffler.shuffle(entries)
        assert order_of(folder, entries) == _first_ready_in_file_order(entries), entries


def test_a_cycle_names_its_environments_file_and_line(folder):
    path = folder / "environments.yaml"
    message = error_of(
        folder,
        """
        migrations: migrations
        environments:
          - name: qa
            url: sqlite:///qa.db
            after: staging
          - name: staging
            url: sqlite:///staging.db
            after: production
          - name: production
            url: sqlite:///production.db
            after: preprod
          - name: preprod
            url: sqlite:///preprod.db
            after: staging
        """,
    )
    # qa only leads into the cycle: the message points at the first `after:` inside it.
    assert message == (
        f"{path}, line 8, key 'environments (staging).after': promotion order has a cycle: "
        "staging -> production -> preprod -> staging"
    )


def test_an_environment_after_itself_keeps_its_own_message(folder):
    message = error_of(folder, environments_yaml([("dev", None), ("staging", "staging")]))
    assert "line 7, key 'environments (staging).after'" in message
    assert "an environment cannot come after itself" in message


def test_an_after_naming_no_environment_is_refused_before_any_ordering(folder):
    message = error_of(folder, environments_yaml([("staging", "dve"), ("dev", None)]))
    assert "line 5, key 'environments (staging).after'" in message
    assert "no environment is named 'dve'; did you mean 'dev'?" in message


# --- the split reader ----------------------------------------------------------------------------


def test_every_key_is_still_read_with_project_defaults(folder):
    project = load_project(
        write(
            folder,
            """
            project: shop
            migrations: migrations
            version_table: shop_version
            version_table_schema: meta
            python_path: src
            environments:
              - name: production
                url: ${PRODUCTION_URL}
                shadow_url: postgresql://scratch@db/shadow
                after: dev
                protected: true
                approvals: 2
                allow_downgrade: false
                version_table: prod_version
                python_path: [lib]
                lock_timeout: 5
                statement_timeout: 1.5
                configure_args:
                  transactional_ddl: false
                  transaction_per_migration: true
              - name: dev
                url: sqlite:///dev.db
            """,
        ),
        environ={"PRODUCTION_URL": "postgresql://app@db/shop"},
    )
    assert project.name == "shop" and project.python_path == (folder / "src",)
    dev, production = project.environments
    assert (dev.name, dev.version_table, dev.version_table_schema) == (
        "dev",
        "shop_version",
        "meta",
    )
    assert (dev.protected, dev.approvals, dev.allow_downgrade) == (False, 0, True)
    assert dev.python_path == (folder / "src",) and dev.configure_args == ()
    assert dev.lock_timeout is None and dev.statement_timeout is None
    assert production.display_url == "postgresql://app@db/shop"
    assert str(production.shadow_url) == "postgresql://scratch@db/shadow"
    assert (production.after, production.protected, production.approvals) == ("dev", True, 2)
    assert production.allow_downgrade is False
    assert (production.version_table, production.version_table_schema) == ("prod_version", "meta")
    assert production.python_path == (folder / "src", folder / "lib")
    assert (production.lock_timeout, production.statement_timeout) == (5.0, 1.5)
    assert production.configure_args == (
        ("transaction_per_migration", True),
        ("transactional_ddl", False),
    )


def test_a_protected_environment_defaults_to_one_approval(folder):
    text = environments_yaml([("production", None)]) + "    protected: true\n"
    (production,) = load_project(write(folder, text), environ={}).environments
    assert production.approvals == 1


# --- a bad environments.yaml at the command line -------------------------------------------------

BAD_FILES = {
    "bad YAML": (
        """
        migrations: migrations
        environments: [
          - name: dev
        """,
        "line 3: this is not valid YAML",
    ),
    "unknown key": (
        """
        migrations: migrations
        environments:
          - name: dev
            url: sqlite:///dev.db
            colour: blue
        """,
        "line 5, key 'environments[0] (dev).colour': unknown key",
    ),
}
ENTRIES = (["--help"], [], ["dashboard", "--help"], ["db", "upgrade"], ["dashboard", "status"])


@pytest.mark.slow  # six flask processes per bad file
@pytest.mark.parametrize("kind", BAD_FILES)
def test_a_bad_environments_file_is_its_message_from_every_flask_entry(folder, kind):
    text, where = BAD_FILES[kind]
    path = write(folder, text)
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("FLASK_")},
        "FLASK_APP": "dashboard",
        "ENVIRONMENTS_FILE": str(path),
        "DASHBOARD_CONFIG": "testing",
        "DASHBOARD_DATABASE_URL": f"sqlite:///{folder / 'store.db'}",
    }
    # The real `flask` command, run from a folder of its own, every entry at once (they are slow).
    running = {
        " ".join(args) or "(no arguments)": subprocess.Popen(
            [str(FLASK), *args],
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in ENTRIES
    }
    for entry, process in running.items():
        stdout, stderr = process.communicate(timeout=120)
        assert "Traceback" not in stdout + stderr, (entry, stderr)
        assert process.returncode == 1, (entry, stdout, stderr)
        assert stdout == "", (entry, stdout)
        (line,) = stderr.splitlines()
        assert line.startswith(f"Error: {path}, {where}"), (entry, line)
    assert not (folder / "store.db").exists()  # nothing got as far as the store


def test_under_click_the_factory_prints_the_message_and_exits_1(folder):
    path = write(folder, BAD_FILES["unknown key"][0])

    @click.command()
    def start() -> None:
        create_app("testing", {"ENVIRONMENTS_FILE": str(path)})

    result = CliRunner().invoke(start)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output.startswith(f"Error: {path}, line 5, key 'environments[0] (dev).colour'")
    assert "Traceback" not in result.output


def test_outside_click_the_factory_raises_for_the_wsgi_server_to_report(folder):
    path = write(folder, BAD_FILES["bad YAML"][0])
    with pytest.raises(ConfigurationError, match=r"line 3: this is not valid YAML"):
        create_app("testing", {"ENVIRONMENTS_FILE": str(path)})
