"""The operator dashboard: server-rendered pages (Jinja2 + htmx, vendored in `static/`), mounted on the
serving app by `install_web`. Routes by job: `signin.py`, `calls.py` (live, history, review, a call from the
browser), `operations.py` (bookings, hotel facts, health, tuning, models, audit); who may see and change what
in `serve/auth.py`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.staticfiles import StaticFiles

from innkeeper.core.settings import Settings
from innkeeper.serve.web.calls import calls_router
from innkeeper.serve.web.jobs import NightlyJobs
from innkeeper.serve.web.operations import operations_router
from innkeeper.serve.web.signin import signin_router

STATIC = Path(__file__).parent / "static"


def install_web(app: Any, settings: Settings) -> None:
    """Mount the dashboard's pages and its static files (htmx, the style sheet)."""
    app.state.jobs = NightlyJobs(settings)
    for router in (signin_router(settings), calls_router(settings), operations_router(settings)):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
