"""htmx: the one pinned version, and helpers for htmx requests and responses."""

from __future__ import annotations

from flask import Response, request

# One version everywhere: this CDN URL, its SRI hash, and package.json's copy for browser tests.
HTMX_VERSION = "2.0.11"
HTMX_CDN_URL = f"https://cdn.jsdelivr.net/npm/htmx.org@{HTMX_VERSION}/dist/htmx.min.js"
HTMX_SRI = "sha384-2OatzQy1H+Zd/IIrjr1TcuDGqLXeHhbooAyJY1KdQMKnr4LZ22k31GBLdYKHmVjg"

# Tells htmx to stop polling the element that made the request.
STOP_POLLING = 286


def is_htmx_request() -> bool:
    """Return True when the current request was made by htmx (and wants a fragment)."""
    return request.headers.get("HX-Request") == "true"


def stop_polling(response: Response) -> Response:
    """Answer an htmx poll so that it stops."""
    response.status_code = STOP_POLLING
    return response


def into_main(response: Response) -> Response:
    """Make htmx put this answer (a refusal, say) in the page's main area, whatever asked."""
    response.headers["HX-Retarget"] = "main"
    response.headers["HX-Reswap"] = "innerHTML"
    return response
