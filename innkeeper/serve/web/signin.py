"""Signing in and out of the dashboard (sessions and throttling live in `innkeeper/serve/auth.py`)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from innkeeper.core.accounts import Accounts
from innkeeper.core.settings import Settings
from innkeeper.serve.auth import SESSION_COOKIE, LoginThrottle, Staff, check_origin
from innkeeper.serve.web.common import audit, render


def signin_router(settings: Settings) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    throttle = LoginThrottle(settings.login_attempts)

    # ------------------------------------------------------------------ sign-in
    @router.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request, next: str = "/calls") -> Response:
        return render(request, "login.html", None, next=_safe_next(next), error=None)

    @router.post("/login")
    async def login(
        request: Request,
        username: Annotated[str, Form()] = "",
        password: Annotated[str, Form()] = "",
        next: Annotated[str, Form()] = "/calls",
    ) -> Response:
        check_origin(request, settings)
        client = request.client.host if request.client else "unknown"
        keys = (f"user:{username.strip().lower()}", f"address:{client}")
        throttle.check(*keys)
        accounts: Accounts = request.app.state.accounts
        account = await asyncio.to_thread(accounts.verify, username, password)
        if account is None:
            throttle.failed(*keys)
            await audit(request, username.strip().lower()[:64] or "?", "sign_in.failed", address=client)
            page = render(request, "login.html", None, next=_safe_next(next), error="Wrong user name or password.")
            page.status_code = 401
            return page
        throttle.succeeded(keys[0])
        token, _ = await asyncio.to_thread(accounts.open_session, account)
        await audit(request, account.username, "sign_in", address=client)
        response = RedirectResponse(_safe_next(next), status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=int(settings.session_hours * 3600),
            httponly=True,
            samesite="strict",
            secure=_behind_tls(request),
        )
        return response

    @router.post("/logout")
    async def logout(request: Request, principal: Staff) -> Response:
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            await asyncio.to_thread(request.app.state.accounts.close_session, token)
        await audit(request, principal.name, "sign_out")
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    @router.get("/")
    async def home() -> Response:
        return RedirectResponse("/calls", status_code=303)

    return router


def _safe_next(target: str) -> str:
    """Only a path on this server (never //evil.example or a full URL) after signing in."""
    return target if target.startswith("/") and not target.startswith("//") else "/calls"


def _behind_tls(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("X-Forwarded-Proto") == "https"
