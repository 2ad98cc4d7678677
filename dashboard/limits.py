"""Length limits on the text people send: one table, one check, one message naming the field.

Services call `check_length` where a value enters the store, so the CLI meets the same limits as
the pages; the web tier also runs `check_fields` over every posted form before its view, so no
field reaches a view unchecked, whichever feature owns it.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import MappingProxyType

from dashboard.errors import FieldTooLong

# Characters each free-text field may hold, by its form and service name.
FIELD_LIMITS = MappingProxyType(
    {
        "username": 80,
        # Argon2 hashes a long password in the same time; the bound is for the request.
        "password": 1_024,
        "current_password": 1_024,
        "new_password": 1_024,
        "confirm_password": 1_024,
        "reason": 2_000,
        "ticket_url": 500,
        "override_justification": 2_000,
        "comment": 2_000,
        "target": 255,
        "environment": 64,
    }
)
# Any other posted field (hidden inputs, the CSRF token, a choice) is short: bound it anyway.
DEFAULT_FIELD_LIMIT = 1_000

_LABELS = {
    "ticket_url": "ticket link",
    "override_justification": "override justification",
    "current_password": "current password",
    "new_password": "new password",
    "confirm_password": "repeated new password",
}


def limit_of(field: str) -> int:
    """Return how many characters `field` may hold."""
    return FIELD_LIMITS.get(field, DEFAULT_FIELD_LIMIT)


def check_length(field: str, value: str | None, limit: int | None = None) -> None:
    """Refuse `value` when it is longer than `field`'s limit, naming the field and the limit."""
    if value is None:
        return
    limit = limit_of(field) if limit is None else limit
    # A browser counts a line break in a <textarea maxlength> as one character, then sends two.
    length = len(value.replace("\r\n", "\n"))
    if length > limit:
        label = _LABELS.get(field, field.replace("_", " "))
        raise FieldTooLong(
            f"The {label} is {length:,} characters long; the limit is {limit:,}. "
            "Nothing was saved."
        )


def check_fields(fields: Iterable[tuple[str, str]]) -> None:
    """Check every (name, value) pair against its field's limit."""
    for name, value in fields:
        check_length(name, value)
