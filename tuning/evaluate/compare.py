"""Comparing a candidate with its base on the same items: the base run's per-item record is looked up
(and refused when it was computed on other data), then paired with the candidate's.

Pairing item by item (deltas with CIs from resampling the items together, and flip counts) sees smaller
changes than two separate CIs would, and needs nothing of the base but its saved result.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tuning.evaluate.stats import bootstrap_ci, count_flips, paired_diff_ci, per_token

# Names of the two flip counts, (true → false, false → true), per kind of per-item flag.
RIGHT_WRONG = ("right_to_wrong", "wrong_to_right")
REFUSED_COMPLIED = ("refused_to_complied", "complied_to_refused")
PASS_FAIL = ("pass_to_fail", "fail_to_pass")


def fingerprint(*parts: Any) -> str:
    """A fingerprint of a measure's inputs, so a base result computed on other data is never paired."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def base_record(base_result: Mapping[str, Any] | None, key: str, *path: str) -> Mapping[str, Any] | None:
    """The base run's per-item record at `path` under "items", checked to be for the same data (`key`)."""
    items: Any = base_result.get("items", {}) if base_result is not None else None
    for part in path:
        items = items.get(part) if items else None
    if items is not None and items["key"] != key:
        raise ValueError(f"the base result's {'/'.join(path)} was computed on other data; rerun the base")
    return items


def paired_change(
    base: Sequence[float], tuned: Sequence[float], flips: tuple[str, str] | None = None, **ci: Any
) -> dict[str, Any]:
    """The change of a per-item mean (an accuracy, a refusal rate, a margin) from the base, with its paired
    CI and, for true/false items, how many flipped each way (named by `flips`)."""
    change: dict[str, Any] = {
        "base": float(np.mean(base)),
        "delta": float(np.mean(tuned) - np.mean(base)),
        "delta_ci": list(paired_diff_ci(tuned, base, **ci)),
    }
    if flips is not None:
        change[flips[0]], change[flips[1]] = count_flips(base, tuned)
    return change


def paired_per_token_change(
    sums: Sequence[float], base_sums: Sequence[float], counts: Sequence[int], **ci: Any
) -> dict[str, Any]:
    """The change of a per-token mean (an NLL) from the base over the same sequences, in its own unit and in
    percent, each with a paired CI."""
    t, b, n = np.asarray(sums), np.asarray(base_sums), np.asarray(counts)
    value, base = per_token(sums, counts), float(b.sum() / n.sum())
    return {
        "base": base,
        "delta": value - base,
        "delta_ci": list(bootstrap_ci(lambda idx: (t[idx] - b[idx]).sum(1) / n[idx].sum(1), len(t), **ci)),
        "delta_pct": 100 * (value / base - 1),
        "delta_pct_ci": [100 * v for v in bootstrap_ci(lambda idx: t[idx].sum(1) / b[idx].sum(1) - 1, len(t), **ci)],
    }
