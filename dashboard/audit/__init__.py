"""The audit log: append-only, hash-chained events with signed checkpoints of the head."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Wire the audit log into the app (store locking, CLI, page)."""
