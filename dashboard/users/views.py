"""The Users page: admins create users, change roles, deactivate, sign users out everywhere."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user

from dashboard.auth import role_required
from dashboard.error_pages import shows_errors_with
from dashboard.errors import DashboardError
from dashboard.extensions import db
from dashboard.users import service as users
from dashboard.users.models import Role, User

bp = Blueprint("users", __name__, url_prefix="/users")


def _page(error: str | None = None, created: tuple[str, str] | None = None) -> str:
    return render_template(
        "users/users.html",
        users=users.list_users(),
        roles=[role.value for role in Role],
        error=error,
        created=created,
    )


def _page_with_error(error: DashboardError) -> str:
    """The Users page again, saying why the change was not made."""
    return _page(error=str(error))


def _user_or_404(user_id: int) -> User:
    user = db.session.get(User, user_id)
    if user is None:
        abort(404, description="There is no such user.")
    return user


@bp.get("")
@role_required(Role.ADMIN)
def index() -> ResponseReturnValue:
    """Every user with their role and state."""
    return _page()


@bp.post("")
@role_required(Role.ADMIN)
@shows_errors_with(_page_with_error)
def create() -> ResponseReturnValue:
    """Create a user; a blank password gets a generated one, shown once."""
    password = request.form.get("password", "") or users.generate_password()
    username = request.form.get("username", "")
    users.create_user(
        username=username,
        password=password,
        role=request.form.get("role", ""),
        actor=current_user._get_current_object(),
    )
    generated = not request.form.get("password")
    return _page(created=(username.strip(), password if generated else ""))


@bp.post("/<int:user_id>/role")
@role_required(Role.ADMIN)
@shows_errors_with(_page_with_error)
def change_role(user_id: int) -> ResponseReturnValue:
    """Give a user another role."""
    user = _user_or_404(user_id)
    users.set_role(
        user=user, role=request.form.get("role", ""), actor=current_user._get_current_object()
    )
    flash(f"{user.username} is now {user.role}.", "info")
    return redirect(url_for("users.index"))


@bp.post("/<int:user_id>/deactivate")
@role_required(Role.ADMIN)
@shows_errors_with(_page_with_error)
def deactivate(user_id: int) -> ResponseReturnValue:
    """Deactivate a user; their sessions end at once."""
    user = _user_or_404(user_id)
    users.deactivate(user=user, actor=current_user._get_current_object())
    flash(f"{user.username} is deactivated and signed out.", "info")
    return redirect(url_for("users.index"))


@bp.post("/<int:user_id>/sign-out")
@role_required(Role.ADMIN)
def sign_out_everywhere(user_id: int) -> ResponseReturnValue:
    """End every session of a user."""
    user = _user_or_404(user_id)
    users.sign_out_everywhere(user=user, actor=current_user._get_current_object())
    flash(f"{user.username} is signed out everywhere.", "info")
    return redirect(url_for("users.index"))
