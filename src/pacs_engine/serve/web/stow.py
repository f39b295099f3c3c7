"""STOW-RS routes (being written)."""

from __future__ import annotations

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    """The STOW-RS routes."""
    return []
