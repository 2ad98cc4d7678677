"""The dashboard's own store; tables arrive with the features that need them."""

from __future__ import annotations

from dashboard.extensions import db

__all__ = ["db"]
