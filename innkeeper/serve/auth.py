"""Who may read call records and run the model admin: one bearer token for scripts, until users and roles.

Every route under `/admin/` and `/api/` depends on `require_token`: with no `INNKEEPER_ADMIN_TOKEN` set
they are disabled (403) — a caller's name and number never leave the server by default — and a missing or
wrong token is refused (401). Refusals are JSON, never a stack trace.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from innkeeper.core.settings import Settings


class Refused(Exception):
    """An authorization refusal, answered as JSON by the handler `install_refusals` registers."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def require_token(settings: Settings) -> Callable[[Request], None]:
    """A FastAPI dependency: the request carries `Authorization: Bearer <INNKEEPER_ADMIN_TOKEN>`."""

    def authorize(request: Request) -> None:
        if not settings.admin_token:
            raise Refused(403, "admin API disabled: set INNKEEPER_ADMIN_TOKEN to enable it (model admin, call records)")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.admin_token.encode()):
            raise Refused(401, "missing or wrong bearer token")

    return authorize


def install_refusals(app: Any) -> None:
    """Answer every `Refused` as `{"error": ...}` with its status (and a Bearer challenge on 401)."""

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)
