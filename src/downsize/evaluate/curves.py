"""Agreement-vs-coverage curves of an eval report as one self-contained HTML page (inline SVG, no scripts).

Each split of the report that carries a `curve` (a list of `CurvePoint` dicts, as `evaluate_specialist`
writes them: `validation`, `test_tool_calls`) becomes a series: agreement against coverage as a solid line,
its 95% Wilson lower bound dashed, one dot per threshold with the numbers in its tooltip. The target
agreement is a horizontal line; the calibrated threshold is ringed on every series (on a split it was not
calibrated on, at the most coverage that serving at that threshold gave there). Hand-written SVG: the page
opens anywhere, offline, and needs neither matplotlib nor a JavaScript library.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

COLOURS = ("#1f6fb4", "#c8372d", "#2a9d55", "#8e5bb5", "#d98a1c", "#4a4a4a")
WIDTH, HEIGHT = 760, 440
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_BOTTOM = 64, 24, 56


def curve_series(report: Mapping[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(split name, curve points ordered by coverage) for every split of the report that has a curve."""
    out = []
    for name, value in report.items():
        if isinstance(value, Mapping) and isinstance(value.get("curve"), list):
            points = [dict(p) for p in value["curve"] if isinstance(p, Mapping)]
            out.append((str(name), sorted(points, key=lambda p: (p["coverage"], -p["threshold"]))))
    return out


def point_at_threshold(
    points: Sequence[Mapping[str, Any]], threshold: float | None
) -> Mapping[str, Any] | None:
    """The curve point serving at `threshold`: the one with the most coverage among thresholds >= it."""
    if threshold is None:
        return None
    chosen = [p for p in points if p["threshold"] >= threshold]
    return max(chosen, key=lambda p: p["served"]) if chosen else None


def _fmt(x: float) -> str:
    return f"{x:.2f}"


def _ticks(lo: float, hi: float) -> list[float]:
    step = 0.1 if hi - lo <= 0.5 else 0.2
    start = math.ceil(lo / step - 1e-9)
    return [round(i * step, 6) for i in range(start, int(math.floor(hi / step + 1e-9)) + 1)]


def curve_svg(report: Mapping[str, Any], width: int = WIDTH, height: int = HEIGHT) -> str:
    """The report's curves as one `<svg>` element."""
    series = curve_series(report)
    target = report.get("target_agreement")
    threshold = report.get("threshold")
    points_all = [p for _, pts in series for p in pts]
    x_max = max([1.0, *(p["coverage"] for p in points_all)])
    ceiling = (report.get("teacher_ceiling") or {}).get("agreement")
    lows = (
        [p["agreement_lower95"] for p in points_all]
        + ([target] if isinstance(target, int | float) else [])
        + ([ceiling] if isinstance(ceiling, int | float) else [])
    )
    y_min = max(0.0, math.floor((min(lows) if lows else 0.0) * 10 - 1e-9) / 10)
    y_min = min(y_min, 0.9)
    margin_top = 28 + 16 * ((len(series) + 1) // 2)  # room for the legend
    plot_w = width - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = height - margin_top - MARGIN_BOTTOM

    def sx(x: float) -> float:
        return MARGIN_LEFT + x / x_max * plot_w

    def sy(y: float) -> float:
        return margin_top + (1.0 - (max(y, y_min) - y_min) / (1.0 - y_min)) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="agreement against coverage" '
        f'font-family="system-ui, sans-serif" font-size="12">',
        f'<rect x="{MARGIN_LEFT}" y="{margin_top}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#999"/>',
    ]
    for x in _ticks(0.0, x_max):
        parts.append(
            f'<line class="grid" x1="{_fmt(sx(x))}" y1="{margin_top}" x2="{_fmt(sx(x))}" '
            f'y2="{margin_top + plot_h}" stroke="#eee"/>'
            f'<text x="{_fmt(sx(x))}" y="{margin_top + plot_h + 16}" text-anchor="middle">{x:g}</text>'
        )
    for y in _ticks(y_min, 1.0):
        parts.append(
            f'<line class="grid" x1="{MARGIN_LEFT}" y1="{_fmt(sy(y))}" x2="{MARGIN_LEFT + plot_w}" '
            f'y2="{_fmt(sy(y))}" stroke="#eee"/>'
            f'<text x="{MARGIN_LEFT - 6}" y="{_fmt(sy(y) + 4)}" text-anchor="end">{y:g}</text>'
        )
    parts.append(
        f'<text x="{MARGIN_LEFT + plot_w / 2}" y="{height - 14}" text-anchor="middle">'
        "coverage (served / teacher tool calls)</text>"
        f'<text transform="translate(16 {margin_top + plot_h / 2}) rotate(-90)" text-anchor="middle">'
        "agreement with the teacher</text>"
    )
    if isinstance(target, int | float):
        parts.append(
            f'<line class="target" data-target="{target:g}" x1="{MARGIN_LEFT}" y1="{_fmt(sy(target))}" '
            f'x2="{MARGIN_LEFT + plot_w}" y2="{_fmt(sy(target))}" stroke="#555" stroke-dasharray="6 4"/>'
            f'<text x="{MARGIN_LEFT + plot_w - 4}" y="{_fmt(sy(target) - 5)}" text-anchor="end" fill="#555">'
            f"target {target:.0%}</text>"
        )
    if isinstance(ceiling, int | float):  # the teacher's agreement with itself where a situation recurs
        pairs = (report.get("teacher_ceiling") or {}).get("pairs")
        parts.append(
            f'<line class="ceiling" data-ceiling="{ceiling:g}" x1="{MARGIN_LEFT}" y1="{_fmt(sy(ceiling))}" '
            f'x2="{MARGIN_LEFT + plot_w}" y2="{_fmt(sy(ceiling))}" stroke="#b8860b" stroke-dasharray="2 3"/>'
            f'<text x="{MARGIN_LEFT + 4}" y="{_fmt(sy(ceiling) - 5)}" fill="#b8860b">'
            f"teacher's own agreement {ceiling:.0%} ({pairs} pairs)</text>"
        )
    for i, (name, pts) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        label = html.escape(name)
        parts.append(f'<g class="series" data-split="{label}">')
        if len(pts) > 1:
            for key, dash, cls in (("agreement", "", "agreement"), ("agreement_lower95", "4 3", "lower95")):
                coords = " ".join(f"{_fmt(sx(p['coverage']))},{_fmt(sy(p[key]))}" for p in pts)
                dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
                parts.append(
                    f'<polyline class="{cls}" points="{coords}" fill="none" stroke="{colour}" '
                    f'stroke-width="{2 if cls == "agreement" else 1.2}"{dash_attr}/>'
                )
        for p in pts:
            tip = (
                f"{name}: threshold {p['threshold']:.4g}, served {p['served']}, agreed {p['agreed']}, "
                f"coverage {p['coverage']:.3f}, agreement {p['agreement']:.3f} "
                f"(95% lower {p['agreement_lower95']:.3f})"
            )
            parts.append(
                f'<circle class="point" data-split="{label}" data-threshold="{p["threshold"]!r}" '
                f'data-served="{p["served"]}" data-coverage="{p["coverage"]!r}" '
                f'data-agreement="{p["agreement"]!r}" data-lower95="{p["agreement_lower95"]!r}" '
                f'cx="{_fmt(sx(p["coverage"]))}" cy="{_fmt(sy(p["agreement"]))}" r="2.6" fill="{colour}">'
                f"<title>{html.escape(tip)}</title></circle>"
            )
        marked = point_at_threshold(pts, threshold)
        if marked is not None:
            cx, cy = sx(marked["coverage"]), sy(marked["agreement"])
            parts.append(
                f'<circle class="threshold-marker" data-split="{label}" data-threshold="{threshold!r}" '
                f'data-coverage="{marked["coverage"]!r}" cx="{_fmt(cx)}" cy="{_fmt(cy)}" r="7" fill="none" '
                f'stroke="{colour}" stroke-width="2"><title>{label}: calibrated threshold {threshold:.4g}, '
                f"coverage {marked['coverage']:.3f}, agreement {marked['agreement']:.3f}</title></circle>"
                f'<line x1="{_fmt(cx)}" y1="{_fmt(cy + 7)}" x2="{_fmt(cx)}" y2="{margin_top + plot_h}" '
                f'stroke="{colour}" stroke-dasharray="2 3"/>'
            )
        parts.append("</g>")
    for i, (name, pts) in enumerate(series):  # the legend, in the top margin, two entries a row
        colour = COLOURS[i % len(COLOURS)]
        x, y = MARGIN_LEFT + (i % 2) * (plot_w // 2), 14 + 16 * (i // 2)
        parts.append(
            f'<line x1="{x}" y1="{y}" x2="{x + 24}" y2="{y}" stroke="{colour}" stroke-width="2"/>'
            f'<text class="legend" x="{x + 30}" y="{y + 4}">'
            f"{html.escape(name)} ({len(pts)} thresholds; dashed: 95% lower bound)</text>"
        )
    if not points_all:
        parts.append(
            f'<text x="{MARGIN_LEFT + plot_w / 2}" y="{margin_top + plot_h / 2}" text-anchor="middle" '
            'fill="#777">no valid calls to plot</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _summary_rows(report: Mapping[str, Any]) -> str:
    rows = []
    for name, value in report.items():
        if not isinstance(value, Mapping) or not isinstance(value.get("at_threshold"), Mapping):
            continue
        at = value["at_threshold"]
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(cell))}</td>"
                for cell in (
                    name,
                    at.get("calls", value.get("calls", "")),
                    at.get("served", ""),
                    f"{at.get('served_share', 0.0):.1%}",
                    f"{at.get('agreement', 0.0):.1%}",
                    f"{at.get('agreement_lower95', 0.0):.1%}",
                )
            )
            + "</tr>"
        )
    if not rows:
        return ""
    head = "".join(
        f"<th>{h}</th>" for h in ("split", "calls", "served", "coverage", "agreement", "95% lower bound")
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def curve_html(report: Mapping[str, Any]) -> str:
    """A whole HTML page: the curves, the target, the calibrated threshold and what serving at it gives."""
    specialist = report.get("specialist") if isinstance(report.get("specialist"), Mapping) else {}
    name = str((specialist or {}).get("name") or "specialist")
    threshold = report.get("threshold")
    target = report.get("target_agreement")
    facts = [f"student: {html.escape(str((specialist or {}).get('student', '?')))}"]
    if isinstance(target, int | float):
        facts.append(f"target agreement {target:.0%}")
    found = report.get("calibration")
    calibration: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    signal = (calibration.get("signal") or {}).get("name", "min")
    how = (
        f"Learn-then-Test on {calibration.get('calls')} dev calls cross-fitted over {calibration.get('folds')} folds"
        if calibration.get("method") == "cross_fit"
        else "Learn-then-Test on the validation calls"
    )
    facts.append(
        f"calibrated threshold {threshold:.4g} (signal {html.escape(str(signal))}; {how})"
        if isinstance(threshold, int | float)
        else f"no threshold reaches the target ({how}): the specialist serves nothing"
    )
    if report.get("evaluated_at"):
        facts.append(f"evaluated {html.escape(str(report['evaluated_at']))}")
    title = f"Agreement vs coverage: {html.escape(name)}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
        "table{border-collapse:collapse;margin-top:1em}td,th{border:1px solid #ccc;padding:4px 10px;"
        "text-align:right}td:first-child,th:first-child{text-align:left}p.facts{color:#555}</style>"
        "</head><body>"
        f"<h1>{title}</h1>"
        f'<p class="facts">{" · ".join(facts)}</p>'
        f"<figure>{curve_svg(report)}<figcaption>Each dot serves every valid call at or above one "
        "confidence threshold; coverage is the share of the teacher's tool calls served. Ringed: the "
        "calibrated threshold.</figcaption></figure>"
        f"{_summary_rows(report)}"
        "</body></html>\n"
    )


def write_curve_html(report: Mapping[str, Any], path: Path) -> Path:
    """Write the report's curve page to `path` (folders made as needed) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(curve_html(report), encoding="utf-8")
    return path
