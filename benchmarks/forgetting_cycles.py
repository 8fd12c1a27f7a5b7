"""Forgetting over successive nightly cycles with growing data, and over long training.

Night n trains on the first n/N of the train dialogues (a seeded order, so every night adds calls the
model has not seen), for `--steps-per-night` optimizer steps with a fresh optimizer and schedule, as a
nightly job would, *continuing from night n−1's weights*. Stacking nights is harsher than the product,
whose nightly job always retrains from the guarded base: it is the worst case, and by night N the model
has trained N × steps-per-night steps (the long-training measure). After every night it measures, against
the start model (the guarded base): held-out domain loss, general-text NLL change, chat KL, refusals,
over-refusal and the policy probes; multiple choice and scripted bookings at the last night.

Methods and learning rates are `benchmarks/forgetting.py`'s. The projected method protects the start
model's subspaces every night (calibrated once). Results are saved after every night and a killed run
resumes from its last finished night (`--out` JSON plus a `.pt` checkpoint beside it).

    .venv/bin/python -m benchmarks.forgetting_cycles --method full --out /tmp/cycles-full.json
    .venv/bin/python -m benchmarks.forgetting_cycles --method "projected ε=0.90 by source" --out /tmp/cycles-proj.json
    .venv/bin/python -m benchmarks.forgetting_cycles --merge /tmp/cycles-full.json /tmp/cycles-proj.json

`--recalibrate` re-calibrates the projected method's bases every night from the model as it is then (on the same
protected corpus) instead of protecting the start model's geometry: after a few nights the layers' inputs on
protected text have moved, and bases of the start model no longer span them. The run is labelled
"<method>, recalibrated nightly".

`--long` measures long training instead: one continuous run of nights × steps-per-night steps on all train
dialogues (one optimizer, one schedule), with the same measures every steps-per-night steps ("nights" are
then checkpoints). It cannot resume.

    .venv/bin/python -m benchmarks.forgetting_cycles --long --nights 5 --steps-per-night 80 --threads 2 \
        --method full --out /tmp/long-full.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from agent.reply.llm import ChatModel
from benchmarks.forgetting import METHODS, RESULTS, bench_suite, cached_base_result, run_against
from innkeeper.core.settings import Settings
from innkeeper.models.resolve import start_model_dir, tuning_root
from innkeeper.simulation import scripted_bookings
from tuning import evaluate
from tuning.data.dialogues import TrainingExample
from tuning.lm import Batch
from tuning.methods import get_method, train
from tuning.methods.projected import ProjectedConfig, ProtectedBases
from tuning.pipeline import CorpusSize, as_batches, calibrated, domain_splits, mean_loss, protected_examples

MATCHED = ("chat_kl", "refusal", "refusal_margin_delta", "general_nll_delta_pct")
PANELS = (
    ("chat_kl", "chat KL(base‖tuned) per token"),
    ("general_nll_delta_pct", "general-text NLL change, %"),
    ("refusal", "harmful-request refusal rate"),
    ("refusal_margin_delta", "refusal log-prob margin change"),
)


def main() -> None:
    args = _parse()
    if args.merge:
        _merge(args.merge, args.out)
        return
    torch.set_num_threads(args.threads)
    settings = Settings()
    console = Console(width=200)
    base = ChatModel(start_model_dir(settings))
    model = ChatModel(start_model_dir(settings))  # trained in place, night after night
    splits = domain_splits(settings, base.tokenizer)
    dev_batches = as_batches(splits["dev"][: args.dev_examples], base.tokenizer, 4, 0)
    suite = bench_suite(settings, base, args)
    base_result = cached_base_result(settings, base, suite, args.booking_calls)
    method, overrides, options = METHODS[args.method]
    label = f"{args.method}, recalibrated nightly" if args.recalibrate else args.method
    protected = protected_examples(base, settings, CorpusSize())
    cfg = ProjectedConfig(steps=args.steps_per_night, batch_size=4, eval_every=0, seed=0, progress=True)
    cfg = cfg.model_copy(update=overrides)
    bases = None
    calibration = tuning_root(settings) / "calibration"
    if get_method(method).needs_bases:  # the start model's geometry (unless re-calibrated each night)
        bases = calibrated(base, protected[0], protected[1], cfg, calibration)
    protected_batches = as_batches(protected[0], base.tokenizer, cfg.batch_size, seed=cfg.seed)

    run = _resume(args, label, base.version, model)
    if not run["nights"]:
        run["start_domain_loss"] = mean_loss(base.model, dev_batches)
    console.print(
        f"{label}: start model {base.version}, domain loss {run['start_domain_loss']:.3f}; "
        f"{len(splits['train'])} train examples over {args.nights} nights × {args.steps_per_night} steps"
    )
    measure = _Checkpoints(model, base, base_result, suite, dev_batches, settings, args)
    if args.long:
        _train_long(method, model, splits["train"], cfg, bases, protected_batches, options, run, measure, args)
        return
    for night in range(len(run["nights"]) + 1, min(args.until_night or args.nights, args.nights) + 1):
        examples = night_examples(splits["train"], night, args.nights, seed=args.seed)
        started = time.perf_counter()
        if bases is not None and args.recalibrate and night > 1:
            bases = calibrated(model, protected[0], protected[1], cfg, calibration)
        result = train(
            method,
            model.model,
            as_batches(examples, base.tokenizer, cfg.batch_size, seed=night),
            cfg.model_copy(update={"seed": night}),
            bases=bases,
            protected_batches=protected_batches,
            **options,
        )
        _record(run, measure(night, examples, time.perf_counter() - started, result.step_seconds), args, model)
    _plot({label: run}, args.out.with_suffix(".png"))


class _Checkpoints:
    """One row of retention measures for the model as trained so far, against the start model."""

    def __init__(
        self,
        model: ChatModel,
        base: ChatModel,
        base_result: dict[str, Any],
        suite: evaluate.EvalSuite,
        dev_batches: list[Batch],
        settings: Settings,
        args: argparse.Namespace,
    ):
        self.model, self.base, self.base_result, self.suite = model, base, base_result, suite
        self.dev_batches, self.settings, self.args = dev_batches, settings, args

    def __call__(
        self, night: int, examples: list[TrainingExample], train_seconds: float, step_seconds: list[float]
    ) -> dict[str, Any]:
        last = night == self.args.nights
        suite = self.suite if last else replace(self.suite, mc_tasks={})
        measured = run_against(self.model, self.base, self.base_result, suite, f"{self.args.method} night {night}")
        if last:
            scripted_bookings.measure_into(measured, self.model, self.settings, self.args.booking_calls)
        return {
            "night": night,
            "examples": len(examples),
            "dialogues": len({e.dialogue_id for e in examples}),
            "total_steps": night * self.args.steps_per_night,
            "domain_loss": mean_loss(self.model.model, self.dev_batches),
            "train_seconds": round(train_seconds, 1),
            "step_seconds": sum(step_seconds) / max(len(step_seconds), 1),
            "eval_seconds": sum(measured["timing_s"].values()),
            **evaluate.retention_summary(measured, self.base_result),
        }


def _train_long(
    method: str,
    model: ChatModel,
    examples: list[TrainingExample],
    cfg: ProjectedConfig,
    bases: ProtectedBases | None,
    protected_batches: list[Batch],
    options: dict[str, Any],
    run: dict[str, Any],
    measure: _Checkpoints,
    args: argparse.Namespace,
) -> None:
    """One run of nights × steps-per-night steps on every train dialogue — one optimizer, one warmup + cosine
    schedule — measured every steps-per-night steps. Not resumable: the optimizer state is not saved."""
    run["nights"] = []
    since = [time.perf_counter()]

    def checkpoint(_: torch.nn.Module) -> float:
        train_seconds = time.perf_counter() - since[0]
        row = measure(len(run["nights"]) + 1, examples, train_seconds, [train_seconds / args.steps_per_night])
        _record(run, row, args, None)
        since[0] = time.perf_counter()  # the measuring is not training time
        return row["domain_loss"]

    steps = args.nights * args.steps_per_night
    train(
        method,
        model.model,
        as_batches(examples, model.tokenizer, cfg.batch_size, seed=0),
        cfg.model_copy(update={"steps": steps, "eval_every": args.steps_per_night}),
        bases=bases,
        protected_batches=protected_batches,
        eval_fn=checkpoint,
        **options,
    )
    _plot({args.method: run}, args.out.with_suffix(".png"))


def night_examples(train: list[TrainingExample], night: int, nights: int, *, seed: int) -> list[TrainingExample]:
    """The examples of the first night/nights of the train dialogues, in a seeded order: each night's data
    holds every earlier night's and adds new dialogues."""
    ids = sorted({e.dialogue_id for e in train})
    random.Random(seed).shuffle(ids)
    seen = set(ids[: math.ceil(len(ids) * night / nights)])
    return [e for e in train if e.dialogue_id in seen]


def _record(run: dict[str, Any], row: dict[str, Any], args: argparse.Namespace, model: ChatModel | None) -> None:
    """Add a measured row (with its domain gain) to the run, save it, and print the table so far."""
    row["domain_gain"] = run["start_domain_loss"] - row["domain_loss"]
    run["nights"].append(row)
    _save(run, args, model)
    Console(width=200).print(_table({run["method"]: run}))


def _resume(args: argparse.Namespace, label: str, version: str, model: ChatModel) -> dict[str, Any]:
    """The saved nights of an interrupted run of the same method, start model and schedule, weights loaded."""
    fresh = {"method": label, "start_model": version, "schedule": _schedule(args), "nights": []}
    checkpoint = args.out.with_suffix(".pt")
    if not (args.out.exists() and checkpoint.exists()):
        return fresh
    saved = json.loads(args.out.read_text())
    if any(saved.get(key) != fresh[key] for key in ("method", "start_model", "schedule")):
        return fresh
    model.model.load_state_dict(torch.load(checkpoint, weights_only=True))
    return saved


def _schedule(args: argparse.Namespace) -> dict[str, Any]:
    return {"nights": args.nights, "steps_per_night": args.steps_per_night, "seed": args.seed, "long": args.long}


def _save(run: dict[str, Any], args: argparse.Namespace, model: ChatModel | None) -> None:
    """The rows so far, and the weights to resume from (none for a long run, which cannot resume)."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if model is not None:
        checkpoint = args.out.with_suffix(".pt")
        torch.save(model.model.state_dict(), checkpoint.with_suffix(".pt.tmp"))
        checkpoint.with_suffix(".pt.tmp").replace(checkpoint)
    args.out.write_text(json.dumps({**run, "args": vars(args)}, indent=1, default=str) + "\n")


def _merge(paths: list[Path], out: Path) -> None:
    """One table and one plot from per-method runs (or earlier merges); the first run is the reference."""
    runs = {}
    for path in paths:
        saved = json.loads(path.read_text())
        runs.update(saved["runs"] if "runs" in saved else {saved["method"]: saved})
    matched = at_matched_gain(runs)
    out.write_text(json.dumps({"runs": runs, "at_matched_gain": matched}, indent=1) + "\n")
    console = Console(width=200)
    console.print(_table(runs))
    console.print(_matched_table(matched, reference=next(iter(runs))))
    _plot(runs, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


def at_matched_gain(runs: dict[str, dict[str, Any]], keys: tuple[str, ...] = MATCHED) -> list[dict[str, Any]]:
    """Every row of every run after the first, beside the first run's measures at the same domain gain,
    interpolated linearly between its rows and the start model (no gain, no change); None beyond its range."""
    reference, *others = runs.values()
    start = {key: 0.0 for key in keys} | {"domain_gain": 0.0, "refusal": reference["nights"][0]["refusal_base"]}
    points = sorted([start, *reference["nights"]], key=lambda r: r["domain_gain"])
    gains = [r["domain_gain"] for r in points]
    rows = []
    for run in others:
        for r in run["nights"]:
            inside = gains[0] <= r["domain_gain"] <= gains[-1]
            row = {"method": run["method"], "night": r["night"], "total_steps": r["total_steps"]}
            row["domain_gain"] = r["domain_gain"]
            for key in keys:
                at_gain = float(np.interp(r["domain_gain"], gains, [p[key] for p in points])) if inside else None
                row[key] = r[key]
                row[f"reference_{key}"] = at_gain
            rows.append(row)
    return rows


def _matched_table(rows: list[dict[str, Any]], reference: str) -> Table:
    table = Table(title=f"each checkpoint against {reference} at the same domain gain (interpolated)")
    for column in ("method", "night", "steps", "gain", "chat KL", f"{reference} KL", "× KL", "refusal", "ref."):
        table.add_column(column, justify="left" if column == "method" else "right")
    for r in rows:
        ref_kl, ref_refusal = r["reference_chat_kl"], r["reference_refusal"]
        table.add_row(
            r["method"],
            str(r["night"]),
            str(r["total_steps"]),
            f"{r['domain_gain']:.3f}",
            f"{r['chat_kl']:.4f}",
            f"{ref_kl:.4f}" if ref_kl is not None else "outside",
            f"{r['chat_kl'] / ref_kl:.3f}×" if ref_kl else "",
            f"{r['refusal']:.0%}",
            f"{ref_refusal:.0%}" if ref_refusal is not None else "",
        )
    return table


def _is_long(runs: dict[str, dict[str, Any]]) -> bool:
    return any(run["schedule"].get("long") for run in runs.values())


def _table(runs: dict[str, dict[str, Any]]) -> Table:
    title = (
        "forgetting over one long run (rows: checkpoints)"
        if _is_long(runs)
        else "forgetting over nightly cycles (each night continues from the last)"
    )
    table = Table(title=title)
    columns = ("method", "night", "dialogues", "steps", "domain loss", "general NLL Δ", "chat KL", "refusal")
    for column in (*columns, "margin Δ", "over-refusal", "policy", "MC retained", "s/step"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for label, run in runs.items():
        for r in run["nights"]:
            table.add_row(
                label,
                str(r["night"]),
                str(r["dialogues"]),
                str(r["total_steps"]),
                f"{r['domain_loss']:.3f} (start {run['start_domain_loss']:.3f})",
                f"{r['general_nll_delta_pct']:+.2f}%",
                f"{r['chat_kl']:.4f}",
                f"{r['refusal']:.0%} (base {r['refusal_base']:.0%})",
                f"{r['refusal_margin_delta']:+.3f}" if "refusal_margin_delta" in r else "",
                f"{r['over_refusal']:.0%} (base {r['over_refusal_base']:.0%})",
                f"{r['policy_passed']:.0%}",
                f"{r['mc_retained']:.0%}" if "mc_retained" in r else "",
                f"{r['step_seconds']:.1f}",
            )
    return table


def _plot(runs: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, (key, title) in zip(axes.flat, PANELS, strict=True):
        for label, run in runs.items():
            nights = [r for r in run["nights"] if key in r]
            ax.plot([r["domain_gain"] for r in nights], [r[key] for r in nights], marker="o", label=label)
            for r in nights[:: max(len(nights) // 5, 1)]:
                at = (r["domain_gain"], r[key])
                ax.annotate(str(r["night"]), at, fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("held-out domain loss reduction (nats/token)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        "Long training: learning vs forgetting (points: checkpoints)"
        if _is_long(runs)
        else "Nightly cycles with growing data: learning vs forgetting (points: nights)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="projected ε=0.90 by source", choices=list(METHODS))
    parser.add_argument("--nights", type=int, default=10)
    parser.add_argument("--steps-per-night", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="order in which dialogues arrive")
    parser.add_argument(
        "--until-night", type=int, help="stop after this night (the schedule stays --nights; rerun to go on)"
    )
    parser.add_argument(
        "--long",
        action="store_true",
        help="one continuous run of nights × steps-per-night steps on all train dialogues, measured every "
        "steps-per-night steps (long training), instead of nights with growing data",
    )
    parser.add_argument(
        "--recalibrate", action="store_true", help="re-calibrate the protected bases from the current model each night"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--dev-examples", type=int, default=48)
    parser.add_argument("--mc-n", type=int, default=60, help="items per multiple-choice task (last night)")
    parser.add_argument("--harmful-n", type=int, default=24)
    parser.add_argument("--safe-n", type=int, default=16)
    parser.add_argument("--text-windows", type=int, default=32)
    parser.add_argument("--chat-n", type=int, default=24)
    parser.add_argument("--booking-calls", type=int, default=8, help="scripted booking calls at the last night")
    parser.add_argument("--merge", type=Path, nargs="+", help="per-method result files to merge into --out")
    parser.add_argument("--out", type=Path, default=RESULTS / "forgetting_cycles.json")
    args = parser.parse_args()
    if args.nights < 1 or args.steps_per_night < 1:
        parser.error("--nights and --steps-per-night must be at least 1")
    if missing := [str(path) for path in args.merge or () if not path.is_file()]:
        parser.error(f"no results file: {', '.join(missing)}")
    return args


if __name__ == "__main__":
    main()
