"""Whole booking calls from callers who leave the script, understood by the rules alone or by the model.

Places `--calls` seeded off-script booking calls (`innkeeper.simulation.off_script_callers`: two dates in
one sentence, "N days from", "for four", name and phone in one breath, a question mid-booking, a change of
mind, a read-back checked and refused when wrong) through the real brain on the phone channel (templates
speak, so only understanding differs), each run in a fresh SQLite database, and counts per call whether
the booking row is exactly what the caller finally wanted, is wrong, or was never made.

    .venv/bin/python benchmarks/off_script_calls.py --calls 40                       # the rules alone
    .venv/bin/python benchmarks/off_script_calls.py --calls 40 --reading DIR         # + the model reads each turn

Writes `benchmarks/results/off_script_calls[_reading].json` with every call's outcome and habits, and the
transcripts of the calls that did not end exactly right (for reading, never for tuning to).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress
from rich.table import Table

from agent.call.calllog import CallLog
from agent.dialogue.tools import HotelTools
from innkeeper.core.db.database import Database
from innkeeper.core.hotel import load_hotel
from innkeeper.core.settings import Settings
from innkeeper.simulation.off_script_callers import HABITS, OffScriptCaller, off_script_scripts
from innkeeper.simulation.scripted_bookings import booked_as_asked
from innkeeper.simulation.text_callers import TODAY, place_calls

RESULTS = Path(__file__).resolve().parent / "results"


def run(calls: int, seed: int, reading: Path | None, threads: int, budget_ms: int | None = None) -> dict:
    """Place the calls in a fresh home; every call's outcome, habits and (if not exact) its transcript."""
    scripts = off_script_scripts(calls, seed)
    habits = {s.index: sorted(OffScriptCaller(s, None, TODAY).habits) for s in scripts}
    with tempfile.TemporaryDirectory(prefix="innkeeper-offscript-") as home:
        settings = Settings(home=Path(home), today=TODAY, llm_threads=threads)
        llm = None
        if reading is not None:
            from innkeeper.models.resolve import load_chat_model

            update = {"model_understanding": True, "model_understanding_budget_ms": budget_ms}
            settings = settings.model_copy(update={"llm_model": str(reading.resolve()), **update})
            llm = load_chat_model(settings)
        started = time.perf_counter()
        with Progress(*Progress.get_default_columns(), MofNCompleteColumn()) as progress:
            task = progress.add_task("calls", total=len(scripts))
            placed, _ = asyncio.run(
                place_calls(
                    settings,
                    scripts,
                    workers=1,
                    llm=llm,
                    caller=OffScriptCaller,
                    channel="twilio",
                    on_call=lambda _: progress.advance(task),
                )
            )
        seconds = time.perf_counter() - started
        db = Database.from_settings(settings)
        try:
            tools = HotelTools(db, load_hotel(settings.hotel_file), today=lambda: TODAY)
            log = CallLog(db)
            rows = []
            for script, call in zip(scripts, placed, strict=True):
                exact = booked_as_asked(tools, call)
                outcome = "exact" if exact else ("wrong" if call.booked_code else "not booked")
                row = {"index": script.index, "habits": habits[script.index], "outcome": outcome, "turns": call.turns}
                row |= {"end": call.end, "asked": call.asked, "acts": call.acts}
                turns = log.transcript(call.call_id)
                metas = [_meta(t.tool_calls) for t in turns if t.role == "agent"]
                row["model_read"] = sum(m.get("understanding") == "model" for m in metas)
                row["disagreed"] = sum(bool(m.get("disagreements")) for m in metas)
                if outcome != "exact":
                    row["transcript"] = [f"{t.role}: {t.text}" for t in turns]
                rows.append(row)
        finally:
            db.close()
    reader = {"model": str(reading), "budget_ms": budget_ms} if reading else None
    return {"reading": reader, "seconds": round(seconds, 1), "calls": rows}


def _meta(tool_calls: list[dict] | None) -> dict:
    """An agent turn's meta entry (how the caller's turn was understood and worded)."""
    return next((c["meta"] for c in tool_calls or [] if "meta" in c), {})


def summarize(result: dict) -> dict:
    rows = result["calls"]
    outcomes = Counter(r["outcome"] for r in rows)
    by_habit = {
        h: f"{sum(r['outcome'] == 'exact' for r in rows if h in r['habits'])}/{sum(h in r['habits'] for r in rows)}"
        for h in HABITS
    }
    return {
        "calls": len(rows),
        "exact": outcomes["exact"],
        "wrong": outcomes["wrong"],
        "not_booked": outcomes["not booked"],
        "mean_turns": round(sum(r["turns"] for r in rows) / max(len(rows), 1), 1),
        "model_read_share": round(sum(r["model_read"] for r in rows) / max(sum(r["turns"] for r in rows), 1), 3),
        "turns_disagreed": sum(r["disagreed"] for r in rows),
        "exact_by_habit": by_habit,
        "seconds": result["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--reading", type=Path, help="a model directory that reads every caller turn")
    parser.add_argument("--threads", type=int, default=1, help="model threads")
    parser.add_argument(
        "--budget-ms",
        type=int,
        help="a reading's time limit, as served (default: none — this measures what the model understands, "
        "not how fast; `benchmarks/voice_latency.py --reading` measures the time)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = run(args.calls, args.seed, args.reading, args.threads, args.budget_ms)
    result["summary"] = summary = summarize(result)
    out = args.out or RESULTS / f"off_script_calls{'_reading' if args.reading else ''}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    table = Table("reader", "calls", "exact", "wrong", "no booking", "turns", "model read", title="off-script calls")
    who = "model+rules" if args.reading else "rules"
    cells = [str(summary[k]) for k in ("calls", "exact", "wrong", "not_booked", "mean_turns")]
    table.add_row(who, *cells, f"{summary['model_read_share']:.0%}")
    habits = Table("habit", "exact / calls with it", title="by habit (a call has several)")
    for habit, share in summary["exact_by_habit"].items():
        habits.add_row(habit, share)
    console = Console(width=80)
    console.print(table, habits)
    console.print(f"{summary['seconds']:.0f} s; every call in {out}")


if __name__ == "__main__":
    main()
