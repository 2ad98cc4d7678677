"""`flask dashboard rollouts`: list rollouts, through the same service as the pages."""

from __future__ import annotations

import json

import click
from flask import Flask

from dashboard.cli import dashboard_cli
from dashboard.cli_errors import reports_errors
from dashboard.rollouts import service as rollouts
from dashboard.rollouts.models import RolloutState


@click.command("rollouts")
@click.option("--json", "as_json", is_flag=True, help="Print the rollouts as JSON.")
@click.option(
    "--state",
    type=click.Choice([state.value for state in RolloutState]),
    default=None,
    help="Only rollouts in this state.",
)
@click.option("--environment", default=None, help="Only this environment's rollouts.")
@reports_errors
def rollouts_command(as_json: bool, state: str | None, environment: str | None) -> None:
    """List rollouts, newest first (an overdue one shows as expired)."""
    listed = rollouts.list_rollouts(state=state, environment=environment)
    if as_json:
        click.echo(json.dumps([rollout.describe() for rollout in listed], indent=2))
        return
    if not listed:
        click.echo("no rollouts" + (" match" if state or environment else ""))
    for rollout in listed:
        votes = f"{len(rollout.approvals)}/{rollout.approvals_required}"
        click.echo(
            f"#{rollout.id:<5} {rollout.environment:<12} {rollout.direction:<9} "
            f"{rollout.target_revision:<14} {rollout.current_state:<10} {votes:<5} "
            f"{rollout.requested_by}  {rollout.created_at:%Y-%m-%d %H:%M:%S}"
        )


def init_app(app: Flask) -> None:
    """Add `rollouts` to the `flask dashboard` group."""
    dashboard_cli.add_command(rollouts_command)
