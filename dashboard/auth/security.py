"""Security headers, CSRF, bounds on what a request may carry, and the rule that every page
needs a signed-in user (whose session still has its row in the store)."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, Response, flash, g, redirect, request, url_for
from flask_login import current_user
from flask_wtf.csrf import CSRFProtect

from dashboard import limits
from dashboard.auth import login_manager
from dashboard.errors import ConfigurationError
from dashboard.htmx import HTMX_CDN_URL, HTMX_SRI, is_htmx_request
from dashboard.users import service as users

csrf = CSRFProtect()

# Endpoints anyone may reach; every other one needs a signed-in user.
PUBLIC_ENDPOINTS = {"auth.login", "health.healthz", "health.readyz", "static"}


def content_security_policy(htmx_url: str) -> str:
    """Allow our own origin, plus the pinned htmx CDN URL with its SRI hash."""
    scripts = ["'self'"]
    parts = urlsplit(htmx_url)
    if parts.scheme in ("http", "https"):
        scripts.append(htmx_url)
        if htmx_url == HTMX_CDN_URL:
            scripts.append(f"'{HTMX_SRI}'")
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src {' '.join(scripts)}",
            "style-src 'self'",
            "img-src 'self' data:",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def init_app(app: Flask) -> None:
    """Turn on CSRF checks, the sign-in requirement and the security headers."""
    _check_max_content_length(app)
    csrf.init_app(app)
    login_manager.init_app(app)
    policy = content_security_policy(app.config["HTMX_URL"])
    # Forms show the same limits as `maxlength`, a courtesy: the server enforces them.
    app.add_template_global(limits.FIELD_LIMITS, "field_limits")

    @login_manager.unauthorized_handler
    def unauthorized():
        target = url_for("auth.login", next=request.full_path.rstrip("?"))
        if is_htmx_request():
            # A swap would put the sign-in page inside a fragment: send the whole page there.
            return Response(status=401, headers={"HX-Redirect": target})
        flash(login_manager.login_message, "info")
        return redirect(target)

    @login_manager.user_loader
    def load_user(session_id: str):
        return users.load_user(session_id)

    @app.before_request
    def require_sign_in():
        if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
            return None
        if not current_user.is_authenticated:
            return login_manager.unauthorized()
        return None

    @app.before_request
    def bound_posted_fields():
        # After the CSRF check and the sign-in rule: only a real form of ours gets this far.
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            limits.check_fields(request.form.items(multi=True))

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", policy)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        # Whoever the request loaded; asking current_user here would query the store again,
        # after the error handlers, where a store outage could only become a bare 500.
        user = g.get("_login_user")
        if user is not None and user.is_authenticated:
            response.headers.setdefault("Cache-Control", "no-store")
        return response


def _check_max_content_length(app: Flask) -> None:
    """Refuse a MAX_CONTENT_LENGTH that is not a positive number of bytes, naming the setting."""
    value = app.config.get("MAX_CONTENT_LENGTH")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(
            f"DASHBOARD_MAX_CONTENT_LENGTH must be a positive number of bytes, not {value!r}"
        )
