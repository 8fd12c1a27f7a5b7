"""`innkeeper tune nightly`: learn from the logged calls, safely, and tell the serving process.

    curate   select finished, eligible calls; redact personal data; filter poisoned turns  (tuning/data/curate.py)
    train    from the guarded base, on all eligible calls but a held-out share (projected method)
    evaluate the candidate, the base and the serving model on one suite              (tuning/evaluate/)
    gate     domain gain vs the serving model, retention and safety budgets vs the base,
             memorization canaries                                        (tuning/gate.py, tuning/data/canaries.py)
    register the version with its metrics and lineage (the call ids it learned from)  (innkeeper/models/registry.py)
    promote  if it passed: the registry says so, and `innkeeper serve` swaps to it between turns

Each run lives in its own directory under `home/tuning/nightly/` with a `state.json` written after every
step, so a run that was killed resumes where it stopped, on the same data; the registry keys versions
by run id, so no run registers twice. Retraining always starts from the guarded base (never stacking
deltas), so removing a call from the data and running again rebuilds a model without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from innkeeper.core.db.database import Database
from innkeeper.core.settings import Settings
from innkeeper.models.registry import ModelRegistry, VersionStatus
from tuning.data.actions import (
    ActionExample,
    encode_action_examples,
    example_from_json,
    example_json,
    shared_readings,
)
from tuning.pipeline import CorpusSize

log = logging.getLogger(__name__)

STEPS = ("curate", "train", "evaluate", "gate", "register", "promote")
MIN_HELDOUT_SEQUENCES = 4  # fewer held-out call sequences than this: the shared dev dialogues join the measure


@dataclass
class NightlyReport:
    """What a run did; printed by the command and stored as the run's `report.json`."""

    run_id: str
    status: str = "running"  # running | skipped | rejected | promoted | registered | failed
    version_id: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    retention: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    note: str = ""
    resumed_from: str | None = None


class NightlyRun:
    """One run's directory and its persisted state (which steps are done, and what they produced)."""

    def __init__(self, directory: Path, state: dict[str, Any]):
        self.dir = directory
        self.state = state

    @property
    def id(self) -> str:
        return self.dir.name

    def done(self, step: str) -> bool:
        return step in self.state.get("done", {})

    def output(self, step: str) -> dict[str, Any]:
        return self.state["done"][step]

    def finish_step(self, step: str, output: dict[str, Any]) -> None:
        self.state.setdefault("done", {})[step] = output
        self.save()

    def save(self) -> None:
        _write_json(self.dir / "state.json", self.state)


PROGRESS_FILE = "progress.json"  # the train step's {step, of, loss, at}, for the dashboard


def nightly_root(settings: Settings) -> Path:
    return settings.nightly_dir


def open_run(settings: Settings, *, now: datetime | None = None) -> tuple[NightlyRun, bool]:
    """The newest unfinished run (resumed) or a new one; returns (run, resumed)."""
    root = nightly_root(settings)
    root.mkdir(parents=True, exist_ok=True)
    for directory in sorted((p for p in root.iterdir() if p.is_dir()), reverse=True):
        state = _read_json(directory / "state.json")
        if state is not None and state.get("status") == "running":
            return NightlyRun(directory, state), True
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S")
    directory, n = root / f"run-{stamp}", 1
    while directory.exists():  # two runs in one second (a skipped night ends at once): "-2" sorts after it
        n += 1
        directory = root / f"run-{stamp}-{n}"
    directory.mkdir()
    run = NightlyRun(directory, {"status": "running", "started_at": _iso(now), "done": {}})
    run.save()
    return run, False


def run_nightly(
    settings: Settings,
    *,
    db: Database | None = None,
    registry: ModelRegistry | None = None,
    force: bool = False,
    console: Console | None = None,
    stop_after: str | None = None,
    size: CorpusSize | None = None,
    overrides: dict[str, Any] | None = None,
) -> NightlyReport:
    """Run (or resume) the nightly job.

    `stop_after` ends the run after that step (resume tests); `size` and `overrides` (training
    configuration fields) shrink the run for tests and benchmarks.
    """
    console = console or Console()
    db = db or Database.from_settings(settings)
    db.migrate()
    registry = registry or ModelRegistry.from_settings(settings, db)
    run, resumed = open_run(settings)
    report = NightlyReport(run_id=run.id, resumed_from=run.id if resumed else None)
    if resumed:
        console.print(f"[yellow]resuming {run.id} after: {', '.join(run.state['done']) or 'nothing'}")
    steps: dict[str, Callable[[], dict[str, Any] | None]] = {
        "curate": lambda: _curate(settings, db, run, force, report),
        "train": lambda: _train(settings, run, size or CorpusSize(), overrides or {}),
        "evaluate": lambda: _evaluate(settings, registry, run),
        "gate": lambda: _gate(settings, run),
        "register": lambda: _register(registry, run),
        "promote": lambda: _promote(settings, registry, run),
    }
    try:
        for index, step in enumerate(STEPS, 1):
            if not run.done(step):
                console.print(f"[bold][{index}/{len(STEPS)}] {step}[/]")
                started = time.perf_counter()
                output = steps[step]()
                if output is None:  # nothing to learn: the run ends here, successfully
                    return _end(run, report, "skipped", console)
                output["seconds"] = round(time.perf_counter() - started, 1)
                run.finish_step(step, output)
            _absorb(report, step, run.output(step))
            console.print(f"    {_describe(step, run.output(step))}")
            if step == stop_after:
                return report
    except Exception as err:
        report.note = f"{type(err).__name__}: {err}"
        run.state["error"] = report.note
        run.save()  # still "running": the next invocation resumes from the failed step
        report.status = "failed"
        raise
    return _end(run, report, run.output("promote")["status"], console)


# ---------------------------------------------------------------------- the steps
def _curate(settings: Settings, db: Database, run: NightlyRun, force: bool, report: NightlyReport) -> dict | None:
    from tuning.data.canaries import assert_canaries_absent
    from tuning.data.curate import curate

    curation = curate(db, settings, since=None, flagged_turns=_flagged_turns(db))
    assert_canaries_absent(curation.dialogues, settings.nightly_canaries)
    held_out = {d.id for d in curation.dialogues if _held_out(d.id, settings.nightly_heldout_fraction)}
    last = _read_json(nightly_root(settings) / "last_success.json") or {}
    new_calls = sorted(set(curation.call_ids) - set(last.get("call_ids", [])))
    reading_ids = sorted(e.example_id for e in curation.readings)
    # A new label is new data: a new correction, or one that replaces a booking's label of the same turn.
    labels = sorted(f"{e.example_id} {e.action.model_dump_json()}" for e in curation.readings)
    new_calls += sorted(set(labels) - set(last.get("reading_labels", [])))
    counts = {**curation.counts, "eligible": len(curation.dialogues), "new_since_last_run": len(new_calls)}
    report.counts = counts
    trainable = len(curation.dialogues) - len(held_out)
    if trainable < settings.nightly_min_calls or (not new_calls and not force):
        why = (
            "no new eligible calls since the last run"
            if trainable >= settings.nightly_min_calls
            else f"{trainable} eligible calls outside the held-out share (need {settings.nightly_min_calls})"
        )
        report.note = f"nothing to learn: {why} ({counts})"
        return None
    _write_json(run.dir / "dataset.json", [asdict(d) for d in curation.dialogues])
    _write_json(run.dir / "readings.json", [example_json(e) for e in curation.readings])
    return {
        "counts": counts,
        "held_out": sorted(held_out),
        "call_ids": sorted(curation.call_ids),
        "reading_ids": reading_ids,
        "reading_labels": labels,
    }


def _train(settings: Settings, run: NightlyRun, size: CorpusSize, overrides: dict[str, Any]) -> dict[str, Any]:
    from innkeeper.models.artifacts import verify_artifact
    from innkeeper.models.resolve import guarded_dir, start_model_dir
    from tuning.pipeline import method_options, tune, tune_config

    artifact = run.dir / "artifact"
    base_dir = start_model_dir(settings)
    started_from = {"base_dir": str(base_dir), "guarded": base_dir == guarded_dir(settings)}
    if artifact.exists() and not verify_artifact(artifact):
        metrics = json.loads((artifact / "manifest.json").read_text())["metrics"]
        return {"artifact": str(artifact), "metrics": metrics, **started_from}
    train, heldout, _ = _examples(settings, run, shared_readings_count=settings.tune_reading_examples)
    cfg = tune_config(settings, **{"steps": settings.nightly_steps, **overrides})
    if "eval_every" not in overrides:  # the evaluate step measures the candidate: no periodic evaluation
        cfg = cfg.model_copy(update={"eval_every": cfg.steps})
    cfg = cfg.model_copy(update={"progress_file": str(run.dir / PROGRESS_FILE)})
    lineage = {
        "call_ids": sorted({e.dialogue_id for e in train} & set(run.output("curate")["call_ids"])),
        "reading_ids": run.output("curate").get("reading_ids", []),
        "heldout_call_ids": run.output("curate")["held_out"],
        "nightly_run": run.id,
        "curation_counts": run.output("curate")["counts"],
    }
    outcome = tune(
        settings,
        method=settings.tune_method,
        cfg=cfg,
        base_dir=base_dir,
        train_examples=train,
        eval_examples=heldout,
        out_dir=run.dir,
        lineage=lineage,
        size=size,
        method_options=method_options(settings, settings.tune_method),
    )
    return {"artifact": str(outcome.artifact), "metrics": outcome.metrics, **started_from}


def _evaluate(settings: Settings, registry: ModelRegistry, run: NightlyRun) -> dict[str, Any]:
    """The candidate against the guarded base on the gate's suite, and the serving model's domain NLL."""
    from dataclasses import replace

    from agent.reply.llm import ChatModel
    from innkeeper.models.resolve import start_model_dir
    from tuning import evaluate
    from tuning.pipeline import load_for_eval

    _, heldout, domain_source = _examples(settings, run)
    candidate, _ = load_for_eval(Path(run.output("train")["artifact"]))
    base = ChatModel(start_model_dir(settings), threads=settings.llm_threads)
    suite = replace(
        evaluate.default_suite(settings, base.tokenizer, settings.nightly_eval_size), domain_examples=heldout
    )
    base_result = evaluate.run_suite(base.model, base.tokenizer, suite=suite, model_id=base.version)
    result = evaluate.run_suite(
        candidate.model,
        candidate.tokenizer,
        suite=suite,
        base=evaluate.Baseline(result=base_result, model=base.model),
        model_id=candidate.version,
    )
    evaluate.save_result(result, run.dir / "eval-candidate.json")
    evaluate.save_result(base_result, run.dir / "eval-base.json")
    retention = evaluate.retention_summary(result, base_result)
    serving = registry.serving()
    serving_nll = retention.get("domain_nll_base")
    if serving is not None:
        serving_model, _ = load_for_eval(registry.local_artifact(serving))
        domain_only = evaluate.EvalSuite(
            name="domain", domain_examples=heldout, policy_probes=(), domain_n=suite.domain_n
        )
        served = evaluate.run_suite(serving_model.model, serving_model.tokenizer, suite=domain_only, progress=False)
        serving_nll = served["measures"]["domain"]["nll"]
    if settings.gate_understanding_dialogues > 0:  # the reading, measured as callers get it: model, then rules
        reference = serving_model if serving is not None else base
        retention |= _understanding(settings, candidate, reference)
    return {
        "retention": retention,
        "serving_version": serving.id if serving else None,
        "serving_domain_nll": serving_nll,
        "domain_source": domain_source,
        "table": evaluate.render_table(result, base_result),
    }


def _understanding(settings: Settings, candidate: Any, serving: Any) -> dict[str, float | None]:
    """Reading accuracy of the candidate and of the model serving now on the gate's fixed SGD dev dialogues."""
    from agent.reply.understand import ModelReader
    from innkeeper.core.hotel import load_hotel
    from tuning.evaluate.understanding import SGD_TODAY, gate_dialogues, reading_accuracy

    dialogues = gate_dialogues(settings.shared_data, settings.gate_understanding_dialogues)
    if not dialogues:
        return {"understanding": None, "understanding_base": None}  # asked for and not measured: the gate says so
    hotel = load_hotel(settings.hotel_file)
    return {
        "understanding": reading_accuracy(ModelReader(candidate).read, hotel, dialogues, SGD_TODAY),
        "understanding_base": reading_accuracy(ModelReader(serving).read, hotel, dialogues, SGD_TODAY),
    }


def _gate(settings: Settings, run: NightlyRun) -> dict[str, Any]:
    from tuning.data.canaries import check_canaries
    from tuning.gate import GateBudgets, decide
    from tuning.pipeline import load_for_eval

    candidate, _ = load_for_eval(Path(run.output("train")["artifact"]))
    canaries = check_canaries(candidate, settings.nightly_canaries)
    evaluation = run.output("evaluate")
    decision = decide(
        evaluation["retention"],
        serving_domain_nll=evaluation["serving_domain_nll"],
        canary_hits=list(canaries.descriptions),
        budgets=GateBudgets.from_settings(settings),
    )
    return {"gate": decision.as_dict()}


def _register(registry: ModelRegistry, run: NightlyRun) -> dict[str, Any]:
    gate = run.output("gate")["gate"]
    train, evaluation = run.output("train"), run.output("evaluate")
    artifact = Path(train["artifact"])
    lineage = json.loads((artifact / "manifest.json").read_text()).get("lineage", {})
    version = registry.register(
        artifact,
        status=VersionStatus.CANDIDATE,
        metrics={**train["metrics"], **evaluation["retention"], "serving_domain_nll": evaluation["serving_domain_nll"]},
        lineage=lineage,
        gate=gate,
        run_id=run.id,
        note=f"nightly run {run.id}",
    )
    return {"version_id": version.id}


def _promote(settings: Settings, registry: ModelRegistry, run: NightlyRun) -> dict[str, Any]:
    version_id = run.output("register")["version_id"]
    gate = run.output("gate")["gate"]
    if not gate["promote"]:
        registry.reject(version_id, gate["reasons"])
        return {"status": "rejected"}
    if not settings.nightly_promote:
        return {"status": "registered"}
    if registry.get(version_id).status is not VersionStatus.PROMOTED:
        registry.promote(version_id, actor="nightly", reason=f"passed the gate in run {run.id}")
    return {"status": "promoted"}


# ---------------------------------------------------------------------- helpers
def _examples(settings: Settings, run: NightlyRun, *, shared_readings_count: int = 0) -> tuple[list, list, str]:
    """(train, held-out) examples from the run's frozen dataset, tokenized for the base model; the train side
    gets `shared_readings_count` annotated SGD turns of the reading too."""
    from transformers import AutoTokenizer

    from innkeeper.models.resolve import start_model_dir
    from tuning.data.dialogues import Dialogue, build_examples, load_shared_dialogues, split_dialogues

    tokenizer = AutoTokenizer.from_pretrained(start_model_dir(settings))
    raw = json.loads((run.dir / "dataset.json").read_text())
    dialogues = [Dialogue(d["id"], d["source"], tuple(tuple(turn) for turn in d["turns"])) for d in raw]
    held = set(run.output("curate")["held_out"])
    train = build_examples([d for d in dialogues if d.id not in held], tokenizer)
    heldout = build_examples([d for d in dialogues if d.id in held], tokenizer)
    # Operator-corrected readings of the calls, on the same side of the split as their call.
    readings = [example_from_json(e) for e in _read_json(run.dir / "readings.json") or []]
    train += encode_action_examples([e for e in readings if _call_of(e) not in held], tokenizer)
    heldout += encode_action_examples([e for e in readings if _call_of(e) in held], tokenizer)
    # The reading is learned beside the wording: annotated dialogue-set turns (only the train step asks).
    train += encode_action_examples(shared_readings(settings.shared_data, shared_readings_count), tokenizer)
    if len(heldout) >= MIN_HELDOUT_SEQUENCES:
        return train, heldout, f"{len(heldout)} held-out call sequences"
    shared_dev = split_dialogues(load_shared_dialogues(settings.shared_data))["dev"]
    extra = build_examples(shared_dev, tokenizer)
    return train, heldout + extra, f"{len(heldout)} held-out call sequences + {len(extra)} shared dev dialogues"


def _call_of(example: ActionExample) -> str:
    return example.example_id.split("#")[0]


def _held_out(call_id: str, fraction: float) -> bool:
    """A stable, seed-free assignment: a call stays on its side of the split in every later run."""
    digest = hashlib.sha256(f"nightly-heldout:{call_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _flagged_turns(db: Database) -> frozenset[int]:
    """Agent turns an operator flagged as bad (`flagged` in the turn's latencies JSON, set by review tools)."""
    from sqlalchemy import select

    from innkeeper.core.db.schema import Turn

    def work(session) -> frozenset[int]:
        rows = session.execute(select(Turn.id, Turn.latencies).where(Turn.role == "agent"))
        return frozenset(turn_id for turn_id, meta in rows if meta and meta.get("flagged"))

    return db.transact(work, write=False)


def _absorb(report: NightlyReport, step: str, output: dict[str, Any]) -> None:
    report.seconds[step] = output.get("seconds", 0.0)
    if step == "curate":
        report.counts = output["counts"]
    elif step == "evaluate":
        report.retention = output["retention"]
    elif step == "gate":
        report.gate = output["gate"]
    elif step == "register":
        report.version_id = output["version_id"]


def _describe(step: str, output: dict[str, Any]) -> str:
    seconds = f"({output.get('seconds', 0):.0f} s)"
    if step == "curate":
        c = output["counts"]
        held = len(output["held_out"])
        return f"{c['eligible']} eligible calls ({c['new_since_last_run']} new), {held} held out; {c} {seconds}"
    if step == "train":
        m = output["metrics"]
        base = output.get("base_dir", "?")
        start = (
            f"from {base}"
            if output.get("guarded")
            else f"[yellow]from the raw model {base}: no guarded base yet (`innkeeper tune align`)[/]"
        )
        return (
            f"domain loss {m['domain_loss_before']:.3f} → {m['domain_loss_after']:.3f} in {m['steps']} steps, "
            f"{start} {seconds}"
        )
    if step == "evaluate":
        r = output["retention"]
        served = f"serving {output['serving_domain_nll']:.3f}; {output['domain_source']}"
        return f"domain NLL {r.get('domain_nll', float('nan')):.3f} ({served}) {seconds}"
    if step == "gate":
        gate = output["gate"]
        return "passed" if gate["promote"] else "rejected: " + "; ".join(gate["reasons"])
    if step == "register":
        return f"version {output['version_id']}"
    return output.get("status", "")


def _end(run: NightlyRun, report: NightlyReport, status: str, console: Console) -> NightlyReport:
    report.status = status
    report.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    run.state.update(status=status, finished_at=_iso(None), note=report.note)
    run.state.pop("error", None)
    run.save()
    _write_json(run.dir / "report.json", asdict(report))
    if status != "skipped":
        root = run.dir.parent
        _write_json(
            root / "last_success.json",
            {
                "run": run.id,
                "finished_at": _iso(None),
                "call_ids": run.output("curate")["call_ids"],
                "reading_ids": run.output("curate").get("reading_ids", []),
                "reading_labels": run.output("curate").get("reading_labels", []),
            },
        )
    console.print(f"[bold]nightly {run.id}: {status}[/] {report.note}")
    return report


def _iso(moment: datetime | None) -> str:
    return (moment or datetime.now(UTC)).isoformat()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, value: Any) -> None:
    """Atomic: a run killed mid-write leaves the previous state, never half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, default=str))
    os.replace(tmp, path)
