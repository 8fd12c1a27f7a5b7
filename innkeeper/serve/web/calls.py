"""The dashboard's call pages: live calls (server-sent events) and taking one over, the call history and a
call's transcript with its audio, corrections of how a turn was understood, the review queue, and a call
placed from the browser."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from pydantic import ValidationError

from agent.call.calllog import CallNotFound, CallSummary, TurnRecord, split_meta
from agent.call.review import Corrections, NotACallerTurn, review_queue
from agent.understanding.action import ActionIntent, ActionSlots, TurnAction
from innkeeper.core.settings import Settings
from innkeeper.serve.auth import Staff
from innkeeper.serve.web.common import audit, render, services

log = logging.getLogger(__name__)

AUDIO_LEGS = ("caller", "agent")
SLOT_FIELDS = tuple(ActionSlots.model_fields)
LIVE_KEEPALIVE_S = 15.0


def calls_router(settings: Settings) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    # ------------------------------------------------------------------ live calls
    @router.get("/live", response_class=HTMLResponse)
    async def live(request: Request, principal: Staff) -> Response:
        return render(request, "live.html", principal)

    @router.get("/live/events")
    async def live_events(request: Request, _: Staff) -> Response:
        """Server-sent events: the live calls' lines, barge-ins, hand-offs, starts and ends."""
        call_services = services(request)

        async def stream() -> AsyncIterator[str]:
            async with call_services.live.subscribe(set(call_services.active)) as queue:
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
        reason = f"taken over by {principal.name}"
        call = services(request).active.get(call_id)
        bridge = request.app.state.live_bridge
        if call is None and bridge is not None and bridge.ask_to_take_over(call_id, reason):
            # Live on another worker (its events reach this page through the database): that worker hands it over.
            await audit(request, principal.name, "call.take_over", call_id)
            return JSONResponse({"call_id": call_id, "transferring": True, "elsewhere": True})
        if call is None:
            raise HTTPException(404, f"call {call_id!r} is not in progress")
        if not call.hand_over(reason):
            raise HTTPException(409, "the call is ending already")
        await audit(request, principal.name, "call.take_over", call_id)
        return JSONResponse({"call_id": call_id, "transferring": True})

    # ------------------------------------------------------------------ a call from the browser
    @router.get("/phone", response_class=HTMLResponse)
    async def phone(request: Request, principal: Staff) -> Response:
        return render(request, "phone.html", principal)

    # ------------------------------------------------------------------ calls
    @router.get("/calls", response_class=HTMLResponse)
    async def calls(
        request: Request,
        principal: Staff,
        q: str = "",
        since: str = "",
        reason: str = "",
        flagged: bool = False,
        booked: bool = False,
    ) -> Response:
        call_log = services(request).runtime.call_log
        found = await asyncio.to_thread(
            call_log.search,
            text=q,
            since=_parse_day(since),
            end_reason=reason or None,
            flagged=flagged,
            booked=booked,
        )
        live = [
            {"id": call_id, "channel": call.conversation.channel, "turns": len(call.conversation.history) // 2}
            for call_id, call in list(services(request).active.items())
        ]
        filters = {"q": q, "since": since, "reason": reason, "flagged": flagged, "booked": booked}
        return render(request, "calls.html", principal, calls=found, live=live, filters=filters)

    @router.get("/calls/{call_id}", response_class=HTMLResponse)
    async def call_page(call_id: str, request: Request, principal: Staff) -> Response:
        summary, turns = await _call(request, call_id)
        corrections = await asyncio.to_thread(Corrections(services(request).runtime.db).list, call_id=call_id)
        audio = {leg: _audio_path(summary, leg, settings) is not None for leg in AUDIO_LEGS}
        training = await _training_preview(request, call_id)
        return render(
            request,
            "call.html",
            principal,
            call=summary,
            turns=[_turn_view(turn, summary) for turn in turns],
            corrections={c.turn_index: c for c in corrections},
            audio=audio,
            intents=[intent.value for intent in ActionIntent],
            slot_fields=SLOT_FIELDS,
            training=training,
            trained_turns={t.turn_id: t for t in training.turns} if training else {},
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
            await asyncio.to_thread(services(request).runtime.call_log.set_training, call_id, included)
        except CallNotFound:
            raise HTTPException(404, f"no call {call_id!r}") from None
        await audit(request, principal.name, "call.training", call_id, included=included)
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
        corrections = Corrections(services(request).runtime.db)
        try:
            record = await asyncio.to_thread(
                corrections.add, call_id, index, action, author=principal.name, reply=reply, note=note
            )
        except NotACallerTurn as err:
            raise HTTPException(404, str(err)) from None
        await audit(request, principal.name, "review.correct", f"{call_id}#{index}", correction=record.id)
        return RedirectResponse(f"/calls/{quote(call_id)}#turn-{index}", status_code=303)

    # ------------------------------------------------------------------ review
    @router.get("/review", response_class=HTMLResponse)
    async def review(request: Request, principal: Staff) -> Response:
        items = await asyncio.to_thread(review_queue, services(request).runtime.db)
        return render(request, "review.html", principal, items=items)

    return router


async def _call(request: Request, call_id: str) -> tuple[CallSummary, list[TurnRecord]]:
    call_log = services(request).runtime.call_log
    try:
        summary = await asyncio.to_thread(call_log.call_summary, call_id)
        turns = await asyncio.to_thread(call_log.transcript, call_id)
    except CallNotFound:
        raise HTTPException(404, f"no call {call_id!r}") from None
    return summary, turns


async def _training_preview(request: Request, call_id: str) -> Any:
    """What the nightly run would learn from the call (None where this server was given no training view, or
    it failed: the rest of the page still shows)."""
    view = request.app.state.training_view
    if view is None:
        return None
    try:
        return await asyncio.to_thread(view, services(request).runtime.db, request.app.state.settings, call_id)
    except Exception:  # a preview is an aid to review; its failure must not take the call page down
        log.exception("training preview of call %s failed", call_id)
        return None


def _turn_view(turn: TurnRecord, call: CallSummary) -> dict[str, Any]:
    """A turn as the transcript shows it: offset into the call, latency, who worded it, what was understood."""
    meta, tools = split_meta(turn.tool_calls)
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


def _action_from_form(form: Any) -> TurnAction:
    """The corrected reading from the review form: intent checkboxes, slot fields, questions one per line."""
    slots: dict[str, Any] = {}
    for name in SLOT_FIELDS:
        value = str(form.get(f"slot_{name}", "")).strip()
        if value:
            slots[name] = value  # the schema turns "2" into 2 and refuses "two"
    questions = [line.strip() for line in str(form.get("questions", "")).splitlines() if line.strip()]
    return TurnAction.model_validate({"intents": form.getlist("intents"), "slots": slots, "questions": questions})


def _parse_day(day: str) -> datetime | None:
    if not day.strip():
        return None
    try:
        return datetime.combine(datetime.strptime(day.strip(), "%Y-%m-%d").date(), time(), tzinfo=UTC)
    except ValueError:
        raise HTTPException(422, f"since: expected YYYY-MM-DD, got {day!r}") from None
