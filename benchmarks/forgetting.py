"""Learning vs forgetting on the hotel dialogues: full fine-tuning, LoRA, replay and the projected method.

Every method starts from the same model (the guarded base once `innkeeper tune align` has run, else the
bundled model), trains on the same train split with the same loop, and stops either at the step budget or
at *matched domain gain*: the held-out domain loss that full fine-tuning reaches at 90% of its own
reduction after `--steps` steps. Each tuned model is then evaluated against the start model on retention
(general-text NLL, chat KL), knowledge (chance-corrected multiple choice) and safety (refusals,
over-refusal, policy probes). Prints a table, writes JSON and a Pareto plot (PNG).

    .venv/bin/python benchmarks/forgetting.py --steps 40            # the README's table
    .venv/bin/python benchmarks/forgetting.py --steps 400 --budget 2  # long training
    .venv/bin/python benchmarks/forgetting.py --safety-recheck 120 --safe-n 64 --methods full ...  # more prompts
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from agent.reply.llm import ChatModel
from innkeeper.core.settings import Settings
from innkeeper.models.resolve import resolve_model_dir, start_model_dir, tuning_root
from innkeeper.simulation import scripted_bookings
from tuning import evaluate
from tuning.methods.projected import ProjectedConfig
from tuning.pipeline import CorpusSize, as_batches, domain_splits, load_for_eval, mean_loss, protected_examples, tune

RESULTS = Path(__file__).resolve().parent / "results"

BY_SOURCE = {"text": 1.0, "chat": 1.0, "safety": 1.0}
# (method, config overrides, method options): learning rates as the measured floor used them.
METHODS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "full": ("full", {"lr": 5e-5}, {}),
    "lora": ("lora", {"lr": 5e-4}, {"r": 16, "alpha": 32}),
    "replay": ("replay", {"lr": 5e-5}, {"ratio": 0.25}),
    "projected ε=0.90": ("projected", {"lr": 2e-4, "eps": 0.90}, {}),
    "projected ε=0.90 rows=25%": ("projected", {"lr": 2e-4, "eps": 0.90, "row_budget": 0.25}, {}),
    "projected ε=0.99": ("projected", {"lr": 5e-4, "eps": 0.99}, {}),
    # Calibration by source: text, chat and safety each averaged over their own tokens, then mixed equally.
    "projected ε=0.90 by source": ("projected", {"lr": 2e-4, "eps": 0.90, "source_weights": BY_SOURCE}, {}),
    "projected ε=0.95 by source": ("projected", {"lr": 2e-4, "eps": 0.95, "source_weights": BY_SOURCE}, {}),
    "projected ε=0.80 by source": ("projected", {"lr": 2e-4, "eps": 0.80, "source_weights": BY_SOURCE}, {}),
    # The projection plus rehearsal of the protected corpus (25% of each batch's rows).
    "projected ε=0.95 by source + replay 25%": (
        "projected_replay",
        {"lr": 2e-4, "eps": 0.95, "source_weights": BY_SOURCE},
        {"ratio": 0.25},
    ),
    # Rehearsal toward the start model's predictions (KL anchor) instead of the rehearsed text: the remedy for
    # the projected run's KL growing over long training, and the strong simple baseline (replay + KL) beside it.
    "projected ε=0.95 by source + KL anchor 25%": (
        "projected_replay",
        {"lr": 2e-4, "eps": 0.95, "source_weights": BY_SOURCE},
        {"ratio": 0.25, "anchor": "kl", "anchor_weight": 4.0},
    ),
    "replay + KL anchor 25%": ("replay", {"lr": 5e-5}, {"ratio": 0.25, "anchor": "kl", "anchor_weight": 4.0}),
    # What a call agent must keep is how it chats and what it refuses more than how it continues WikiText.
    "projected ε=0.90 by source, chat+safety ×2": (
        "projected",
        {"lr": 2e-4, "eps": 0.90, "source_weights": {"text": 1.0, "chat": 2.0, "safety": 2.0}},
        {},
    ),
}
DEFAULT_METHODS = ("full", "lora", "replay", "projected ε=0.90", "projected ε=0.90 rows=25%")


def main() -> None:
    args = _parse()
    # One intra-op thread: step times stay comparable between methods even when the machine is shared.
    torch.set_num_threads(args.threads)
    settings = Settings()
    console = Console(width=200)
    base_dir = start_model_dir(settings)
    base = ChatModel(base_dir)
    if args.safety_recheck:
        recheck_safety(settings, base, args, console)
        return
    splits = domain_splits(settings, base.tokenizer)
    dev = splits["dev"][: args.dev_examples]
    base_cfg = ProjectedConfig(steps=args.steps, batch_size=4, eval_every=args.eval_every, seed=0, progress=True)
    protected = protected_examples(base, settings, CorpusSize())
    suite = bench_suite(settings, base, args)
    base_result = cached_base_result(settings, base, suite, args.booking_calls)
    previous = _previous(args.out, base.version) if args.resume else {}
    guarded_vs_raw = previous.get("guarded_base_vs_raw") or _guarded_vs_raw(settings, base, base_result, suite)
    start_loss = mean_loss(base.model, as_batches(dev, base.tokenizer, 4, 0))
    console.print(
        f"start model {base.version}; held-out domain loss {start_loss:.3f}; "
        f"{len(splits['train'])} train / {len(dev)} dev examples"
    )

    rows: list[dict[str, Any]] = previous.get("rows", [])
    full_row = next((r for r in rows if r["label"] == "full"), None)
    target = start_loss - 0.9 * (start_loss - full_row["domain_loss"]) if full_row else None
    for label in args.methods:
        if any(r["label"] == label for r in rows):
            continue  # measured in the run being resumed
        method, overrides, options = METHODS[label]
        cfg = base_cfg.model_copy(update=overrides)
        if target is not None:  # matched gain: stop where full fine-tuning's 90% reduction is reached
            cfg = cfg.model_copy(update={"steps": args.steps * args.budget, "target_loss": target})
        row = _run(settings, label, method, cfg, options, base_dir, splits["train"], dev, protected, args)
        if label == "full":
            target = start_loss - 0.9 * (start_loss - row["domain_loss"])
            row["note"] = f"sets the target loss {target:.3f}"
        tuned, _ = load_for_eval(Path(row["artifact"]))
        result = run_against(tuned, base, base_result, suite, label)
        scripted_bookings.measure_into(result, tuned, settings, args.booking_calls)
        row.update(evaluate.retention_summary(result, base_result))
        row["domain_gain"] = start_loss - row["domain_loss"]
        rows.append(row)
        _save(rows, start_loss, base.version, args, guarded_vs_raw)
    full_gain = next((r["domain_gain"] for r in rows if r["label"] == "full"), None)
    for row in rows:
        row["gain_vs_full"] = row["domain_gain"] / full_gain if full_gain else None
    _save(rows, start_loss, base.version, args, guarded_vs_raw)
    console.print(_table(rows, start_loss))
    if guarded_vs_raw:
        console.print(f"guarded base vs raw model: {json.dumps(guarded_vs_raw)}")
    _plot(rows, args.out.with_suffix(".png"))
    console.print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def run_against(
    tuned: ChatModel, base: ChatModel, base_result: dict[str, Any], suite: evaluate.EvalSuite, label: str
) -> dict[str, Any]:
    """The suite on `tuned`, paired item by item with `base` (its saved result, and its weights for the KL)."""
    return evaluate.run_suite(
        tuned.model,
        tuned.tokenizer,
        suite=suite,
        base=evaluate.Baseline(result=base_result, model=base.model),
        model_id=label,
    )


def recheck_safety(settings: Settings, base: ChatModel, args: argparse.Namespace, console: Console) -> None:
    """Refusals and over-refusal of the saved rows' models on a larger prompt sample than the main run's.

    Twenty-four harmful prompts cannot tell 95% of the base's refusals from 98%; this re-scores every saved
    tuned model (and the start model) on `--safety-recheck` harmful and `--safe-n` safe prompts, paired
    with the start model, and stores the result in each row under `safety_recheck`.
    """
    saved = _previous(args.out, base.version)
    if not saved:
        raise SystemExit(f"no results for start model {base.version} in {args.out}: run the comparison first")
    suite = replace(
        bench_suite(settings, base, args),
        general_texts=(),
        chat_prompts=(),
        mc_tasks={},
        harmful_n=args.safety_recheck,
    )
    base_result = cached_base_result(settings, base, suite)
    for row in saved["rows"]:
        if row["label"] not in args.methods or row.get("safety_recheck", {}).get("sizes") == suite.sizes():
            continue
        tuned, _ = load_for_eval(Path(row["artifact"]))
        result = run_against(tuned, base, base_result, suite, row["label"])
        row["safety_recheck"] = {"sizes": suite.sizes(), **_safety_flips(result)}
        args.out.write_text(json.dumps(saved, indent=1, default=str) + "\n")
    console.print(_recheck_table(saved["rows"], args))


def _recheck_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> Table:
    table = Table(
        title=f"safety re-check: {args.safety_recheck} harmful, {args.safe_n} safe prompts, vs the start model"
    )
    for column in ("method", "refusal", "refused→complied", "complied→refused", "margin Δ (95% CI)", "over-refusal"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in rows:
        if check := row.get("safety_recheck"):
            low, high = check["margin_delta_ci"]
            table.add_row(
                row["label"],
                f"{check['refusal']:.1%} (base {check['refusal_base']:.1%}, ratio {check['refusal_ratio']:.1%})",
                str(check["refused_to_complied"]),
                str(check["complied_to_refused"]),
                f"{check['margin_delta']:+.3f} ({low:+.3f}, {high:+.3f})",
                f"{check['over_refusal']:.1%} (base {check['over_refusal_base']:.1%})",
            )
    return table


def _safety_flips(result: dict[str, Any]) -> dict[str, Any]:
    safety = result["measures"]["safety"]
    harmful = next(node for name, node in safety.items() if name.startswith("harmful"))
    safe = safety["safe:xstest"]
    paired = harmful["refusal"]["vs_base"]
    return {
        "harmful_n": harmful["refusal"]["n"],
        "refusal": harmful["refusal"]["value"],
        "refusal_base": paired["base"],
        "refusal_ratio": harmful["refusal"]["value"] / max(paired["base"], 1e-9),
        "refused_to_complied": paired["refused_to_complied"],
        "complied_to_refused": paired["complied_to_refused"],
        "margin_delta": harmful["margin"]["vs_base"]["delta"],
        "margin_delta_ci": harmful["margin"]["vs_base"]["delta_ci"],
        "safe_n": safe["refusal"]["n"],
        "over_refusal": safe["refusal"]["value"],
        "over_refusal_base": safe["refusal"]["vs_base"]["base"],
    }


def _previous(path: Path, version: str) -> dict[str, Any]:
    """The saved results of an interrupted run on the same start model (rows are kept, methods skipped)."""
    if not path.exists():
        return {}
    saved = json.loads(path.read_text())
    return saved if saved.get("start_model") == version else {}


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="full fine-tuning's steps (sets the target)")
    parser.add_argument("--budget", type=int, default=2, help="step budget of the others, × --steps")
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--dev-examples", type=int, default=48)
    parser.add_argument("--resume", action="store_true", help="keep the rows of the last run, skip their methods")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--mc-n", type=int, default=60, help="items per multiple-choice task")
    parser.add_argument("--harmful-n", type=int, default=24)
    parser.add_argument("--safe-n", type=int, default=16)
    parser.add_argument("--text-windows", type=int, default=32)
    parser.add_argument("--chat-n", type=int, default=24)
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(METHODS))
    parser.add_argument("--booking-calls", type=int, default=8, help="scripted booking calls per model (0: none)")
    parser.add_argument("--out", type=Path, default=RESULTS / "forgetting.json", help="results JSON (plot: .png)")
    parser.add_argument(
        "--safety-recheck",
        type=int,
        metavar="N",
        help="re-score the saved rows' safety on N harmful prompts (and --safe-n safe ones); trains nothing",
    )
    args = parser.parse_args()
    if args.safety_recheck is not None and args.safety_recheck < 1:
        parser.error("--safety-recheck needs at least one harmful prompt")
    if args.methods[0] != "full" and not (args.resume or args.safety_recheck):
        parser.error("the first method must be 'full': it sets the matched-gain target")
    return args


def bench_suite(settings: Settings, base: ChatModel, args: argparse.Namespace) -> evaluate.EvalSuite:
    """Retention, knowledge and safety, sized for two CPU cores (the domain is measured by the loop)."""
    suite = evaluate.default_suite(settings, base.tokenizer, "medium")
    above_chance = {k: v for k, v in suite.mc_tasks.items() if k in ("hellaswag", "arc_easy", "piqa")}
    return replace(
        suite,
        domain_examples=(),
        mc_tasks=above_chance,
        mc_n=args.mc_n,
        harmful_n=args.harmful_n,
        safe_n=args.safe_n,
        text_windows=args.text_windows,
        chat_n=args.chat_n,
    )


def cached_base_result(
    settings: Settings, base: ChatModel, suite: evaluate.EvalSuite, booking_calls: int = 0
) -> dict[str, Any]:
    sizes = json.dumps(suite.sizes(), sort_keys=True, default=str)
    key = f"{base.version}-{hashlib.sha256(sizes.encode()).hexdigest()[:10]}"
    cache = tuning_root(settings) / "cache" / f"bench-base-{key}.json"
    if not cache.exists():
        evaluate.save_result(evaluate.run_suite(base.model, base.tokenizer, suite=suite, model_id="base"), cache)
    result = evaluate.load_result(cache)
    if scripted_bookings.measure_into(result, base, settings, booking_calls):
        evaluate.save_result(result, cache)
    return result


def _guarded_vs_raw(
    settings: Settings, base: ChatModel, base_result: dict[str, Any], suite: evaluate.EvalSuite
) -> dict[str, Any] | None:
    """When the start model is the guarded base: its safety and retention against the raw bundled model."""
    raw_dir = resolve_model_dir(settings)
    if Path(base.path).resolve() == Path(raw_dir).resolve():
        return None
    raw = ChatModel(raw_dir)
    raw_result = cached_base_result(settings, raw, suite)
    guarded = run_against(base, raw, raw_result, suite, "guarded")
    return evaluate.retention_summary(guarded, raw_result)


def _run(settings, label, method, cfg, options, base_dir, train, dev, protected, args) -> dict[str, Any]:
    started = time.perf_counter()
    outcome = tune(
        settings,
        method=method,
        cfg=cfg,
        base_dir=base_dir,
        train_examples=train,
        eval_examples=dev,
        out_dir=tuning_root(settings) / "bench" / f"{time.strftime('%Y%m%d-%H%M%S')}-{method}",
        lineage={"benchmark": "forgetting"},
        protected=protected,
        method_options=options,
    )
    return {
        "label": label,
        "method": method,
        "config": {
            **cfg.model_dump(mode="json", include={"lr", "eps", "row_budget", "steps", "target_loss"}),
            **options,
        },
        "steps": outcome.result.steps,
        "reached_target": outcome.result.steps_to_target,
        "domain_loss": outcome.metrics["domain_loss_after"],
        "step_seconds": outcome.metrics["mean_step_seconds"],
        "peak_rss_mb": outcome.metrics["peak_rss_mb"],
        "kept_fraction": outcome.metrics["mean_kept_fraction"],
        "wall_seconds": round(time.perf_counter() - started, 1),
        "artifact": str(outcome.artifact),
    }


def _save(
    rows: list[dict[str, Any]], start_loss: float, version: str, args: argparse.Namespace, guarded: dict | None
) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "start_model": version,
        "start_domain_loss": start_loss,
        "guarded_base_vs_raw": guarded,
        "args": vars(args),
        "rows": rows,
    }
    args.out.write_text(json.dumps(payload, indent=1, default=str) + "\n")


def _table(rows: list[dict[str, Any]], start_loss: float) -> Table:
    table = Table(title=f"learning vs forgetting (start domain loss {start_loss:.3f})")
    columns = (
        "method",
        "steps",
        "domain loss",
        "gain vs full",
        "general NLL Δ",
        "chat KL",
        "MC retained",
        "refusal",
        "over-refusal",
        "policy",
        "model-worded (scripted calls)",
        "s/step",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "method" else "right")
    for r in rows:
        table.add_row(
            r["label"],
            f"{r['steps']}" + ("" if r["label"] == "full" or r["reached_target"] else " (no target)"),
            f"{r['domain_loss']:.3f}",
            f"{r['gain_vs_full']:.0%}" if r.get("gain_vs_full") is not None else "",
            f"{r['general_nll_delta_pct']:+.2f}%",
            f"{r['chat_kl']:.4f}",
            f"{r['mc_retained']:.0%}",
            f"{r['refusal']:.0%} (base {r['refusal_base']:.0%})",
            f"{r['over_refusal']:.0%} (base {r['over_refusal_base']:.0%})",
            f"{r['policy_passed']:.0%}",
            _worded(r),
            f"{r['step_seconds']:.2f}",
        )
    return table


def _worded(row: dict[str, Any]) -> str:
    if row.get("model_worded_share") is None:
        return "not measured"
    base = row.get("model_worded_share_base")
    return f"{row['model_worded_share']:.0%}" + (f" (base {base:.0%})" if base is not None else "")


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("chat_kl", "chat KL(base‖tuned) per token"),
        ("general_nll_delta_pct", "general-text NLL change, %"),
        ("mc_retained", "chance-corrected MC retained"),
        ("refusal", "harmful-request refusal rate"),
    )
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    markers = "osD^v<>ph*"
    for ax, (key, title) in zip(axes.flat, panels, strict=True):
        for i, r in enumerate(rows):  # one legend, not labels on the points: close methods overlap
            ax.scatter(r["domain_gain"], r[key], s=60, marker=markers[i % len(markers)], label=r["label"])
        ax.set_xlabel("held-out domain loss reduction (nats/token)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    fig.suptitle("Learning vs forgetting on the hotel dialogues (each point: one method)")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
