"""`flask dashboard …`: thin commands over the same services as the pages."""

from __future__ import annotations

import getpass
import json
import os
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import click
from flask import Flask
from flask.cli import AppGroup
from sqlalchemy.engine import make_url

import config
from dashboard import demo
from dashboard.cli_errors import reports_errors
from dashboard.diffs.service import plan_schema_diff
from dashboard.drift import service as drift
from dashboard.environments import (
    EnvironmentStatus,
    environment_named,
    get_board,
    get_project,
    scaffold,
)
from dashboard.errors import ConfigurationError
from dashboard.jobs import service as jobs
from dashboard.plans.service import build_plan
from dashboard.progress import Progress, no_progress
from dashboard.users import service as users
from dashboard.users.models import Role

dashboard_cli = AppGroup("dashboard", help="Environments, revisions and the demo.")


def init_app(app: Flask) -> None:
    """Register the `flask dashboard` command group."""
    app.cli.add_command(dashboard_cli)


def _age(checked_at: datetime | None) -> str:
    if checked_at is None:
        return "never"
    seconds = (datetime.now(UTC) - checked_at).total_seconds()
    return f"{checked_at:%H:%M:%S} UTC ({seconds:.1f}s ago)"


def _status_words(status: EnvironmentStatus) -> str:
    if status.status == "behind":
        return f"behind ({status.behind})"
    return str(status.status)


def _current_words(status: EnvironmentStatus) -> str:
    if status.status in ("unreachable", "not_configured", "unknown"):
        return "-"
    return ", ".join(revision[:12] for revision in status.current) or "(base)"


@dashboard_cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per environment.")
@reports_errors
def status_command(as_json: bool) -> None:
    """Show which revision each environment is at and what is pending."""
    statuses = get_board().refresh()
    if as_json:
        click.echo(json.dumps([status.as_dict() for status in statuses], indent=2))
        return
    project = get_project()
    click.echo(f"{project.name}: {project.script_location}")
    rows = [("ENVIRONMENT", "STATUS", "PENDING", "CURRENT", "CHECKED")]
    for status in statuses:
        rows.append(
            (
                status.name,
                _status_words(status),
                str(status.behind),
                _current_words(status),
                _age(status.checked_at),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    for status in statuses:
        if status.error:
            click.echo(f"{status.name}: {status.error}")


@dashboard_cli.command("history")
@click.option("--json", "as_json", is_flag=True, help="Print the revisions as JSON.")
@reports_errors
def history_command(as_json: bool) -> None:
    """List every revision, newest first, with branch/merge marks and where it is applied."""
    board = get_board()
    graph = board.graph()
    statuses = board.refresh()
    applied = {status.name: graph.ancestors(status.current) for status in statuses}
    entries = []
    for revision in graph.revisions:
        marks = [
            mark
            for mark, present in (
                ("head", revision.is_head),
                ("branch point", revision.is_branch_point),
                ("merge", revision.is_merge_point),
                ("base", revision.is_base),
            )
            if present
        ]
        entries.append(
            {
                "id": revision.id,
                "message": revision.message,
                "down_revisions": list(revision.down_revisions),
                "next_revisions": list(revision.next_revisions),
                "created": revision.created,
                "branch_labels": list(revision.branch_labels),
                "marks": marks,
                "applied_in": [name for name, ids in applied.items() if revision.id in ids],
            }
        )
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    for entry in entries:
        parents = ", ".join(entry["down_revisions"]) or "<base>"
        # Branch labels first, in their own parentheses, as `alembic history` prints them.
        labels = f" ({', '.join(entry['branch_labels'])})" if entry["branch_labels"] else ""
        marks = labels + (f" ({', '.join(entry['marks'])})" if entry["marks"] else "")
        where = f"  [{', '.join(entry['applied_in'])}]" if entry["applied_in"] else ""
        click.echo(f"{parents} -> {entry['id']}{marks}, {entry['message']}{where}")


def _find_user(username: str):
    user = users.get_user(username=username)
    if user is None:
        raise click.ClickException(f"There is no user called {username!r}.")
    return user


@dashboard_cli.command("create-user")
@click.argument("username")
@click.option(
    "--role",
    type=click.Choice([role.value for role in Role]),
    default=Role.VIEWER.value,
    show_default=True,
)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@reports_errors
def create_user_command(username: str, role: str, password_stdin: bool) -> None:
    """Create a user (the password is prompted for, or read from stdin)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    users.create_user(username=username, password=password, role=role, actor=None)
    click.echo(f"Created {username} ({role}).")


@dashboard_cli.command("set-role")
@click.argument("username")
@click.argument("role", type=click.Choice([role.value for role in Role]))
@reports_errors
def set_role_command(username: str, role: str) -> None:
    """Give a user another role."""
    users.set_role(user=_find_user(username), role=role, actor=None)
    click.echo(f"{username} is now {role}.")


@dashboard_cli.command("deactivate")
@click.argument("username")
@reports_errors
def deactivate_command(username: str) -> None:
    """Deactivate a user; their sessions stop working at once."""
    users.deactivate(user=_find_user(username), actor=None)
    click.echo(f"{username} is deactivated.")


def _cli_actor() -> str:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = str(os.getuid())
    return f"cli:{name}"


def _run_job_from_cli(environment: str, operation: str, target: str) -> None:

    fingerprint = None
    if operation != "stamp":
        # The job must run exactly these steps: the runner re-checks them under the lock. The
        # terminal shows steps, not SQL, so none is rendered (the page and rollouts render it).
        plan = build_plan(
            project=get_project(),
            environment=environment_named(environment),
            direction=operation,
            target=target,
            render=False,
        )
        fingerprint = plan.fingerprint
        click.echo(
            f"plan: {operation} {environment} from {', '.join(plan.from_revisions) or 'base'}"
            f" through {', '.join(plan.revision_ids) or 'nothing'} (fingerprint {fingerprint})"
        )
    job = jobs.request_job(
        environment_name=environment,
        operation=operation,
        target=target,
        actor=None,
        actor_name=_cli_actor(),
        expected_fingerprint=fingerprint,
        submit=False,
        rendered_plan=False,
    )
    click.echo(f"job #{job.id}: {operation} {environment} to {target}")
    finished = jobs.run_job(job_id=job.id, on_line=click.echo)
    now_at = ", ".join(finished.to_revisions or []) or "base"
    click.echo(f"job #{finished.id} {finished.state}; now at {now_at}")
    if finished.state != "succeeded":
        raise click.ClickException(finished.error or f"job #{finished.id} {finished.state}")


@dashboard_cli.command("upgrade")
@click.argument("environment")
@click.option("--target", default="head", show_default=True, help="A revision, head or +N.")
@reports_errors
def upgrade_command(environment: str, target: str) -> None:
    """Upgrade an environment through the job service (same rules, lock and audit as the web)."""
    _run_job_from_cli(environment, "upgrade", target)


@dashboard_cli.command("downgrade")
@click.argument("environment")
@click.option("--target", required=True, help="A revision, -N or base.")
@reports_errors
def downgrade_command(environment: str, target: str) -> None:
    """Downgrade an environment through the job service."""
    _run_job_from_cli(environment, "downgrade", target)


@dashboard_cli.command("stamp")
@click.argument("environment")
@click.argument("revision")
@reports_errors
def stamp_command(environment: str, revision: str) -> None:
    """Record REVISION in the version table without running scripts (recovery)."""
    _run_job_from_cli(environment, "stamp", revision)


@dashboard_cli.command("jobs")
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as JSON.")
@click.option("--environment", default=None, help="Only this environment's jobs.")
@reports_errors
def jobs_command(as_json: bool, environment: str | None) -> None:
    """List recent jobs, newest first."""

    recent = jobs.list_jobs(environment=environment, limit=50)
    if as_json:
        click.echo(json.dumps([job.describe() for job in recent], indent=2))
        return
    for job in recent:
        click.echo(
            f"#{job.id:<5} {job.environment:<12} {job.operation:<9} {job.requested_target:<14} "
            f"{job.state:<11} {job.requested_by}  {job.created_at:%Y-%m-%d %H:%M:%S}"
        )


@contextmanager
def _progress_bar() -> Iterator[Progress]:
    """A progress callable that draws a bar on a terminal (gone when done); silent when piped."""
    if not sys.stdout.isatty():
        yield no_progress
        return
    # Imported on a terminal only: rich costs every other command ~30 ms of start-up.
    from rich import progress as rich_progress

    columns = (
        rich_progress.TextColumn("{task.description}"),
        rich_progress.BarColumn(),
        rich_progress.MofNCompleteColumn(),
        rich_progress.TimeElapsedColumn(),
    )
    with rich_progress.Progress(*columns, transient=True) as bar:
        shown = bar.add_task("starting", total=None)

        def report(done: int, total: int, text: str) -> None:
            bar.update(shown, completed=done, total=total or None, description=text)

        yield report


def _print_changes(diff) -> None:
    for line in diff.text_lines():
        click.echo(f"  {line}")


@dashboard_cli.command("diff")
@click.argument("environment")
@click.option("--target", default="head", show_default=True, help="The revision to upgrade to.")
@reports_errors
def diff_command(environment: str, target: str) -> None:
    """Print what an upgrade would run: steps, SQL, warnings and the schema diff."""

    project = get_project()
    env = environment_named(environment)
    with _progress_bar() as progress:
        plan = build_plan(
            project=project, environment=env, direction="upgrade", target=target, progress=progress
        )
    click.echo(
        f"{env.name}: upgrade to {target}, {len(plan.steps)} step(s), "
        f"fingerprint {plan.fingerprint}"
    )
    click.echo(plan.sql)
    click.echo("warnings:" if plan.warnings else "warnings: none")
    for warning in plan.warnings:
        click.echo(f"  {warning}")
    if not plan.is_empty:
        click.echo("schema diff:")
        with _progress_bar() as progress:
            changes = plan_schema_diff(
                project=project, environment=env, plan=plan, progress=progress
            )
        _print_changes(changes)


@dashboard_cli.command("drift")
@click.argument("environment", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per environment.")
@reports_errors
def drift_command(environment: str | None, as_json: bool) -> None:
    """Compare live schemas with their recorded revisions; exit 1 when drift is found.

    Each report is kept as the environment's newest, so the Overview shows it too.
    """

    project = get_project()
    names = [environment] if environment else project.names
    with _progress_bar() as progress:
        reports = drift.check_environments(
            environment_names=names, checked_by=_cli_actor(), progress=progress
        )
    if as_json:
        click.echo(json.dumps([report.as_dict() for report in reports], indent=2))
    else:
        for report in reports:
            click.echo(
                f"{report.environment}: {report.status}"
                + (f" ({report.reason})" if report.reason else "")
            )
            if report.differences is not None and not report.differences.is_empty:
                _print_changes(report.differences)
    if any(report.status == "drift" for report in reports):
        sys.exit(1)


@dashboard_cli.command("demo")
@reports_errors
def demo_command() -> None:
    """Create or reset the demo: the dashboard's store and three SQLite environments."""
    for line in demo.build_demo():
        click.echo(line)


@dashboard_cli.command("init")
@click.argument("app_folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--env",
    "pairs",
    multiple=True,
    metavar="NAME=URL",
    help="An environment, in promotion order (repeat it); asked for when none is given. "
    "Relative SQLite paths are relative to the environments file; ${VAR} takes a variable.",
)
@click.option(
    "--migrations",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The app's script directory (default: APP_FOLDER/migrations, or the one found below).",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write it (default: APP_FOLDER/environments.yaml); never over a file.",
)
@click.option("--project", "project_name", help="A display name (default: the folder's name).")
@reports_errors
def init_command(
    app_folder: Path,
    pairs: tuple[str, ...],
    migrations: Path | None,
    output: Path | None,
    project_name: str | None,
) -> None:
    """Write an environments.yaml for your Flask-Migrate app in APP_FOLDER; print what next."""
    app_folder = app_folder.resolve()
    output = (output or app_folder / "environments.yaml").absolute()
    if output.exists():  # before asking anything; writing checks again
        raise click.ClickException(
            f"{output} exists already: it is left as it is (remove it, or write another with "
            "--output)"
        )
    if migrations is not None:
        script_location = scaffold.check_script_directory(migrations)
    else:
        script_location = scaffold.find_script_directory(app_folder)
    click.echo(f"script directory: {script_location}")
    environments = [scaffold.parse_environment(pair) for pair in pairs] or _ask_environments()
    project = scaffold.write_environments_file(
        output=output,
        project=project_name or app_folder.name,
        script_location=script_location,
        environments=environments,
    )
    click.echo(f"wrote {output}: {', '.join(project.names)}")
    for environment in project.environments:
        if environment.url is None:
            click.echo(f"  {environment.name}: {environment.not_configured_reason} (yet)")
        elif environment.url.password:
            click.echo(
                f"  {environment.name}: its URL holds a password, now in {output.name}: prefer "
                f"url: ${{{environment.name.upper().replace('-', '_').replace('.', '_')}"
                "_DATABASE_URL}, set in the dashboard's environment"
            )
        elif environment.dialect == "sqlite" and not Path(environment.url.database or "").exists():
            click.echo(
                f"  {environment.name}: {environment.url.database} does not exist yet "
                "(the dashboard migrates databases, it does not create them)"
            )
    _print_next_commands(output)


def _ask_environments() -> list[scaffold.NewEnvironment]:
    """Ask for environments in promotion order until an empty name."""
    click.echo("Environments in promotion order (dev first); an empty name ends the list.")
    environments: list[scaffold.NewEnvironment] = []
    while True:
        name = click.prompt("Environment name", default="", show_default=False).strip()
        if not name:
            if environments:
                return environments
            click.echo("At least one environment is needed.")
            continue
        try:
            scaffold.check_name(name)
            url = click.prompt(f"Database URL of {name} (or ${{VARIABLE}})").strip()
            environments.append(scaffold.new_environment(name, url))
        except ConfigurationError as error:
            click.echo(f"Not taken: {error}")


def _print_next_commands(environments_file: Path) -> None:
    """Print the commands that set up this project's store and serve it, as run from here."""
    flask = Path(sys.executable).with_name("flask")
    if flask.is_relative_to(Path.cwd()):
        flask = flask.relative_to(Path.cwd())
    store_url = os.environ.get("DASHBOARD_DATABASE_URL")
    if store_url:
        shown = make_url(store_url).render_as_string(hide_password=True)
        store = f"{shown} (DASHBOARD_DATABASE_URL)"
    else:
        store = make_url(config.default_store_files(environments_file)[0]).database
    click.echo(f"Its dashboard store: {store}.")
    click.echo(f"Next, in {shlex.quote(str(Path.cwd()))}:")
    for line in (
        f"export ENVIRONMENTS_FILE={shlex.quote(str(environments_file))}",
        f"{flask} db upgrade                                  # creates the store",
        f"{flask} dashboard create-user admin --role admin    # asks for a password",
        f"{flask} run",
    ):
        click.echo(f"  {line}")
