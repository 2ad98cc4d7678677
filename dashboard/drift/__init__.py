"""Drift: live schemas against what their recorded revisions say they should be."""

from __future__ import annotations

from flask import Flask, current_app

from dashboard.drift.board import DriftBoard

__all__ = ["DriftBoard", "get_drift_board", "init_app"]


def init_app(app: Flask) -> None:
    """Attach an empty drift board; nothing is checked until someone asks."""
    app.extensions["dashboard.drift_board"] = DriftBoard()


def get_drift_board() -> DriftBoard:
    """Return the current app's drift board."""
    return current_app.extensions["dashboard.drift_board"]
