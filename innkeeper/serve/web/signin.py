"""Signing in and out of the dashboard, and the staff who may (admins add and disable users on /users;
sessions and throttling live in `innkeeper/serve/auth.py`)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from innkeeper.core.accounts import AccountError, Accounts
from innkeeper.core.db.schema import STAFF_ROLES
from innkeeper.core.settings import Settings
from innkeeper.serve.auth import SESSION_COOKIE, AdminOnly, LoginThrottle, Principal, Staff, check_origin
from innkeeper.serve.web.common import audit, reauthenticate, render


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

    # ------------------------------------------------------------------ staff (admins)
    @router.get("/users", response_class=HTMLResponse)
    async def users(request: Request, principal: AdminOnly) -> Response:
        return await _users_page(request, principal)

    @router.post("/users")
    async def add_user(
        request: Request,
        principal: AdminOnly,
        username: Annotated[str, Form()] = "",
        role: Annotated[str, Form()] = "operator",
        new_password: Annotated[str, Form()] = "",
        password: Annotated[str, Form()] = "",
    ) -> Response:
        """A new operator or admin; the admin re-enters their own password (an open browser is not enough)."""
        await reauthenticate(request, principal, password)
        try:
            account = await asyncio.to_thread(request.app.state.accounts.add, username, new_password, role)
        except AccountError as err:
            return await _users_page(request, principal, error=str(err), status=422)
        await audit(request, principal.name, "user.add", account.username, role=account.role)
        return RedirectResponse("/users", status_code=303)

    @router.post("/users/{username}/disable")
    async def disable_user(username: str, request: Request, principal: AdminOnly) -> Response:
        """Stop a user signing in and end their sessions at once; an admin cannot lock themselves out."""
        if username == principal.name:
            raise HTTPException(409, "you cannot disable your own account")
        try:
            account = await asyncio.to_thread(request.app.state.accounts.disable, username)
        except AccountError as err:
            raise HTTPException(404, str(err)) from None
        await audit(request, principal.name, "user.disable", account.username)
        return RedirectResponse("/users", status_code=303)

    @router.get("/")
    async def home() -> Response:
        return RedirectResponse("/calls", status_code=303)

    return router


async def _users_page(
    request: Request, principal: Principal, *, error: str | None = None, status: int = 200
) -> Response:
    accounts = await asyncio.to_thread(request.app.state.accounts.list)
    page = render(request, "users.html", principal, accounts=accounts, roles=STAFF_ROLES, error=error)
    page.status_code = status
    return page


def _safe_next(target: str) -> str:
    """Only a path on this server (never //evil.example or a full URL) after signing in."""
    return target if target.startswith("/") and not target.startswith("//") else "/calls"


def _behind_tls(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("X-Forwarded-Proto") == "https"
