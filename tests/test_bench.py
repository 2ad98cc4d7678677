"""Smoke test of the benchmark under bench/: it runs and writes its JSON (no timing asserted)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import IN_CI, DatabaseFactory

REPO = Path(__file__).resolve().parent.parent
# Both run the benchmark's own processes (the scale smoke: gunicorn, locust and built histories).
pytestmark = pytest.mark.slow


def test_quick_benchmark_writes_every_operation(tmp_path: Path) -> None:
    # Speed targets live in the benchmark's ratios, never in asserts: this only checks it works.
    output = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "run.py"),
            "--quick",
            "--backends",
            "sqlite",
            "--revisions",
            "5",
            "--json",
            str(output),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(output.read_text())
    rows = {row["operation"]: row for row in report["results"]}
    assert sorted(rows) == ["current", "sql", "upgrade"]
    for row in rows.values():
        assert row["backend"] == "sqlite"
        for side in ("baseline", "dashboard"):
            assert row[side]["median_s"] > 0
            assert row[side]["median_peak_mib"] > 0
        assert row["time_ratio"] > 0


# Every row the scale scenario reports (bench/scale.py ROWS), measured or "not measured: …".
SCALE_ROWS = [
    "overview_warm",
    "first_overview",
    "history",
    "plan_preview",
    "cli_diff",
    "rehearsal",
    "drift_check_all",
    "schema_diff",
    "job_page",
    "overview_clients",
    "worker_memory",
]


def _docs_benchmarks() -> bytes | None:
    path = REPO / "docs" / "benchmarks.md"
    return path.read_bytes() if path.exists() else None


def test_scale_smoke_writes_every_row(tmp_path: Path) -> None:
    # The scenario's environments and the store live on PostgreSQL; its load runs on locust.
    DatabaseFactory("postgresql", tmp_path).drop_all()  # skips (fails with CI=true) without it
    if importlib.util.find_spec("locust") is None:
        message = "locust is not installed (the bench optional dependencies)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    before = _docs_benchmarks()
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "scale.py"),
            "--smoke",
            "--output-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    report = json.loads((tmp_path / "benchmarks.json").read_text())
    rows = {row["id"]: row for row in report["rows"]}
    assert list(rows) == SCALE_ROWS
    for row in rows.values():
        assert row["figure"] and row["target"] and row["met"] in (True, False, None), row
        if not row["measured"]:
            assert row["figure"].startswith("not measured: "), row
    assert report["settings"]["revisions"] == 30
    machine = report["machine"]
    for key in ("cpu_model", "cores", "ram_gib", "python", "postgresql"):
        assert machine[key], key
    markdown = (tmp_path / "benchmarks.md").read_text()
    assert markdown.startswith("# Benchmarks")
    assert machine["postgresql"] in markdown and machine["cpu_model"] in markdown
    for row in rows.values():
        assert row["label"] in markdown and row["figure"] in markdown
    # A smoke run writes only where it is told to, never over docs/benchmarks.md.
    assert _docs_benchmarks() == before
