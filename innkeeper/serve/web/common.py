"""What every dashboard page shares: the templates, rendering with the signed-in user and the CSRF token,
the call services, and writing the audit log (from a worker thread: never on the event loop calls share)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from innkeeper.core.audit import AuditLog
from innkeeper.serve.auth import CSRF_FIELD, Principal, Refused

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")

# (database, settings, call id) → what the nightly run would learn from that call: an object with `verdict`,
# `replaced` (placeholder → count) and `turns` (each with turn_id, role, text, status, reading) — the shape of
# `tuning.data.preview.CallPreview`, which `innkeeper serve` passes in (this layer does not import tuning).
TrainingView = Callable[[Any, Any, str], Any]


def render(request: Request, name: str, principal: Principal | None, **context: Any) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(
        request,
        name,
        {"user": principal, "csrf_field": CSRF_FIELD, "csrf": principal.csrf_token if principal else "", **context},
    )


def services(request: Request) -> Any:
    """The server's `CallServices` (runtime, speech models, live calls, metrics)."""
    return request.app.state.services


async def audit(request: Request, actor: str, action: str, target: str = "", **detail: Any) -> None:
    log: AuditLog = request.app.state.audit
    await asyncio.to_thread(log.record, actor, action, target, **detail)


async def reauthenticate(request: Request, principal: Principal, password: str) -> None:
    """Sensitive changes (models, staff) need the admin's password again: a signed-in browser left open is not
    enough. Scripts with the bearer token have no password to give and use the admin API instead."""
    if principal.csrf_token is None:
        raise Refused(403, "scripts make this change through the admin API or the CLI")
    account = await asyncio.to_thread(request.app.state.accounts.verify, principal.name, password)
    if account is None:
        await audit(request, principal.name, "reauthenticate.failed")
        raise Refused(403, "wrong password")
