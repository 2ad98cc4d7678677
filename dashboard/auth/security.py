"""Security headers, CSRF, and the rule that every page needs a signed-in user."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, Response, flash, redirect, request, url_for
from flask_login import current_user
from flask_wtf.csrf import CSRFProtect

from dashboard.auth import login_manager
from dashboard.htmx import HTMX_CDN_URL, HTMX_SRI, is_htmx_request
from dashboard.users import service as users

csrf = CSRFProtect()

# Endpoints anyone may reach; every other one needs a signed-in user.
PUBLIC_ENDPOINTS = {"auth.login", "health.healthz", "static"}


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
    csrf.init_app(app)
    login_manager.init_app(app)
    policy = content_security_policy(app.config["HTMX_URL"])

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

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", policy)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if current_user and current_user.is_authenticated:
            response.headers.setdefault("Cache-Control", "no-store")
        return response
