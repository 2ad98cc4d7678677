"""Progress of long work (scratch builds, rehearsals, schema diffs, drift checks, plan renders).

Long work takes an optional `progress` callable and calls it as it goes:
`progress(done, total, text)` — e.g. `progress(3, 12, "step 4 of 12: a1b2c3 add orders")`.
`total` may be 0 while it is not known yet. A background task stores what it is told (the page
shows "step i of N, elapsed"); a CLI command draws a progress bar on a terminal; everything else
passes nothing.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int, str], None]


def no_progress(done: int, total: int, text: str) -> None:
    """The progress of work nobody is watching: nothing to report."""
