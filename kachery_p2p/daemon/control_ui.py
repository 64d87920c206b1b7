"""Routes added to the control endpoint by the ui work: store listing and removal, transfers with cancel."""

from __future__ import annotations

from aiohttp import web

from .control_store import add_store_routes


def add_ui_routes(app: web.Application, service: object) -> None:
    """Register every route of this module family on the control endpoint's application."""
    add_store_routes(app, service)
