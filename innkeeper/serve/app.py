"""The Innkeeper server: phone calls (Twilio), web/SDK calls (plain websocket) and the call records API.

    POST /twilio/voice     incoming-call webhook → TwiML that connects a bidirectional media stream
    WS   /twilio/stream    Twilio Media Streams (mu-law 8 kHz)
    WS   /ws/call          the plain protocol (PCM16 16 kHz; telephony/PROTOCOL.md)
    GET  /api/calls/{id}   a call's record: transcript, per-turn timings, audio files
    GET  /api/calls?call_sid=CA…   the same, found by Twilio's call id
    GET  /healthz          liveness, live calls, the serving model (and the last refused one)
    GET  /metrics          Prometheus: calls, turns, voice-to-voice latency, errors, model version
    /admin/models/...      promote, roll back, list model versions (innkeeper/serve/admin.py)
    /login, /calls, /review, /bookings, /models, /audit   the operator dashboard (innkeeper/serve/web/)

`/api/*`, `/admin/*` and the dashboard need a signed-in user or the admin bearer token (serve/auth.py).

Models load once at start-up (`lifespan`), verified; each call gets a cheap `VoiceCall`. With an LLM, the
model registry's serving version loads at start-up and is polled for; a new one swaps in between turns.
Run with `innkeeper serve`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, WebSocket
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from agent.call.calllog import CallNotFound
from agent.call.conversation import DB_ERRORS
from agent.call.voice_config import SpeechModels
from innkeeper.core.accounts import Accounts
from innkeeper.core.audit import AuditLog
from innkeeper.core.settings import Settings
from innkeeper.serve.admin import ModelAdmin, install_admin
from innkeeper.serve.auth import require
from innkeeper.serve.calls import CallServices, serve_plain, serve_twilio
from innkeeper.serve.live_bridge import LiveBridge, conninfo
from innkeeper.serve.runtime import AgentRuntime
from innkeeper.serve.speech import load_speech_models
from innkeeper.serve.web import install_web
from innkeeper.serve.web.common import TrainingView
from telephony import plain_protocol, twilio_protocol

log = logging.getLogger(__name__)

TWILIO_STREAM_PATH = "/twilio/stream"


def create_app(
    settings: Settings | None = None,
    *,
    runtime: AgentRuntime | None = None,
    models: SpeechModels | None = None,
    training_view: TrainingView | None = None,
) -> FastAPI:
    """The ASGI app. Tests pass a prepared runtime and models; `innkeeper serve` builds them from settings.

    `training_view` shows on each call's page what the nightly run would learn from it (the curation lives in
    `tuning`, a layer this one does not import; `innkeeper serve` passes `tuning.data.preview.preview_call`).
    """
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The model is loaded when it words voice replies or reads turns (voice wording stays per voice_llm).
        use_llm = (settings.voice_llm or settings.model_understanding) and settings.llm_model != "none"
        # The LLM itself comes from the model admin: the registry's serving version, else the base model.
        agent = runtime or await asyncio.to_thread(AgentRuntime.from_settings, settings, use_llm=False)
        admin = ModelAdmin.for_runtime(
            settings, agent, llm_enabled=use_llm if runtime is None else agent.llm is not None
        )
        await admin.startup()
        app.state.model_admin = admin
        await _write_backlog(agent)  # before marking open calls interrupted: the backlog knows how they ended
        await _end_interrupted_calls(agent, settings)
        backlog = asyncio.create_task(agent.backlog.keep_draining(settings.backlog_retry_s), name="call-backlog")
        app.state.accounts = Accounts(agent.db, session_lifetime=timedelta(hours=settings.session_hours))
        app.state.audit = AuditLog(agent.db)
        speech = models or await asyncio.to_thread(load_speech_models, settings)
        admin.also_busy += [lambda: speech.recognizer.busy, lambda: speech.synthesizer.busy]
        app.state.services = CallServices(runtime=agent, models=speech)
        app.state.services.metrics.watch_speech(speech)
        log.info("innkeeper ready: model %s", agent.llm.version if agent.llm else "templates only")
        poller = admin.start_polling()
        bridge = app.state.live_bridge = _live_bridge(settings, app.state.services, admin)
        yield
        if bridge is not None:
            await bridge.stop()
        if poller is not None:
            poller.cancel()
        backlog.cancel()
        for call in list(app.state.services.active.values()):
            await call.hang_up("server shutdown")

    app = FastAPI(title="Innkeeper", lifespan=lifespan)
    app.state.settings = settings
    app.state.training_view = training_view
    app.state.live_bridge = None  # set at start-up on a shared PostgreSQL database
    install_admin(app, settings)
    install_web(app, settings)

    @app.get("/healthz")
    async def healthz(request: Request) -> dict[str, Any]:
        services: CallServices = request.app.state.services
        llm = services.runtime.llm
        return {
            "status": "ok",
            "calls_active": len(services.active),
            "tasks": len(asyncio.all_tasks()),
            "task_names": sorted(t.get_coro().__qualname__ for t in asyncio.all_tasks()),
            "rejected_messages": int(services.metrics.snapshot().get("innkeeper_rejected_messages_total", 0)),
            "calls_waiting_for_database": len(services.runtime.backlog.pending()),
            "model_version": llm.version if llm is not None else "template",
            "model_error": request.app.state.model_admin.error,
        }

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        services: CallServices = request.app.state.services
        llm = services.runtime.llm
        body = services.metrics.exposition(llm.version if llm is not None else "template")
        return Response(content=body, media_type=CONTENT_TYPE_LATEST)

    @app.post("/twilio/voice")
    async def twilio_voice(request: Request) -> Response:
        form = {key: str(value) for key, value in (await request.form()).items()}
        if settings.twilio_auth_token:
            url = _public_url(request, settings)
            signature = request.headers.get("X-Twilio-Signature")
            if not twilio_protocol.validate_signature(settings.twilio_auth_token, url, form, signature):
                log.warning("rejected webhook with a bad signature from %s", request.client)
                raise HTTPException(status_code=403, detail="invalid X-Twilio-Signature")
        services: CallServices = request.app.state.services
        # per caller number: webhooks all come from Twilio's addresses
        refusal = services.admit(f"caller:{form.get('From', '')}", "twilio")
        if refusal is not None:
            twiml = twilio_protocol.twiml_busy(refusal, dial=settings.front_desk_number)
            return Response(content=twiml, media_type="application/xml")
        stream_url = _public_url(request, settings, path=TWILIO_STREAM_PATH, websocket=True)
        parameters = {"caller": form.get("From", ""), "called": form.get("To", "")}
        if settings.twilio_auth_token:  # binds the media stream to this signed webhook (checked at its start)
            parameters["token"] = twilio_protocol.stream_token(settings.twilio_auth_token, form.get("CallSid", ""))
        twiml = twilio_protocol.twiml_connect_stream(stream_url, parameters, then_dial=settings.front_desk_number)
        return Response(content=twiml, media_type="application/xml")

    @app.websocket(TWILIO_STREAM_PATH)
    async def twilio_stream(ws: WebSocket) -> None:
        await serve_twilio(ws, ws.app.state.services)

    @app.websocket(plain_protocol.WS_PATH)
    async def plain_call(ws: WebSocket) -> None:
        await serve_plain(ws, ws.app.state.services)

    # A call record holds the caller's name and number: only for staff and scripts (innkeeper/serve/auth.py).
    @app.get("/api/calls/{call_id}", dependencies=[Depends(require())])
    async def call_record(call_id: str, request: Request) -> dict[str, Any]:
        return await _call_record(request.app.state.services, call_id)

    @app.get("/api/calls", dependencies=[Depends(require())])
    async def call_by_sid(call_sid: str, request: Request) -> dict[str, Any]:
        services: CallServices = request.app.state.services
        call_id = await asyncio.to_thread(services.runtime.call_log.find_call, "call_sid", call_sid)
        if call_id is None:
            raise HTTPException(status_code=404, detail=f"no call with call_sid {call_sid!r}")
        return await _call_record(services, call_id)

    return app


def _live_bridge(settings: Settings, services: CallServices, admin: ModelAdmin) -> LiveBridge | None:
    """On a shared PostgreSQL database, this worker's live page shows the other workers' calls too, staff
    can take over a call from any worker's page, and a promotion or rollback made anywhere swaps the model now."""
    info = conninfo(settings.db_url)
    if info is None:
        return None

    def take_over(call_id: str, reason: str) -> bool:
        call = services.active.get(call_id)
        return call is not None and call.hand_over(reason)

    bridge = LiveBridge(
        services.live, info, settings.server_id, take_over=take_over, serving_changed=admin.serving_changed
    )
    bridge.start()
    return bridge


async def _write_backlog(runtime: AgentRuntime) -> None:
    """Calls kept on disk while the database was down (before the last shutdown): write them now if it answers."""
    try:
        await asyncio.to_thread(runtime.backlog.drain)
    except OSError as err:
        log.warning("could not read the call backlog in %s: %s", runtime.backlog.directory, err)


async def _end_interrupted_calls(runtime: AgentRuntime, settings: Settings) -> None:
    """Calls this server left unfinished when it last died are over: record them so (nothing half-open)."""
    try:
        ended = await asyncio.to_thread(
            runtime.call_log.end_interrupted, settings.server_id, started_before=datetime.now(UTC)
        )
    except DB_ERRORS as err:
        log.warning("could not close interrupted calls: %s", err)
        return
    if ended:
        log.warning("marked %d call(s) interrupted by the last shutdown of %s", len(ended), settings.server_id)


async def _call_record(services: CallServices, call_id: str) -> dict[str, Any]:
    call_log = services.runtime.call_log
    try:
        summary = await asyncio.to_thread(call_log.call_summary, call_id)
        turns = await asyncio.to_thread(call_log.transcript, call_id)
    except CallNotFound:
        raise HTTPException(status_code=404, detail=f"no call {call_id!r}") from None
    return {"call": _jsonable(asdict(summary)), "turns": [_jsonable(asdict(turn)) for turn in turns]}


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value.isoformat() if hasattr(value, "isoformat") else value for key, value in record.items()}


def _public_url(request: Request, settings: Settings, *, path: str | None = None, websocket: bool = False) -> str:
    """The URL as Twilio sees it: the configured public base, else the request's own (proxy headers honoured)."""
    if settings.public_url:
        base = settings.public_url.rstrip("/")
    else:
        scheme = request.headers.get("X-Forwarded-Proto", request.url.scheme)
        host = request.headers.get("X-Forwarded-Host", request.headers.get("host", request.url.netloc))
        base = f"{scheme}://{host}"
    if websocket:
        # Twilio only dials wss://; behind TLS termination the public scheme is https.
        base = "wss://" + base.split("://", 1)[1]
    return base + (
        path if path is not None else request.url.path + (f"?{request.url.query}" if request.url.query else "")
    )


def serve(settings: Settings | None = None, *, training_view: TrainingView | None = None) -> None:
    """Run the server with uvicorn (blocking)."""
    import uvicorn

    settings = settings or Settings()
    uvicorn.run(
        create_app(settings, training_view=training_view),
        host=settings.host,
        port=settings.port,
        # Binary audio frames up to the plain protocol's limit; anything larger is closed with 1009.
        ws_max_size=plain_protocol.MAX_BINARY_MESSAGE_BYTES + 1024,
        log_level="info",
    )
