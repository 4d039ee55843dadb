"""The report's two small charts as inline SVG (no script, nothing fetched): shares over time, and counts by
reason. The agreement-coverage curves and the task map have their own modules (`evaluate/curves.py`,
`discover/task_map.py`)."""

from __future__ import annotations

import html
from collections.abc import Sequence

from downsize.report.figures import Bucket

WIDTH, HEIGHT = 760, 300
LEFT, RIGHT, TOP, BOTTOM = 56, 20, 30, 60
SERVED, AGREED = "#1f6fb4", "#2a9d55"


def timeline_svg(buckets: Sequence[Bucket], unit: str) -> str:
    """Per bucket, the share of decided calls served (blue) and the agreement of the checked ones (green:
    shadow decisions against the LLM's answer, and probes of served calls), on one 0-1 axis."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    n = len(buckets)

    def sx(i: int) -> float:
        return LEFT + (plot_w / 2 if n == 1 else i * plot_w / (n - 1))

    def sy(v: float) -> float:
        return TOP + (1.0 - v) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} '
        f'{HEIGHT}" role="img" aria-label="routing over time" font-family="system-ui, sans-serif" font-size="12">',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#999"/>',
    ]
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(
            f'<line x1="{LEFT}" y1="{sy(v):.1f}" x2="{LEFT + plot_w}" y2="{sy(v):.1f}" stroke="#eee"/>'
            f'<text x="{LEFT - 6}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:.0%}</text>'
        )
    step = max(1, n // 8)
    for i, b in enumerate(buckets):
        if i % step == 0 or i == n - 1:
            # the first and last labels align to the plot's edges, so neither is cut off
            anchor = "middle" if n == 1 or 0 < i < n - 1 else "start" if i == 0 else "end"
            parts.append(
                f'<text x="{sx(i):.1f}" y="{TOP + plot_h + 16}" text-anchor="{anchor}" font-size="10">'
                f"{html.escape(b.start)}</text>"
            )
    parts.append(
        f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 8}" text-anchor="middle">{html.escape(unit)} '
        "(time the call was logged)</text>"
    )
    for cls, colour, values in (
        ("served-share", SERVED, [b.served_share for b in buckets]),
        ("agreement", AGREED, [b.agreement for b in buckets]),
    ):
        points = [(sx(i), sy(v), v, buckets[i]) for i, v in enumerate(values) if v is not None]
        if len(points) > 1:
            coords = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
            parts.append(
                f'<polyline class="{cls}" points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>'
            )
        for x, y, v, b in points:
            tip = (
                f"{b.start}: served {b.served} of {b.decided} decided"
                if cls == "served-share"
                else f"{b.start}: agreed {b.shadow_agreed + b.probe_agreed} of {b.shadow_pairs + b.probe_pairs} checked"
            )
            parts.append(
                f'<circle class="{cls}" cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}" data-value="{v:.4f}">'
                f"<title>{html.escape(tip)} ({v:.1%})</title></circle>"
            )
    for i, (label, colour) in enumerate(
        (
            ("served share of decided calls", SERVED),
            ("agreement with the LLM (shadow checks and probes)", AGREED),
        )
    ):
        x = LEFT + i * 260
        parts.append(
            f'<line x1="{x}" y1="14" x2="{x + 22}" y2="14" stroke="{colour}" stroke-width="2"/>'
            f'<text x="{x + 28}" y="18">{label}</text>'
        )
    if not n:
        parts.append(
            f'<text x="{LEFT + plot_w / 2}" y="{TOP + plot_h / 2}" text-anchor="middle" fill="#777">'
            "no routed traffic yet</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


def bars_svg(counts: Sequence[tuple[str, int]], colour: str = "#c8372d", label_width: int = 240) -> str:
    """Horizontal bars, one per (label, count), largest first as given."""
    row = 22
    height = TOP + row * max(len(counts), 1) + 10
    biggest = max((c for _, c in counts), default=0) or 1
    plot_w = WIDTH - label_width - RIGHT - 50
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} '
        f'{height}" role="img" aria-label="counts by reason" font-family="system-ui, sans-serif" font-size="12">'
    ]
    total = sum(c for _, c in counts) or 1
    for i, (label, count) in enumerate(counts):
        y = TOP + i * row
        w = max(1.0, count / biggest * plot_w)
        short = label if len(label) <= 38 else label[:37] + "…"
        parts.append(
            f'<text x="{label_width - 8}" y="{y + 14}" text-anchor="end">{html.escape(short)}</text>'
            f'<rect class="bar" data-label="{html.escape(label)}" data-count="{count}" x="{label_width}" '
            f'y="{y + 2}" width="{w:.1f}" height="{row - 6}" fill="{colour}">'
            f"<title>{html.escape(label)}: {count} ({count / total:.1%})</title></rect>"
            f'<text x="{label_width + w + 6:.1f}" y="{y + 14}">{count}</text>'
        )
    if not counts:
        parts.append(f'<text x="{WIDTH / 2}" y="{TOP + 12}" text-anchor="middle" fill="#777">none</text>')
    parts.append("</svg>")
    return "\n".join(parts)
