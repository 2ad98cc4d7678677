"""Smoke test of the benchmark under bench/: it runs and writes its JSON (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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
