"""Sign-in, the signed-in user, and the permission checks every view goes through."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import abort, request
from flask_login import LoginManager, current_user

from dashboard.audit import service as audit
from dashboard.users.models import Role

logger = logging.getLogger(__name__)
# Methods that only read: refusing one is logged, not audited, because GET never writes.
READ_METHODS = ("GET", "HEAD", "OPTIONS")

login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.login_message = "Please sign in to continue."
login_manager.login_message_category = "info"

F = TypeVar("F", bound=Callable[..., Any])


def role_required(role: Role, *, why: str | None = None) -> Callable[[F], F]:
    """Let through signed-in users whose role includes `role`; 403 for the others, saying `why`
    the route needs it when given.

    A refused change (POST) is audited; a refused read is logged, so that a GET never writes.
    """
    refusal = f"This needs the {role.value} role or higher."
    if why:
        refusal = f"{why}: this needs the {role.value} role or higher."

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not current_user.is_authenticated:
                return login_manager.unauthorized()
            if not current_user.has_role(role):
                if request.method in READ_METHODS:
                    logger.warning(
                        "access denied: %s (%s) %s %s needs the %s role",
                        current_user.username,
                        current_user.role,
                        request.method,
                        request.path,
                        role.value,
                    )
                else:
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
                abort(403, description=refusal)
            return view(*args, **kwargs)

        wrapper.required_role = role  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorator
