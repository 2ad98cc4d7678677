"""Sign in, sign out, and a user's own account (password)."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user, login_required, login_user, logout_user

from dashboard.error_pages import shows_errors_with
from dashboard.errors import DashboardError
from dashboard.limits import limit_of
from dashboard.users import service as users

bp = Blueprint("auth", __name__)


def safe_next(target: str | None) -> str:
    """Return `target` if it is a path on this site, else the overview (no open redirects)."""
    fallback = url_for("environments.overview")
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return fallback
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return fallback
    return target


def _login_with_error(error: DashboardError) -> str:
    """The sign-in form again, with the username as typed and why it did not work."""
    username = request.form.get("username", "")
    return render_template(
        "auth/login.html",
        next_url=request.values.get("next"),
        # An over-long name is not echoed back: the refusal says how long it was.
        username=username if len(username) <= limit_of("username") else "",
        error=str(error),
    )


@bp.route("/login", methods=["GET", "POST"])
@shows_errors_with(_login_with_error)
def login() -> ResponseReturnValue:
    """Show the sign-in form; sign in with a username and password."""
    next_url = request.values.get("next")
    if request.method == "GET":
        if current_user.is_authenticated:
            return redirect(safe_next(next_url))
        return render_template("auth/login.html", next_url=next_url, username="")
    user = users.authenticate(
        username=request.form.get("username", ""),
        password=request.form.get("password", ""),
        remote_addr=request.remote_addr or "unknown",
    )
    login_user(user)
    return redirect(safe_next(next_url))


@bp.post("/logout")
@login_required
def logout() -> ResponseReturnValue:
    """Sign out: this session's row goes, so a copy of its cookie opens nothing any more."""
    users.sign_out(user=current_user._get_current_object())
    logout_user()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))


def _account_with_error(error: DashboardError) -> str:
    """The password form again, saying why the password was not changed."""
    return render_template("auth/account.html", error=str(error))


@bp.route("/account", methods=["GET", "POST"])
@login_required
@shows_errors_with(_account_with_error)
def account() -> ResponseReturnValue:
    """Change your own password."""
    if request.method == "GET":
        return render_template("auth/account.html", error=None)
    new_password = request.form.get("new_password", "")
    if new_password != request.form.get("confirm_password", ""):
        error = "The two new passwords are not the same."
        return render_template("auth/account.html", error=error), 400
    users.change_password(
        user=current_user._get_current_object(),
        current_password=request.form.get("current_password", ""),
        new_password=new_password,
    )
    flash("Your password is changed. Other sessions are signed out.", "info")
    return redirect(url_for("auth.account"))
