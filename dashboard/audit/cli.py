"""`flask dashboard audit …`: verify the hash chain and export events."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click
from flask.cli import AppGroup

from dashboard.audit import service as audit
from dashboard.cli_errors import reports_errors

audit_cli = AppGroup("audit", help="The audit log: verify its hash chain, export its events.")


@audit_cli.command("verify")
@click.option(
    "--expect-head",
    metavar="SEQ:HASH",
    help="A head noted outside the store (the dashboard.audit log) that must still be there.",
)
@click.option(
    "--anchors",
    "anchor_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The anchor file to check against (default: AUDIT_ANCHOR_FILE).",
)
@click.option("--no-anchors", is_flag=True, help="Do not check against an anchor file.")
@reports_errors
def verify_command(expect_head: str | None, anchor_path: Path | None, no_anchors: bool) -> None:
    """Check every event's hash and link, the signed checkpoints and the anchored heads; exit 1
    on a problem."""
    try:
        expected = audit.parse_head(expect_head) if expect_head else None
    except audit.InvalidAuditFilter as error:
        raise click.BadParameter(str(error), param_hint="--expect-head") from error
    path = None if no_anchors else (anchor_path or audit.anchor_file())
    anchors = audit.read_anchors(path) if path is not None else None
    result = audit.verify(expect_head=expected, anchors=anchors)
    if not result.ok:
        raise click.ClickException(f"audit log damaged: {result.problem}")
    click.echo(f"audit log intact: {result.checked} events")
    if anchors is None:
        click.echo("not checked against an anchor file (AUDIT_ANCHOR_FILE is off)")
    elif anchors.newest is None:
        click.echo(f"no anchored head yet in {anchors.path}")
    else:
        click.echo(
            f"checked against {len(anchors.heads)} anchored heads in {anchors.path} "
            f"(newest seq {anchors.newest})"
        )
    if result.head:  # last: the line to note elsewhere
        click.echo(f"head {result.head[0]}:{result.head[1]}")


@audit_cli.command("export")
@click.option("--format", "export_format", type=click.Choice(["csv", "json"]), required=True)
@click.option("--actor", help="Only events by this user name.")
@click.option("--action", help="Only events with this action, e.g. login.failed.")
@click.option("--environment", help="Only events about this environment.")
@click.option("--since", metavar="ISO", help="Only events at or after this UTC date/time.")
@click.option(
    "--until",
    metavar="ISO",
    help="Only events before this UTC time (a date: through that day).",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write to this file instead of standard output.",
)
@reports_errors
def export_command(
    export_format: str,
    actor: str | None,
    action: str | None,
    environment: str | None,
    since: str | None,
    until: str | None,
    output: Path | None,
) -> None:
    """Export the matching events, oldest first, as CSV or JSON."""
    try:
        filters = audit.parse_filters(
            actor=actor, action=action, environment=environment, since=since, until=until
        )
    except audit.InvalidAuditFilter as error:
        raise click.UsageError(str(error)) from error
    rows = audit.export_rows(**filters)
    chunks: Iterator[str] = audit.to_csv(rows) if export_format == "csv" else audit.to_json(rows)
    if output is None:
        for chunk in chunks:
            click.echo(chunk, nl=False)
        return
    with output.open("w", encoding="utf-8", newline="") as file:
        file.writelines(chunks)
