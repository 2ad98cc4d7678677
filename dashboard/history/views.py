"""History and Revision pages."""

from __future__ import annotations

from flask import Blueprint, Response, abort, current_app, render_template, request

from dashboard.auth import role_required
from dashboard.environments import get_board, get_project, shared_statuses
from dashboard.history.layout import ROW_HEIGHT, cached_layout
from dashboard.htmx import is_htmx_request
from dashboard.target.adapter import RevisionGraph
from dashboard.templating import script_source, source_formatter
from dashboard.users.models import Role

bp = Blueprint("history", __name__)

PAGE_SIZE = 100


def _applied_where(graph: RevisionGraph) -> dict[str, set[str]]:
    """Map each environment name to the revisions applied there (from the stored statuses)."""
    return {status.name: graph.ancestors(status.current) for status in shared_statuses()}


@bp.get("/history")
@role_required(Role.VIEWER)
def history() -> str:
    """Every revision newest first, with the graph drawn beside it, a page at a time."""
    try:
        page = max(1, int(request.args.get("page", "1")))
    except ValueError:
        abort(400, description="The page number must be a whole number.")
    board = get_board()
    # Parsing thousands of scripts takes seconds after a start: say so instead of waiting.
    wait = current_app.config["FIRST_PAINT_SECONDS"]
    graph = board.graph() if is_htmx_request() else board.graph_if_ready(wait=wait)
    if graph is None:
        return render_template(
            "history/history.html", project=get_project(), graph=None, since=board.graph_asked_at
        )
    start = (page - 1) * PAGE_SIZE
    if start and start >= len(graph):
        abort(404, description=f"There is no page {page}: the history has {len(graph)} revisions.")
    layout = cached_layout(graph)[start : start + PAGE_SIZE]
    rows = [(graph.get(row.revision_id), row) for row in layout]
    template = "history/_rows.html" if is_htmx_request() else "history/history.html"
    return render_template(
        template,
        project=get_project(),
        graph=graph,
        rows=rows,
        applied=_applied_where(graph),
        page=page,
        has_more=start + PAGE_SIZE < len(graph),
        row_height=ROW_HEIGHT,
    )


@bp.get("/revisions/<revision_id>")
@role_required(Role.VIEWER)
def revision(revision_id: str) -> str:
    """One revision: message, date, parents and children, file, highlighted source."""
    graph = get_board().graph()
    found = graph.get(revision_id)
    if found is None:
        abort(404, description=f"No revision “{revision_id}” is in the script directory.")
    applied = _applied_where(graph)
    return render_template(
        "history/revision.html",
        project=get_project(),
        graph=graph,
        revision=found,
        source_html=script_source(found.path),
        applied_in=[name for name, ids in applied.items() if found.id in ids],
    )


@bp.get("/assets/highlight.css")
@role_required(Role.VIEWER)
def highlight_css() -> Response:
    """The colours of highlighted source, served as a stylesheet (no inline styles)."""
    response = Response(source_formatter.get_style_defs(".source"), mimetype="text/css")
    response.cache_control.max_age = 3600
    return response
