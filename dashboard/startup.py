"""What kind of process this is, read from its arguments before anything heavy is imported.

Every process builds its app with the cyclic garbage collector paused (`collection_paused`).
A one-shot `flask dashboard <command>` is timed against the plain Flask-Migrate CLI
(`bench/run.py`), and most of its life is start-up and exit, so it does more:

- it builds the app without the web tier (pages, templates, sign-in, CSRF, rate limits);
- the cyclic garbage collector pauses while the modules load and the app is built: the objects
  made then (classes, functions, SQLAlchemy's tables) live until exit, and each collection
  would walk them all again (~0.2 s on start-up). Once the app is built they are frozen (left
  out of every later collection) and collection resumes, so the command's own work is collected
  as usual;
- at exit the same freeze spares the interpreter's last collection over everything (~0.3 s
  after an upgrade's job); atexit handlers still run, and nothing is left unwritten;
- `upgrade`, `downgrade`, `stamp`, `diff` and `drift` start the zygote (which imports what every
  runner or renderer child needs) before anything else, so its imports overlap the app's.

Only the standard library and the launcher (itself standard library) are imported here: the
`dashboard` package imports this module first.
"""

from __future__ import annotations

import atexit
import gc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dashboard.target import launcher

# `flask dashboard <one of these> …` starts a runner or renderer child once the app is built.
COMMANDS_WITH_CHILDREN = frozenset({"upgrade", "downgrade", "stamp", "diff", "drift"})

_paused: list[bool] = []


def dashboard_command(argv: list[str]) -> str | None:
    """The `dashboard` subcommand this `flask` process runs, if it runs one."""
    if not argv or Path(argv[0]).name != "flask" or "dashboard" not in argv[1:]:
        return None
    after = argv[argv.index("dashboard", 1) + 1 :]
    return after[0] if after else None


def starts_a_child(argv: list[str]) -> bool:
    """Is this process `flask … dashboard upgrade|downgrade|stamp|diff|drift …`?

    Click resolves the command only after the app is built, so the arguments are all there is;
    a wrong guess costs (or saves) one early zygote start, nothing else.
    """
    return dashboard_command(argv) in COMMANDS_WITH_CHILDREN


def serves_no_pages(argv: list[str]) -> bool:
    """Is this process a one-shot `flask … dashboard <command>` (not the RQ worker)?"""
    command = dashboard_command(argv)
    return command is not None and command != "worker"


def begin(argv: list[str]) -> None:
    """First thing on import of the package: for a one-shot command, start the zygote if the
    command needs one and pause collection until `app_built`; otherwise do nothing."""
    if not serves_no_pages(argv) or _paused:
        return
    if starts_a_child(argv):
        launcher.prestart()
    if gc.isenabled():
        gc.disable()
        _paused.append(True)
    atexit.register(gc.freeze)  # before the interpreter's last collection


@contextmanager
def collection_paused() -> Iterator[None]:
    """No cyclic collection inside (every process builds its app so), then as before."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def app_built() -> None:
    """Freeze what start-up made and resume collection, if `begin` paused it."""
    if _paused:
        _paused.clear()
        gc.freeze()
        gc.enable()
