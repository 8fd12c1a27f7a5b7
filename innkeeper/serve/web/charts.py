"""Small line charts drawn on the server as SVG: the dashboard's plots need no chart library in the page."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from markupsafe import Markup

PALETTE = ("#2f6fb3", "#b3362f", "#2f8a4c", "#8a5cb3", "#c07a1a")


def line_chart(
    title: str,
    labels: Sequence[str],
    series: dict[str, Sequence[float | None]],
    *,
    width: int = 420,
    height: int = 200,
) -> Markup:
    """One chart: x = `labels` (e.g. model versions), one polyline per series; gaps where a value is None."""
    pad_left, pad_right, pad_top, pad_bottom = 52, 10, 26, 34
    values = [v for points in series.values() for v in points if v is not None]
    parts = [f'<svg class="chart" role="img" aria-label="{escape(title)}" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
             f'<text x="{pad_left}" y="16" font-size="13" font-weight="600">{escape(title)}</text>']  # fmt: skip
    if not values or not labels:
        parts.append(f'<text x="{pad_left}" y="{height // 2}" font-size="12" fill="#6b7480">no data yet</text></svg>')
        return Markup("".join(parts))
    low, high = min(values), max(values)
    if high - low < 1e-12:  # a flat line: a little room above and below, not a made-up scale
        pad = max(abs(low) * 0.05, 0.01)
        low, high = low - pad, high + pad
    decimals = min(6, max(0, 2 - math.floor(math.log10(high - low))))
    plot_w, plot_h = width - pad_left - pad_right, height - pad_top - pad_bottom

    def x(i: int) -> float:
        return pad_left + (plot_w * i / max(1, len(labels) - 1) if len(labels) > 1 else plot_w / 2)

    def y(v: float) -> float:
        return pad_top + plot_h * (1 - (v - low) / (high - low))

    for v in (low, high):
        tick = f"{v:.{decimals}f}"
        parts.append(f'<text x="{pad_left - 6}" y="{y(v) + 4:.1f}" font-size="10" text-anchor="end">{tick}</text>')
    parts.append(f'<line x1="{pad_left}" y1="{pad_top + plot_h}" x2="{width - pad_right}" y2="{pad_top + plot_h}" '
                 'stroke="#dde2e8"/>')  # fmt: skip
    for i, label in enumerate(labels):
        parts.append(
            f'<text x="{x(i):.1f}" y="{height - 18}" font-size="9" text-anchor="middle">{escape(label)}</text>'
        )
    for n, (name, points) in enumerate(series.items()):
        colour = PALETTE[n % len(PALETTE)]
        segment: list[str] = []
        for i, v in enumerate(points):
            if v is None:
                _flush(parts, segment, colour)
                continue
            segment.append(f"{x(i):.1f},{y(v):.1f}")
            parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="{colour}"><title>{escape(name)} '
                         f"{escape(labels[i])}: {v:.4g}</title></circle>")  # fmt: skip
        _flush(parts, segment, colour)
        parts.append(
            f'<text x="{pad_left + 110 * n}" y="{height - 4}" font-size="10" fill="{colour}">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _flush(parts: list[str], segment: list[str], colour: str) -> None:
    if len(segment) > 1:
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{" ".join(segment)}"/>')
    segment.clear()
