"""Lay the revision graph out in lanes, one row per revision, newest first (like `git log --graph`).

Each row carries the segments to draw in its own cell, so a page of rows can be rendered (or
lazily appended) without the rest of the graph.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

from dashboard.target.adapter import RevisionGraph

ROW_HEIGHT = 36
LANE_WIDTH = 16


@dataclass(frozen=True)
class GraphRow:
    """The drawing of one revision's row: its node lane and the lines through the row."""

    revision_id: str
    lane: int
    width: int  # lanes in use in this row
    # (from_lane, to_lane) pairs drawn from the top edge to the middle, and middle to bottom.
    top: tuple[tuple[int, int], ...]
    bottom: tuple[tuple[int, int], ...]

    @property
    def svg_width(self) -> int:
        return max(1, self.width) * LANE_WIDTH

    @staticmethod
    def x(lane: int) -> int:
        return lane * LANE_WIDTH + LANE_WIDTH // 2


def layout(graph: RevisionGraph) -> list[GraphRow]:
    """Assign every revision a lane; return one row per revision in the graph's order."""
    lanes: list[str | None] = []  # which revision each lane is waiting for
    rows: list[GraphRow] = []
    for revision in graph.revisions:
        waiting = [index for index, wanted in enumerate(lanes) if wanted == revision.id]
        if waiting:
            lane = waiting[0]
        else:
            lane = _free_lane(lanes)
            lanes[lane] = revision.id
        top = []
        for index, wanted in enumerate(lanes):
            if wanted is None or (wanted == revision.id and index not in waiting):
                continue
            # Children waiting for this revision converge on its lane; others pass straight.
            top.append((index, lane if wanted == revision.id else index))

        for index in waiting[1:]:
            lanes[index] = None
        parents = [parent for parent in revision.down_revisions if parent in graph]
        lanes[lane] = parents[0] if parents else None
        bottom = [(lane, lane)] if parents else []
        for parent in parents[1:]:
            if parent in lanes:
                target = lanes.index(parent)
            else:
                target = _free_lane(lanes)
                lanes[target] = parent
            bottom.append((lane, target))
        for index, wanted in enumerate(lanes):
            if wanted is not None and index != lane and (lane, index) not in bottom:
                bottom.append((index, index))
        while lanes and lanes[-1] is None:
            lanes.pop()
        width = max([lane + 1, *(max(a, b) + 1 for a, b in top + bottom)])
        rows.append(GraphRow(revision.id, lane, width, tuple(top), tuple(bottom)))
    return rows


def _free_lane(lanes: list[str | None]) -> int:
    for index, wanted in enumerate(lanes):
        if wanted is None:
            return index
    lanes.append(None)
    return len(lanes) - 1


_cache: weakref.WeakKeyDictionary[RevisionGraph, list[GraphRow]] = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()


def cached_layout(graph: RevisionGraph) -> list[GraphRow]:
    """Return the layout of `graph`, computed once per parsed graph."""
    with _cache_lock:
        rows = _cache.get(graph)
        if rows is None:
            rows = _cache[graph] = layout(graph)
        return rows
