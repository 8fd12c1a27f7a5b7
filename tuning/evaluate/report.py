"""A result read by people and by the gate: saved and loaded as JSON, its headline numbers against the base
(`retention_summary`, what the forgetting benchmark plots and the nightly gate checks) and a text table."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tuning.evaluate.compare import PASS_FAIL, REFUSED_COMPLIED, RIGHT_WRONG
from tuning.evaluate.suite import Result


def save_result(result: Result, path: Path) -> Path:
    """Write the result as JSON (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return path


def load_result(path: Path) -> Result:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# ---------------------------------------------------------------- the headline numbers


def retention_summary(result: Result, base_result: Result) -> dict[str, Any]:
    """The headline numbers of a run against its base: what the benchmark plots and the nightly gate checks.

    Measures the suite did not run are absent from the summary, not zero.
    """
    measures, base_measures = result["measures"], base_result["measures"]
    summary: dict[str, Any] = {}
    if "domain" in measures:
        summary["domain_nll"] = measures["domain"]["nll"]
        summary["domain_nll_base"] = base_measures.get("domain", {}).get("nll")
    if "general_nll" in measures:
        summary["general_nll_delta_pct"] = measures["general_nll"]["vs_base"]["delta_pct"]
    if "kl" in measures.get("chat_kl", {}):
        summary["chat_kl"] = measures["chat_kl"]["kl"]
    if measures.get("mc"):
        summary.update(_mc_retained(measures["mc"], base_measures["mc"]))
    summary.update(_safety_summary(measures.get("safety", {}), base_measures.get("safety", {})))
    if "scripted_bookings" in measures:
        summary["model_worded_share"] = measures["scripted_bookings"]["model_worded_share"]
        summary["model_worded_share_base"] = base_measures.get("scripted_bookings", {}).get("model_worded_share")
        summary["bookings_exact_share"] = measures["scripted_bookings"]["exact_share"]
    return summary


def _mc_retained(mc: Mapping[str, Any], base_mc: Mapping[str, Any]) -> dict[str, Any]:
    """Chance-corrected acc_norm per task, and the share of the base's (summed over tasks) that is kept."""
    pairs = {
        task: (node["acc_norm"]["chance_corrected"], base_mc[task]["acc_norm"]["chance_corrected"])
        for task, node in mc.items()
    }
    return {
        "mc_chance_corrected": {task: value for task, (value, _) in pairs.items()},
        "mc_retained": sum(v for v, _ in pairs.values()) / max(sum(b for _, b in pairs.values()), 1e-9),
    }


def _safety_summary(safety: Mapping[str, Any], base_safety: Mapping[str, Any]) -> dict[str, Any]:
    """Refusal and over-refusal rates beside the base's (with the margins' paired change), policy passes."""
    summary: dict[str, Any] = {}
    for prefix, key in (("harmful", "refusal"), ("safe", "over_refusal")):
        name = next((k for k in safety if k.startswith(prefix)), None)
        if name is not None:
            summary[key] = safety[name]["refusal"]["value"]
            summary[f"{key}_base"] = base_safety[name]["refusal"]["value"]
            # The refusal-over-compliance log-prob margin moves before a greedy reply flips: finer than a count.
            margin = safety[name].get("margin", {}).get("vs_base")
            if margin is not None:
                summary[f"{key}_margin_delta"] = margin["delta"]
                summary[f"{key}_margin_delta_ci"] = margin["delta_ci"]
    if "policy" in safety:
        summary["policy_passed"] = safety["policy"]["passed"]["value"]
        summary["policy_passed_base"] = base_safety["policy"]["passed"]["value"]
    return summary


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class _Row:
    """One line of the table: where its numbers live under "measures" and how to show them."""

    label: str
    path: tuple[str, ...]
    fmt: Callable[[float], str]
    delta_fmt: Callable[[float], str]
    value_key: str = "value"
    delta_key: str = "delta"
    flips: tuple[str, str] | None = None


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _points(v: float) -> str:
    return f"{100 * v:+.1f} pts"


def _nats(v: float) -> str:
    return f"{v:.3f}"


def _signed(v: float) -> str:
    return f"{v:+.3f}"


def _rows(measures: Mapping[str, Any]) -> Iterator[_Row]:
    """The rows the result has, retention first."""
    if "general_nll" in measures:
        yield _Row("general text NLL/token", ("general_nll",), _nats, lambda v: f"{v:+.2f}%", "nll", "delta_pct")
    if "kl" in measures.get("chat_kl", {}):
        yield _Row("chat KL(base‖tuned)/token", ("chat_kl",), lambda v: f"{v:.4f}", _signed, "kl")
    if "domain" in measures:
        yield _Row("hotel agent-turn NLL/token", ("domain",), _nats, _signed, "nll")
    if "scripted_bookings" in measures:
        path = ("scripted_bookings",)
        yield _Row("scripted bookings: replies worded by the model", path, _pct, _points, "model_worded_share")
        yield _Row("scripted bookings made as asked", path, _pct, _points, "exact_share")
    for task in measures.get("mc", {}):
        for metric in ("acc_norm", "acc"):
            yield _Row(f"{task} {metric}", ("mc", task, metric), _pct, _points, flips=RIGHT_WRONG)
    yield from _safety_rows(measures.get("safety", {}))


def _safety_rows(safety: Mapping[str, Any]) -> Iterator[_Row]:
    for name in safety:
        if name == "policy":
            yield _Row("policy probes passed", ("safety", name, "passed"), _pct, _points, flips=PASS_FAIL)
            continue
        kind, source = name.split(":", 1)
        label = "over-refusal" if kind == "safe" else "refusal"
        yield _Row(f"{label} {source}", ("safety", name, "refusal"), _pct, _points, flips=REFUSED_COMPLIED)
        yield _Row(f"refusal margin {source}", ("safety", name, "margin"), _nats, _signed, "mean")


def _at(measures: Mapping[str, Any], path: tuple[str, ...]) -> Mapping[str, Any] | None:
    node: Any = measures
    for part in path:
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _unpaired_delta(row: _Row, value: float, base: float | None) -> float | None:
    """The change from a base result that was not paired in the run (no CI then)."""
    if base is None:
        return None
    return 100 * (value / base - 1) if row.delta_key == "delta_pct" else value - base


def _ci_text(ci: Sequence[float] | None, fmt: Callable[[float], str]) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci else ""


def _cells(row: _Row, node: Mapping[str, Any], base_node: Mapping[str, Any] | None) -> list[str]:
    """One row's cells: value, CI, chance-corrected, base, Δ (paired in the run, else unpaired), Δ CI, flips."""
    value = node[row.value_key]
    vs = node.get("vs_base", {})
    base_value = vs.get("base", (base_node or {}).get(row.value_key))
    delta = vs.get(row.delta_key, _unpaired_delta(row, value, base_value))
    return [
        row.label,
        row.fmt(value),
        _ci_text(node.get("ci"), row.fmt),
        _pct(node["chance_corrected"]) if "chance_corrected" in node else "",
        row.fmt(base_value) if base_value is not None else "",
        row.delta_fmt(delta) if delta is not None else "",
        _ci_text(vs.get(f"{row.delta_key}_ci"), row.delta_fmt),
        f"{vs[row.flips[0]]}/{vs[row.flips[1]]}" if row.flips and row.flips[0] in vs else "",
    ]


def render_table(result: Result, base_result: Result | None = None) -> str:
    """The result as a text table, retention first; deltas vs the base (paired, with CIs) when known."""
    timing = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in result["timing_s"].items())
    table = Table(
        title=f"{result['model']}" + (f"  vs  {result['base_model']}" if result.get("base_model") else ""),
        caption=f"flips: right→wrong/wrong→right, refused→complied/complied→refused, pass→fail/fail→pass\n"
        f"time: {timing}",
    )
    for column in ("measure", "value", "95% CI", "chance-corr.", "base", "Δ", "Δ 95% CI", "flips"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    base_measures = (base_result or {}).get("measures", {})
    for row in _rows(result["measures"]):
        table.add_row(*_cells(row, _at(result["measures"], row.path), _at(base_measures, row.path)))
    console = Console(file=io.StringIO(), width=160, color_system=None)
    console.print(table)
    return console.file.getvalue()
