"""The nightly job end to end on a tiny model: logged calls → curated data → candidate → gate → registry.

Also: a run stopped midway leaves no version behind and the next run finishes it on the same data; a
night with no new calls trains nothing.
"""

from __future__ import annotations

import asyncio
import json
from datetime import date

import pytest
from rich.console import Console

from agent.call.calllog import CallLog
from agent.call.review import Corrections
from agent.reply.llm import build_tiny_chat_model
from agent.understanding.action import ActionIntent, TurnAction
from innkeeper.core.settings import Settings
from innkeeper.models.registry import ModelRegistry, VersionStatus
from innkeeper.serve.runtime import AgentRuntime
from innkeeper.simulation.text_callers import say_lines
from tuning.gate import OPEN_GATE_SETTINGS
from tuning.nightly import nightly_root, run_nightly
from tuning.pipeline import CorpusSize

TINY = CorpusSize(text_tokens=256, chats=2, safety=2, max_len=96)
FAST = {"steps": 2, "batch_size": 2, "eval_every": 1, "progress": False, "lr": 1e-3}
CALLS = [
    ["Hi, I'd like a room for two nights from December 7.", "Two adults.", "The deluxe king.", "Ana Diaz.",
     "207 555 0199", "Yes, book it.", "No, that's all, bye."],
    ["What time is check-out?", "Thanks, bye."],
    ["Do you have parking?", "Is breakfast included?", "Goodbye."],
    ["I need a room for tomorrow night, just me.", "The standard queen.", "John Smith.", "617 555 0123",
     "Yes please.", "Bye."],
]  # fmt: skip


@pytest.fixture
def nightly_settings(tmp_path, sqlite_db) -> Settings:
    model_dir = build_tiny_chat_model(tmp_path / "tiny")
    settings = Settings(
        home=tmp_path / "home",
        llm_model=str(model_dir),
        database_url=sqlite_db.engine.url.render_as_string(False),
        today=date(2026, 11, 26),
        nightly_eval_size="tiny",
        nightly_heldout_fraction=0.3,
        gate_understanding_dialogues=2,
        nightly_canaries=["Innkeeper canary 7Q4 ZX9 door code 4417"],
    )
    if not (settings.shared_data / "dialogues").is_dir():
        pytest.skip(f"shared data not found at {settings.shared_data}")
    return settings


def place_calls(settings: Settings, db, scripts) -> list[str]:
    runtime = AgentRuntime(settings, llm=None, db=db)
    return [asyncio.run(say_lines(runtime, lines)).call_id for lines in scripts]


def nightly(settings, db, **kw):
    registry = ModelRegistry.from_settings(settings, db)
    report = run_nightly(
        settings, db=db, registry=registry, size=TINY, overrides=FAST, console=Console(quiet=True), **kw
    )
    return report, registry


def test_a_night_trains_on_the_calls_gates_and_registers(nightly_settings, sqlite_db, monkeypatch):
    settings = nightly_settings.model_copy(update=OPEN_GATE_SETTINGS)
    call_ids = place_calls(settings, sqlite_db, CALLS * 3)
    # Call ids are random and the split hashes them: with four distinct calls, one night in ~120 would
    # hold out all four and (rightly) learn nothing. Pin the split: the first script's calls are held out.
    first_script = set(call_ids[:: len(CALLS)])
    monkeypatch.setattr("tuning.nightly._held_out", lambda call_id, fraction: call_id in first_script)
    report, registry = nightly(settings, sqlite_db)

    assert report.status == "promoted", report
    version = registry.get(report.version_id)
    assert registry.serving().id == version.id
    learned = set(version.lineage["call_ids"])
    held_out = set(version.lineage["heldout_call_ids"])
    assert learned and learned <= set(call_ids) and not learned & held_out
    assert len(held_out) == 1 and held_out <= first_script
    # the same four scripts three times: after redaction (names, codes) the copies are duplicates
    assert report.counts["eligible"] == len(CALLS)
    assert report.counts["duplicates"] == len(call_ids) - len(CALLS)
    assert version.gate["decision"] == "promote" and version.metrics["domain_nll"] > 0
    # the train step left its progress for the dashboard: every step done
    progress = json.loads((nightly_root(settings) / report.run_id / "progress.json").read_text())
    assert progress["step"] == progress["of"] == FAST["steps"] and progress["loss"] > 0
    understood = version.gate["checks"]["understanding"]  # read on 2 SGD dev dialogues, vs the base serving now
    assert 0 <= understood["value"] <= 1 and understood["limit"] is not None
    dataset = (nightly_root(settings) / report.run_id / "dataset.json").read_text()
    assert "Diaz" not in dataset and "555 0199" not in dataset  # redacted before anything was written
    trained = json.loads((nightly_root(settings) / report.run_id / "state.json").read_text())["done"]["train"]
    assert trained["base_dir"] == str(settings.llm_model) and trained["guarded"] is False  # no `tune align` here
    # the two bookings the callers confirmed label the turns that gave their details (dates, party, yes)
    assert report.counts["confirmed_readings"] >= 6

    # Nothing new since: the next night trains nothing.
    again, _ = nightly(settings, sqlite_db)
    assert again.status == "skipped" and "no new" in again.note
    assert len(registry.list()) == 1

    # An operator's correction of a learned call is new data: the next night curates it as a reading example.
    call_id = sorted(learned)[0]
    first_caller_turn = next(t for t in CallLog(sqlite_db).transcript(call_id) if t.role == "caller")
    Corrections(sqlite_db).add(call_id, first_caller_turn.index, TurnAction(intents=[ActionIntent.ASK]), author="dana")
    corrected, _ = nightly(settings, sqlite_db, stop_after="curate")
    assert corrected.status == "running" and corrected.counts["corrected_readings"] == 1
    readings = json.loads((nightly_root(settings) / corrected.run_id / "readings.json").read_text())
    (reading,) = [r for r in readings if r["example_id"] == f"{call_id}#{first_caller_turn.id}"]
    assert reading["action"] == {"intents": ["ask"]}  # the operator's reading wins over any other label


def test_a_candidate_outside_its_budgets_is_registered_as_rejected_with_reasons(nightly_settings, sqlite_db):
    settings = nightly_settings.model_copy(update={**OPEN_GATE_SETTINGS, "gate_max_chat_kl": -1.0})
    place_calls(settings, sqlite_db, CALLS * 2)
    report, registry = nightly(settings, sqlite_db)

    assert report.status == "rejected"
    version = registry.get(report.version_id)
    assert version.status is VersionStatus.REJECTED
    assert any("KL" in reason for reason in version.gate["reasons"])
    assert registry.serving() is None  # the base keeps serving


def test_a_run_stopped_midway_registers_nothing_and_the_next_run_finishes_it(nightly_settings, sqlite_db):
    settings = nightly_settings.model_copy(update=OPEN_GATE_SETTINGS)
    place_calls(settings, sqlite_db, CALLS * 2)
    first, registry = nightly(settings, sqlite_db, stop_after="gate")
    assert registry.list() == []  # killed before registering: no half-registered version
    state = json.loads((nightly_root(settings) / first.run_id / "state.json").read_text())
    assert state["status"] == "running" and set(state["done"]) == {"curate", "train", "evaluate", "gate"}
    trained_at = (nightly_root(settings) / first.run_id / "artifact" / "manifest.json").stat().st_mtime

    place_calls(settings, sqlite_db, CALLS[:1])  # a call that arrives meanwhile waits for the next night
    second, registry = nightly(settings, sqlite_db)
    assert second.resumed_from == first.run_id and second.status == "promoted"
    assert (nightly_root(settings) / first.run_id / "artifact" / "manifest.json").stat().st_mtime == trained_at
    assert len(registry.list()) == 1
    assert registry.get(second.version_id).lineage["nightly_run"] == first.run_id
