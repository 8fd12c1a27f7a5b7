"""The statistics every measure reports: seeded percentile-bootstrap CIs over items, chance correction and
flip counts. Resampling items (not tokens) keeps a CI honest about how few prompts a suite has."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

CI_LEVEL = 0.95


def chance_corrected(accuracy: float, chance: float) -> float:
    """0 at chance level, 1 when every answer is right."""
    return (accuracy - chance) / (1 - chance)


def bootstrap_ci(
    statistic: Callable[[np.ndarray], np.ndarray], n_items: int, *, resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Percentile 95% CI of `statistic` (index matrix [resamples, n_items] → [resamples]) over items."""
    rng = np.random.default_rng(seed)
    stats = statistic(rng.integers(0, n_items, size=(resamples, n_items)))
    tail = (1 - CI_LEVEL) / 2
    lo, hi = np.quantile(stats, [tail, 1 - tail])
    return float(lo), float(hi)


def ratio_ci(num: Sequence[float], den: Sequence[float] | None = None, **kw: Any) -> tuple[float, float]:
    """CI of sum(num) / sum(den) — a per-token mean when items are sequences; the mean when `den` is None."""
    a = np.asarray(num, dtype=float)
    b = np.ones_like(a) if den is None else np.asarray(den, dtype=float)
    return bootstrap_ci(lambda idx: a[idx].sum(1) / b[idx].sum(1), len(a), **kw)


def paired_diff_ci(tuned: Sequence[float], base: Sequence[float], **kw: Any) -> tuple[float, float]:
    """CI of mean(tuned) - mean(base) over the same items, resampled together."""
    d = np.asarray(tuned, dtype=float) - np.asarray(base, dtype=float)
    return bootstrap_ci(lambda idx: d[idx].mean(1), len(d), **kw)


def count_flips(base: Sequence[bool], tuned: Sequence[bool]) -> tuple[int, int]:
    """(true → false, false → true) over paired items, e.g. right→wrong and wrong→right."""
    pairs = list(zip(base, tuned, strict=True))
    return sum(b and not t for b, t in pairs), sum(t and not b for b, t in pairs)


def rate(flags: Sequence[bool], **kw: Any) -> dict[str, Any]:
    """The share of true flags with its CI and the item count (an accuracy, a refusal rate)."""
    return {"value": float(np.mean(flags)), "ci": list(ratio_ci(flags, **kw)), "n": len(flags)}


def per_token(sums: Sequence[float], counts: Sequence[int]) -> float:
    """A per-token mean over sequences: the sum over all tokens by the token count (not a mean of means)."""
    return sum(sums) / sum(counts)
