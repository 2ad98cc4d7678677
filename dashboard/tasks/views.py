"""Follow a background task: its progress while it runs, then its result (GET only reads)."""

from __future__ import annotations

from flask import Blueprint, Response, abort, render_template
from flask.typing import ResponseReturnValue
from markupsafe import Markup

from dashboard.auth import role_required
from dashboard.htmx import is_htmx_request, stop_polling
from dashboard.tasks import flows
from dashboard.tasks import service as tasks
from dashboard.tasks.flows import TaskView
from dashboard.users.models import Role

bp = Blueprint("tasks", __name__)


def fragment(view: TaskView) -> str:
    """The part of a page that shows a task: its progress (polling) or its result."""
    if view.task.kind == flows.DRIFT_CHECK:
        # The drift table is the result: it polls while any check is under way.
        return render_template(
            "drift/_table.html",
            rows=flows.drift_rows(),
            drift_tasks=flows.drift_tasks(),
            finished_check=None if view.active else view,
        )
    return render_template("tasks/_task.html", view=view)


@bp.get("/tasks/<int:task_id>")
@role_required(Role.VIEWER)
def task(task_id: int) -> ResponseReturnValue:
    """A task's progress, or its result once it has ended (an htmx poll then stops: 286)."""
    found = tasks.get_task(task_id=task_id)
    if found is None:
        abort(404, description=f"There is no task #{task_id}.")
    view = flows.view_of(found)
    if not is_htmx_request():
        return render_template("tasks/task.html", view=view, fragment=Markup(fragment(view)))
    response = Response(fragment(view))
    still_polling = view.active or (found.kind == flows.DRIFT_CHECK and flows.drift_tasks())
    return response if still_polling else stop_polling(response)
