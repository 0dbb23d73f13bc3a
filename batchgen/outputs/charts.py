"""The report's charts: SVG drawn by pygal, inline, with no script and no link.

pygal (a kept, pure-Python SVG chart library) draws every chart as plain SVG
with text labels, titles and values; batchgen turns its optional JavaScript
off (tooltips load a script from the web) and drops its comments, so the page
stays one self-contained file that works offline and prints. Only this module
imports pygal, and only when a report is written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

_COMMENT = re.compile(r"<!--.*?-->", re.S)
PALETTE = ("#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#ca8a04",
           "#db2777")


def _style() -> Any:
    from pygal.style import Style

    return Style(background="transparent", plot_background="transparent",
                 foreground="#1f2937", foreground_strong="#111827",
                 foreground_subtle="#6b7280", colors=PALETTE, font_family="system-ui, sans-serif",
                 label_font_size=13, major_label_font_size=13, value_font_size=12,
                 title_font_size=16, legend_font_size=13, tooltip_font_size=12)


def _config(**extra: Any) -> dict[str, Any]:
    return {"js": [], "disable_xml_declaration": True, "style": _style(), "width": 640,
            "height": 340, "explicit_size": False, "show_legend": False, "margin": 14,
            "truncate_label": 28, **extra}


def _svg(chart: Any) -> str:
    return _COMMENT.sub("", chart.render(is_unicode=True))


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%m-%d %H:%M")


def prepare() -> None:
    """Import pygal (the first chart of a process otherwise pays for it)."""
    import pygal
    import pygal.style  # noqa: F401


def cost_by_model(rows: Sequence[tuple[str, str, float]]) -> str:
    """Horizontal bars: (model, currency, cost), one colour per currency."""
    import pygal

    chart = pygal.HorizontalBar(**_config(title="Cost by model", print_values=True,
                                          print_values_position="top",
                                          x_labels_major_count=4, show_minor_x_labels=False,
                                          show_legend=True, legend_at_bottom=True,
                                          height=max(200, 80 + 40 * len(rows))))
    chart.x_labels = [model for model, _, _ in rows]
    for currency in sorted({c for _, c, _ in rows}):
        chart.add(currency, [
            {"value": round(cost, 4), "formatter": lambda v, c=currency: f"{v:,.4f} {c}"}
            if cur == currency else None for _, cur, cost in rows])
    return _svg(chart)


def throughput(buckets: Sequence[tuple[float, float, int]]) -> str:
    """(bucket start, output tokens per second, requests finished so far)."""
    import pygal

    chart = pygal.Line(**_config(title="Output tokens per second, and requests finished",
                                 show_legend=True, legend_at_bottom=True, show_dots=False,
                                 fill=False, x_label_rotation=0, show_minor_x_labels=False,
                                 y_title="tokens / s", x_title="time (UTC)",
                                 value_formatter=lambda v: f"{v:,.0f}"))
    chart.x_labels = [_clock(t) for t, _, _ in buckets]
    step = max(1, len(buckets) // 6)
    chart.x_labels_major = [_clock(t) for t, _, _ in buckets[::step]]
    chart.add("tokens / s", [round(rate, 1) for _, rate, _ in buckets])
    chart.add("requests finished", [done for _, _, done in buckets], secondary=True)
    return _svg(chart)


def distribution(title: str, unit: str, series: dict[str, list[float]]) -> str:
    """Box plots per model: quartiles, whiskers at the median ± one standard
    deviation (pygal's ``pstdev`` mode), values beyond them drawn as points."""
    import pygal

    chart = pygal.Box(**_config(title=title, box_mode="pstdev", y_title=unit,
                                show_legend=True, legend_at_bottom=True))
    for model, values in series.items():
        if values:
            chart.add(model, [round(v, 3) for v in values])
    return _svg(chart)


def outcomes(counts: dict[str, int]) -> str:
    """Attempts by how they ended (done, or the error class)."""
    import pygal

    items = sorted(counts.items(), key=lambda kv: -kv[1])
    chart = pygal.HorizontalBar(**_config(title="Attempts by outcome", print_values=True,
                                          print_values_position="top",
                                          x_labels_major_count=5, show_minor_x_labels=False,
                                          height=max(200, 80 + 32 * len(items))))
    chart.x_labels = [label for label, _ in items]
    chart.add("attempts", [n for _, n in items])
    return _svg(chart)


def invocations(points: Sequence[tuple[float, dict[str, float]]]) -> str:
    """Cost of each invocation (a cron run is one), in time order, per currency."""
    import pygal

    chart = pygal.Bar(**_config(title="Cost per invocation", print_values=len(points) <= 12,
                                show_legend=True, legend_at_bottom=True,
                                x_label_rotation=30 if len(points) > 6 else 0))
    chart.x_labels = [_day(t) for t, _ in points]
    for currency in sorted({c for _, costs in points for c in costs}):
        chart.add(currency, [
            {"value": round(costs[currency], 4),
             "formatter": lambda v, c=currency: f"{v:,.4f} {c}"}
            if currency in costs else None for _, costs in points])
    return _svg(chart)
