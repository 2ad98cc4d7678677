"""Children start as forks of a warm zygote: as fresh as an interpreter, far cheaper.

Each test runs real migrations through `run_in_child`; the migrations print what the child saw
(its parent, its hash seed, its environment, its logging), so the tests read the child's own
account rather than the launcher's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dashboard.startup import starts_a_child
from dashboard.target import launcher
from dashboard.target.renderer import render_in_child
from dashboard.target.runner import run_in_child
from tests.helpers import REPO, project_for, versions

PROBE = """
import logging, os, sys
print("probe parent=%d seed=%d variable=%s loggers=%d cwd=%s" % (
    os.getppid(), hash("zygote"), os.environ.get("LAUNCHER_PROBE", "-"),
    len(logging.getLogger().handlers), os.getcwd()))
logging.getLogger().addHandler(logging.StreamHandler())
os.environ["LEAKED_FROM_CHILD"] = "yes"
"""


def _probe(result) -> dict[str, str]:
    line = next(line for line in result.lines if line.startswith("probe "))
    return dict(part.split("=", 1) for part in line.removeprefix("probe ").split())


@pytest.fixture
def probed(tmp_path, script_tree):
    """Three revisions whose upgrades print the probe; the project on a SQLite file."""
    for index, down in enumerate((None, "p0", "p1")):
        script_tree.add(f"p{index}", down, upgrade=PROBE, downgrade=PROBE)
    url = f"sqlite:///{tmp_path / 'probed.db'}"
    project = project_for(tmp_path, script_tree, {"dev": url})
    return project.database(project.get("dev")), url


def test_children_fork_from_one_zygote_and_start_fresh_each_time(probed, monkeypatch):
    database, url = probed
    monkeypatch.delenv(launcher.START_VARIABLE, raising=False)

    first = run_in_child(database, operation="upgrade", target="p0")
    monkeypatch.setenv("LAUNCHER_PROBE", "second")
    monkeypatch.chdir(REPO / "docs")
    second = run_in_child(database, operation="upgrade", target="p1")

    assert first.succeeded and second.succeeded, first.lines + second.lines
    seen_first, seen_second = _probe(first), _probe(second)
    # Both are children of the same zygote, which is a child of this process.
    assert seen_first["parent"] == seen_second["parent"] != str(os.getpid())
    zygote = int(seen_first["parent"])
    assert _parent_of(zygote) == os.getpid()
    # Each child sees the environment and folder of its own start, not the zygote's, and
    # nothing the previous child did to its logging or its environment.
    assert seen_first["variable"] == "-" and seen_second["variable"] == "second"
    assert seen_second["cwd"] == str(REPO / "docs")
    assert seen_first["loggers"] == seen_second["loggers"]
    assert "LEAKED_FROM_CHILD" not in os.environ
    # Every process renders merges alike: the hash seed is fixed.
    assert seen_first["seed"] == seen_second["seed"]
    assert versions(url) == ["p1"]


def test_a_spawned_child_sees_the_same_as_a_forked_one(probed, monkeypatch):
    database, url = probed
    monkeypatch.setenv("LAUNCHER_PROBE", "spawned")
    monkeypatch.setenv(launcher.START_VARIABLE, "spawn")

    result = run_in_child(database, operation="upgrade", target="p0")

    assert result.succeeded, result.lines
    seen = _probe(result)
    assert seen["parent"] == str(os.getpid())  # a fresh interpreter, our own child
    assert seen["variable"] == "spawned"
    monkeypatch.delenv(launcher.START_VARIABLE)
    forked = run_in_child(database, operation="downgrade", target="base")
    assert forked.succeeded, forked.lines
    assert _probe(forked)["seed"] == seen["seed"]
    assert versions(url) == []


def test_a_dead_zygote_is_replaced_and_a_killed_child_reports_its_signal(
    probed, script_tree, monkeypatch
):
    database, url = probed
    monkeypatch.delenv(launcher.START_VARIABLE, raising=False)
    first = run_in_child(database, operation="upgrade", target="p0")
    zygote = int(_probe(first)["parent"])

    os.kill(zygote, signal.SIGKILL)
    again = run_in_child(database, operation="upgrade", target="p1")
    assert again.succeeded, again.lines
    assert int(_probe(again)["parent"]) != zygote

    script_tree.add("p3", "p2", upgrade="import time\ntime.sleep(60)")
    started: list[int] = []
    killer = None

    def on_start(pid: int) -> None:
        started.append(pid)

    def on_line(line: str) -> None:
        nonlocal killer
        if line.startswith("probe ") and killer is None:
            killer = time.monotonic()
            os.kill(started[0], signal.SIGKILL)

    killed = run_in_child(
        database, operation="upgrade", target="p3", on_start=on_start, on_line=on_line
    )
    assert killed.returncode == -signal.SIGKILL
    assert killed.failure_reason == "the runner was killed by SIGKILL"
    assert "p3" not in versions(url)


def test_killing_the_parent_takes_the_zygote_and_its_children_along(tmp_path, probed):
    database, _ = probed
    script = textwrap.dedent(
        f"""
        import sys, time
        from dashboard.environments import load_project
        project = load_project({str(tmp_path / "environments.yaml")!r}, environ={{}})
        from dashboard.target.runner import run_in_child
        run_in_child(project.database(project.get("dev")), operation="upgrade", target="p3",
                     on_start=lambda pid: print(pid, flush=True))
        """
    )
    (database.script_location / "versions" / "p3_rev.py").write_text(
        textwrap.dedent(
            """
            revision = "p3"
            down_revision = "p2"
            branch_labels = None
            depends_on = None
            def upgrade():
                import time
                time.sleep(120)
            def downgrade():
                pass
            """
        )
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != launcher.START_VARIABLE},
    )
    try:
        runner = int(parent.stdout.readline())
        zygote = _parent_of(runner)
        assert zygote != parent.pid
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (_alive(runner) or _alive(zygote)):
            time.sleep(0.05)
        assert not _alive(runner), "the runner outlived the process that started it"
        assert not _alive(zygote), "the zygote outlived the process that started it"
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()


def test_a_renderer_that_overruns_is_killed_and_named(tmp_path, script_tree, monkeypatch):
    monkeypatch.delenv(launcher.START_VARIABLE, raising=False)
    script_tree.add("s0", None, upgrade="import time\ntime.sleep(60)")
    (script_tree.path / "env.py").write_text(
        "import time\ntime.sleep(60)\n" + (script_tree.path / "env.py").read_text()
    )
    project = project_for(tmp_path, script_tree, {"dev": f"sqlite:///{tmp_path / 'r.db'}"})
    started = time.monotonic()
    with pytest.raises(Exception, match="took longer than 1 s"):
        render_in_child(
            project.database(project.get("dev")), direction="upgrade", steps=[("s0", ())], timeout=1
        )
    assert time.monotonic() - started < 20


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize(
    ("argv", "early"),
    [
        (["/x/.venv/bin/flask", "dashboard", "upgrade", "prod"], True),
        (["flask", "--app", "dashboard:create_app", "dashboard", "diff", "staging"], True),
        (["flask", "dashboard", "drift"], True),
        (["flask", "dashboard", "status", "--json"], False),
        (["flask", "db", "upgrade"], False),
        (["gunicorn", "dashboard:create_app()"], False),
        (["flask", "dashboard"], False),
    ],
)
def test_only_cli_commands_that_start_a_child_start_the_zygote_before_the_app(argv, early):
    # A one-shot `flask dashboard upgrade` overlaps the zygote's imports with building the app.
    assert starts_a_child(argv) is early
