"""Write a first environments.yaml for an existing Flask-Migrate (or Alembic) application."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from dashboard.environments.loader import NAME_PATTERN, Project, load_project
from dashboard.errors import ConfigurationError

# Folders never searched for a script directory: virtualenvs, caches, packages of others.
_SKIPPED = {"node_modules", "site-packages", "__pycache__", "venv", "env", "build", "dist"}
_SEARCH_DEPTH = 3


@dataclass(frozen=True)
class NewEnvironment:
    """One `--env NAME=URL` pair, checked."""

    name: str
    url: str


def parse_environment(pair: str) -> NewEnvironment:
    """Check one NAME=URL pair; the message never repeats the URL (it may hold a password)."""
    name, equals, url = pair.partition("=")
    name, url = name.strip(), url.strip()
    if not equals or not name or not url:
        raise ConfigurationError(
            f"--env {name or '?'}=…: expected NAME=URL, e.g. dev=sqlite:///dev.db"
        )
    return new_environment(name, url)


def check_name(name: str) -> str:
    """Return `name` if it can name an environment."""
    if not NAME_PATTERN.match(name):
        raise ConfigurationError(
            f"{name!r} is not an environment name: use letters, digits, '.', '_' or '-' "
            "(at most 63 characters)"
        )
    return name


def new_environment(name: str, url: str) -> NewEnvironment:
    """Check an environment's name and URL (a URL with ${VAR} is checked when it is loaded)."""
    check_name(name)
    if "${" not in url:
        try:
            make_url(url)
        except ArgumentError:
            raise ConfigurationError(
                f"the URL of {name} is not a database URL "
                "(expected dialect+driver://user@host/database, or ${VARIABLE})"
            ) from None
    return NewEnvironment(name=name, url=url)


def find_script_directory(app_folder: Path) -> Path:
    """Return the app's migrations/ folder, or the one Alembic script directory below it."""
    app_folder = app_folder.resolve()
    if (app_folder / "migrations" / "env.py").is_file():
        return app_folder / "migrations"
    found = sorted(_script_directories(app_folder, _SEARCH_DEPTH))
    if len(found) == 1:
        return found[0]
    if not found:
        raise ConfigurationError(
            f"no migrations folder (a folder with env.py and versions/) in {app_folder}: run "
            "`flask db init` in your app first, or name it with --migrations"
        )
    names = ", ".join(str(path) for path in found)
    raise ConfigurationError(
        f"several script directories in {app_folder} ({names}): name one with --migrations"
    )


def _script_directories(folder: Path, depth: int) -> Iterable[Path]:
    try:
        children = [child for child in folder.iterdir() if child.is_dir()]
    except OSError:
        return
    for child in children:
        if child.name.startswith(".") or child.name in _SKIPPED:
            continue
        if (child / "env.py").is_file() and (child / "versions").is_dir():
            yield child
        elif depth > 1:
            yield from _script_directories(child, depth - 1)


def check_script_directory(folder: Path) -> Path:
    """Return `folder` resolved if it is an Alembic script directory (it has env.py)."""
    folder = folder.resolve()
    if not (folder / "env.py").is_file():
        raise ConfigurationError(f"{folder} is not an Alembic script directory (it has no env.py)")
    return folder


def _scalar(value: str) -> str:
    """`value` as YAML: plain when it reads back as itself, else double-quoted."""
    try:
        plain = yaml.safe_load(f"key: {value}")
    except yaml.YAMLError:
        plain = None
    return value if plain == {"key": value} else json.dumps(value)


def render(
    project: str, script_location: Path, output: Path, environments: Sequence[NewEnvironment]
) -> str:
    """The text of environments.yaml: environments in the order given, each after the one before."""
    migrations = Path(os.path.relpath(script_location, output.parent)).as_posix()
    lines = [
        "# Written by `flask dashboard init`. Every key: the README's section",
        '# "Pointing it at your application: environments.yaml". Relative SQLite paths are',
        "# relative to this file; take secrets from the process environment: url: ${VAR}.",
        f"project: {_scalar(project)}",
        f"migrations: {_scalar(migrations)}",
        "environments:",
    ]
    for index, environment in enumerate(environments):
        lines += [f"  - name: {environment.name}", f"    url: {_scalar(environment.url)}"]
        if index:
            after = f"    after: {environments[index - 1].name}"
            lines.append(f"{after.ljust(36)}# promotion order")
        if index and index == len(environments) - 1:
            lines += [
                f"{'    # protected: true'.ljust(36)}# changes only through approved rollouts",
                f"{'    # approvals: 2'.ljust(36)}# distinct approvers, never the requester",
            ]
    return "\n".join(lines) + "\n"


def write_environments_file(
    *,
    output: Path,
    project: str,
    script_location: Path,
    environments: Sequence[NewEnvironment],
) -> Project:
    """Write a new environments.yaml (never over an existing file) and return it as loaded."""
    if not environments:
        raise ConfigurationError("name at least one environment: --env NAME=URL")
    names = [environment.name for environment in environments]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigurationError(f"the environment {twice[0]!r} is named twice")
    text = render(project, script_location, output, environments)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        with output.open("x", encoding="utf-8") as file:
            file.write(text)
    except FileExistsError:
        raise ConfigurationError(
            f"{output} exists already: it is left as it is (remove it, or write another "
            "with --output)"
        ) from None
    try:
        return load_project(output)
    except ConfigurationError:
        output.unlink()  # what it says is the arguments' fault: no half-made file stays
        raise
