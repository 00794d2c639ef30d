"""Inline SVG charts for report.html: plain strings, no script, every label escaped."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from nansearch.analysis.tables import Level

PALETTE = ("#c0392b", "#2471a3", "#d68910", "#1e8449", "#7d3c98", "#17a589", "#566573", "#ba4a00")
NAN_RED = "#c0392b"
FONT = 'font-family="system-ui,sans-serif" font-size="12"'
CHAR_WIDTH = 7  # px per character of a 12 px label, generous for sans-serif
MAX_LABEL = 60


def _svg(width: float, height: float, body: list[str], label: str) -> str:
    return (
        f'<svg role="img" aria-label="{escape(label)}" '
        f'width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
        f"{FONT}>{''.join(body)}</svg>"
    )


def _text(x: float, y: float, text: str, anchor: str = "start", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {extra}>{escape(text)}</text>'


def _clip(label: str, size: int = 24) -> str:
    return label if len(label) <= size else label[: size - 1] + "…"


def _clip_start(label: str, size: int) -> str:
    return label if len(label) <= size else "…" + label[-(size - 1) :]


def rate_color(rate: float | None) -> str:
    """White at 0 to red at 1; grey where there is no data."""
    if rate is None:
        return "#eeeeee"
    red = (255, 255, 255)
    full = (192, 57, 43)
    mix = [round(a + (b - a) * rate) for a, b in zip(red, full, strict=True)]
    return "#{:02x}{:02x}{:02x}".format(*mix)


def rate_bars(rows: Sequence[Level], title: str) -> str:
    """NaN rate per level as bars, with the 95% interval as a whisker and ``k/n``."""
    left, width, row_h, top = 170, 320, 24, 24
    height = top + row_h * len(rows) + 24
    body = [_text(left, 14, title, extra='font-weight="600"')]
    for tick in (0, 0.25, 0.5, 0.75, 1):
        x = left + tick * width
        body.append(
            f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 20}" stroke="#ddd"/>'
        )
        body.append(_text(x, height - 6, f"{tick:.0%}", "middle", 'fill="#666"'))
    for i, row in enumerate(rows):
        y = top + i * row_h
        label = row.value
        body.append(f"<g><title>{escape(label)}</title>")
        body.append(_text(left - 8, y + 15, _clip(label), "end"))
        body.append("</g>")
        if not row.total:
            body.append(_text(left + 4, y + 15, "no finished trials", extra='fill="#999"'))
            continue
        rate = row.rate or 0.0
        body.append(
            f'<rect x="{left}" y="{y + 4}" width="{rate * width:.1f}" height="{row_h - 8}" '
            f'fill="{NAN_RED}" fill-opacity="0.75"/>'
        )
        lo, hi = left + row.ci_low * width, left + row.ci_high * width
        mid = y + row_h / 2
        body.append(
            f'<path d="M{lo:.1f},{mid:.1f}H{hi:.1f}M{lo:.1f},{mid - 5:.1f}V{mid + 5:.1f}'
            f'M{hi:.1f},{mid - 5:.1f}V{mid + 5:.1f}" stroke="#222" fill="none"/>'
        )
        body.append(_text(left + width + 8, y + 15, f"{row.nan}/{row.total}"))
    return _svg(left + width + 60, height, body, title)


def value_bars(rows: Sequence[tuple[str, float]], title: str, log: bool = False) -> str:
    """Horizontal bars for named values (importances; magnitudes on a log scale).

    The label column is as wide as the longest label (module paths run long), up to
    ``MAX_LABEL`` characters, past which a label keeps its end: ``…layers.0.fc2``.
    """
    longest = max((len(label) for label, _ in rows), default=0)
    left, width, row_h, top = 16 + CHAR_WIDTH * min(max(longest, 12), MAX_LABEL), 300, 22, 24
    values = [v for _, v in rows if v is not None and math.isfinite(v)]
    scale = [math.log10(max(v, 1e-30)) for v in values] if log else values
    low = min(min(scale, default=0.0), 0.0) if not log else min(scale, default=0.0) - 1
    high = max(scale, default=1.0)
    span = (high - low) or 1.0
    body = [_text(left, 14, title, extra='font-weight="600"')]
    for i, (label, value) in enumerate(rows):
        y = top + i * row_h
        body.append(f"<g><title>{escape(label)}</title>")
        body.append(_text(left - 8, y + 14, _clip_start(label, MAX_LABEL), "end"))
        body.append("</g>")
        if value is None or not math.isfinite(value):
            body.append(_text(left + 4, y + 14, str(value), extra=f'fill="{NAN_RED}"'))
            continue
        v = math.log10(max(value, 1e-30)) if log else value
        body.append(
            f'<rect x="{left}" y="{y + 3}" width="{(v - low) / span * width:.1f}" '
            f'height="{row_h - 6}" fill="#2471a3" fill-opacity="0.8"/>'
        )
        body.append(_text(left + width + 8, y + 14, f"{value:.3g}"))
    return _svg(left + width + 70, top + row_h * len(rows) + 8, body, title)


def heatmap(
    x_name: str,
    x_labels: Sequence[str],
    y_name: str,
    y_labels: Sequence[str],
    cells: dict[tuple[int, int], tuple[int, int]],
) -> str:
    """NaN rate for each pair of levels: ``cells[(y, x)] = (nan, total)``."""
    left, top, cell_w, cell_h = 150, 44, 88, 26
    width = left + cell_w * len(x_labels) + 10
    height = top + cell_h * len(y_labels) + 10
    title = f"{y_name} × {x_name}"
    body = [_text(4, 14, title, extra='font-weight="600"')]
    for j, label in enumerate(x_labels):
        x = left + j * cell_w + cell_w / 2
        body.append(f"<g><title>{escape(label)}</title>")
        body.append(_text(x, top - 8, _clip(label, 13), "middle", 'fill="#444"'))
        body.append("</g>")
    for i, label in enumerate(y_labels):
        y = top + i * cell_h
        body.append(f"<g><title>{escape(label)}</title>")
        body.append(_text(left - 6, y + 17, _clip(label, 20), "end", 'fill="#444"'))
        body.append("</g>")
        for j in range(len(x_labels)):
            nan, total = cells.get((i, j), (0, 0))
            rate = nan / total if total else None
            x = left + j * cell_w
            body.append(
                f'<rect x="{x}" y="{y}" width="{cell_w - 2}" height="{cell_h - 2}" '
                f'fill="{rate_color(rate)}"><title>{escape(label)} · {escape(x_labels[j])}: '
                f"{nan}/{total} NaN</title></rect>"
            )
            ink = "#fff" if rate is not None and rate > 0.6 else "#222"
            text = f"{nan}/{total}" if total else "–"
            body.append(_text(x + cell_w / 2 - 1, y + 17, text, "middle", f'fill="{ink}"'))
    return _svg(width, height, body, title)


def step_dots(rows: Sequence[tuple[str, list[int], int]], steps: int, title: str) -> str:
    """For each label, a dot per first bad step (area by count); ``(label, steps, total)``."""
    left, width, row_h, top = 120, 420, 30, 24
    height = top + row_h * len(rows) + 26
    last = max(steps - 1, 1)
    body = [_text(left, 14, title, extra='font-weight="600"')]
    for tick in sorted({0, last // 2, last}):
        x = left + tick / last * width
        body.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{height - 22}" stroke="#ddd"/>'
        )
        body.append(_text(x, height - 8, f"step {tick}", "middle", 'fill="#666"'))
    for i, (label, bad, total) in enumerate(rows):
        y = top + i * row_h + row_h / 2
        body.append(_text(left - 8, y + 4, _clip(label, 16), "end"))
        body.append(_text(left + width + 12, y + 4, f"{len(bad)}/{total} NaN"))
        for step in sorted(set(bad)):
            count = bad.count(step)
            x = left + step / last * width
            radius = 3 + 2.5 * math.sqrt(count)
            body.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius:.1f}" fill="{NAN_RED}" '
                f'fill-opacity="0.7"><title>{escape(label)}: {count} trial(s) first non-finite '
                f"at step {step}</title></circle>"
            )
    return _svg(left + width + 90, height, body, title)


def line_chart(
    series: Sequence[tuple[str, Sequence[float]]], title: str, steps: int, log: bool = False
) -> str:
    """One line per series over ``steps`` steps; a non-finite value is an × on the top edge."""
    left, top, width, height = 70, 24, 380, 180
    points = [v for _, values in series for v in values if math.isfinite(v)]
    if log:
        points = [math.log10(max(abs(v), 1e-30)) for v in points]
    low, high = min(points, default=0.0), max(points, default=1.0)
    if high - low < 1e-9:
        low, high = low - 1, high + 1
    steps = max(steps, *(len(values) for _, values in series))
    last = max(steps - 1, 1)

    def xy(step: int, value: float) -> tuple[float, float]:
        v = math.log10(max(abs(value), 1e-30)) if log else value
        return left + step / last * width, top + (1 - (v - low) / (high - low)) * height

    body = [_text(left, 14, title, extra='font-weight="600"')]
    for k in range(3):
        v = low + (high - low) * k / 2
        y = top + (1 - k / 2) * height
        label = f"{10**v:.3g}" if log else f"{v:.3g}"
        body.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + width}" y2="{y:.1f}" stroke="#ddd"/>'
        )
        body.append(_text(left - 6, y + 4, label, "end", 'fill="#666"'))
    body.append(_text(left + width, top + height + 16, f"step {steps - 1}", "end", 'fill="#666"'))
    body.append(_text(left, top + height + 16, "step 0", "start", 'fill="#666"'))
    for n, (label, values) in enumerate(series):
        color = PALETTE[n % len(PALETTE)]
        path = [xy(s, v) for s, v in enumerate(values) if math.isfinite(v)]
        if len(path) > 1:
            d = "M" + "L".join(f"{x:.1f},{y:.1f}" for x, y in path)
            body.append(f'<path d="{d}" stroke="{color}" fill="none" stroke-width="1.8"/>')
        for x, y in path:
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.2" fill="{color}"/>')
        for step, value in enumerate(values):
            if not math.isfinite(value):
                x = left + step / last * width
                body.append(
                    f'<text x="{x:.1f}" y="{top + 4}" text-anchor="middle" fill="{color}" '
                    f'font-size="16">×<title>{escape(label)}: {value} at step {step}</title></text>'
                )
    return _svg(left + width + 12, top + height + 24, body, title)
