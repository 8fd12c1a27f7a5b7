"""Staff accounts: users with a role, argon2id password hashes, and server-side sign-in sessions.

The dashboard (`innkeeper/serve/web/`) signs people in through `Accounts`; `innkeeper users add|list|disable`
manages them. A session is a random token in an HttpOnly cookie; the database keeps only its SHA-256 and a
per-session CSRF token, so a copy of the database opens nothing. Disabling a user ends their sessions.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from innkeeper.core.db.database import Database
from innkeeper.core.db.schema import STAFF_ROLES, User, WebSession, utcnow

USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,63}")
MIN_PASSWORD_LENGTH = 10
_HASHER = PasswordHasher()  # argon2id with the library's current recommended cost
# Verified when a username is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))


class AccountError(ValueError):
    """A request about accounts that cannot be met: a bad name, role or password, an unknown user."""


@dataclass(frozen=True)
class Account:
    """A staff member, without their password hash."""

    id: int
    username: str
    role: str
    disabled: bool
    created_at: datetime

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class SignedIn:
    """A live session: who, and the token their state-changing requests must echo (CSRF)."""

    account: Account
    csrf_token: str


class Accounts:
    """Users and their sessions in the product database."""

    def __init__(self, db: Database, *, session_lifetime: timedelta = timedelta(hours=12)) -> None:
        self._db = db
        self._lifetime = session_lifetime

    # ------------------------------------------------------------------ users
    def add(self, username: str, password: str, role: str) -> Account:
        """Create a user; raises AccountError for a bad name, role, short password or a taken name."""
        username = username.strip().lower()
        if not USERNAME.fullmatch(username):
            raise AccountError(f"username {username!r}: 2-64 of a-z, 0-9, '.', '_' or '-', starting alphanumeric")
        if role not in STAFF_ROLES:
            raise AccountError(f"role {role!r}: expected one of {', '.join(STAFF_ROLES)}")
        if len(password) < MIN_PASSWORD_LENGTH:
            raise AccountError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
        password_hash = _HASHER.hash(password)

        def work(session: Session) -> Account:
            if session.scalar(select(User.id).where(User.username == username)) is not None:
                raise AccountError(f"user {username!r} exists")
            user = User(username=username, password_hash=password_hash, role=role)
            session.add(user)
            session.flush()
            return _account(user)

        return self._db.transact(work)

    def list(self) -> list[Account]:
        def work(session: Session) -> list[Account]:
            return [_account(user) for user in session.scalars(select(User).order_by(User.username))]

        return self._db.transact(work, write=False)

    def disable(self, username: str) -> Account:
        """Stop a user signing in and end their open sessions."""

        def work(session: Session) -> Account:
            user = _user(session, username)
            user.disabled = True
            session.execute(delete(WebSession).where(WebSession.user_id == user.id))
            return _account(user)

        return self._db.transact(work)

    def verify(self, username: str, password: str) -> Account | None:
        """The account if the password is right and the user enabled; None otherwise (same cost either way)."""

        def work(session: Session) -> tuple[str, Account] | None:
            user = session.scalars(select(User).where(User.username == username.strip().lower())).first()
            return None if user is None else (user.password_hash, _account(user))

        found = self._db.transact(work, write=False)
        if not _password_matches(found[0] if found else _DUMMY_HASH, password) or found is None:
            return None
        return None if found[1].disabled else found[1]

    # ------------------------------------------------------------------ sessions
    def open_session(self, account: Account) -> tuple[str, SignedIn]:
        """A new session for `account`: the cookie's token (never stored) and what it signs in as."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)

        def work(session: Session) -> None:
            session.add(
                WebSession(
                    token_sha256=_digest(token),
                    user_id=account.id,
                    csrf_token=csrf,
                    expires_at=utcnow() + self._lifetime,
                )
            )

        self._db.transact(work)
        return token, SignedIn(account, csrf)

    def session(self, token: str) -> SignedIn | None:
        """Who holds `token`, or None when it is unknown, expired, or its user disabled."""

        def work(session: Session) -> SignedIn | None:
            row = session.get(WebSession, _digest(token))
            if row is None or row.expires_at <= utcnow():
                return None
            user = session.get(User, row.user_id)
            if user is None or user.disabled:
                return None
            return SignedIn(_account(user), row.csrf_token)

        return self._db.transact(work, write=False)

    def close_session(self, token: str) -> None:
        def work(session: Session) -> None:
            session.execute(delete(WebSession).where(WebSession.token_sha256 == _digest(token)))

        self._db.transact(work)


def _password_matches(password_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _user(session: Session, username: str) -> User:
    user = session.scalars(select(User).where(User.username == username.strip().lower())).first()
    if user is None:
        raise AccountError(f"no user {username!r}")
    return user


def _account(user: User) -> Account:
    return Account(user.id, user.username, user.role, bool(user.disabled), user.created_at)
