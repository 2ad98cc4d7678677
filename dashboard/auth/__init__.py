"""Sign-in, the signed-in user, and the permission checks every view goes through."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import abort, request
from flask_login import LoginManager, current_user

from dashboard.users.models import Role

login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.login_message = "Please sign in to continue."
login_manager.login_message_category = "info"

F = TypeVar("F", bound=Callable[..., Any])


def role_required(role: Role) -> Callable[[F], F]:
    """Let through signed-in users whose role includes `role`; 403 (audited) for the others."""

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not current_user.is_authenticated:
                return login_manager.unauthorized()
            if not current_user.has_role(role):
                from dashboard.audit import service as audit

                audit.record_alone(
                    action="access.denied",
                    actor=current_user,
                    details={
                        "outcome": "refused",
                        "required_role": role.value,
                        "method": request.method,
                        "path": request.path,
                    },
                )
                abort(403, description=f"This needs the {role.value} role or higher.")
            return view(*args, **kwargs)

        wrapper.required_role = role  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorator
