"""The operator dashboard: server-rendered pages (Jinja2 + htmx, vendored in `static/`), mounted on the
serving app by `install_web`. Routes live in `pages.py`; who may see and change what in `serve/auth.py`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.staticfiles import StaticFiles

from innkeeper.core.settings import Settings
from innkeeper.serve.web.jobs import NightlyJobs
from innkeeper.serve.web.pages import web_router

STATIC = Path(__file__).parent / "static"


def install_web(app: Any, settings: Settings) -> None:
    """Mount the dashboard's pages and its static files (htmx, the style sheet)."""
    app.state.jobs = NightlyJobs(settings)
    app.include_router(web_router(settings))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
