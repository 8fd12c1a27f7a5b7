"""The dashboard's operations pages: bookings, the hotel's facts, health, nightly tuning runs, the model
registry (admins promote and roll back, re-entering their password) and the audit log."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from markupsafe import Markup

from agent.dialogue.tools import ToolError
from innkeeper.core.hotel_edits import HotelEditError, HotelFacts
from innkeeper.core.settings import PROJECT_ROOT, Settings
from innkeeper.serve.admin import AdminError
from innkeeper.serve.auth import AdminOnly, Principal, Staff
from innkeeper.serve.web.charts import line_chart
from innkeeper.serve.web.common import audit, reauthenticate, render, services
from innkeeper.serve.web.jobs import JobBusy, NightlyJobs
from innkeeper.serve.web.runs import list_runs

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


def operations_router(settings: Settings) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    # ------------------------------------------------------------------ bookings
    @router.get("/bookings", response_class=HTMLResponse)
    async def bookings(request: Request, principal: Staff, status: str = "", q: str = "") -> Response:
        every = await asyncio.to_thread(services(request).runtime.tools.list_bookings)
        needle = q.strip().lower()
        shown = [
            b
            for b in every
            if (not status or b.status == status)
            and (not needle or needle in f"{b.code} {b.first_name} {b.last_name}".lower())
        ]
        return render(request, "bookings.html", principal, bookings=shown, filters={"status": status, "q": q})

    @router.post("/bookings/{code}/cancel")
    async def cancel_booking(
        code: str, request: Request, principal: Staff, reason: Annotated[str, Form()] = ""
    ) -> Response:
        if not reason.strip():
            raise HTTPException(422, "a cancellation needs a reason")
        tools = services(request).runtime.tools
        every = await asyncio.to_thread(tools.list_bookings)
        booking = next((b for b in every if b.code == code.upper()), None)
        if booking is None:
            raise HTTPException(404, f"no booking {code!r}")
        try:
            await asyncio.to_thread(tools.cancel_booking, booking.code, booking.last_name)
        except ToolError as err:
            raise HTTPException(409, str(err)) from None
        await audit(request, principal.name, "booking.cancel", booking.code, reason=reason.strip())
        return RedirectResponse("/bookings", status_code=303)

    # ------------------------------------------------------------------ hotel facts
    @router.get("/hotel", response_class=HTMLResponse)
    async def hotel(request: Request, principal: Staff) -> Response:
        facts: HotelFacts = services(request).runtime.hotel_facts
        history = await asyncio.to_thread(facts.history)
        return render(
            request, "hotel.html", principal, hotel=facts.current(), version=facts.version, history=history, error=None
        )

    @router.post("/hotel")
    async def edit_hotel(request: Request, principal: Staff) -> Response:
        """Save the edited facts as a new version; the agent answers from it on its next turn."""
        facts: HotelFacts = services(request).runtime.hotel_facts
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
            page = render(
                request, "hotel.html", principal, hotel=facts.current(), version=facts.version, history=history,
                error=str(err),
            )  # fmt: skip
            page.status_code = 422
            return page
        await audit(request, principal.name, "hotel.edit", f"version {version.version}", note=note)
        return RedirectResponse("/hotel", status_code=303)

    # ------------------------------------------------------------------ health
    @router.get("/health", response_class=HTMLResponse)
    async def health(request: Request, principal: Staff, hours: int = 48) -> Response:
        call_services = services(request)
        since = datetime.now(UTC) - timedelta(hours=max(1, min(hours, 24 * 14)))
        hourly = await asyncio.to_thread(call_services.runtime.call_log.latency_by_hour, since)
        labels = [h.hour.strftime("%d %H:00") for h in hourly]
        chart = line_chart(
            "Voice-to-voice at the server, ms", labels,
            {"p50": [h.p50_ms for h in hourly], "p95": [h.p95_ms for h in hourly]}, width=640,
        )  # fmt: skip
        return render(
            request, "health.html", principal, hourly=hourly, chart=chart, hours=hours,
            speed=_engine_speeds(call_services.models), counters=call_services.metrics.snapshot(),
            active=len(call_services.active), serving=request.app.state.model_admin.status(),
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
        return render(request, "tuning.html", principal, runs=runs, charts=charts, comparisons=comparisons, job=job)

    @router.post("/tuning/start")
    async def start_nightly(request: Request, principal: AdminOnly) -> Response:
        """Start a nightly run now (it skips when no new calls came in, as the scheduled one does)."""
        try:
            job = await asyncio.to_thread(request.app.state.jobs.start, principal.name)
        except JobBusy as err:
            raise HTTPException(409, str(err)) from None
        await audit(request, principal.name, "tuning.start", f"pid {job.process.pid}")
        return RedirectResponse("/tuning", status_code=303)

    @router.post("/tuning/stop")
    async def stop_nightly(request: Request, principal: AdminOnly) -> Response:
        """Stop the run started here; the next run resumes it from its last finished step."""
        if not await asyncio.to_thread(request.app.state.jobs.stop):
            raise HTTPException(409, "no nightly run started from the dashboard is running")
        await audit(request, principal.name, "tuning.stop")
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
        return render(request, "models.html", principal, versions=versions, serving=model_admin.status(), error=error)

    @router.post("/models/{version_id}/promote")
    async def promote(version_id: str, request: Request, principal: AdminOnly) -> Response:
        return await _change_model(request, principal, promote=version_id)

    @router.post("/models/rollback")
    async def rollback(request: Request, principal: AdminOnly) -> Response:
        return await _change_model(request, principal, promote=None)

    # ------------------------------------------------------------------ audit
    @router.get("/audit", response_class=HTMLResponse)
    async def audit_log(request: Request, principal: Staff) -> Response:
        entries = await asyncio.to_thread(request.app.state.audit.recent)
        return render(request, "audit.html", principal, entries=entries)

    return router


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


async def _change_model(request: Request, principal: Principal, *, promote: str | None) -> Response:
    """Promote version `promote`, or roll back when None: the admin's password again, a reason, the audit log."""
    form = await request.form()
    reason = str(form.get("reason", "")).strip()
    await reauthenticate(request, principal, str(form.get("password", "")))
    admin = request.app.state.model_admin
    if promote is None:
        action, target, operation = "model.rollback", "", admin.rollback(actor=principal.name, reason=reason)
    else:
        action, target = "model.promote", promote
        operation = admin.promote(promote, actor=principal.name, reason=reason)
    try:
        result = await operation
    except AdminError as err:
        raise HTTPException(err.status, str(err)) from None
    await audit(request, principal.name, action, target, serving=result.version, reason=reason)
    return RedirectResponse("/models", status_code=303)
