"""Scale scenario: the dashboard, served by gunicorn as in the image, on a big script directory and
many environments, next to what a person runs instead (the plain Flask-Migrate CLI).

Run from the repository root:

    .venv/bin/python bench/scale.py                 # the full scenario; writes docs/benchmarks.*
    .venv/bin/python bench/scale.py --smoke --output-dir /tmp/out     # ~1 minute, small sizes

Everything lives in a temporary folder and in throwaway PostgreSQL databases; servers, databases
and the folder are removed at the end, also on failure, Ctrl-C or SIGTERM. See bench/README.md.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import run as side_by_side
import scale_web as web
import scale_workload as workload
import sqlalchemy as sa
from sqlalchemy.engine import URL

REPO = side_by_side.REPO
VENV_BIN = Path(sys.executable).parent
FLASK = side_by_side.FLASK
DEFAULT_OUTPUT = REPO / "docs"
COMMAND = ".venv/bin/python bench/scale.py"

# Where each row is measured: adjust here when a page moves. {env}, {job}, {after} are filled in.
PATHS = {
    "overview": "/",
    "history": "/history",
    "plan": "/environments/{env}/plan",  # the plan preview the Environment page loads with htmx
    # Long work: started with a POST (a GET where it still answers one: a 405 switches over).
    "rehearsal": "/environments/{env}/diff/rehearsal",
    "schema_diff": "/environments/{env}/diff/schema",
    "drift_check": "/drift/check",  # no environment in the form: "Check all"
    "csrf_page": "/account",  # any page with the session's CSRF token
    "job_page": "/jobs/{job}",
    # What a job page polls once it shows the log's tail (used when the page names no poll URL).
    "job_poll": "/jobs/{job}/live?after={after}",
}
# An Overview row, with its status; the statuses that mean "not read yet".
ENV_ROW = re.compile(r'class="env-row"[^>]*data-status="([^"]*)"')
NOT_READ_YET = ("unknown", "reading")

ROWS = {
    "overview_warm": "Overview, warm",
    "first_overview": "First Overview after start",
    "history": "History, warm / after restart",
    "plan_preview": "Plan preview of {pending} pending steps",
    "cli_diff": "`flask dashboard diff ENV`, {pending} pending on PostgreSQL",
    "rehearsal": "Rehearsal of 2 steps (PostgreSQL)",
    "drift_check_all": 'Drift "Check all"',
    "schema_diff": "PostgreSQL schema diff ({pending} pending)",
    "job_page": "Job page with a {log_lines}-line log under {clients} clients",
    "overview_clients": "{clients} concurrent signed-in clients on the Overview",
    "worker_memory": "Peak memory per web worker",
}
TARGETS = {
    "overview_warm": "p50 ≤ 25 ms, p95 ≤ 60 ms",
    "first_overview": "first byte ≤ 300 ms",
    "history": "warm median ≤ 100 ms; after restart ≤ 1 s",
    "plan_preview": "≤ 1.5× `--sql`; warm median ≤ 100 ms",
    "cli_diff": "≤ 3× (`--sql` + scratch builds)",
    "rehearsal": "a progress line at once (first response ≤ 300 ms)",
    "drift_check_all": "a progress line at once (first response ≤ 300 ms)",
    "schema_diff": "a progress line at once (first response ≤ 300 ms)",
    "job_page": "p95 ≤ 250 ms; worker memory flat (RSS grows ≤ 10 MiB in the window)",
    "overview_clients": "0 errors, p95 ≤ 150 ms",
    "worker_memory": "≤ 200 MiB (VmHWM)",
}
AT_ONCE_S = 0.3
LOG_LINES = 5000
JOB_STEPS = 10


# --- the scenario ---------------------------------------------------------------------------


@dataclass
class Scenario:
    args: argparse.Namespace
    folder: Path
    cleanup: ExitStack
    pg: workload.ScaleDatabases
    graph: workload.Graph
    targets: list[workload.Target]
    roles: workload.Roles
    store: URL
    env: dict[str, str]
    passwords: dict[str, str] = field(default_factory=dict)
    cookies: dict[str, dict[str, str]] = field(default_factory=dict)
    baselines: dict[str, dict] = field(default_factory=dict)
    rows: dict[str, dict] = field(default_factory=dict)
    servers: list[dict] = field(default_factory=list)
    history: dict = field(default_factory=dict)

    def target(self, name: str) -> workload.Target:
        return next(target for target in self.targets if target.name == name)

    def path(self, key: str, **values: object) -> str:
        return PATHS[key].format(**values)


class NotMeasured(Exception):
    """A row that cannot be measured today (a page that does not exist yet, a failed step)."""


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def record(
    scenario: Scenario,
    key: str,
    figure: str,
    met: bool | None,
    values: dict,
    baseline: str = "",
    note: str = "",
) -> None:
    scenario.rows[key] = {
        "id": key,
        "label": ROWS[key].format(**labels(scenario)),
        "measured": True,
        "figure": figure,
        "baseline": baseline,
        "target": TARGETS[key],
        "met": met,
        "values": values,
        "note": note,
    }


def not_measured(scenario: Scenario, key: str, reason: str) -> None:
    scenario.rows[key] = {
        "id": key,
        "label": ROWS[key].format(**labels(scenario)),
        "measured": False,
        "figure": f"not measured: {reason}",
        "baseline": "",
        "target": TARGETS[key],
        "met": None,
        "values": {},
        "note": "",
    }


def labels(scenario: Scenario) -> dict[str, object]:
    return {
        "pending": f"{scenario.roles.plan_pending:,}",
        "log_lines": f"{LOG_LINES:,}",
        "clients": scenario.args.clients,
    }


def guarded(scenario: Scenario, keys: tuple[str, ...], measure: Callable[[], None]) -> None:
    """Measure some rows; any failure marks those not yet recorded "not measured", with why."""
    try:
        measure()
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:  # a broken or missing page must not end the whole benchmark
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [repr(error)]
        reason = " … ".join(dict.fromkeys([lines[0], lines[-1]]))[:400]
        say(f"not measured ({', '.join(keys)}): {reason}")
        if scenario.args.verbose:
            traceback.print_exc()
        for key in keys:
            if key not in scenario.rows:
                not_measured(scenario, key, reason)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


# --- set-up (untimed) -----------------------------------------------------------------------


def dashboard_env(folder: Path, store: URL, server_url: str) -> dict[str, str]:
    """The environment of the dashboard's processes (CLI and server), as the image gets it."""
    dropped = ("SECRET_KEY", "ENVIRONMENTS_FILE", "PORT", "BIND_HOST", "REDIS_URL")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("FLASK_", "DASHBOARD_", "SQLALCHEMY_", "GUNICORN_", "BENCH_"))
        and key not in dropped
    }
    (folder / "home").mkdir(exist_ok=True)
    env.update(
        PATH=os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", os.defpath)]),
        HOME=str(folder / "home"),
        SECRET_KEY=secrets.token_hex(32),
        FLASK_APP="dashboard",
        FLASK_SKIP_DOTENV="1",
        DASHBOARD_DATABASE_URL=store.render_as_string(hide_password=False),
        ENVIRONMENTS_FILE=str(folder / "environments.yaml"),
        # Audit heads go to a file of this run, not to the repository's instance folder.
        DASHBOARD_AUDIT_ANCHOR_FILE=str(folder / "audit-anchors.log"),
    )
    env[workload.SERVER_VARIABLE] = server_url
    return env


def dashboard_command(scenario: Scenario, *args: str) -> side_by_side.Sample:
    return side_by_side.run_command(
        scenario.folder,
        [FLASK, *args],
        scenario.env,
        label=f"flask {' '.join(args)}",
        secret_url=scenario.store,
        timeout=scenario.args.slow_timeout,
    )


def create_user(scenario: Scenario, username: str, role: str) -> None:
    password = secrets.token_urlsafe(18)
    subprocess.run(
        [FLASK, "dashboard", "create-user", username, "--role", role, "--password-stdin"],
        input=password + "\n",
        text=True,
        env=scenario.env,
        cwd=scenario.folder,
        capture_output=True,
        check=True,
        timeout=120,
    )
    scenario.passwords[username] = password


def prepare(args: argparse.Namespace, folder: Path, cleanup: ExitStack) -> Scenario:
    """Write the workload, build every environment and the dashboard's store; create users."""
    pg = workload.ScaleDatabases("postgresql", folder)
    cleanup.callback(pg.close)
    reason = pg.check()
    if reason:
        raise side_by_side.CommandFailed(f"the scale scenario needs PostgreSQL: {reason}")
    silent = workload.SilentPort()
    cleanup.callback(silent.close)
    graph = workload.Graph(args.revisions)
    workload.write_scripts(folder, graph)
    targets, roles = workload.plan_targets(graph, args.environments, args.plan_pending)
    say(
        f"{graph.count} revisions ({graph.branches} branches, {graph.merges} merges), "
        f"{len(targets)} environments; building them (untimed)"
    )
    prefix = f"bench_{secrets.token_hex(4)}"
    workload.build_targets(folder, graph, targets, pg, silent.port, prefix)
    workload.write_environments(folder, targets)
    store = pg.create()
    scenario = Scenario(
        args, folder, cleanup, pg, graph, targets, roles, store,
        dashboard_env(folder, store, pg.server_url()),
    )  # fmt: skip
    dashboard_command(scenario, "db", "upgrade")
    create_user(scenario, "bench-viewer", "viewer")
    create_user(scenario, "bench-operator", "operator")
    return scenario


# --- what a person runs instead -------------------------------------------------------------


def sample_figures(sample: side_by_side.Sample) -> dict:
    return {"seconds": round(sample.seconds, 3), "peak_mib": round(sample.peak_mib, 1)}


def measure_current_and_history(scenario: Scenario) -> None:
    """`flask db current` on every environment that answers, and `flask db history`."""
    folder, run = scenario.folder, side_by_side.run
    reachable = [target for target in scenario.targets if target.url and target.backend != "silent"]
    say(f"baseline: flask db current on {len(reachable)} environments, flask db history")
    current = {}
    for target in reachable:
        sample = run(folder, target.url, ("db", "current"), False)
        if target.revision_id and target.revision_id not in sample.stdout:
            raise side_by_side.CommandFailed(f"flask db current on {target.name}: no revision")
        current[target.name] = sample_figures(sample)
    history = run(folder, reachable[0].url, ("db", "history"), False)
    scenario.baselines["current"] = current
    scenario.baselines["history"] = sample_figures(history)


def measure_offline_sql(scenario: Scenario) -> None:
    """`flask db upgrade --sql FROM:head` for the plan's environment."""
    plan = scenario.target(scenario.roles.plan)
    start = plan.revision_id or "base"
    say(f"baseline: flask db upgrade --sql {start}:head")
    sql = side_by_side.run(
        scenario.folder, plan.url, ("db", "upgrade", "--sql", f"{start}:head"), False
    )
    scenario.baselines["sql"] = sample_figures(sql)


def measure_scratch_builds(scenario: Scenario) -> None:
    """Build the plan's two ends on empty PostgreSQL databases with `flask db upgrade`, in
    steps of workload.CHUNK revisions (one step would run out of PostgreSQL locks)."""
    plan = scenario.target(scenario.roles.plan)
    say("baseline: the two scratch builds (flask db upgrade on empty databases)")
    scratch = {}
    for label, end in (("from", plan.revision), ("to", scenario.graph.count - 1)):
        samples = []
        with scenario.pg.throwaway() as url:
            for stop in workload.stops(scenario.graph, None, end) if end is not None else []:
                samples.append(workload.upgrade(scenario.folder, url, stop))
        scratch[label] = {
            "seconds": round(sum(sample.seconds for sample in samples), 3),
            "peak_mib": max((round(sample.peak_mib, 1) for sample in samples), default=0.0),
            "commands": len(samples),
        }
    scenario.baselines["scratch"] = scratch


def measure_cli_diff(scenario: Scenario) -> None:
    plan = scenario.roles.plan
    if "sql" not in scenario.baselines or "scratch" not in scenario.baselines:
        raise NotMeasured("its baseline (`--sql` and the scratch builds) was not measured")
    say(f"dashboard: flask dashboard diff {plan}")
    sample = dashboard_command(scenario, "dashboard", "diff", plan)
    if "schema diff" not in sample.stdout:
        raise NotMeasured("`flask dashboard diff` printed no schema diff")
    base = scenario.baselines
    parts = [base["sql"]["seconds"], *(step["seconds"] for step in base["scratch"].values())]
    baseline = sum(parts)
    ratio = sample.seconds / baseline
    record(
        scenario,
        "cli_diff",
        f"{sample.seconds:.2f} s, {sample.peak_mib:.0f} MiB ({ratio:.2f}×)",
        ratio <= 3.0,
        {**sample_figures(sample), "ratio": round(ratio, 3), "baseline_s": round(baseline, 3)},
        baseline=f"{baseline:.2f} s: `--sql` {parts[0]:.2f} s + scratch builds "
        f"{parts[1]:.2f} s + {parts[2]:.2f} s (`flask db upgrade` at both ends, at most "
        f"{workload.CHUNK} revisions per command: one transaction of ~2,500 tables exceeds "
        "PostgreSQL's max_locks_per_transaction)",
    )


# --- the server -----------------------------------------------------------------------------


def start_server(scenario: Scenario, label: str) -> web.Server:
    log = scenario.folder / f"server-{label}.log"
    server = web.Server(scenario.env, log)
    CURRENT_LOG.append(log)
    scenario.cleanup.callback(server.stop)
    serving = server.wait_until_serving()
    say(f"server {label}: answering /healthz after {serving:.1f} s (store upgraded, gunicorn up)")
    scenario.servers.append({"label": label, "serving_s": round(serving, 2), "workers": {}})
    return server


def stop_server(scenario: Scenario, server: web.Server) -> None:
    """Note each worker's peak memory, then stop the server."""
    workers = {str(pid): web.memory_mib(pid) for pid in server.workers()}
    scenario.servers[-1]["workers"] = workers
    server.stop()


def client(scenario: Scenario, server: web.Server, username: str) -> web.Client:
    """A client signed in as `username` (once; later servers reuse the session cookie)."""
    signed_in = web.Client(server.port, scenario.cookies.get(username))
    if username not in scenario.cookies:
        signed_in.sign_in(username, scenario.passwords[username])
        scenario.cookies[username] = signed_in.cookies
    return signed_in


def checked(answer: web.Answer, what: str) -> web.Answer:
    if answer.status in (404, 405):
        raise NotMeasured(f"{what} answered {answer.status} (no such page yet)")
    if answer.status >= 400:
        raise NotMeasured(f"{what} answered {answer.status}{server_error(answer)}")
    return answer


# The server whose log explains a 500 (the one running now).
CURRENT_LOG: list[Path] = []


def server_error(answer: web.Answer) -> str:
    """For a 5xx: the last exception line in the running server's log."""
    if answer.status < 500 or not CURRENT_LOG:
        return ""
    lines = CURRENT_LOG[-1].read_text(errors="replace").splitlines()
    found = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b", line)]
    return f" ({found[-1][:300]})" if found else ""


_ALERT = re.compile(r'role="alert"[^>]*>(.*?)</|data-outcome="failed"[^>]*>(.*?)</', re.S)


def succeeded(answer: web.Answer, what: str) -> web.Answer:
    """The answer, unless the page says the work failed (then the row is not measured)."""
    found = _ALERT.search(answer.text)
    if found:
        message = re.sub(r"\s+", " ", html.unescape(found.group(1) or found.group(2))).strip()
        raise NotMeasured(f"{what} says: {message[:300]}")
    return answer


def timed_gets(
    viewer: web.Client, path: str, count: int, headers: dict | None = None
) -> list[float]:
    return [checked(viewer.get(path, headers), f"GET {path}").total_s for _ in range(count)]


# --- rows on a freshly started server -------------------------------------------------------


def measure_first_overview(scenario: Scenario, viewer: web.Client) -> None:
    path = scenario.path("overview")
    first = checked(viewer.get(path), f"GET {path}")
    statuses = ENV_ROW.findall(first.text)
    rows, not_read = len(statuses), sum(status in NOT_READ_YET for status in statuses)
    record(
        scenario,
        "first_overview",
        f"first byte {ms(first.first_byte_s):.0f} ms, whole page {ms(first.total_s):.0f} ms; "
        f"{not_read} of {rows} rows not read yet",
        first.first_byte_s <= 0.3,
        {
            "first_byte_ms": ms(first.first_byte_s),
            "total_ms": ms(first.total_s),
            "rows": rows,
            "rows_not_read_yet": not_read,
            "bytes": first.size,
        },
        note="signed in after /healthz answered; the first page a person opens",
    )


def wait_until_all_read(viewer: web.Client, path: str, timeout: float = 60.0) -> None:
    """Ask until both workers' boards have read every environment (no row "not read yet")."""
    deadline, quiet = time.monotonic() + timeout, 0
    while time.monotonic() < deadline and quiet < 6:
        answer = checked(viewer.get(path), f"GET {path}")
        statuses = ENV_ROW.findall(answer.text)
        quiet = quiet + 1 if not any(status in NOT_READ_YET for status in statuses) else 0
        time.sleep(0.1)


def measure_overview_warm(scenario: Scenario, viewer: web.Client) -> None:
    path = scenario.path("overview")
    wait_until_all_read(viewer, path)
    times = timed_gets(viewer, path, scenario.args.samples)
    p50, p95 = percentile(times, 0.5), percentile(times, 0.95)
    current = scenario.baselines["current"]
    per_env = sum(step["seconds"] for step in current.values())
    history = scenario.baselines["history"]["seconds"]
    record(
        scenario,
        "overview_warm",
        f"p50 {ms(p50):.0f} ms, p95 {ms(p95):.0f} ms ({len(times)} requests)",
        p50 <= 0.025 and p95 <= 0.060,
        {"p50_ms": ms(p50), "p95_ms": ms(p95), "requests": len(times)},
        baseline=f"{per_env + history:.1f} s: `flask db current` on {len(current)} "
        f"environments ({per_env:.1f} s) + `flask db history` ({history:.2f} s); the silent one "
        "is left out (it would hang: no connect timeout)",
    )


def measure_history_warm(scenario: Scenario, viewer: web.Client) -> dict:
    path = scenario.path("history")
    timed_gets(viewer, path, 4)  # both workers load the graph and lay it out
    times = timed_gets(viewer, path, scenario.args.samples)
    return {"warm_p50_ms": ms(percentile(times, 0.5)), "warm_p95_ms": ms(percentile(times, 0.95))}


def measure_plan_preview(scenario: Scenario, viewer: web.Client) -> None:
    path = scenario.path("plan", env=scenario.roles.plan)
    say(f"plan preview: GET {path} (htmx, {scenario.roles.plan_pending} steps)")
    first = checked(viewer.get(path, web.HX, timeout=scenario.args.slow_timeout), f"GET {path}")
    succeeded(first, f"GET {path}")
    warm = timed_gets(viewer, path, 4, web.HX)
    warm_p50 = statistics.median(warm)
    sql = scenario.baselines["sql"]["seconds"]
    ratio = first.total_s / sql
    record(
        scenario,
        "plan_preview",
        f"first {first.total_s:.2f} s ({ratio:.2f}×), warm median {ms(warm_p50):.0f} ms; "
        f"{first.size / 1024:,.0f} KiB",
        ratio <= 1.5 and warm_p50 <= 0.100,
        {
            "first_s": round(first.total_s, 3),
            "ratio": round(ratio, 3),
            "warm_median_ms": ms(warm_p50),
            "warm_ms": [ms(value) for value in warm],
            "bytes": first.size,
        },
        baseline=f"{sql:.2f} s: `flask db upgrade --sql FROM:head`",
    )


def measure_progressive(
    scenario: Scenario, key: str, operator: web.Client, path: str, validate: bool = True
) -> None:
    """Start long work as its button does (htmx POST, else GET) and follow it to its result."""
    form = {"csrf_token": operator.csrf_token(scenario.path("csrf_page"))}
    say(f"{key}: POST {path}")
    timeout = scenario.args.slow_timeout
    done = web.until_result(operator, "POST", path, form, timeout=timeout)
    method = "POST"
    if done.first.status == 405:
        method = "GET"
        say(f"{key}: POST answered 405; GET {path}")
        done = web.until_result(operator, "GET", path, timeout=timeout)
    checked(done.first, f"{method} {path}")
    checked(done.result, f"{method} {path} (result)")
    if validate:
        succeeded(done.result, f"{method} {path}")
    synchronous = done.polls == 0
    how = "the first response is the result" if synchronous else f"{done.polls} polls"
    record(
        scenario,
        key,
        f"first response {ms(done.first.total_s):,.0f} ms, result {done.result_s:.2f} s ({how})",
        done.first.total_s <= AT_ONCE_S,
        {
            "method": method,
            "first_response_ms": ms(done.first.total_s),
            "result_s": round(done.result_s, 3),
            "polls": done.polls,
            "first_bytes": done.first.size,
            "result_bytes": done.result.size,
        },
        note="" if synchronous else f"result polled every {web.POLL_SECONDS:g} s",
    )


def phase_fresh_server(scenario: Scenario) -> None:
    """Server A: the first Overview, warm pages, the plan preview and the long work."""
    server = start_server(scenario, "A")
    viewer = client(scenario, server, "bench-viewer")
    operator = client(scenario, server, "bench-operator")
    guarded(scenario, ("first_overview",), lambda: measure_first_overview(scenario, viewer))
    guarded(scenario, ("overview_warm",), lambda: measure_overview_warm(scenario, viewer))
    guarded(
        scenario,
        ("history",),
        lambda: scenario.history.update(measure_history_warm(scenario, viewer)),
    )
    guarded(scenario, ("plan_preview",), lambda: measure_plan_preview(scenario, viewer))
    roles = scenario.roles
    long_work = (
        ("rehearsal", scenario.path("rehearsal", env=roles.rehearsal), True),
        ("schema_diff", scenario.path("schema_diff", env=roles.plan), True),
        # Not validated: some environments have no drift result (the silent one).
        ("drift_check_all", scenario.path("drift_check"), False),
    )
    for key, path, validate in long_work:
        guarded(
            scenario,
            (key,),
            lambda key=key, path=path, validate=validate: measure_progressive(
                scenario, key, operator, path, validate
            ),
        )
    stop_server(scenario, server)


# --- rows after a restart, and under load ---------------------------------------------------


def measure_history_after_restart(scenario: Scenario, viewer: web.Client) -> None:
    path = scenario.path("history")
    cold = checked(viewer.get(path, timeout=scenario.args.slow_timeout), f"GET {path}")
    warm = scenario.history
    baseline = scenario.baselines["history"]["seconds"]
    record(
        scenario,
        "history",
        f"warm p50 {warm['warm_p50_ms']:.0f} ms, p95 {warm['warm_p95_ms']:.0f} ms; "
        f"after restart {ms(cold.total_s):,.0f} ms",
        warm["warm_p50_ms"] <= 100 and cold.total_s <= 1.0,
        {**warm, "after_restart_ms": ms(cold.total_s), "bytes": cold.size},
        baseline=f"{baseline:.2f} s: `flask db history` (every revision; the page shows 100)",
    )


def make_job(scenario: Scenario) -> tuple[int, int]:
    """Run a real upgrade job of a few steps (the CLI, untimed), then give its log LOG_LINES
    lines like its own; return the job id and the log's last line number."""
    target = scenario.target(scenario.roles.job)
    start = target.revision + 1 if target.revision is not None else 0
    to = side_by_side.revision_id(min(start + JOB_STEPS, scenario.graph.count) - 1)
    dashboard_command(scenario, "dashboard", "upgrade", target.name, "--target", to)
    engine = sa.create_engine(scenario.store, poolclass=sa.pool.NullPool)
    lines = sa.table(
        "job_log_line",
        sa.column("job_id"),
        sa.column("number"),
        sa.column("kind"),
        sa.column("text"),
        sa.column("at"),
    )
    try:
        with engine.begin() as connection:
            job_id = connection.execute(sa.text("SELECT max(id) FROM job")).scalar_one()
            last = connection.execute(
                sa.text("SELECT coalesce(max(number), 0) FROM job_log_line WHERE job_id = :job"),
                {"job": job_id},
            ).scalar_one()
            now = datetime.now(UTC)
            rows = [padding_line(job_id, number, now) for number in range(last + 1, LOG_LINES + 1)]
            if rows:
                connection.execute(lines.insert(), rows)
    finally:
        engine.dispose()
    return job_id, max(last, LOG_LINES)


def padding_line(job_id: int, number: int, now: datetime) -> dict:
    """A log line like the runner's: a step's announcement, then the statement it ran."""
    table = f"t{number // 2:04d}"
    if number % 2:
        text = (
            f"INFO  [alembic.runtime.migration] Running upgrade {max(0, number // 2 - 1):012x} -> "
            f"{number // 2:012x}, create {table}"
        )
        return {"job_id": job_id, "number": number, "kind": "log", "text": text, "at": now}
    text = (
        f"CREATE TABLE {table} (id INTEGER NOT NULL, name VARCHAR(80) NOT NULL, "
        "created_at DATETIME, PRIMARY KEY (id))"
    )
    return {"job_id": job_id, "number": number, "kind": "sql", "text": text, "at": now}


class MemorySampler:
    """Samples the workers' VmRSS every half second in a thread of this process."""

    def __init__(self, server: web.Server) -> None:
        self.server = server
        self.samples: list[tuple[float, dict[int, dict[str, float]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            memory = {pid: web.memory_mib(pid) for pid in self.server.workers()}
            self.samples.append((time.time(), memory))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def growth(self, window: list[float]) -> dict[str, float]:
        """Per worker: its RSS at the end of the measured window minus its lowest RSS in it
        (sign-ins just before the window free argon2's 19 MiB per hash, so RSS first drops)."""
        inside = [
            {pid: values.get("VmRSS", 0.0) for pid, values in memory.items()}
            for at, memory in self.samples
            if window[0] <= at <= window[1]
        ]
        if len(inside) < 2:
            return {}
        last = inside[-1]
        return {
            str(pid): round(last[pid] - min(rss.get(pid, last[pid]) for rss in inside), 1)
            for pid in last
        }

    def peak_at(self, moment: float) -> float:
        """The largest worker VmHWM in the first sample from `moment` on (0 if none)."""
        for at, memory in self.samples:
            if at >= moment:
                return max((values.get("VmHWM", 0.0) for values in memory.values()), default=0)
        return 0.0


def run_locust(scenario: Scenario, server: web.Server, name: str, *options: str) -> dict:
    """Run bench/scale_load.py (locust) against `server`; return its figures."""
    output = scenario.folder / f"locust-{name}.json"
    env = {**os.environ, "BENCH_LOAD_PASSWORD": scenario.passwords["bench-viewer"]}
    command = [
        sys.executable,
        str(Path(__file__).with_name("scale_load.py")),
        "--host",
        f"http://127.0.0.1:{server.port}",
        "--username",
        "bench-viewer",
        "--users",
        str(scenario.args.clients),
        "--seconds",
        str(scenario.args.seconds),
        "--json",
        str(output),
        *options,
    ]
    log = scenario.folder / f"locust-{name}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            process.wait(timeout=700 + scenario.args.seconds)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    if process.returncode != 0 or not output.exists():
        tail = log.read_text(errors="replace")[-1500:]
        raise NotMeasured(f"locust exited with {process.returncode}: {tail}")
    figures = json.loads(output.read_text())
    if not figures["signed_in"]:
        raise NotMeasured(f"no client could sign in: {figures['sign_in_failures'][:3]}")
    return figures


def measure_job_page(scenario: Scenario, server: web.Server, viewer: web.Client) -> None:
    job_id, last = make_job(scenario)
    page_path = scenario.path("job_page", job=job_id)
    page = checked(viewer.get(page_path), f"GET {page_path}")
    # The page's own poll URL (a running job's), else the tail poll of PATHS["job_poll"].
    found = re.search(rf'hx-get="([^"]*/jobs/{job_id}/live[^"]*)"', page.text)
    poll_path = found.group(1) if found else scenario.path("job_poll", job=job_id, after=last)
    say(f"job page: {scenario.args.clients} clients on {page_path} and {poll_path}")
    sampler = MemorySampler(server)
    try:
        figures = run_locust(
            scenario, server, "job", "--job-page", page_path, "--job-poll", poll_path
        )
    finally:
        sampler.stop()
    growth = sampler.growth(figures["window"])
    peaks = {str(pid): web.memory_mib(pid) for pid in server.workers()}
    total, polls = figures["total"], figures["by_name"].get("job poll", {})
    page_figures = figures["by_name"].get("job page", {})
    page_p95 = f"{page_figures['p95_ms']:.0f} ms" if page_figures.get("requests") else "none asked"
    flat = bool(growth) and max(growth.values()) <= 10
    sign_in_failures = figures["sign_in_failures"]
    record(
        scenario,
        "job_page",
        f"{total['failures'] + len(sign_in_failures)} errors in {total['requests']:,} requests; "
        f"p95 {total['p95_ms']:.0f} ms (page {page_p95}, poll "
        f"{polls.get('p95_ms', 0):.0f} ms); {polls.get('avg_bytes', 0):,} bytes per poll, "
        f"page {page.size:,} bytes; worker RSS growth {max(growth.values(), default=0):+.0f} MiB, "
        f"peak {max((p.get('VmHWM', 0) for p in peaks.values()), default=0):.0f} MiB",
        total["p95_ms"] <= 250 and flat and total["failures"] + len(sign_in_failures) == 0,
        {**figures, "job": job_id, "log_lines": last, "page_bytes": page.size,
         "poll_path": poll_path, "rss_growth_mib": growth, "workers": peaks},
        note=signed_in_note(figures)
        + "the job has ended; clients poll as its page does while a job runs "
        + ("(the page's own poll URL)" if found else "(the page names no poll URL: "
           f"{PATHS['job_poll']})"),
    )  # fmt: skip


def signed_in_note(figures: dict) -> str:
    """Say how many clients could not sign in, and why (they count as errors)."""
    failures = figures["sign_in_failures"]
    if not failures:
        return ""
    return (
        f"{len(failures)} of {figures['users']} clients could not sign in "
        f"({', '.join(sorted(set(failures)))}); "
    )


def measure_overview_clients(scenario: Scenario, server: web.Server) -> None:
    say(f"Overview: {scenario.args.clients} clients for {scenario.args.seconds:g} s")
    sampler = MemorySampler(server)
    try:
        figures = run_locust(scenario, server, "overview")
    finally:
        sampler.stop()
    total = figures["total"]
    errors = total["failures"] + len(figures["sign_in_failures"])
    record(
        scenario,
        "overview_clients",
        f"{errors} errors in {total['requests']:,} requests and {figures['users']} sign-ins; "
        f"p50 {total['p50_ms']:.0f} ms, "
        f"p95 {total['p95_ms']:.0f} ms ({total['requests_per_s']:g}/s)",
        errors == 0 and total["p95_ms"] <= 150,
        {
            **figures,
            "rss_growth_mib": sampler.growth(figures["window"]),
            "peak_mib_after_sign_ins": sampler.peak_at(figures["window"][0]),
        },
        note=signed_in_note(figures)
        + "locust, headless: each client signs in before the measured window, then waits "
        "1–3 s between pages",
    )


def phase_restarted_server(scenario: Scenario) -> None:
    """Server B: History right after a restart, then the job page under load."""
    server = start_server(scenario, "B")
    viewer = client(scenario, server, "bench-viewer")
    if scenario.history:
        guarded(scenario, ("history",), lambda: measure_history_after_restart(scenario, viewer))
    guarded(scenario, ("job_page",), lambda: measure_job_page(scenario, server, viewer))
    stop_server(scenario, server)


def phase_overview_load(scenario: Scenario) -> None:
    """Server C: many signed-in clients on the Overview."""
    server = start_server(scenario, "C")
    # A server that has been up a while: both workers have read every status once.
    wait_until_all_read(client(scenario, server, "bench-viewer"), scenario.path("overview"))
    guarded(scenario, ("overview_clients",), lambda: measure_overview_clients(scenario, server))
    stop_server(scenario, server)


def record_worker_memory(scenario: Scenario) -> None:
    peaks = {
        f"{server['label']}:{pid}": values.get("VmHWM", 0.0)
        for server in scenario.servers
        for pid, values in server["workers"].items()
    }
    if not peaks:
        not_measured(scenario, "worker_memory", "no worker was found")
        return
    by_server = {
        server["label"]: max((v.get("VmHWM", 0.0) for v in server["workers"].values()), default=0)
        for server in scenario.servers
    }
    peak = max(peaks.values())
    after_sign_ins = (
        scenario.rows.get("overview_clients", {})
        .get("values", {})
        .get("peak_mib_after_sign_ins", 0.0)
    )
    record(
        scenario,
        "worker_memory",
        f"{peak:.0f} MiB (" + ", ".join(f"server {k}: {v:.0f}" for k, v in by_server.items()) + ")",
        peak <= 200,
        {"peak_mib": peak, "by_worker": peaks, "by_server": by_server},
        note="VmHWM of each gunicorn worker when its server stopped; A served the long work "
        "(plan, rehearsal, diffs, drift), B the job page, C the Overview load"
        + (
            f"; on C the peak was already {after_sign_ins:.0f} MiB when the measured window "
            f"began, right after {scenario.args.clients} sign-ins (argon2id takes 19 MiB per hash, "
            "one at a time per worker)"
            if after_sign_ins
            else ""
        ),
    )


# --- output ---------------------------------------------------------------------------------


def machine(pg: workload.ScaleDatabases) -> dict:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kib = int(line.split()[1])
    with pg._admin.connect() as connection:  # type: ignore[union-attr]
        postgresql = connection.execute(sa.text("SHOW server_version")).scalar_one()
    packages = ("flask", "flask-migrate", "alembic", "sqlalchemy", "gunicorn", "locust")
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(memory_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "postgresql": postgresql,
        "platform": platform.platform(),
        "packages": {name: metadata.version(name) for name in packages},
        "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
    }


def report(scenario: Scenario, host: dict, seconds: float) -> dict:
    args = scenario.args
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command_line(args),
        "duration_s": round(seconds, 1),
        "machine": host,
        "load_average_at_end": [round(value, 2) for value in os.getloadavg()],
        "settings": {
            "revisions": args.revisions,
            "environments": args.environments,
            "clients": args.clients,
            "seconds": args.seconds,
            "samples": args.samples,
            "smoke": args.smoke,
            "branches": scenario.graph.branches,
            "merges": scenario.graph.merges,
            "plan_pending": scenario.roles.plan_pending,
            "gunicorn": "docker/entrypoint.sh: 2 workers x 4 threads (gthread)",
        },
        "environments": [
            {"name": t.name, "backend": t.backend, "revision": t.revision_id, "pending": t.pending}
            for t in scenario.targets
        ],
        "paths": PATHS,
        "baselines": scenario.baselines,
        "servers": scenario.servers,
        "rows": [scenario.rows.get(key) or missing(scenario, key) for key in ROWS],
    }


def missing(scenario: Scenario, key: str) -> dict:
    not_measured(scenario, key, "the benchmark did not get that far")
    return scenario.rows[key]


def command_line(args: argparse.Namespace) -> str:
    if args.smoke:
        return f"{COMMAND} --smoke"
    defaults = parse_args([])
    changed = [
        f"--{name} {getattr(args, name)}"
        for name in ("revisions", "environments", "clients", "seconds")
        if getattr(args, name) != getattr(defaults, name)
    ]
    return " ".join([COMMAND, *changed])


def markdown(data: dict) -> str:
    host, settings = data["machine"], data["settings"]
    backends: dict[str, int] = {}
    for environment in data["environments"]:
        if environment["backend"] != "silent":
            backends[environment["backend"]] = backends.get(environment["backend"], 0) + 1
    lines = [
        "# Benchmarks: the scale scenario",
        "",
        f"Written by `{data['command']}` on {data['generated_at']} (the run took "
        f"{data['duration_s'] / 60:.1f} min). How it measures: `bench/README.md`.",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {host['cpu_model']}, {host['cores']} cores |",
        f"| RAM | {host['ram_gib']} GiB |",
        f"| Python | {host['python']} |",
        f"| PostgreSQL | {host['postgresql']} |",
        f"| system | {host['platform']} |",
        "| packages | " + ", ".join(f"{k} {v}" for k, v in host["packages"].items()) + " |",
        f"| load average | {' '.join(map(str, host['load_average_at_start']))} at the start, "
        f"{' '.join(map(str, data['load_average_at_end']))} at the end |",
        "",
        f"Workload: {settings['revisions']:,} revisions ({settings['branches']} branches, "
        f"{settings['merges']} merges), each creating a table; {settings['environments']} "
        "environments ("
        + ", ".join(f"{count} {backend}" for backend, count in sorted(backends.items()))
        + ") plus one on a port that accepts connections and never answers; "
        f"{settings['clients']} clients for {settings['seconds']:g} s; served by "
        f"{settings['gunicorn']}.",
        "",
        "| row | dashboard | what a person runs instead | target | met |",
        "|---|---|---|---|---|",
    ]
    for row in data["rows"]:
        met = {True: "met", False: "**not met**", None: "—"}[row["met"]]
        lines.append(
            f"| {row['label']} | {row['figure']} | {row['baseline'] or '—'} | {row['target']} "
            f"| {met} |"
        )
    notes = [f"- {row['label']}: {row['note']}" for row in data["rows"] if row["note"]]
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"


def write_outputs(data: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "benchmarks.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (folder / "benchmarks.md").write_text(markdown(data))
    say(f"wrote {folder / 'benchmarks.md'} and {folder / 'benchmarks.json'}")


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a small run (30 revisions)")
    parser.add_argument("--revisions", type=int, help="revisions (default 3,000)")
    parser.add_argument("--environments", type=int, help="environments (default 30)")
    parser.add_argument("--clients", type=int, help="concurrent clients (default 50)")
    parser.add_argument("--seconds", type=float, help="measured seconds under load (default 60)")
    parser.add_argument("--samples", type=int, help="sequential requests per warm figure")
    parser.add_argument("--plan-pending", type=int, default=1000, help="steps of the plan rows")
    parser.add_argument("--slow-timeout", type=float, default=1800.0, help="seconds per long step")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--verbose", action="store_true", help="print tracebacks")
    args = parser.parse_args(argv)
    sizes = (30, 3, 2, 3.0, 3) if args.smoke else (3000, 30, 50, 60.0, 100)
    for name, default in zip(
        ("revisions", "environments", "clients", "seconds", "samples"), sizes, strict=True
    ):
        if getattr(args, name) is None:
            setattr(args, name, default)
    args.plan_pending = min(args.plan_pending, args.revisions // 2)
    if args.revisions < 4 or args.environments < 2 or args.clients < 1 or args.samples < 1:
        parser.error("need --revisions >= 4, --environments >= 2, --clients and --samples >= 1")
    if args.seconds <= 0:
        parser.error("--seconds must be above 0")
    return args


def measure(scenario: Scenario) -> None:
    guarded(scenario, ("overview_warm", "history"), lambda: measure_current_and_history(scenario))
    guarded(scenario, ("plan_preview", "cli_diff"), lambda: measure_offline_sql(scenario))
    guarded(scenario, ("cli_diff",), lambda: measure_scratch_builds(scenario))
    guarded(scenario, ("cli_diff",), lambda: measure_cli_diff(scenario))
    phase_fresh_server(scenario)
    phase_restarted_server(scenario)
    phase_overview_load(scenario)
    record_worker_memory(scenario)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, side_by_side._exit_on_sigterm)
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="mdash-scale-"))
    try:
        with ExitStack() as cleanup:  # undone in reverse: servers, databases, then the folder
            scenario = prepare(args, folder, cleanup)
            host = machine(scenario.pg)
            measure(scenario)
            data = report(scenario, host, time.monotonic() - started)
    except side_by_side.CommandFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    write_outputs(data, args.output_dir)
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
