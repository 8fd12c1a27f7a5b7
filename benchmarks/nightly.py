"""What the nightly learning job costs at 100 and 1000 logged calls, and what a model swap costs a live call.

For each size, in a fresh INNKEEPER_HOME (SQLite) and a fresh subprocess per stage (so `ru_maxrss` is that
stage's own peak):

1. **calls** (not part of the job; timed on its own): N text calls placed through the real brain
   (`AgentRuntime(llm=None)`, template wording) by a seeded, reactive simulated caller: bookings with
   varied dates, stays, guest counts, rooms, names and phone formats; questions (check-out, parking,
   breakfast, pets, Wi-Fi, cancellation policy, ...); cancellations, look-ups and changes of bookings made
   earlier in the run, by code + surname; short hang-ups; about 2% of calls read out a card number (typed
   digits, spoken words, or split over two turns). Many distinct callers, some repeat callers.
2. **nightly**: `tuning.nightly.run_nightly` once: seconds per step (curate, train, evaluate, gate,
   register, promote), total, peak RSS, curation counts, training steps, the gate's decision. Then an audit
   (outside the timing): per kind of call, how many reached the training set, which were dropped and why,
   and whether any name, phone number, booking code or card number of the generated calls is still in the
   run's dataset.json.
3. **swap** (`--swap`, on by default, after the largest size): the serving model and the nightly run's delta
   artifact; LLM-worded question turns, each the first line of a fresh conversation, `--swap-gap-ms` apart
   (the caller speaking), while `innkeeper.models.slot.ModelSlot.swap_to` loads the new version with
   `--swap-loader` (`process`: the server's paused low-priority loader process; `thread`: load_version in
   the swap's worker thread), `--swap-repeats` swaps in a row. Reports the load times, the reference swap's
   pause, the gap between the last turn on the old version and the first on the new, and the added latency
   of the turns during a load: each turn's excess over its question's median on the same weights, less
   that of the quiet turns around it (the host's speed drifts), with a bootstrap 95% interval (target: no
   turn slower by more than 50 ms).

Prints tables and writes `benchmarks/results/nightly.json` (`nightly_tiny.json` with --tiny; or --out).

    .venv/bin/python benchmarks/nightly.py                                # 100 and 1000 calls, bundled model, swap
    .venv/bin/python benchmarks/nightly.py --base .innkeeper/tuning/guarded/model    # from a guarded base
    .venv/bin/python benchmarks/nightly.py --warm-cache .innkeeper/tuning # reuse a calibration made before
    .venv/bin/python benchmarks/nightly.py --tiny --calls 20 60           # quick check of the script itself

The base model is the bundled SmolLM2-135M unless `--base` names a model directory (a guarded base made by
`innkeeper tune align`); the defaults of the job (steps, eval suite, gate budgets) are the settings' unless
`--steps` / `--eval-size` override them. `--tiny` uses a tiny random model, a tiny corpus, 2 steps, a gate
that lets it through and one torch thread: its timings say nothing about the real job. `--home DIR` keeps
every size's home (database, nightly run, registry) for inspection; calls are placed one at a time by
default (`--workers`), which keeps a run reproducible and on two cores is no slower.

Caveats: the simulated caller runs in the same process as the brain during call generation; the swap
measurement loads the new model and generates on the same cores, as a serving process does; text turns
that wait `llm_first_sentence_ms` (2.5 s) for a grounded sentence speak the template, so their latency is
that budget (the swap table counts them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from innkeeper.core.settings import Settings
from innkeeper.simulation.text_callers import NUMBER_WORDS, TODAY, PlacedCall, place_calls, plan_calls
from tuning.gate import OPEN_GATE_SETTINGS

RESULTS = Path(__file__).resolve().parent / "results" / "nightly.json"
SWAP_TARGET_MS = 50.0
SWAP_NEIGHBOURS = 10  # quiet turns around a turn during a load that give its expected latency
# --tiny: the shapes tests/test_nightly.py uses (a tiny corpus, 2 steps, a gate that lets it through)
TINY_SIZE = {"text_tokens": 256, "chats": 2, "safety": 2, "max_len": 96}
TINY_OVERRIDES = {"steps": 2, "batch_size": 2, "eval_every": 1, "lr": 1e-3}

console = Console(width=None if sys.stdout.isatty() else 110)  # piped to a file: tables stay unwrapped


# ====================================================================== the stages (one subprocess each)


def stage_settings(args: argparse.Namespace, home: Path, *, model: bool = True) -> Settings:
    """The settings every stage of one size uses (a fresh home; the model as the options say).

    `model=False`: the stage needs no model (call generation), so --tiny builds none and imports no torch.
    """
    extra: dict[str, Any] = {"home": home, "today": TODAY, "database_url": None}
    if args.tiny:
        model_dir = home / "tiny-chat"
        if model and not (model_dir / "config.json").exists():
            from agent.reply.llm import build_tiny_chat_model

            build_tiny_chat_model(model_dir)
        extra |= {"llm_model": str(model_dir), "nightly_eval_size": "tiny", "nightly_heldout_fraction": 0.3}
        extra |= OPEN_GATE_SETTINGS
    elif args.base:
        extra["llm_model"] = str(Path(args.base).expanduser().resolve())
    if args.eval_size:
        extra["nightly_eval_size"] = args.eval_size
    if args.threads:
        extra["llm_threads"] = args.threads
    return Settings(**extra)


def run_calls_stage(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    settings = stage_settings(args, home, model=False)
    scripts = plan_calls(args.one_size, args.seed + args.one_size)
    calls, summary = asyncio.run(place_calls(settings, scripts, workers=args.workers))
    (home / "bench-calls.json").write_text(json.dumps([asdict(c) for c in calls], indent=0))
    summary["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    summary["vm_hwm_mb"] = _vm_hwm_mb()
    return summary


def run_nightly_stage(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    import torch

    from innkeeper.core.db.database import Database
    from innkeeper.models.registry import ModelRegistry
    from innkeeper.models.resolve import start_model_dir
    from tuning.nightly import nightly_root, run_nightly
    from tuning.pipeline import CorpusSize

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = stage_settings(args, home)
    db = Database.from_settings(settings)
    registry = ModelRegistry.from_settings(settings, db)
    size = CorpusSize(**TINY_SIZE) if args.tiny else None
    overrides: dict[str, Any] = {**(TINY_OVERRIDES if args.tiny else {}), "progress": False}
    if args.steps:
        overrides["steps"] = args.steps
    started = time.perf_counter()
    report = run_nightly(
        settings,
        db=db,
        registry=registry,
        force=True,
        console=Console(stderr=True),
        size=size,
        overrides=overrides,
    )
    total = time.perf_counter() - started
    run_dir = nightly_root(settings) / report.run_id
    state = json.loads((run_dir / "state.json").read_text())
    train = state.get("done", {}).get("train", {})
    artifact = None
    if report.version_id:
        artifact = str(registry.local_artifact(registry.get(report.version_id)))
    return {
        "status": report.status,
        "note": report.note,
        "version_id": report.version_id,
        "seconds": report.seconds,
        "total_s": round(total, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "vm_hwm_mb": _vm_hwm_mb(),
        "counts": report.counts,
        "train": {k: v for k, v in train.get("metrics", {}).items() if isinstance(v, int | float | str)},
        "gate": report.gate,
        "retention": report.retention,
        "run_dir": str(run_dir),
        "artifact": artifact,
        "base_dir": str(start_model_dir(settings)),
        "torch_threads": torch.get_num_threads(),
        "config": {"size": TINY_SIZE if args.tiny else "CorpusSize() defaults", "overrides": overrides},
    }


def run_swap_stage(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = stage_settings(args, home)
    return asyncio.run(measure_swap(settings, args))


# ---------------------------------------------------------------------- the swap


@dataclass
class TimedTurn:
    index: int
    line: str
    start: float  # perf_counter seconds
    end: float
    version: str
    llm_used: bool

    @property
    def ms(self) -> float:
        return (self.end - self.start) * 1000


SWAP_LINES = (
    "What time is check-out?",
    "Do you have parking?",
    "Is breakfast included?",
    "Can I bring my dog?",
    "Is the Wi-Fi free?",
    "When is the pool open?",
)


async def measure_swap(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """LLM-worded turns back to back while the slot swaps to the new version; see the module docstring.

    Every turn is the first caller line of a fresh conversation, so a line's turns do the same work on the
    same weights (greedy decoding): a turn's excess over its line's median is what the swap cost it.
    """
    from innkeeper.core.db.database import Database
    from innkeeper.core.hotel import load_hotel
    from innkeeper.models.resolve import start_model_dir
    from innkeeper.models.slot import load_version, load_version_beside_calls
    from innkeeper.serve.runtime import AgentRuntime

    base_dir = Path(args.swap_base) if args.swap_base else start_model_dir(settings)
    artifact = Path(args.swap_artifact) if args.swap_artifact else None
    source = "nightly run's delta"
    if artifact is None:
        artifact = _noise_artifact(base_dir, settings.home / "bench-swap-artifact")
        source = "seeded noise delta (no nightly artifact)"
    threads = settings.llm_threads
    t0 = time.perf_counter()
    old = await asyncio.to_thread(load_version, base_dir, None, version=None, threads=threads)
    first_load_s = time.perf_counter() - t0
    db = Database.from_settings(settings)
    db.migrate()  # no-ops after a nightly stage; needed when the swap runs alone (--calls with no sizes)
    db.seed(load_hotel(settings.hotel_file))
    runtime = AgentRuntime(settings, llm=old, db=db)
    new_version = args.swap_version or f"{old.version}+bench"
    scratch = settings.home / "loading"

    def loader(version: str):
        if args.swap_loader == "process":
            return lambda: load_version_beside_calls(
                base_dir, artifact, version=version, tokenizer_from=old, scratch=scratch, busy=runtime.slot.busy
            )
        return lambda: load_version(base_dir, artifact, version=version, threads=threads)

    turns: list[TimedTurn] = []
    loads: list[tuple[float, float]] = []  # (requested, swapped) of each swap
    results: list[dict[str, Any]] = []

    async def swap(version: str) -> None:
        requested = time.perf_counter()
        result = await runtime.slot.swap_to(version, loader(version))
        loads.append((requested, time.perf_counter()))  # swap_to returns right after its one assignment
        results.append(asdict(result))

    # Swap 1 goes to the new weights; later swaps load the same weights again under new names, for more
    # turns during a load (a turn's own spread on this machine is far above the 50 ms target).
    task: asyncio.Task[None] | None = None
    next_swap, last_index = args.swap_warm_turns, args.swap_max_turns
    for index in range(args.swap_max_turns):
        if task is None and len(results) < args.swap_repeats and index >= next_swap:
            version = new_version if not results else f"{new_version}#{len(results) + 1}"
            task = asyncio.get_running_loop().create_task(swap(version))
            await asyncio.sleep(0)  # the load starts before this turn does
        line = SWAP_LINES[index % len(SWAP_LINES)]
        convo = runtime.new_conversation(caller_number=f"+1207555{index:04d}")
        await convo.start()
        await convo.greet()
        await asyncio.sleep(args.swap_gap_ms / 1000)  # the caller says their line
        start = time.perf_counter()
        await convo.reply(line)
        end = time.perf_counter()
        outcome = convo.last_turn
        await convo.close()
        turns.append(
            TimedTurn(index, line, start, end, outcome.model_version, "llm_first_token_ms" in outcome.latencies)
        )
        if task is not None and task.done():
            task.result()  # a failed load raises here, with its reason
            task, next_swap = None, index + 1 + args.swap_after_turns
            if len(results) == args.swap_repeats:
                last_index = next_swap - 1
        if index >= last_index:
            break
    if len(results) < args.swap_repeats or index < last_index:
        if task is not None:
            await task
        raise SystemExit("the swaps did not finish within --swap-max-turns turns; raise it")
    db.close()
    summary = _swap_summary(turns, loads, results, old.version, first_load_s, source, artifact)
    summary["loader"] = args.swap_loader
    summary["gap_between_turns_ms"] = args.swap_gap_ms
    budget = settings.llm_first_sentence_ms
    summary["first_sentence_budget_ms"] = budget
    # a turn that waited the whole budget spoke the template: its latency is the budget, not the model's
    summary["turns_at_budget"] = sum(budget is not None and t.ms >= 0.98 * budget for t in turns)
    return summary


def _swap_summary(
    turns: list[TimedTurn],
    loads: list[tuple[float, float]],
    results: list[dict[str, Any]],
    old_version: str,
    first_load_s: float,
    source: str,
    artifact: Path,
) -> dict[str, Any]:
    """The first swap in detail; every swap's turns for the added latency (excess over the line's median)."""
    requested, swapped = loads[0]
    result = results[0]
    before = [t for t in turns if t.end <= requested]
    old_turns = [t for t in turns if t.version == old_version]
    new_turns = [t for t in turns if t.version.startswith(result["version"])]
    last_old, first_new = old_turns[-1], new_turns[0]
    spanning = next((t for t in turns if t.start <= swapped <= t.end), None)

    def loading(t: TimedTurn) -> bool:
        return any(t.end > req and t.start < done for req, done in loads)

    def weights(t: TimedTurn) -> str:
        return "old" if t.version == old_version else "new"

    quiet = [t for t in turns if not loading(t)]
    during = [t for t in turns if loading(t)]
    by_key: dict[tuple[str, str], list[float]] = defaultdict(list)
    for t in quiet:
        by_key[t.line, weights(t)].append(t.ms)
    median = {key: statistics.median(values) for key, values in by_key.items()}
    over = {t.index: t.ms - median[t.line, weights(t)] for t in turns if (t.line, weights(t)) in median}
    stray = [over[t.index] for t in quiet]
    excess = [over[t.index] for t in during if t.index in over]
    # The host's own speed drifts over minutes (shared cores): each turn during a load is compared with the
    # quiet turns around it, so the swap's cost is not confused with the drift.
    added_each = [over[t.index] - _neighbours_level(t.index, over, quiet) for t in during if t.index in over]
    added, low, high = _median_interval(added_each)
    return {
        "artifact": str(artifact),
        "artifact_source": source,
        "old_version": old_version,
        "new_version": result["version"],
        "first_model_load_s": round(first_load_s, 3),
        "load_s": result["load_s"],
        "load_s_all": [r["load_s"] for r in results],
        "pause_ms": max(r["pause_ms"] for r in results),
        "swaps": len(results),
        "turns": len(turns),
        "turns_before": len(before),
        "turns_during_load": len(during),
        "llm_used_share": round(sum(t.llm_used for t in turns) / len(turns), 3),
        "median_before_ms": round(statistics.median(t.ms for t in before), 1),
        "spanning_turn_ms": round(spanning.ms, 1) if spanning else None,
        "spanning_turn_version": spanning.version if spanning else None,
        "first_new_turn_ms": round(first_new.ms, 1),
        "gap_ms": round((first_new.start - last_old.end) * 1000, 3),
        # a turn's excess over the median of its line on the same weights with no load going on
        "no_load_excess_ms": _spread(stray),
        "during_load_excess_ms": _spread(excess),
        "added_ms": round(added, 1),
        "added_ci95_ms": [round(low, 1), round(high, 1)],
        "target_ms": SWAP_TARGET_MS,
        "met": high <= SWAP_TARGET_MS,
        "turn_ms": [round(t.ms, 1) for t in turns],
        "turn_lines": [t.line for t in turns],
        "turn_versions": [t.version for t in turns],
        "turn_during_load": [loading(t) for t in turns],
        "swap_requested_after_turn": len(before),
    }


def _spread(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": round(statistics.median(values), 1),
        "p90": round(_percentile(values, 90), 1),
        "max": round(max(values), 1),
    }


def _neighbours_level(index: int, over: dict[int, float], quiet: list[TimedTurn], k: int = SWAP_NEIGHBOURS) -> float:
    """The median excess of the k quiet turns nearest to turn `index` (half before, half after where there are)."""
    nearest = sorted((t for t in quiet if t.index in over), key=lambda t: abs(t.index - index))[:k]
    return statistics.median(over[t.index] for t in nearest)


def _median_interval(values: list[float], rounds: int = 2000) -> tuple[float, float, float]:
    """The median of `values` and its 95% bootstrap interval (seeded)."""
    if not values:
        return float("nan"), float("nan"), float("nan")
    rng = random.Random(0)
    samples = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(rounds))
    return statistics.median(values), samples[int(0.025 * rounds)], samples[int(0.975 * rounds) - 1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _noise_artifact(base_dir: Path, out_dir: Path) -> Path:
    """A real delta artifact (one tensor of the base nudged by seeded noise), when no nightly run made one."""
    import torch
    from transformers import AutoModelForCausalLM

    from innkeeper.models.artifacts import save_delta, weights_sha256

    if (out_dir / "manifest.json").exists():
        return out_dir
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    base_state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    name = next(n for n, p in model.named_parameters() if n.endswith("mlp.down_proj.weight"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        param = model.get_parameter(name)
        param.add_(1e-3 * torch.randn(param.shape, generator=generator))
    return save_delta(
        base_state,
        model,
        out_dir,
        base_id=str(base_dir),
        base_sha256=weights_sha256(base_dir),
        lineage={"call_ids": []},
        config={"benchmark": "nightly swap"},
        metrics={},
    )


# ====================================================================== the audit (in the parent, untimed)


def run_audit_stage(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    return audit(home, json.loads((home / "bench-nightly.json").read_text()))


def audit(home: Path, nightly: dict[str, Any]) -> dict[str, Any]:
    """Per kind of call: placed, in the training set, dropped by redaction (why); and leaked personal data."""
    from innkeeper.core.db.database import Database
    from innkeeper.core.db.schema import utcnow
    from innkeeper.core.hotel import load_hotel
    from tuning.data.curate import hotel_terms
    from tuning.data.redact import Dropped, redact_dialogue
    from tuning.data.selection import select_calls

    calls = [PlacedCall(**c) for c in json.loads((home / "bench-calls.json").read_text())]
    dataset_path = Path(nightly["run_dir"]) / "dataset.json"
    dataset = json.loads(dataset_path.read_text()) if dataset_path.exists() else []
    in_set = {d["id"]: d for d in dataset}
    settings = Settings(home=home, today=TODAY, database_url=None)
    db = Database.from_settings(settings)
    keep_words, keep_numbers = hotel_terms(load_hotel(settings.hotel_file))
    dropped: dict[str, str] = {}
    for dialogue in select_calls(
        db, since=None, require_consent=settings.nightly_require_consent, now=utcnow()
    ).dialogues:
        outcome = redact_dialogue(dialogue, keep_words=keep_words, keep_numbers=keep_numbers)
        if isinstance(outcome, Dropped):
            dropped[outcome.call_id] = outcome.reason
    db.close()
    per_kind: dict[str, Counter[str]] = defaultdict(Counter)
    examples: dict[str, list[str]] = defaultdict(list)
    leaks: list[dict[str, str]] = []
    for call in calls:
        row = per_kind[call.kind]
        row["placed"] += 1
        if call.call_id in in_set:
            row["in_dataset"] += 1
            leaks += _leaks(call, in_set[call.call_id])
        elif call.call_id in dropped:
            row[f"dropped:{dropped[call.call_id]}"] += 1
            if len(examples[call.kind]) < 3:
                examples[call.kind].append(f"{call.call_id} ({dropped[call.call_id]}; acts {call.acts})")
        else:
            row["duplicate, capped or no reply"] += 1
    return {
        "per_kind": {kind: dict(row) for kind, row in sorted(per_kind.items())},
        "dropped_examples": dict(examples),
        "leaks": leaks,
        "dataset_dialogues": len(dataset),
    }


_DIGIT_WORDS = {w: str(i) for i, w in enumerate(NUMBER_WORDS[:10])} | {"oh": "0"}


def _digits(text: str) -> str:
    """The digits of a text, spoken digit words included ("two zero seven" → "207")."""
    words = re.findall(r"[a-z]+|\d", text.lower())
    return "".join(_DIGIT_WORDS.get(w, w) for w in words if w.isdigit() or w in _DIGIT_WORDS)


def _leaks(call: PlacedCall, dialogue: dict[str, Any]) -> list[dict[str, str]]:
    found = []
    for role, text in dialogue["turns"]:
        digits = _digits(text)
        for kind, values in call.secrets.items():
            for value in values:
                if kind == "name":
                    hit = re.search(rf"\b{re.escape(value)}\b", text, re.I)
                elif kind == "code":
                    hit = re.search(rf"\b{re.escape(value)}\b", text, re.I) or "-".join(value) in text.upper()
                else:  # phone or card: its digits in a row, however they were written or said
                    hit = value[-7:] in digits
                if hit:
                    found.append({"call_id": call.call_id, "kind": kind, "role": role, "text": text})
    return found


# ====================================================================== the parent


def main() -> None:
    args = _parse()
    if args.one_size is not None:  # a child: one stage of one size
        run_child_stage(args)
        return
    root_ctx = tempfile.TemporaryDirectory(prefix="innkeeper-nightly-") if args.home is None else None
    root = Path(args.home or root_ctx.name)  # type: ignore[union-attr]
    sizes: list[dict[str, Any]] = []
    swap = None
    try:
        for n in args.calls:
            sizes.append(measure_size(args, root / f"calls-{n}", n))
            save(args, root, sizes, None)  # a later failure keeps what was measured
        if args.swap:
            swap = _child(args, sizes[-1]["calls"] if sizes else 0, "swap", *_swap_source(args, root, sizes))
    finally:
        if root_ctx is not None and not args.keep:
            root_ctx.cleanup()
        elif root_ctx is not None:
            console.print(f"kept {root}")
    print_tables(sizes, swap)
    save(args, root, sizes, swap)
    console.print(f"wrote {args.out}")


def run_child_stage(args: argparse.Namespace) -> None:
    """One stage of one size, in this (child) process; the result is the last stdout line, after 'RESULT '."""
    home = Path(args.home)
    stages = {"calls": run_calls_stage, "nightly": run_nightly_stage, "audit": run_audit_stage}
    result = (stages | {"swap": run_swap_stage})[args.stage](args, home)
    if args.stage == "nightly":  # the audit stage reads it
        (home / "bench-nightly.json").write_text(json.dumps(result, default=str))
    print("RESULT " + json.dumps(result, default=str))


def measure_size(args: argparse.Namespace, home: Path, n: int) -> dict[str, Any]:
    """Calls, the nightly job and the audit for one corpus size, each stage in its own process."""
    if home.exists() and any(home.iterdir()):
        raise SystemExit(f"{home} is not empty: each size needs a fresh INNKEEPER_HOME")
    home.mkdir(parents=True, exist_ok=True)
    if args.warm_cache:  # a base's calibration and protected corpus are computed once, not every night
        (home / "tuning").mkdir()
        for part in ("cache", "calibration"):
            (home / "tuning" / part).symlink_to(Path(args.warm_cache).resolve() / part)
    console.print(f"[bold]{n} calls[/] in {home}")
    generated = _child(args, n, "calls", home)
    console.print(
        f"  placed {generated['calls']} calls ({generated['caller_turns']} caller turns) in "
        f"{generated['seconds']:.1f} s; {generated['kinds']}"
    )
    nightly = _child(args, n, "nightly", home)
    console.print(f"  nightly: {nightly['status']} in {nightly['total_s']:.1f} s {nightly['note']}")
    checked = _child(args, n, "audit", home)
    return {"calls": n, "home": str(home), "generation": generated, "nightly": nightly, "audit": checked}


def _swap_source(args: argparse.Namespace, root: Path, sizes: list[dict[str, Any]]) -> tuple[Path, list[str]]:
    """Where the swap runs (the largest size's home) and what it swaps to (that run's registered version)."""
    if not sizes:
        home = root / "swap"
        home.mkdir(parents=True, exist_ok=True)
        return home, []
    nightly = sizes[-1]["nightly"]
    if args.swap_artifact or not nightly.get("artifact"):
        return Path(sizes[-1]["home"]), []
    extra = ["--swap-artifact", nightly["artifact"], "--swap-version", nightly["version_id"]]
    return Path(sizes[-1]["home"]), [*extra, "--swap-base", nightly["base_dir"]]


def save(args: argparse.Namespace, root: Path, sizes: list[dict[str, Any]], swap: dict[str, Any] | None) -> None:
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "options": {k: v for k, v in vars(args).items() if k not in ("one_size", "stage")},
        "model": "tiny random model (--tiny)" if args.tiny else (args.base or "bundled (settings default)"),
        "today": TODAY.isoformat(),
        "settings": _settings_used(args, root),
        "sizes": sizes,
        "swap": swap,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")


def _child(args: argparse.Namespace, n: int, stage: str, home: Path, extra: list[str] | None = None) -> dict:
    """Run one stage in a fresh interpreter (its own peak RSS); its JSON result comes on a 'RESULT' line."""
    options = {
        "--one-size": n,
        "--stage": stage,
        "--home": home,
        "--seed": args.seed,
        "--workers": args.workers,
        "--steps": args.steps,
        "--eval-size": args.eval_size,
        "--base": args.base,
        "--threads": args.threads,
        "--swap-warm-turns": args.swap_warm_turns,
        "--swap-after-turns": args.swap_after_turns,
        "--swap-max-turns": args.swap_max_turns,
        "--swap-loader": args.swap_loader,
        "--swap-gap-ms": args.swap_gap_ms,
        "--swap-repeats": args.swap_repeats,
        "--swap-artifact": args.swap_artifact,
    }
    command = [sys.executable, str(Path(__file__).resolve())]
    command += [str(part) for flag, value in options.items() if value is not None for part in (flag, value)]
    command += ["--tiny"] * args.tiny + (extra or [])
    started = time.perf_counter()
    # stdout carries the result; stderr (the job's step lines, warnings, tracebacks) shows as it happens
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = done.stdout.splitlines()
    result = next((json.loads(line[7:]) for line in reversed(lines) if line.startswith("RESULT ")), None)
    if done.returncode != 0 or result is None:
        console.print(done.stdout[-4000:], markup=False)
        raise SystemExit(f"stage {stage} for {n} calls failed (exit {done.returncode})")
    result["process_wall_s"] = round(time.perf_counter() - started, 1)
    return result


def print_tables(sizes: list[dict[str, Any]], swap: dict[str, Any] | None) -> None:
    if sizes:
        steps = Table(title="Nightly job per size (seconds; peak RSS of the job's own process)")
        steps.add_column("")
        for size in sizes:
            steps.add_column(f"{size['calls']} calls", justify="right")
        rows: list[tuple[str, Any]] = [
            ("call generation (not in the job)", lambda s: f"{s['generation']['seconds']:.1f}"),
            ("  ms per call", lambda s: f"{s['generation']['ms_per_call']:.0f}"),
            *[(f"{step}", _step(step)) for step in ("curate", "train", "evaluate", "gate", "register", "promote")],
            ("total (run_nightly)", lambda s: f"{s['nightly']['total_s']:.1f}"),
            ("process incl. imports", lambda s: f"{s['nightly']['process_wall_s']:.1f}"),
            ("peak RSS, MB (getrusage / VmHWM)", _rss),
            ("training steps", lambda s: str(s["nightly"]["train"].get("steps", "—"))),
            ("status / gate", _gate),
        ]
        for label, cell in rows:
            steps.add_row(label, *(cell(s) for s in sizes))
        console.print(steps)
        counts = Table(title="Curation (run_nightly's counts)")
        counts.add_column("count")
        for size in sizes:
            counts.add_column(f"{size['calls']} calls", justify="right")
        keys: list[str] = []
        for size in sizes:
            keys += [k for k, v in size["nightly"]["counts"].items() if k not in keys and v]
        for key in keys:
            counts.add_row(key, *(str(s["nightly"]["counts"].get(key, 0)) for s in sizes))
        console.print(counts)
        for size in sizes:
            audit_table = Table(title=f"{size['calls']} calls: what became of each kind of call (audit)")
            audit_table.add_column("kind")
            columns = sorted({k for row in size["audit"]["per_kind"].values() for k in row} - {"placed", "in_dataset"})
            for column in ("placed", "in_dataset", *columns):
                audit_table.add_column(column, justify="right")
            for kind, row in size["audit"]["per_kind"].items():
                audit_table.add_row(kind, *(str(row.get(c, 0)) for c in ("placed", "in_dataset", *columns)))
            console.print(audit_table)
            leaks = size["audit"]["leaks"]
            colour = "red" if leaks else "green"
            console.print(f"[{colour}]personal data of the generated calls found in dataset.json: {len(leaks)}[/]")
            for leak in leaks[:5]:
                console.print(f"  {leak}", markup=False)
    if swap:
        table = Table(title=f"Model swap during LLM-worded turns ({swap['artifact_source']})")
        table.add_column("measure")
        table.add_column("value", justify="right")
        for label, value in _swap_rows(swap):
            table.add_row(label, value)
        console.print(table)


def _swap_rows(swap: dict[str, Any]) -> list[tuple[str, str]]:
    s = swap
    verdict = "[green]met[/]" if s["met"] else "[red]missed[/]"
    loader = {
        "process": "low-priority loader process, paused during turns",
        "thread": "worker thread in the serving process",
    }
    quiet, during = s["no_load_excess_ms"], s["during_load_excess_ms"]

    def spread(d: dict) -> str:
        return f"{d['n']} turns: {d['median']:+.0f} / {d['p90']:+.0f} / {d['max']:+.0f}" if d["n"] else "—"

    return [
        ("versions", f"{s['old_version']} → {s['new_version']}"),
        ("loaded by", loader.get(s.get("loader", "thread"), s.get("loader", ""))),
        ("pause between turns (the caller speaking, ms)", str(s.get("gap_between_turns_ms", 0))),
        ("swaps / turns / turns during a load", f"{s['swaps']} / {s['turns']} / {s['turns_during_load']}"),
        ("turns that used the LLM", f"{100 * s['llm_used_share']:.0f}%"),
        (f"turns that hit the first-sentence budget ({s['first_sentence_budget_ms']} ms)", str(s["turns_at_budget"])),
        ("load of the new version (s; every swap)", ", ".join(f"{x:.1f}" for x in s["load_s_all"])),
        ("reference swap pause (ms, worst)", f"{s['pause_ms']:.4f}"),
        ("first swap: last old turn's end → first new turn's start (ms)", f"{s['gap_ms']:.0f}"),
        ("turns before the swap: median (ms)", f"{s['median_before_ms']:.0f}"),
        ("excess over the line's median, no load: median / p90 / max (ms)", spread(quiet)),
        ("excess over the line's median, during a load: median / p90 / max (ms)", spread(during)),
        (
            "added latency: a turn during a load − the quiet turns around it, median (95% CI, ms)",
            f"{s['added_ms']:+.0f} [{s['added_ci95_ms'][0]:+.0f}, {s['added_ci95_ms'][1]:+.0f}]",
        ),
        (f"target: no turn slower by more than {s['target_ms']:.0f} ms (CI's upper end)", verdict),
    ]


def _rss(size: dict[str, Any]) -> str:
    nightly = size["nightly"]
    hwm = nightly.get("vm_hwm_mb")
    return f"{nightly['peak_rss_mb']:.0f} / " + ("—" if hwm is None else f"{hwm:.0f}")


def _step(step: str):
    return lambda s: f"{s['nightly']['seconds'].get(step, 0.0):.1f}" if step in s["nightly"]["seconds"] else "—"


def _gate(size: dict[str, Any]) -> str:
    nightly = size["nightly"]
    gate = nightly.get("gate") or {}
    reasons = "; ".join(gate.get("reasons", []))
    return f"{nightly['status']}" + (f" ({reasons[:60]})" if reasons else "")


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def _peak_rss_mb() -> float:
    """This process's peak resident set (Linux reports KiB).

    Linux starts a forked child's ru_maxrss at the parent's resident size, which is why the parent process
    never loads torch or a model: its own few tens of MB are the floor of every figure.
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _vm_hwm_mb() -> float | None:
    """The peak resident set of this program's own memory map (/proc VmHWM; reset by exec), as a cross-check."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    return int(match[1]) / 1024 if match else None


def _machine() -> dict[str, Any]:
    """Without importing torch here: the parent stays small, since a child's ru_maxrss starts at its parent's."""
    from importlib.metadata import version

    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": version("torch"),
    }


def _settings_used(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """The settings the stages ran with (built as they build them), and the training overrides."""
    s = stage_settings(args, root, model=False)
    fields = ("llm_model", "tune_method", "tune_steps", "tune_lr", "tune_batch_size", "tune_eps", "tune_row_budget")
    fields += ("nightly_steps", "nightly_eval_size", "nightly_heldout_fraction", "nightly_max_calls_per_caller")
    fields += ("nightly_min_calls", "llm_max_new_tokens", "llm_first_sentence_ms", "llm_threads")
    used = {name: getattr(s, name) for name in fields}
    used |= {name: value for name, value in s.model_dump().items() if name.startswith("gate_")}
    overrides = {**(TINY_OVERRIDES if args.tiny else {}), **({"steps": args.steps} if args.steps else {})}
    used["training overrides"] = overrides
    used["corpus size"] = TINY_SIZE if args.tiny else "tuning.pipeline.CorpusSize() defaults"
    return used


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, nargs="*", default=[100, 1000], help="corpus sizes (logged calls)")
    parser.add_argument("--base", help="model directory to start from (llm_model), e.g. a guarded base")
    parser.add_argument("--steps", type=int, help="optimizer steps of the nightly training (default: settings)")
    parser.add_argument("--eval-size", choices=("tiny", "small", "medium", "large"), help="gate suite (default small)")
    parser.add_argument(
        "--tiny", action="store_true", help="tiny random model, tiny corpus, 2 steps: checks the script"
    )
    parser.add_argument("--swap", action=argparse.BooleanOptionalAction, default=True, help="measure the model swap")
    parser.add_argument("--swap-artifact", help="delta artifact to swap to (default: the largest size's nightly one)")
    parser.add_argument("--swap-warm-turns", type=int, default=24, help="turns on the old model before the swap")
    parser.add_argument("--swap-after-turns", type=int, default=12, help="turns after each swap before the next")
    parser.add_argument("--swap-repeats", type=int, default=3, help="swaps in a row (more turns during a load)")
    parser.add_argument(
        "--swap-gap-ms",
        type=int,
        default=1500,
        help="time between turns, as a caller takes to say a line (the loader works in these gaps)",
    )
    parser.add_argument(
        "--swap-loader",
        choices=("process", "thread"),
        default="process",
        help="how the serving process loads the new version: the low-priority loader process (what the server "
        "does) or load_version in the swap's worker thread (the earlier way, for comparison)",
    )
    parser.add_argument("--swap-max-turns", type=int, default=400)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="calls placed concurrently (on 2 cores more do not help; 1 is reproducible)",
    )
    parser.add_argument(
        "--warm-cache",
        help="an INNKEEPER_HOME/tuning folder whose cache/ and calibration/ (protected corpus, bases) every size "
        "reuses: the steady state of a nightly job, which calibrates once per base",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--home", help="parent folder for the per-size homes (kept); default: a temp dir")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (its path is printed)")
    parser.add_argument("--out", help=f"where the JSON goes (default {RESULTS}; with --tiny nightly_tiny.json)")
    # internal: one stage of one size in a child process
    parser.add_argument("--one-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--stage", choices=("calls", "nightly", "audit", "swap"), help=argparse.SUPPRESS)
    parser.add_argument("--swap-base", help=argparse.SUPPRESS)
    parser.add_argument("--swap-version", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # a quick check of the script never overwrites the real measurement
    args.out = args.out or str(RESULTS.with_name("nightly_tiny.json") if args.tiny else RESULTS)
    if args.tiny and not args.threads:
        args.threads = 1  # the tiny model is dispatch-bound; OpenMP spinning on a busy box costs 100x (conftest)
    return args


if __name__ == "__main__":
    main()
