"""The operator dashboard's pages: sign-in, calls, review, bookings, models and the audit log.

Server-rendered (Jinja2) with htmx for in-place updates; every page needs a signed-in user and every
state change a CSRF token (`innkeeper/serve/auth.py`), and is written to the audit log with its author.
Work that touches the database runs in a worker thread, never on the event loop the calls share.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from pydantic import ValidationError

from agent.call.calllog import CallNotFound, CallSummary, TurnRecord
from agent.call.review import Corrections, NotACallerTurn, review_queue
from agent.dialogue.tools import ToolError
from agent.understanding.action import ActionIntent, ActionSlots, TurnAction
from innkeeper.core.accounts import Accounts
from innkeeper.core.audit import AuditLog
from innkeeper.core.hotel_edits import HotelEditError, HotelFacts
from innkeeper.core.settings import PROJECT_ROOT, Settings
from innkeeper.serve.admin import AdminError
from innkeeper.serve.auth import (
    CSRF_FIELD,
    SESSION_COOKIE,
    AdminOnly,
    LoginThrottle,
    Principal,
    Refused,
    Staff,
    check_origin,
)
from innkeeper.serve.web.charts import line_chart
from innkeeper.serve.web.jobs import JobBusy, NightlyJobs
from innkeeper.serve.web.runs import list_runs

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
AUDIO_LEGS = ("caller", "agent")
SLOT_FIELDS = tuple(ActionSlots.model_fields)
LIVE_KEEPALIVE_S = 15.0
RESULTS_DIR = PROJECT_ROOT / "benchmarks" / "results"
COMPARISON_PLOTS = ("forgetting.png", "forgetting_cycles.png", "forgetting_long.png")
# (chart title, {series name: metric key in a version's metrics}) — what the nightly gate measures
VERSION_CHARTS = (
    ("Domain NLL on held-out calls (lower is better)", {"candidate": "domain_nll", "serving": "serving_domain_nll"}),
    ("Chat KL from the base (lower is better)", {"KL": "chat_kl"}),
    ("General-text NLL change, %", {"Δ%": "general_nll_delta_pct"}),
    ("Refusals of harmful requests", {"candidate": "refusal", "base": "refusal_base"}),
    ("Safe requests refused", {"candidate": "over_refusal", "base": "over_refusal_base"}),
    ("Multiple-choice knowledge kept", {"share of base": "mc_retained"}),
)
NUMBER_SLOTS = frozenset({"nights", "adults", "children"})


def web_router(settings: Settings) -> APIRouter:
    """Every dashboard route; the server keeps accounts, audit log and services in `app.state`."""
    router = APIRouter(include_in_schema=False)
    throttle = LoginThrottle(settings.login_attempts)

    # ------------------------------------------------------------------ sign-in
    @router.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request, next: str = "/calls") -> Response:
        return _render(request, "login.html", None, next=_safe_next(next), error=None)

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
            await _audit(request, username.strip().lower()[:64] or "?", "sign_in.failed", address=client)
            page = _render(request, "login.html", None, next=_safe_next(next), error="Wrong user name or password.")
            page.status_code = 401
            return page
        throttle.succeeded(keys[0])
        token, _ = await asyncio.to_thread(accounts.open_session, account)
        await _audit(request, account.username, "sign_in", address=client)
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
        await _audit(request, principal.name, "sign_out")
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    @router.get("/")
    async def home() -> Response:
        return RedirectResponse("/calls", status_code=303)

    # ------------------------------------------------------------------ live calls
    @router.get("/live", response_class=HTMLResponse)
    async def live(request: Request, principal: Staff) -> Response:
        return _render(request, "live.html", principal)

    @router.get("/live/events")
    async def live_events(request: Request, _: Staff) -> Response:
        """Server-sent events: the live calls' lines, barge-ins, hand-offs, starts and ends."""
        services = _services(request)

        async def stream() -> AsyncIterator[str]:
            async with services.live.subscribe(set(services.active)) as queue:
                yield ": live\n\n"
                while not await request.is_disconnected():
                    try:
                        event = await asyncio.wait_for(queue.get(), timeout=LIVE_KEEPALIVE_S)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    yield f"data: {json.dumps(event)}\n\n"

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    @router.post("/calls/{call_id}/take-over")
    async def take_over(call_id: str, request: Request, principal: Staff) -> Response:
        """Hand a live call to staff: the agent says it is transferring, and the call goes to the front desk."""
        call = _services(request).active.get(call_id)
        if call is None:
            raise HTTPException(404, f"call {call_id!r} is not in progress")
        if not call.hand_over(f"taken over by {principal.name}"):
            raise HTTPException(409, "the call is ending already")
        await _audit(request, principal.name, "call.take_over", call_id)
        return JSONResponse({"call_id": call_id, "transferring": True})

    # ------------------------------------------------------------------ a call from the browser
    @router.get("/phone", response_class=HTMLResponse)
    async def phone(request: Request, principal: Staff) -> Response:
        return _render(request, "phone.html", principal)

    # ------------------------------------------------------------------ calls
    @router.get("/calls", response_class=HTMLResponse)
    async def calls(
        request: Request,
        principal: Staff,
        q: str = "",
        since: str = "",
        reason: str = "",
        flagged: bool = False,
    ) -> Response:
        call_log = _services(request).runtime.call_log
        found = await asyncio.to_thread(
            call_log.search, text=q, since=_parse_day(since), end_reason=reason or None, flagged=flagged
        )
        live = [
            {"id": call_id, "channel": call.conversation.channel, "turns": len(call.conversation.history) // 2}
            for call_id, call in list(_services(request).active.items())
        ]
        filters = {"q": q, "since": since, "reason": reason, "flagged": flagged}
        return _render(request, "calls.html", principal, calls=found, live=live, filters=filters)

    @router.get("/calls/{call_id}", response_class=HTMLResponse)
    async def call_page(call_id: str, request: Request, principal: Staff) -> Response:
        summary, turns = await _call(request, call_id)
        corrections = await asyncio.to_thread(Corrections(_services(request).runtime.db).list, call_id=call_id)
        audio = {leg: _audio_path(summary, leg, settings) is not None for leg in AUDIO_LEGS}
        return _render(
            request,
            "call.html",
            principal,
            call=summary,
            turns=[_turn_view(turn, summary) for turn in turns],
            corrections={c.turn_index: c for c in corrections},
            audio=audio,
            intents=[intent.value for intent in ActionIntent],
            slot_fields=SLOT_FIELDS,
        )

    @router.get("/calls/{call_id}/audio/{leg}")
    async def call_audio(call_id: str, leg: str, request: Request, _: Staff) -> Response:
        summary, _turns = await _call(request, call_id)
        path = _audio_path(summary, leg, settings)
        if path is None:
            raise HTTPException(404, f"no {leg} audio for call {call_id}")
        return FileResponse(path, media_type="audio/wav")

    @router.post("/calls/{call_id}/training")
    async def call_training(
        call_id: str, request: Request, include: Annotated[str, Form()], principal: Staff
    ) -> Response:
        included = include == "yes"
        try:
            await asyncio.to_thread(_services(request).runtime.call_log.set_training, call_id, included)
        except CallNotFound:
            raise HTTPException(404, f"no call {call_id!r}") from None
        await _audit(request, principal.name, "call.training", call_id, included=included)
        return RedirectResponse(f"/calls/{quote(call_id)}", status_code=303)

    @router.post("/calls/{call_id}/turns/{index}/correction")
    async def correct_turn(call_id: str, index: int, request: Request, principal: Staff) -> Response:
        form = await request.form()
        try:
            action = _action_from_form(form)
        except ValidationError as err:
            raise HTTPException(422, f"not a valid reading: {err.errors()[0]['msg']}") from None
        reply = str(form.get("reply", "")).strip() or None
        note = str(form.get("note", "")).strip()
        corrections = Corrections(_services(request).runtime.db)
        try:
            record = await asyncio.to_thread(
                corrections.add, call_id, index, action, author=principal.name, reply=reply, note=note
            )
        except NotACallerTurn as err:
            raise HTTPException(404, str(err)) from None
        await _audit(request, principal.name, "review.correct", f"{call_id}#{index}", correction=record.id)
        return RedirectResponse(f"/calls/{quote(call_id)}#turn-{index}", status_code=303)

    # ------------------------------------------------------------------ review
    @router.get("/review", response_class=HTMLResponse)
    async def review(request: Request, principal: Staff) -> Response:
        items = await asyncio.to_thread(review_queue, _services(request).runtime.db)
        return _render(request, "review.html", principal, items=items)

    # ------------------------------------------------------------------ bookings
    @router.get("/bookings", response_class=HTMLResponse)
    async def bookings(request: Request, principal: Staff, status: str = "", q: str = "") -> Response:
        every = await asyncio.to_thread(_services(request).runtime.tools.list_bookings)
        needle = q.strip().lower()
        shown = [
            b
            for b in every
            if (not status or b.status == status)
            and (not needle or needle in f"{b.code} {b.first_name} {b.last_name}".lower())
        ]
        return _render(request, "bookings.html", principal, bookings=shown, filters={"status": status, "q": q})

    @router.post("/bookings/{code}/cancel")
    async def cancel_booking(
        code: str, request: Request, principal: Staff, reason: Annotated[str, Form()] = ""
    ) -> Response:
        if not reason.strip():
            raise HTTPException(422, "a cancellation needs a reason")
        tools = _services(request).runtime.tools
        every = await asyncio.to_thread(tools.list_bookings)
        booking = next((b for b in every if b.code == code.upper()), None)
        if booking is None:
            raise HTTPException(404, f"no booking {code!r}")
        try:
            await asyncio.to_thread(tools.cancel_booking, booking.code, booking.last_name)
        except ToolError as err:
            raise HTTPException(409, str(err)) from None
        await _audit(request, principal.name, "booking.cancel", booking.code, reason=reason.strip())
        return RedirectResponse("/bookings", status_code=303)

    # ------------------------------------------------------------------ hotel facts
    @router.get("/hotel", response_class=HTMLResponse)
    async def hotel(request: Request, principal: Staff) -> Response:
        facts: HotelFacts = _services(request).runtime.hotel_facts
        history = await asyncio.to_thread(facts.history)
        return _render(
            request, "hotel.html", principal, hotel=facts.current(), version=facts.version, history=history, error=None
        )

    @router.post("/hotel")
    async def edit_hotel(request: Request, principal: Staff) -> Response:
        """Save the edited facts as a new version; the agent answers from it on its next turn."""
        facts: HotelFacts = _services(request).runtime.hotel_facts
        form = await request.form()
        edits = {
            field: str(form.get(field, "")).strip() for field in ("address", "phone", "check_in_time", "check_out_time")
        }
        edits |= {kind: _topic_answers(form, kind) for kind in ("facts", "policies")}
        note = str(form.get("note", "")).strip()
        try:
            version = await asyncio.to_thread(facts.save, edits, author=principal.name, note=note)
        except HotelEditError as err:
            history = await asyncio.to_thread(facts.history)
            page = _render(
                request, "hotel.html", principal, hotel=facts.current(), version=facts.version, history=history,
                error=str(err),
            )  # fmt: skip
            page.status_code = 422
            return page
        await _audit(request, principal.name, "hotel.edit", f"version {version.version}", note=note)
        return RedirectResponse("/hotel", status_code=303)

    # ------------------------------------------------------------------ health
    @router.get("/health", response_class=HTMLResponse)
    async def health(request: Request, principal: Staff, hours: int = 48) -> Response:
        services = _services(request)
        since = datetime.now(UTC) - timedelta(hours=max(1, min(hours, 24 * 14)))
        hourly = await asyncio.to_thread(services.runtime.call_log.latency_by_hour, since)
        labels = [h.hour.strftime("%d %H:00") for h in hourly]
        chart = line_chart(
            "Voice-to-voice at the server, ms", labels,
            {"p50": [h.p50_ms for h in hourly], "p95": [h.p95_ms for h in hourly]}, width=640,
        )  # fmt: skip
        return _render(
            request, "health.html", principal, hourly=hourly, chart=chart, hours=hours,
            speed=_engine_speeds(services.models), counters=services.metrics.snapshot(),
            active=len(services.active), serving=request.app.state.model_admin.status(),
        )  # fmt: skip

    # ------------------------------------------------------------------ tuning runs
    @router.get("/tuning", response_class=HTMLResponse)
    async def tuning(request: Request, principal: Staff) -> Response:
        jobs: NightlyJobs = request.app.state.jobs
        job = jobs.job if jobs.job is not None and jobs.job.running else None
        runs = await asyncio.to_thread(list_runs, settings.nightly_dir, job_running=job is not None)
        try:
            versions = await request.app.state.model_admin.versions()
        except AdminError:
            versions = []
        charts = _version_charts(sorted(versions, key=lambda v: str(v.get("created_at"))))
        comparisons = [name for name in COMPARISON_PLOTS if (RESULTS_DIR / name).is_file()]
        return _render(request, "tuning.html", principal, runs=runs, charts=charts, comparisons=comparisons, job=job)

    @router.post("/tuning/start")
    async def start_nightly(request: Request, principal: AdminOnly) -> Response:
        """Start a nightly run now (it skips when no new calls came in, as the scheduled one does)."""
        try:
            job = await asyncio.to_thread(request.app.state.jobs.start, principal.name)
        except JobBusy as err:
            raise HTTPException(409, str(err)) from None
        await _audit(request, principal.name, "tuning.start", f"pid {job.process.pid}")
        return RedirectResponse("/tuning", status_code=303)

    @router.post("/tuning/stop")
    async def stop_nightly(request: Request, principal: AdminOnly) -> Response:
        """Stop the run started here; the next run resumes it from its last finished step."""
        if not await asyncio.to_thread(request.app.state.jobs.stop):
            raise HTTPException(409, "no nightly run started from the dashboard is running")
        await _audit(request, principal.name, "tuning.stop")
        return RedirectResponse("/tuning", status_code=303)

    @router.get("/tuning/plots/{name}")
    async def comparison_plot(name: str, _: Staff) -> Response:
        if name not in COMPARISON_PLOTS or not (RESULTS_DIR / name).is_file():
            raise HTTPException(404, f"no plot {name!r}")
        return FileResponse(RESULTS_DIR / name, media_type="image/png")

    # ------------------------------------------------------------------ models (admins change them)
    @router.get("/models", response_class=HTMLResponse)
    async def models(request: Request, principal: Staff) -> Response:
        model_admin = request.app.state.model_admin
        try:
            versions = await model_admin.versions()
            error = None
        except Exception as err:
            versions, error = [], str(err)
        return _render(request, "models.html", principal, versions=versions, serving=model_admin.status(), error=error)

    @router.post("/models/{version_id}/promote")
    async def promote(
        version_id: str,
        request: Request,
        principal: AdminOnly,
        password: Annotated[str, Form()] = "",
        reason: Annotated[str, Form()] = "",
    ) -> Response:
        await _reauthenticate(request, principal, password)
        return await _model_change(
            request,
            principal,
            "model.promote",
            version_id,
            reason,
            request.app.state.model_admin.promote(version_id, actor=principal.name, reason=reason),
        )

    @router.post("/models/rollback")
    async def rollback(
        request: Request,
        principal: AdminOnly,
        password: Annotated[str, Form()] = "",
        reason: Annotated[str, Form()] = "",
    ) -> Response:
        await _reauthenticate(request, principal, password)
        return await _model_change(
            request,
            principal,
            "model.rollback",
            "",
            reason,
            request.app.state.model_admin.rollback(actor=principal.name, reason=reason),
        )

    # ------------------------------------------------------------------ audit
    @router.get("/audit", response_class=HTMLResponse)
    async def audit(request: Request, principal: Staff) -> Response:
        entries = await asyncio.to_thread(request.app.state.audit.recent)
        return _render(request, "audit.html", principal, entries=entries)

    return router


# ---------------------------------------------------------------------- helpers


def _render(request: Request, name: str, principal: Principal | None, **context: Any) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(
        request,
        name,
        {"user": principal, "csrf_field": CSRF_FIELD, "csrf": principal.csrf_token if principal else "", **context},
    )


def _services(request: Request) -> Any:
    return request.app.state.services


async def _audit(request: Request, actor: str, action: str, target: str = "", **detail: Any) -> None:
    log: AuditLog = request.app.state.audit
    await asyncio.to_thread(log.record, actor, action, target, **detail)


async def _call(request: Request, call_id: str) -> tuple[CallSummary, list[TurnRecord]]:
    call_log = _services(request).runtime.call_log
    try:
        summary = await asyncio.to_thread(call_log.call_summary, call_id)
        turns = await asyncio.to_thread(call_log.transcript, call_id)
    except CallNotFound:
        raise HTTPException(404, f"no call {call_id!r}") from None
    return summary, turns


def _turn_view(turn: TurnRecord, call: CallSummary) -> dict[str, Any]:
    """A turn as the transcript shows it: offset into the call, latency, who worded it, what was understood."""
    meta: dict[str, Any] = {}
    tools = []
    for entry in turn.tool_calls or []:
        if isinstance(entry, dict) and "meta" in entry:
            meta = dict(entry["meta"])
        else:
            tools.append(entry)
    latencies = turn.latencies or {}
    return {
        "record": turn,
        "offset_s": (turn.started_at - call.started_at).total_seconds(),
        "v2v_ms": latencies.get("v2v_server_ms"),
        "asr_logprob": latencies.get("asr_avg_logprob"),
        "meta": meta,
        "tools": tools,
    }


def _audio_path(call: CallSummary, leg: str, settings: Settings) -> Path | None:
    """The leg's WAV when it exists inside the recordings folder (a path in the database is not trusted)."""
    if leg not in AUDIO_LEGS:
        return None
    stored = call.caller_audio_path if leg == "caller" else call.agent_audio_path
    if not stored:
        return None
    path = Path(stored).resolve()
    if not path.is_relative_to(settings.calls_dir.resolve()) or not path.is_file():
        return None
    return path


def _engine_speeds(models: Any) -> dict[str, dict[str, Any]]:
    """Each speech engine's real-time factor since start-up (compute per audio second) and its audio total."""
    speeds = {}
    for name, engine in (("speech recognition", models.recognizer), ("speech synthesis", models.synthesizer)):
        speed = getattr(engine, "speed", None)
        if speed is not None:
            speeds[name] = {"rtf": speed.value, "audio_s": speed.audio_s, "runs": speed.runs}
    return speeds


def _version_charts(versions: list[dict[str, Any]]) -> list[Markup]:
    """Domain proficiency and each retention measure across the registered versions, oldest first."""
    labels = [str(v["id"]).split("-")[0] for v in versions]

    def measure(key: str) -> list[float | None]:
        values = [(v.get("metrics") or {}).get(key) for v in versions]
        return [float(x) if isinstance(x, int | float) else None for x in values]

    return [
        line_chart(title, labels, {name: measure(key) for name, key in series.items()})
        for title, series in VERSION_CHARTS
    ]


def _topic_answers(form: Any, kind: str) -> dict[str, str]:
    """The form's (topic, answer) rows of one kind; a row with an empty answer removes its topic."""
    topics, answers = form.getlist(f"{kind}_topic"), form.getlist(f"{kind}_answer")
    return {
        str(topic).strip().lower().replace(" ", "_"): str(answer).strip()
        for topic, answer in zip(topics, answers, strict=False)
        if str(topic).strip() and str(answer).strip()
    }


def _action_from_form(form: Any) -> TurnAction:
    """The corrected reading from the review form: intent checkboxes, slot fields, questions one per line."""
    slots: dict[str, Any] = {}
    for name in SLOT_FIELDS:
        value = str(form.get(f"slot_{name}", "")).strip()
        if value:
            slots[name] = int(value) if name in NUMBER_SLOTS and value.isdigit() else value
    questions = [line.strip() for line in str(form.get("questions", "")).splitlines() if line.strip()]
    return TurnAction.model_validate({"intents": form.getlist("intents"), "slots": slots, "questions": questions})


async def _reauthenticate(request: Request, principal: Principal, password: str) -> None:
    """Model changes need the admin's password again (a signed-in browser left open is not enough)."""
    if principal.csrf_token is None:
        raise Refused(403, "scripts change models through /admin/models")
    account = await asyncio.to_thread(request.app.state.accounts.verify, principal.name, password)
    if account is None:
        await _audit(request, principal.name, "reauthenticate.failed")
        raise Refused(403, "wrong password")


async def _model_change(
    request: Request, principal: Principal, action: str, target: str, reason: str, operation: Any
) -> Response:
    try:
        result = await operation
    except AdminError as err:
        raise HTTPException(err.status, str(err)) from None
    await _audit(request, principal.name, action, target, serving=result.version, reason=reason)
    return RedirectResponse("/models", status_code=303)


def _parse_day(day: str) -> datetime | None:
    if not day.strip():
        return None
    try:
        return datetime.combine(datetime.strptime(day.strip(), "%Y-%m-%d").date(), time(), tzinfo=UTC)
    except ValueError:
        raise HTTPException(422, f"since: expected YYYY-MM-DD, got {day!r}") from None


def _safe_next(target: str) -> str:
    """Only a path on this server (never //evil.example or a full URL) after signing in."""
    return target if target.startswith("/") and not target.startswith("//") else "/calls"


def _behind_tls(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("X-Forwarded-Proto") == "https"
