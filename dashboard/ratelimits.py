"""The web tier's rate limits (Flask-Limiter), bound to the app with the pages.

Apart from the extensions every process needs (dashboard.extensions): a CLI command serves no
request, so it neither imports nor initialises the limiter.
"""

from __future__ import annotations

from flask import current_app
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import current_user


def _per_user() -> str:
    """Rate-limit a signed-in person as themselves, whichever address they come from."""
    if current_user and current_user.is_authenticated:
        return f"user:{current_user.id}"
    return f"address:{get_remote_address()}"


# Storage, prefix and switch come from the app's RATELIMIT_* settings (memory:// or REDIS_URL).
limiter = Limiter(key_func=_per_user)

# Work that builds scratch databases or runs the managed app's scripts: one budget per person,
# shared by every such page (EXPENSIVE_WORK_LIMIT, e.g. "20 per minute").
expensive_work = limiter.shared_limit(
    lambda: current_app.config["EXPENSIVE_WORK_LIMIT"], scope="expensive-work"
)
