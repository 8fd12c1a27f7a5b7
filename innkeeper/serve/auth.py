"""Who is asking: signed-in staff (a session cookie) or a script (the admin bearer token), and may they.

Every dashboard page, `/api/*` and `/admin/*` route depends on `require(...)`:
- a bearer token (`Authorization: Bearer <INNKEEPER_ADMIN_TOKEN>`) acts as an admin; a wrong one is 401;
- otherwise the `innkeeper_session` cookie (HttpOnly, SameSite=Strict, Secure under TLS) names a server-side
  session (`innkeeper.core.accounts`); none → 401 (pages redirect to /login);
- `role="admin"` refuses operators with 403;
- a state-changing request signed in by cookie must echo the session's CSRF token (`X-CSRF-Token` header,
  which htmx sends, or a `csrf_token` form field) and, when the browser names an Origin, come from this
  server or `INNKEEPER_ALLOWED_ORIGINS` — else 403.
Refusals are JSON, never a stack trace. Failed sign-ins are counted per user name and per client address.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse, RedirectResponse

from innkeeper.core.accounts import Accounts
from innkeeper.core.settings import Settings
from innkeeper.serve.limits import SlidingWindow

SESSION_COOKIE = "innkeeper_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ROLE_RANK = {"operator": 0, "admin": 1}


class Refused(Exception):
    """An authorization refusal, answered as JSON by the handler `install_refusals` registers."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class SignInRequired(Refused):
    """No session: pages send the browser to the sign-in page, APIs answer 401."""

    def __init__(self, message: str = "sign in, or send the admin bearer token"):
        super().__init__(401, message)


@dataclass(frozen=True)
class Principal:
    """Who a request acts as. `csrf_token` is None for bearer-token scripts (no cookie, nothing to forge)."""

    name: str
    role: str
    csrf_token: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def require(role: str = "operator") -> Callable[[Request], Awaitable[Principal]]:
    """A FastAPI dependency: the request's principal, refused unless it holds `role` (and, by cookie, CSRF).
    The app's settings are read from `app.state.settings`."""

    async def guard(request: Request) -> Principal:
        settings: Settings = request.app.state.settings
        principal = await identify(request, settings)
        if principal is None:
            raise SignInRequired()
        if ROLE_RANK[principal.role] < ROLE_RANK[role]:
            raise Refused(403, f"{role}s only: {principal.name} is an {principal.role}")
        if request.method not in SAFE_METHODS and principal.csrf_token is not None:
            check_origin(request, settings)
            await _check_csrf(request, principal.csrf_token)
        request.state.principal = principal
        return principal

    return guard


# Route parameters: `principal: Staff` (any signed-in user or the token) or `principal: AdminOnly`.
Staff = Annotated[Principal, Depends(require("operator"))]
AdminOnly = Annotated[Principal, Depends(require("admin"))]


async def identify(request: Request, settings: Settings) -> Principal | None:
    """The bearer token's admin, the session cookie's user, or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme:
        if not settings.admin_token:
            raise Refused(401, "token access is off: set INNKEEPER_ADMIN_TOKEN, or sign in")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.admin_token.encode()):
            raise Refused(401, "missing or wrong bearer token")
        return Principal("token", "admin")
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    accounts: Accounts = request.app.state.accounts
    signed_in = await asyncio.to_thread(accounts.session, cookie)
    if signed_in is None:
        return None
    return Principal(signed_in.account.username, signed_in.account.role, signed_in.csrf_token)


def check_origin(request: Any, settings: Settings) -> None:
    """A browser's Origin must be this server or an allowed one (requests and websockets alike)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return  # not a browser, or a same-origin GET
    own = {f"{scheme}://{request.headers.get('host', '')}" for scheme in ("http", "https")}
    if origin not in own and origin not in settings.allowed_origins:
        raise Refused(403, f"origin {origin!r} is not allowed")


async def _check_csrf(request: Request, expected: str) -> None:
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        sent = str((await request.form()).get(CSRF_FIELD, ""))
    if not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise Refused(403, "missing or wrong CSRF token: reload the page")


class LoginThrottle:
    """At most `limit` failed sign-ins per user name and per client address in a sliding `window_s`."""

    def __init__(self, limit: int, window_s: float = 900.0) -> None:
        self._failures = SlidingWindow(limit, window_s)

    def check(self, *keys: str) -> None:
        """Refuse (429) while any key has used up its attempts."""
        for key in keys:
            if self._failures.full(key):
                wait = self._failures.retry_after_s(key)
                raise Refused(429, f"too many failed sign-ins: try again in {wait} s")

    def failed(self, *keys: str) -> None:
        for key in keys:
            self._failures.add(key)

    def succeeded(self, key: str) -> None:
        self._failures.clear(key)


def install_refusals(app: Any) -> None:
    """Answer every `Refused` as `{"error": ...}`; a page's missing sign-in as a redirect to /login."""

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> Any:
        wants_page = "text/html" in request.headers.get("accept", "") and request.method == "GET"
        if isinstance(exc, SignInRequired) and wants_page and not request.url.path.startswith(("/api/", "/admin/")):
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)
