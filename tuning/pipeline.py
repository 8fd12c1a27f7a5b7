"""The tuning recipes, top to bottom: the guarded base (`align`), domain tuning (`tune`) and evaluation.

Every recipe is the same few steps, so they read alike:
  model to start from → data (domain / protected) → calibrate the protected subspaces (cached) →
  train with the chosen method → save a verified delta artifact → evaluate against the start model.
The command line (`innkeeper tune ...`), the benchmark and the nightly job all call these functions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from agent.reply.llm import ChatModel
from innkeeper.core.settings import Settings
from innkeeper.models.artifacts import apply_delta, export_hf, load_delta, read_manifest, save_delta, weights_sha256
from innkeeper.models.resolve import guarded_dir, resolve_model_dir, start_model_dir, tuning_root
from tuning import distributed, evaluate
from tuning.data import corpus
from tuning.data.actions import READING, encode_action_examples, shared_readings
from tuning.data.dialogues import (
    TrainingExample,
    batches,
    build_examples,
    encode_chat,
    load_db_dialogues,
    load_shared_dialogues,
    split_dialogues,
)
from tuning.lm import lm_loss, target_linears
from tuning.loop import TrainResult
from tuning.methods import get_method, train
from tuning.methods.projected import (
    CalibrationMismatch,
    ProjectedConfig,
    ProtectedBases,
    calibrate_bases,
    projection_memory,
    select_rows,
    weights_fingerprint,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CorpusSize:
    """How much protected data to build: enough to calibrate, small enough for two CPU cores."""

    text_tokens: int = 16_384
    chats: int = 64
    safety: int = 64
    max_len: int = 512


@dataclass
class TuneOutcome:
    artifact: Path
    result: TrainResult
    base_dir: Path
    metrics: dict[str, Any]


def tune_config(settings: Settings, **overrides: object) -> ProjectedConfig:
    """The training configuration from settings; `overrides` that are not None win (command-line options)."""
    values: dict[str, object] = {
        "eps": settings.tune_eps,
        "row_budget": settings.tune_row_budget,
        "source_weights": settings.tune_source_weights,
        "lr": settings.tune_lr,
        "steps": settings.tune_steps,
        "batch_size": settings.tune_batch_size,
        "grad_accum": settings.tune_grad_accum,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    values.setdefault("eval_every", max(int(values["steps"]) // 4, 1))  # type: ignore[call-overload]
    return ProjectedConfig(**values)


# ---------------------------------------------------------------------- where things live
# ---------------------------------------------------------------------- data
def domain_splits(
    settings: Settings, tokenizer: Any, *, db: Any = None, max_tokens: int = 512, readings: int = 0
) -> dict[str, list]:
    """Training examples per split from the logged and imported conversations (or the shared files); `readings`
    annotated SGD train turns join the train split as examples of the reading (`tuning.data.actions`)."""

    dialogues = load_db_dialogues(db) if db is not None else []
    if not dialogues:
        dialogues = load_shared_dialogues(settings.shared_data)
    splits = split_dialogues(dialogues)
    examples = {name: build_examples(items, tokenizer, max_tokens=max_tokens) for name, items in splits.items()}
    examples["train"] += encode_action_examples(shared_readings(settings.shared_data, readings), tokenizer)
    return examples


def protected_examples(
    chat: ChatModel, settings: Settings, size: CorpusSize, *, seed: int = 0, safety: bool = True
) -> tuple[list[TrainingExample], dict[str, Any]]:
    return corpus.build_protected_batches(
        chat,
        chat.tokenizer,
        settings.shared_data,
        n_text_tokens=size.text_tokens,
        n_chat=size.chats,
        n_safety=size.safety if safety else 0,
        max_len=size.max_len,
        seed=seed,
        cache_dir=tuning_root(settings) / "cache",
    )


def as_batches(examples: Sequence[TrainingExample], tokenizer: Any, batch_size: int, seed: int) -> list[dict]:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return list(batches(examples, batch_size, pad_id=pad_id, seed=seed))


def mean_loss(model: torch.nn.Module, eval_batches: Sequence[dict]) -> float:
    """Token-weighted mean NLL over the supervised tokens of `eval_batches`."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for batch in eval_batches:
            tokens = int((batch["labels"][:, 1:] != -100).sum())
            total += float(lm_loss(model, batch)) * tokens
            count += tokens
    return total / max(count, 1)


# ---------------------------------------------------------------------- calibration (cached)
def calibrated(
    chat: ChatModel, examples: Sequence[TrainingExample], provenance: dict, cfg: ProjectedConfig, cache: Path
) -> ProtectedBases:
    """Protected bases for this model, corpus and ε, computed once and reused while they verify."""
    key = hashlib.sha256(
        json.dumps(
            [
                weights_fingerprint(chat.model, cfg.targets),
                provenance.get("sha256"),
                cfg.eps,
                cfg.layer_eps,
                cfg.side,
                cfg.skip_first_position,
                cfg.source_weights,
            ],
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()[:16]
    directory = cache / f"bases-{key}"
    if directory.exists():
        try:
            return ProtectedBases.load(directory, chat.model)
        except (CalibrationMismatch, OSError, ValueError) as err:
            log.warning("recalibrating: cached bases in %s are unusable (%s)", directory, err)
            shutil.rmtree(directory, ignore_errors=True)
    bases = calibrate_bases(
        chat.model,
        _calibration_batches(examples, chat.tokenizer, by_source=bool(cfg.source_weights)),
        cfg,
        model_id=chat.version,
        corpus=provenance,
    )
    bases.save(directory)
    return bases


def _calibration_batches(
    examples: Sequence[TrainingExample], tokenizer: Any, *, by_source: bool
) -> list[dict] | dict[str, list[dict]]:
    """One token pool, or batches per protected source (text, chat, safety) for source-weighted calibration."""
    if not by_source:
        return as_batches(examples, tokenizer, 4, seed=0)
    grouped: dict[str, list[TrainingExample]] = {}
    for example in examples:
        grouped.setdefault(corpus.protected_source(example.dialogue_id), []).append(example)
    return {source: as_batches(group, tokenizer, 4, seed=0) for source, group in sorted(grouped.items())}


# ---------------------------------------------------------------------- one tuning run
def tune(
    settings: Settings,
    *,
    method: str,
    cfg: ProjectedConfig,
    base_dir: Path,
    train_examples: Sequence[TrainingExample],
    eval_examples: Sequence[TrainingExample],
    out_dir: Path,
    lineage: dict[str, Any],
    protected: tuple[list[TrainingExample], dict[str, Any]] | None = None,
    size: CorpusSize = CorpusSize(),
    method_options: dict[str, Any] | None = None,
) -> TuneOutcome:
    """Train `method` from `base_dir` on `train_examples`; save the delta artifact under `out_dir`."""
    chat = ChatModel(base_dir, threads=settings.llm_threads)
    base_state = {name: tensor.detach().clone() for name, tensor in chat.model.state_dict().items()}
    chosen = get_method(method)
    if protected is None and not (chosen.needs_bases or chosen.needs_protected):
        protected = ([], {})  # full fine-tuning and LoRA never look at the protected corpus: do not build it
    if protected is None:
        protected = distributed.from_main(lambda: protected_examples(chat, settings, size, seed=cfg.seed))
    protected_list, provenance = protected
    train_batches = as_batches(train_examples, chat.tokenizer, cfg.batch_size, seed=cfg.seed)
    eval_batches = as_batches(eval_examples, chat.tokenizer, cfg.batch_size, seed=0)
    bases = masks = None
    if chosen.needs_bases:
        # Computed once, on the main rank of a launched job, and sent to the others.
        calibration = tuning_root(settings) / "calibration"
        bases = distributed.from_main(lambda: calibrated(chat, protected_list, provenance, cfg, calibration))
        if cfg.row_budget < 1.0 or cfg.layer_row_budget:
            masks = distributed.from_main(lambda: select_rows(chat.model, bases, train_batches[:4], cfg))
    start_loss = mean_loss(chat.model, eval_batches)
    started = time.perf_counter()
    result = train(
        method,
        chat.model,
        train_batches,
        cfg,
        bases=bases,
        masks=masks,
        protected_batches=as_batches(protected_list, chat.tokenizer, cfg.batch_size, seed=cfg.seed),
        eval_fn=lambda model: mean_loss(model, eval_batches),
        **(method_options or {}),
    )
    metrics = {
        "domain_loss_before": start_loss,
        "domain_loss_after": mean_loss(chat.model, eval_batches),
        "train_seconds": round(time.perf_counter() - started, 1),
        "steps": result.steps,
        "steps_to_target": result.steps_to_target,
        "peak_rss_mb": result.peak_rss_mb,
        "mean_step_seconds": sum(result.step_seconds) / max(len(result.step_seconds), 1),
        "mean_kept_fraction": _mean_kept(result),
    }
    if bases is not None:  # what the projection holds beside the model and optimizer (per layer: projection_memory)
        memory = projection_memory(target_linears(chat.model, cfg.targets), bases, cfg.side).values()
        metrics["projection_memory_mb"] = round(sum(m["basis_mb"] + m["snapshot_mb"] for m in memory), 1)
    artifact = distributed.from_main(  # every rank holds the same weights; one writes them
        lambda: save_delta(
            base_state,
            chat.model,
            out_dir / "artifact",
            base_id=str(base_dir),
            base_sha256=weights_sha256(base_dir),
            lineage=lineage,
            config={"method": method, **cfg.model_dump(mode="json"), **(method_options or {})},
            metrics=metrics | {"processes": distributed.world_size()},
        )
    )
    return TuneOutcome(artifact=artifact, result=result, base_dir=base_dir, metrics=metrics)


def _mean_kept(result: TrainResult) -> float | None:
    values = [v for series in result.kept_fraction.values() for v in series]
    return sum(values) / len(values) if values else None


def run_domain_tuning(
    settings: Settings, *, method: str, cfg: ProjectedConfig, db: Any = None, size: CorpusSize = CorpusSize()
) -> TuneOutcome:
    """`innkeeper tune run`: domain tuning from the guarded base on the conversations' train split."""
    base_dir = start_model_dir(settings)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    splits = domain_splits(settings, tokenizer, db=db, readings=settings.tune_reading_examples)
    out_dir = tuning_root(settings) / "runs" / f"{distributed.from_main(_stamp)}-{method}"
    return tune(
        settings,
        method=method,
        cfg=cfg,
        base_dir=base_dir,
        train_examples=splits["train"],
        eval_examples=splits["dev"],
        out_dir=out_dir,
        lineage={
            "dialogues": sorted({e.dialogue_id for e in splits["train"] if not e.dialogue_id.startswith(READING)}),
            "readings": sum(e.dialogue_id.startswith(READING) for e in splits["train"]),
            "split_seed": 0,
        },
        size=size,
        method_options=method_options(settings, method),
    )


def method_options(settings: Settings, method: str) -> dict[str, Any]:
    """The configured options of `method` (settings.tune_method_options belong to settings.tune_method only)."""
    return dict(settings.tune_method_options) if method == settings.tune_method else {}


# ---------------------------------------------------------------------- the guarded base
def alignment_examples(chat: ChatModel, settings: Settings, n_safety: int) -> list[TrainingExample]:
    """Refusals of harmful requests, the hotel's policy replies, and the model's own helpful answers to
    safe prompts that only look unsafe (so refusing is learned for harm, not for wording)."""
    examples, _ = corpus.build_protected_batches(
        chat,
        chat.tokenizer,
        settings.shared_data,
        n_text_tokens=0,
        n_chat=0,
        n_safety=n_safety,
        max_len=512,
        seed=0,
        cache_dir=tuning_root(settings) / "cache",
    )
    return examples


def align(settings: Settings, cfg: ProjectedConfig, *, size: CorpusSize = CorpusSize()) -> TuneOutcome:
    """`innkeeper tune align`: teach refusals and policies with the projected method, protecting general
    text and chat (not the old safety behaviour: that is what changes), then export the guarded base."""
    raw_dir = resolve_model_dir(settings)
    chat = ChatModel(raw_dir, threads=settings.llm_threads)
    safety = alignment_examples(chat, settings, size.safety)
    protected = protected_examples(chat, settings, size, seed=cfg.seed, safety=False)
    held_out = [
        example
        for prompt, reply in corpus.safety_prompts(settings.shared_data, "heldout")[: size.safety // 4 or 1]
        if (example := _policy_example(chat, prompt, reply)) is not None
    ]
    out_dir = tuning_root(settings) / "guarded"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    outcome = tune(
        settings,
        method="projected",
        cfg=cfg,
        base_dir=raw_dir,
        train_examples=safety,
        eval_examples=held_out,
        out_dir=out_dir,
        lineage={"alignment": "corpus.safety (calibration part)", "examples": len(safety)},
        protected=protected,
        size=size,
    )
    export_hf(raw_dir, outcome.artifact, guarded_dir(settings))
    return outcome


def _policy_example(chat: ChatModel, prompt: str, reply: str) -> TrainingExample | None:
    from tuning.data.dialogues import SYSTEM_PROMPT

    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": reply},
    ]
    return encode_chat(messages, chat.tokenizer, max_tokens=512, example_id=f"heldout:{prompt[:32]}")


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S")


def outcome_summary(outcome: TuneOutcome) -> dict[str, Any]:
    return {
        "artifact": str(outcome.artifact),
        "base": str(outcome.base_dir),
        **outcome.metrics,
        "method": outcome.result.method,
        "losses_tail": outcome.result.losses[-5:],
    }


# ---------------------------------------------------------------------- evaluation
def load_for_eval(path: Path) -> tuple[ChatModel, Path | None]:
    """A model directory, or a delta artifact applied to its base; returns (model, base dir of an artifact)."""
    path = Path(path)
    if not (path / "manifest.json").exists():
        return ChatModel(path), None
    manifest = read_manifest(path)
    base_dir = Path(manifest["base_id"])
    chat = ChatModel(base_dir, version=f"{base_dir.name}+{path.parent.name}")
    apply_delta(
        chat.model,
        load_delta(path),
        expected_base_sha256=manifest["base_sha256"],
        base_sha256=weights_sha256(base_dir),
    )
    return chat, base_dir


ExtraMeasure = Callable[[dict[str, Any], ChatModel], bool]


def evaluate_model(
    settings: Settings,
    model_path: Path,
    *,
    base_path: Path | None = None,
    size: str = "medium",
    extra_measure: ExtraMeasure | None = None,
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """`innkeeper tune eval`: the suite on the model and its base; returns (result, base result, table).

    `extra_measure(result, model)` adds a measure to both results, e.g. the CLI's scripted booking calls
    through the brain, worded by each model (`innkeeper.simulation.scripted_bookings.measure_into`); it
    returns whether it changed the result, so a cached base result is saved again.
    """
    chat, artifact_base = load_for_eval(model_path)
    base_dir = Path(base_path or artifact_base or start_model_dir(settings))
    base = ChatModel(base_dir)
    suite = evaluate.default_suite(settings, base.tokenizer, size)
    cache = tuning_root(settings) / "cache" / f"eval-{weights_sha256(base_dir)[:16]}-{size}.json"
    if not cache.exists():
        evaluate.save_result(evaluate.run_suite(base.model, base.tokenizer, suite=suite, model_id=base.version), cache)
    base_result = evaluate.load_result(cache)
    if extra_measure is not None and extra_measure(base_result, base):
        evaluate.save_result(base_result, cache)
    result = evaluate.run_suite(
        chat.model,
        chat.tokenizer,
        suite=suite,
        base=evaluate.Baseline(result=base_result, model=base.model),
        model_id=chat.version,
    )
    if extra_measure is not None:
        extra_measure(result, chat)
    evaluate.save_result(result, tuning_root(settings) / "evals" / f"{_stamp()}-{size}.json")
    return result, base_result, evaluate.render_table(result, base_result)
