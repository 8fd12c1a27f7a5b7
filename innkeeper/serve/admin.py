"""Keeps the serving process's model in step with the model registry: the start-up load, registry polling
(and, on PostgreSQL, the registry's announcements of a new serving version, which swap at once), and the
authenticated admin API (promote, roll back, list).

    GET  /admin/models                       the registry's versions and what this process serves
    POST /admin/models/{version_id}/promote  promote in the registry, then swap to it now
    POST /admin/models/rollback              roll the registry back, then swap to what serves there

Every endpoint wants `Authorization: Bearer <INNKEEPER_ADMIN_TOKEN>`; with no token configured the admin
API is off (403). A version that does not verify or load is refused: the current model keeps serving, the
registry marks the version `failed` (a `load_failed` event), `/healthz` shows the error, and polling never
retries it (a person promoting it again does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from agent.reply.wording import TextStreamer
from innkeeper.core.db.database import DatabaseUnavailable
from innkeeper.core.settings import Settings
from innkeeper.models.registry import ModelRegistry, ModelVersion, RegistryError
from innkeeper.models.slot import ModelLoadError, SwapInProgress, SwapResult, load_version_beside_calls
from innkeeper.serve.auth import AdminOnly, Principal, install_refusals, require
from innkeeper.serve.runtime import AgentRuntime

log = logging.getLogger(__name__)

ACTOR = "admin-api"
_DB_ERRORS = (SQLAlchemyError, DatabaseUnavailable)
NO_LLM = (
    "this server runs without a language model (template wording only), so there is no model to swap; "
    "start it with `innkeeper serve --llm` (INNKEEPER_VOICE_LLM=1)"
)


class AdminError(RuntimeError):
    """A model operation that was refused or failed, with the HTTP status that says which."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _Unreadable(Exception):
    """The registry could not be asked (database down): keep serving what serves."""


class ModelAdmin:
    """Which registry version this process serves (None = the base model), and the swaps that change it."""

    def __init__(self, settings: Settings, runtime: AgentRuntime, registry: ModelRegistry | None, *, llm_enabled: bool):
        self.settings = settings
        self.runtime = runtime
        self.slot = runtime.slot
        self.registry = registry
        self.llm_enabled = llm_enabled
        self.serving_id: str | None = None  # the registry version in the slot; None = the base
        # The last refused version and why (for /healthz): it stays until a person's promote or rollback
        # succeeds, so a fallback swap (start-up, polling) does not hide it.
        self.error: str | None = None
        self.last_swap: SwapResult | None = None
        self._failed: dict[str, str] = {}  # never retried by polling
        self._base_dir: Path | None = None
        self._base_version = runtime.llm.version if runtime.llm is not None else None
        self._lock = asyncio.Lock()  # one registry change + swap at a time; polling skips while held
        self._following: set[asyncio.Task[None]] = set()
        # What else keeps the cores busy during a call (speech recognition, synthesis): a load waits for gaps.
        self.also_busy: list[Callable[[], bool]] = []

    @classmethod
    def for_runtime(cls, settings: Settings, runtime: AgentRuntime, *, llm_enabled: bool) -> ModelAdmin:
        """The admin for a runtime, with the registry in its database (None, logged, if that fails)."""
        try:
            registry = ModelRegistry.from_settings(settings, db=runtime.db)
        except (RegistryError, *_DB_ERRORS) as err:
            log.error("model registry unavailable; serving the base model only: %s", err)
            registry = None
        return cls(settings, runtime, registry, llm_enabled=llm_enabled)

    # ------------------------------------------------------------------ start-up and polling
    async def startup(self) -> None:
        """Load the registry's serving version (or, failing that, the base) before the first call."""
        if not self.llm_enabled:
            return
        await asyncio.to_thread(self._base)  # imports the tuning code now, not in the middle of a call
        try:
            target = await self._registry_serving()
        except _Unreadable:
            target = None
        if target is not None:
            with contextlib.suppress(AdminError):  # logged, marked failed; the base serves instead
                await self._swap(target)
        if self.slot.current is None:
            try:
                await self._swap(None)
            except AdminError as err:  # no model at all: the server must not start as if it had one
                raise ModelLoadError(f"the base model {self._base()} could not be loaded: {err}") from None

    async def sync(self) -> SwapResult | None:
        """One poll: swap when the registry serves another version than this process (None: nothing to do)."""
        if not self.llm_enabled or self.registry is None or self._lock.locked():
            return None  # an admin operation is under way and will leave the process in step
        async with self._lock:  # read under the lock: an admin promote can never be undone by a stale read
            try:
                target = await self._registry_serving()
            except _Unreadable:
                return None  # not the same as "nothing promoted": keep what serves
            target_id = target.id if target is not None else None
            if target_id == self.serving_id or target_id in self._failed:
                return None
            try:
                return await self._swap(target)
            except AdminError:
                return None  # logged and recorded by _swap

    async def poll(self) -> None:
        """`sync` every `registry_poll_s` seconds, forever (a task the server cancels at shutdown)."""
        while True:
            await asyncio.sleep(self.settings.registry_poll_s)
            try:
                await self.sync()
            except Exception:  # polling must outlive any one bad round
                log.exception("model registry poll failed")

    def serving_changed(self, version_id: str) -> None:
        """The registry announced another serving version (a promotion or rollback by any process, on
        PostgreSQL): follow it now rather than at the next poll. Called on the event loop."""
        if not self.llm_enabled or self.registry is None:
            return
        log.info("the registry announced a new serving version: %s", version_id or "the base model")
        task = asyncio.get_running_loop().create_task(self._follow(version_id), name="model-registry-follow")
        self._following.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._following.discard)

    async def _follow(self, version_id: str) -> None:
        # An operation holding the lock now may have read the registry before this change committed: let it
        # finish, then read again. Whoever takes the lock after this notice reads the change itself.
        async with self._lock:
            pass
        try:
            await self.sync()
        except Exception:  # like a poll: one bad round must not end the following
            log.exception("following the registry's serving version %r failed", version_id)

    def start_polling(self) -> asyncio.Task[None] | None:
        if not self.llm_enabled or self.registry is None or self.settings.registry_poll_s <= 0:
            return None
        return asyncio.get_running_loop().create_task(self.poll(), name="model-registry-poll")

    # ------------------------------------------------------------------ admin operations
    async def promote(self, version_id: str, *, actor: str = ACTOR, reason: str = "") -> SwapResult:
        """Promote `version_id` in the registry and serve it from the next turn on."""
        registry = self._require_registry()
        async with self._lock:
            try:
                await asyncio.to_thread(registry.get, version_id)
            except RegistryError as err:
                raise AdminError(404, str(err)) from None
            except _DB_ERRORS as err:
                raise AdminError(503, f"the model registry is unreadable: {err}") from None
            version = await _registry_call(registry.promote, version_id, actor=actor[:32], reason=reason)
            if version.id == self.serving_id and self.slot.current is not None:
                self.error = None
                return SwapResult(self.slot.version, self.slot.version, load_s=0.0, pause_ms=0.0, reused=True)
            return await self._swap(version, acknowledged=True)

    async def rollback(self, *, actor: str = ACTOR, reason: str = "") -> SwapResult:
        """Roll the registry back and serve what it serves then (the base when nothing is promoted)."""
        registry = self._require_registry()
        async with self._lock:
            version = await _registry_call(registry.rollback, actor=actor[:32], reason=reason)
            return await self._swap(version, acknowledged=True)

    def status(self) -> dict[str, Any]:
        """What this process serves, for /healthz and GET /admin/models."""
        return {
            "llm": self.llm_enabled,
            "model_version": self.slot.version,
            "registry_version": self.serving_id,
            "model_error": self.error,
            "swapping": self.slot.swapping,
            "kept_previous": self.slot.previous.version if self.slot.previous is not None else None,
            "last_swap": asdict(self.last_swap) if self.last_swap is not None else None,
            "failed_versions": dict(self._failed),
        }

    async def versions(self) -> list[dict[str, Any]]:
        registry = self._require_registry(needs_llm=False)
        try:
            return [v.as_dict() for v in await asyncio.to_thread(registry.list)]
        except _DB_ERRORS as err:
            raise AdminError(503, f"the model registry is unreadable: {err}") from None

    # ------------------------------------------------------------------ internals
    async def _swap(self, target: ModelVersion | None, *, acknowledged: bool = False) -> SwapResult:
        """Swap the slot to `target` (None = the base); a refusal is recorded and raised as AdminError(422)."""
        name = target.id if target is not None else (self._base_version or "base")
        try:
            result = await self.slot.swap_to(name, self._loader(target))
        except SwapInProgress as err:
            raise AdminError(409, str(err)) from None
        except ModelLoadError as err:
            await self._refused(target, name, str(err))
            raise AdminError(422, f"{name} refused, {self.slot.version} keeps serving: {err}") from None
        self.serving_id = target.id if target is not None else None
        if target is None:
            self._base_version = result.version
        if acknowledged:
            self.error = None
        self.last_swap = result
        if target is not None:
            await self._record_loaded(target.id, result)
        return result

    async def _record_loaded(self, version_id: str, result: SwapResult) -> None:
        if self.registry is None:
            return
        detail = f"serving in place of {result.previous} (load {result.load_s:.2f} s, pause {result.pause_ms} ms)"
        try:
            await asyncio.to_thread(self.registry.record_event, version_id, "loaded", actor="server", detail=detail)
        except (RegistryError, *_DB_ERRORS) as err:  # the swap stands; only its history entry is missing
            log.warning("could not record the load of %s in the registry: %s", version_id, err)

    def _loader(self, target: ModelVersion | None) -> Callable[[], TextStreamer]:
        """Builds the model in the swap's worker thread: fetching, hashing and loading all stay off the loop."""
        kept = self.slot.kept(target.id if target is not None else (self._base_version or ""))
        if kept is not None:
            return lambda: kept
        serving, registry = self.slot.current, self.registry
        assert target is None or registry is not None  # a registry version came from it

        def load() -> TextStreamer:
            base = self._base()
            artifact = registry.local_artifact(target) if target is not None else None
            return load_version_beside_calls(
                base,
                artifact,
                version=target.id if target is not None else None,
                tokenizer_from=serving if getattr(serving, "path", None) == base else None,
                scratch=self.settings.home / "loading",
                busy=self.busy,
                ctranslate2=self.settings.llm_compute_type if self.settings.llm_engine == "ctranslate2" else None,
            )

        return load

    def busy(self) -> bool:
        """A turn is being worked on: the model generates, or speech is being recognised or synthesised."""
        return self.slot.busy() or any(signal() for signal in self.also_busy)

    def _base(self) -> Path:
        if self._base_dir is None:
            from innkeeper.models.resolve import start_model_dir

            self._base_dir = start_model_dir(self.settings)
        return self._base_dir

    async def _refused(self, target: ModelVersion | None, name: str, error: str) -> None:
        log.error("model %s refused; %s keeps serving: %s", name, self.slot.version, error)
        self.error = f"{name}: {error}"
        if target is None or self.registry is None:
            return
        self._failed[target.id] = error
        try:
            await asyncio.to_thread(self.registry.mark_failed, target.id, error, actor="server")
        except (RegistryError, *_DB_ERRORS) as err:
            log.error("could not record the failure of %s in the registry: %s", target.id, err)

    async def _registry_serving(self) -> ModelVersion | None:
        if self.registry is None:
            return None
        try:
            return await asyncio.to_thread(self.registry.serving)
        except (RegistryError, *_DB_ERRORS) as err:
            log.warning("model registry unreadable; keeping %s: %s", self.slot.version, err)
            raise _Unreadable from err

    def _require_registry(self, *, needs_llm: bool = True) -> ModelRegistry:
        if needs_llm and not self.llm_enabled:
            raise AdminError(409, NO_LLM)
        if self.registry is None:
            raise AdminError(503, "the model registry is unavailable (see the server log)")
        return self.registry


async def _registry_call(change: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A registry change in a worker thread: a refusal is a 409, an unreachable database a 503."""
    try:
        return await asyncio.to_thread(change, *args, **kwargs)
    except RegistryError as err:
        raise AdminError(409, str(err)) from None
    except _DB_ERRORS as err:
        raise AdminError(503, f"the model registry is unreachable: {err}") from None


# ---------------------------------------------------------------------- HTTP


def admin_router(settings: Settings) -> APIRouter:
    """The /admin/models endpoints; the server keeps its `ModelAdmin` in `app.state.model_admin`."""
    router = APIRouter(prefix="/admin/models")

    @router.get("", dependencies=[Depends(require("admin"))])
    async def list_models(request: Request) -> JSONResponse:
        admin: ModelAdmin = request.app.state.model_admin
        try:
            versions = await admin.versions()
        except AdminError as err:
            return _error(err, admin)
        return JSONResponse({"serving": admin.status(), "versions": versions})

    @router.post("/rollback")
    async def rollback(request: Request, principal: AdminOnly) -> JSONResponse:
        admin: ModelAdmin = request.app.state.model_admin
        return await _answer(admin, admin.rollback(actor=principal.name), request, principal, "model.rollback", "")

    @router.post("/{version_id}/promote")
    async def promote(version_id: str, request: Request, principal: AdminOnly) -> JSONResponse:
        admin: ModelAdmin = request.app.state.model_admin
        operation = admin.promote(version_id, actor=principal.name)
        return await _answer(admin, operation, request, principal, "model.promote", version_id)

    return router


def install_admin(app: Any, settings: Settings) -> None:
    """Mount the admin endpoints and their JSON refusals on the server app."""
    app.include_router(admin_router(settings))
    install_refusals(app)


async def _answer(
    admin: ModelAdmin, operation: Any, request: Request, principal: Principal, action: str, target: str
) -> JSONResponse:
    try:
        result: SwapResult = await operation
    except AdminError as err:
        return _error(err, admin)
    await asyncio.to_thread(
        request.app.state.audit.record, principal.name, action, target, serving=result.version, via="api"
    )
    return JSONResponse({"serving": admin.status(), "swap": asdict(result)})


def _error(err: AdminError, admin: ModelAdmin) -> JSONResponse:
    return JSONResponse({"error": str(err), "serving": admin.status()}, status_code=err.status)
