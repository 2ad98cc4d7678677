"""Keep database passwords out of everything a person or a log can read."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

from sqlalchemy.engine import URL

MASK = "***"
# user:password@ inside any URL-looking text, whatever produced it.
_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):[^@\s]*@")


def redact(text: str, urls: Iterable[URL | None] = ()) -> str:
    """Return `text` with the passwords of `urls`, and any user:password@ pair, masked."""
    for url in urls:
        if url is None or not url.password:
            continue
        password = str(url.password)
        for form in {password, quote(password, safe=""), quote_plus(password)}:
            if len(form) >= 3:
                text = text.replace(form, MASK)
    return _CREDENTIALS.sub(lambda match: f"{match['scheme']}{match['user']}:{MASK}@", text)
