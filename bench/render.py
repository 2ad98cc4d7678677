"""How long a plan's offline SQL takes to render, next to `flask db upgrade --sql`.

    .venv/bin/python bench/render.py [--revisions 1000] [--repeat 3] [--backend postgresql]
                                     [--pending N]

Writes bench/run.py's linear script directory (stock Flask-Migrate env.py, one table per
revision) into a temporary folder — with `--pending N`, bench/scale_workload.py's history
instead (a branch and a merge every 50 revisions), planned from a revision that leaves N
pending — then times, median of `--repeat`:

- `flask --app benchapp db upgrade --sql FROM:head` (a process of its own, as a person runs it);
- `render_in_child` of every step in one renderer child (forked from a warm zygote);
- `build_plan` of FROM → head (what the plan preview runs: slices of children, warnings,
  fingerprint), in this already started process.

Offline rendering never connects, so the URL needs no server. Nothing is written elsewhere.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import run as side_by_side  # noqa: E402
import scale_workload  # noqa: E402

from dashboard.environments import load_project  # noqa: E402
from dashboard.plans import service  # noqa: E402
from dashboard.target import adapter, launcher  # noqa: E402
from dashboard.target.renderer import render_in_child  # noqa: E402

URLS = {
    "sqlite": "sqlite:///{folder}/bench.db",
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/bench",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/bench",
}


def timed(action) -> tuple[float, object]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revisions", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backend", choices=sorted(URLS), default="postgresql")
    parser.add_argument("--pending", type=int, help="the scale history, N steps pending")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-render-") as name:
        folder = Path(name)
        current: tuple[str, ...] = ()
        if args.pending is None:
            side_by_side.write_workload(folder, args.revisions)
        else:
            graph = scale_workload.Graph(args.revisions)
            scale_workload.write_scripts(folder, graph)
            (folder / "environments.yaml").write_text(side_by_side.ENVIRONMENTS_YAML)
            start = graph.with_pending(args.pending)
            current = () if start is None else (side_by_side.revision_id(start),)
        sql_range = f"{current[0] if current else 'base'}:head"
        url = make_url(URLS[args.backend].format(folder=folder))
        # Compiles every script once (untimed), so that neither side pays for it.
        side_by_side.run(folder, url, ("db", "upgrade", "--sql", sql_range), dashboard=False)
        project = load_project(
            folder / "environments.yaml",
            environ={side_by_side.URL_VARIABLE: url.render_as_string(hide_password=False)},
        )
        environment = project.environments[0]
        database = project.database(environment)
        resolved = adapter.resolve_steps(
            database, current=current, direction="upgrade", target="head"
        )
        steps = list(zip(resolved.revision_ids, resolved.heads_before, strict=True))
        launcher.prestart()
        render_in_child(database, direction="upgrade", steps=steps[:1])  # a warm zygote
        figures: dict[str, list[float]] = {"flask db upgrade --sql": [], "render_in_child": []}
        figures["build_plan"] = []
        for _ in range(args.repeat):
            sample = side_by_side.run(
                folder, url, ("db", "upgrade", "--sql", sql_range), dashboard=False
            )
            figures["flask db upgrade --sql"].append(sample.seconds)
            seconds, rendered = timed(
                lambda: render_in_child(database, direction="upgrade", steps=steps, timeout=900)
            )
            assert len(rendered) == len(steps) and all(step.sql for step in rendered)
            figures["render_in_child"].append(seconds)
            service.clear_plan_cache()
            seconds, plan = timed(
                lambda: service.build_plan(
                    project=project,
                    environment=environment,
                    direction="upgrade",
                    target="head",
                    current=current,
                )
            )
            assert len(plan.steps) == len(steps)
            figures["build_plan"].append(seconds)
        baseline = statistics.median(figures["flask db upgrade --sql"])
        print(
            f"{len(steps)} steps of {args.revisions} revisions, {args.backend}, "
            f"median of {args.repeat}:"
        )
        for label, samples in figures.items():
            median = statistics.median(samples)
            print(
                f"  {label:24} {median:7.2f} s  ({median / baseline:.2f}x)  "
                f"samples {', '.join(f'{value:.2f}' for value in samples)}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
