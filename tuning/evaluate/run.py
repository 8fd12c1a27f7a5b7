"""One evaluation run: every measure the suite has data for, timed, as one JSON-able result whose per-item
"items" later runs pair with."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tuning.evaluate.context import Measured
from tuning.evaluate.domain import domain_nll
from tuning.evaluate.knowledge import multiple_choice
from tuning.evaluate.retention import chat_kl, general_nll
from tuning.evaluate.safety import safety_measures
from tuning.evaluate.suite import Baseline, EvalSuite, Result


def run_suite(
    model: Any,
    tokenizer: Any,
    *,
    suite: EvalSuite,
    base: Baseline | None = None,
    model_id: str | None = None,
    progress: bool = True,
) -> Result:
    """Every measure the suite has data for, as one JSON-able result.

    Without `base` this is the reference run: its "items" (per-item scores, greedy chat replies) are what
    later runs pair with. With `base`, each measure also reports its change against the base.
    """
    result: Result = {
        "model": model_id or _model_id(model),
        "base_model": base.result.get("model") if base else None,
        "suite": suite.sizes(),
        "measures": {},
        "timing_s": {},
        "items": {},
    }
    for name, measure in _measures(model, tokenizer, suite, base, progress).items():
        started = time.perf_counter()
        result["measures"][name], result["items"][name] = measure()
        result["timing_s"][name] = round(time.perf_counter() - started, 2)
    return result


def _measures(
    model: Any, tokenizer: Any, suite: EvalSuite, base: Baseline | None, progress: bool
) -> dict[str, Callable[[], Measured]]:
    """The measures the suite has data for, by result key, in the order they run (retention first)."""
    options: dict[str, Any] = {"suite": suite, "base": base, "progress": progress}
    measures: dict[str, tuple[bool, Callable[[], Measured]]] = {
        "general_nll": (
            bool(suite.general_texts),
            lambda: general_nll(model, tokenizer, suite.general_texts, **options),
        ),
        "chat_kl": (bool(suite.chat_prompts), lambda: chat_kl(model, tokenizer, suite.chat_prompts, **options)),
        "domain": (bool(suite.domain_examples), lambda: domain_nll(model, tokenizer, suite.domain_examples, **options)),
        "mc": (bool(suite.mc_tasks), lambda: multiple_choice(model, tokenizer, suite.mc_tasks, **options)),
        "safety": (
            bool(suite.harmful_prompts or suite.safe_prompts or suite.policy_probes),
            lambda: safety_measures(
                model, tokenizer, suite.harmful_prompts, suite.safe_prompts, suite.policy_probes, **options
            ),
        ),
    }
    return {name: measure for name, (has_data, measure) in measures.items() if has_data}


def _model_id(model: Any) -> str:
    return str(getattr(model, "name_or_path", "") or type(model).__name__)
