"""Which steps of a long plan a page shows: `?page=N`, DIFF_PAGE_STEPS steps a page."""

from __future__ import annotations

import math
from dataclasses import dataclass

from flask import abort, current_app, request

# Steps a diff or plan page shows at once; a longer plan is paged.
DEFAULT_PAGE_STEPS = 50


@dataclass(frozen=True)
class Paging:
    """Which steps of a long plan this page shows."""

    page: int
    pages: int
    size: int
    total: int

    @property
    def start(self) -> int:
        return (self.page - 1) * self.size

    @property
    def stop(self) -> int:
        return min(self.total, self.page * self.size)


def paging(total: int) -> Paging:
    """The page of `total` steps the request asks for (the last one past the end; 400 if bad)."""
    size = max(1, int(current_app.config.get("DIFF_PAGE_STEPS", DEFAULT_PAGE_STEPS)))
    raw = request.args.get("page", "1").strip() or "1"
    if not raw.isdigit() or int(raw) < 1:
        abort(400, description=f"The page must be a whole number from 1, not “{raw[:20]}”.")
    pages = max(1, math.ceil(total / size))
    return Paging(page=min(int(raw), pages), pages=pages, size=size, total=total)
