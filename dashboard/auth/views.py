"""Sign in, sign out, and a user's own account (password)."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user, login_required, login_user, logout_user

from dashboard.audit import service as audit
from dashboard.errors import InvalidCredentials, LoginThrottled, UserError
from dashboard.extensions import db
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


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    """Show the sign-in form; sign in with a username and password."""
    next_url = request.values.get("next")
    if request.method == "GET":
        if current_user.is_authenticated:
            return redirect(safe_next(next_url))
        return render_template("auth/login.html", next_url=next_url, username="")
    username = request.form.get("username", "")
    try:
        user = users.authenticate(
            username=username,
            password=request.form.get("password", ""),
            remote_addr=request.remote_addr or "unknown",
        )
    except LoginThrottled as error:
        page = render_template(
            "auth/login.html", next_url=next_url, username=username, error=str(error)
        )
        return page, 429, {"Retry-After": str(error.retry_after)}
    except InvalidCredentials as error:
        page = render_template(
            "auth/login.html", next_url=next_url, username=username, error=str(error)
        )
        return page, 401
    login_user(user)
    return redirect(safe_next(next_url))


@bp.post("/logout")
@login_required
def logout() -> ResponseReturnValue:
    """Sign out of this session."""
    audit.record(action="logout", actor=current_user, details={"outcome": "signed out"})
    db.session.commit()
    logout_user()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))


@bp.route("/account", methods=["GET", "POST"])
@login_required
def account() -> ResponseReturnValue:
    """Change your own password."""
    error = None
    if request.method == "POST":
        new_password = request.form.get("new_password", "")
        if new_password != request.form.get("confirm_password", ""):
            error = "The two new passwords are not the same."
        else:
            try:
                users.change_password(
                    user=current_user._get_current_object(),
                    current_password=request.form.get("current_password", ""),
                    new_password=new_password,
                )
            except UserError as problem:
                error = str(problem)
            else:
                # The token rotated: sign this session in again with the new one.
                login_user(current_user._get_current_object())
                flash("Your password is changed. Other sessions are signed out.", "info")
                return redirect(url_for("auth.account"))
    status = 400 if error else 200
    return render_template("auth/account.html", error=error), status
