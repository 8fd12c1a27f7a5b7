"""The forgetting evaluation: how much a tuned chat model gained on hotel dialogue and what it lost against
its base model — general-text NLL and chat KL first, then domain NLL, multiple-choice knowledge and
safety — as one JSON-able result with bootstrap CIs, paired deltas and per-measure timings.

Measures are deterministic (greedy decoding, seeded subsamples and resamples, fixed batching) and
batched for the CPU. The base model's run keeps its per-item scores and greedy chat replies in the
result's "items", so comparing a tuned model to it rescores nothing of the base; only the KL needs
the base weights again.

One job a module:

- `suite`: the suite (data and sizes), `default_suite` from the shared data, and the `Baseline`;
- `mc_items`: the multiple-choice benchmark items in cloze form;
- `tokens`, `scoring`, `generate`: token ids, batched log-probs and the one greedy generation;
- `stats`: bootstrap CIs, chance correction, flips; `compare`: the one way a candidate is paired with its base;
- the measures: `retention` (general NLL, chat KL), `domain` (hotel NLL), `knowledge` (multiple choice),
  `safety` (refusal, over-refusal, policy probes), on `context` (the run context) and `nll`;
- `run`: `run_suite`, all measures as one result; `report`: save/load, `retention_summary`, `render_table`.

Callers use this package's names (`from tuning import evaluate; evaluate.run_suite(...)`).
"""

from tuning.evaluate.context import Measured
from tuning.evaluate.domain import domain_nll
from tuning.evaluate.knowledge import multiple_choice
from tuning.evaluate.mc_items import MCItem, load_mc_tasks
from tuning.evaluate.report import load_result, render_table, retention_summary, save_result
from tuning.evaluate.retention import chat_kl, general_nll, text_windows
from tuning.evaluate.run import run_suite
from tuning.evaluate.safety import safety_measures
from tuning.evaluate.stats import bootstrap_ci, chance_corrected, count_flips, paired_diff_ci, ratio_ci
from tuning.evaluate.suite import SIZES, Baseline, EvalSuite, Result, default_suite
from tuning.evaluate.tokens import Messages

__all__ = [
    "SIZES",
    "Baseline",
    "EvalSuite",
    "MCItem",
    "Measured",
    "Messages",
    "Result",
    "bootstrap_ci",
    "chance_corrected",
    "chat_kl",
    "count_flips",
    "default_suite",
    "domain_nll",
    "general_nll",
    "load_mc_tasks",
    "load_result",
    "multiple_choice",
    "paired_diff_ci",
    "ratio_ci",
    "render_table",
    "retention_summary",
    "run_suite",
    "safety_measures",
    "save_result",
    "text_windows",
]
