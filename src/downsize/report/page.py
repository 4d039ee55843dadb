"""The report page: one self-contained HTML file (inline SVG and CSS, no script, nothing fetched), written by
`write_report` from the figures `figures.gather` reads out of the store."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from downsize.config import home
from downsize.discover.task_map import task_colour, task_map_svg
from downsize.evaluate.curves import curve_svg
from downsize.evaluate.metrics import wilson_lower
from downsize.report.charts import bars_svg, timeline_svg
from downsize.report.figures import Conversion, Progress, ReportFigures, gather
from downsize.report.money import Savings, measured_savings
from downsize.store import Store

STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em 2em;color:#222;max-width:1200px}
h1{margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
p.facts,p.note{color:#555}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
td.text,th.text{text-align:left}th{background:#f4f4f4;position:sticky;top:0}
div.scroll{max-height:520px;overflow:auto;border:1px solid #eee;display:inline-block}
tr.rollback td{background:#fde2e0;font-weight:600}
span.mode{padding:0 6px;border-radius:8px;background:#eee}span.mode.live{background:#cdeccd}
span.mode.canary{background:#fff0c2}span.mode.shadow{background:#dde8f6}
.empty{color:#777;font-style:italic}span.dot{display:inline-block;width:9px;height:9px;border-radius:50%;margin-right:6px}figure{margin:.5em 0}svg{background:#fff;border:1px solid #eee}
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _interval(share: float | None, n: int) -> str:
    """The 95% Wilson interval of a share measured on `n` calls: a share on 3 calls says little, and shows it."""
    if share is None or not n:
        return "–"
    k = round(share * n)
    return f"{wilson_lower(k, n):.0%}–{1 - wilson_lower(n - k, n):.0%}"


def _mode(mode: str | None) -> str:
    return f'<span class="mode {_e(mode)}">{_e(mode)}</span>' if mode else "–"


def _table(
    head: list[str], rows: list[list[str]], text_columns: set[int], row_class: list[str] | None = None
) -> str:
    th = "".join(f'<th class="{"text" if i in text_columns else ""}">{h}</th>' for i, h in enumerate(head))
    body = []
    for r, cells in enumerate(rows):
        cls = f' class="{row_class[r]}"' if row_class and row_class[r] else ""
        tds = "".join(
            f'<td class="{"text" if i in text_columns else ""}">{c}</td>' for i, c in enumerate(cells)
        )
        body.append(f"<tr{cls}>{tds}</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _tasks_section(f: ReportFigures) -> str:
    if f.run_id is None:
        return (
            '<p class="empty">no discovery run yet: run `downsize discover` to find the recurring tasks.</p>'
        )
    parts = [
        f'<p class="facts">discovery run {f.run_id}: {len(f.tasks)} tasks over {f.run_calls} calls. Each task is '
        "named by the role its system prompt gives the model and what it answers (tool, JSON schema or text "
        "reply); tasks that share a name are told apart by where the conversation stands, then by rank.</p>"
    ]
    if f.centroids is not None and len(f.tasks) > 1:
        svg = task_map_svg(
            f.centroids,
            np.arange(len(f.tasks)),
            {j: t.name for j, t in enumerate(f.tasks)},
            volumes={j: t.volume for j, t in enumerate(f.tasks)},
            points=False,
        )
        parts.append(
            f'<figure id="task-map">{svg}<figcaption>Each bubble is a task at its centroid (PCA of the '
            "embeddings discovery stored), its area its volume; hover for its name.</figcaption></figure>"
        )
    rows = [
        [
            f'<span class="dot" style="background:{task_colour(j)}"></span>{_e(t.name)}',
            _e(t.key),
            _e(t.kind),
            f"{t.volume:,}",
            f"{t.tokens:,}",
            f"${t.cost:,.2f}",
            f"{t.suitability:.2f}",
            _e(t.specialist) if t.specialist else "–",
            _mode(t.mode),
        ]
        for j, t in enumerate(f.tasks)
    ]
    head = ["task", "key", "output", "calls", "tokens", "cost", "suitability", "specialist", "mode"]
    parts.append(f'<div class="scroll">{_table(head, rows, {0, 1, 2, 7, 8})}</div>')
    return "".join(parts)


def _specialists_section(f: ReportFigures) -> str:
    if not f.specialists:
        return '<p class="empty">no specialist yet: `downsize train --task KEY` trains one for a task.</p>'
    parts = []
    for sp in f.specialists:
        scope = ", ".join(sp.tasks) or sp.task
        parts.append(
            f'<h3 class="specialist" data-id="{sp.id}">{_e(sp.name)} (id {sp.id}) {_mode(sp.mode)}</h3>'
            f'<p class="facts">answers {_e(scope)}; threshold '
            f"{'–' if sp.threshold is None else f'{sp.threshold:.4g}'}</p>"
        )
        if sp.report is None:
            parts.append('<p class="empty">not evaluated: `downsize eval` draws its curve.</p>')
            continue
        cov = sp.coverage
        if cov is not None:
            parts.append(
                f'<p class="facts">{_e(cov.how)}: served {cov.served} of {cov.calls} calls the teacher answered '
                f"in kind ({_pct(cov.share)}), {cov.agreed} of them agreeing with the teacher"
                f" ({_pct(cov.agreed / cov.served if cov.served else None)}).</p>"
            )
        ceiling = (sp.report.get("teacher_ceiling") or {}).get("agreement")
        parts.append(
            f'<figure class="curve">{curve_svg(sp.report)}<figcaption>Agreement with the teacher against '
            "coverage, one dot per confidence threshold, ringed at the calibrated one; "
            + (
                f"the dotted gold line is the teacher's agreement with itself ({ceiling:.0%})."
                if isinstance(ceiling, int | float)
                else "no teacher ceiling was measured (no situation recurs in another workflow)."
            )
            + "</figcaption></figure>"
        )
    return "".join(parts)


def _routing_section(f: ReportFigures) -> str:
    if not f.decisions:
        return (
            '<p class="empty">no routed traffic yet: serve with a specialist in shadow, canary or live mode '
            "(`downsize route TASK shadow`, then `downsize serve`).</p>"
        )
    checked = f.shadow_pairs + f.probe_pairs
    facts = [
        f"{f.decisions:,} decisions, {f.served:,} served ({f.served / f.decisions:.1%})",
        f"shadow agreement {f.shadow_agreed}/{f.shadow_pairs} ({_pct(f.shadow_agreed / f.shadow_pairs)})"
        if f.shadow_pairs
        else "no shadow decision would have served",
        f"served calls checked by the LLM: {f.probe_agreed}/{f.probe_pairs} agreed"
        if f.probe_pairs
        else "no served call was checked by the LLM",
    ]
    parts = [
        f'<p class="facts" id="routing-totals">{" · ".join(facts)}</p>',
        f'<figure id="timeline">{timeline_svg(f.buckets, f.bucket_unit)}<figcaption>Per {f.bucket_unit}: the '
        f"share of decided calls a specialist served, and agreement where it was checked ({checked} checks in "
        "all).</figcaption></figure>",
        "<h3>Fallbacks by reason</h3>",
        f'<figure id="fallbacks">{bars_svg(list(f.fallbacks.items()))}<figcaption>Calls a specialist decided '
        "but handed to the LLM, by reason.</figcaption></figure>",
    ]
    return "".join(parts)


def _changes_section(f: ReportFigures) -> str:
    if not f.events:
        return '<p class="empty">no mode change yet.</p>'
    rows, classes = [], []
    for ev in f.events:
        arrow = f"{_e(ev['from_mode'])} → {_e(ev['to_mode'])}"
        if ev.get("traffic") is not None:
            arrow += f" ({ev['traffic']:.0%})"
        rows.append(
            [
                _e(ev["created_at"]),
                _e(ev["task"]),
                _e(ev["specialist"]),
                arrow,
                _e(ev["actor"]),
                _e(ev["reason"]),
            ]
        )
        classes.append("rollback" if ev["actor"] == "rollback" else "")
    rollbacks = classes.count("rollback")
    head = ["when", "task", "specialist", "from → to", "actor", "reason"]
    return (
        f'<p class="facts">{len(rows)} change{"s" if len(rows) != 1 else ""}, {rollbacks} automatic '
        f"rollback{'s' if rollbacks != 1 else ''} (highlighted).</p>"
        + _table(head, rows, {0, 1, 2, 3, 4, 5}, classes)
    )


def _money_section(savings: Savings | None) -> str:
    if savings is None:
        return (
            '<p class="empty" id="savings-not-measured">savings: not measured (no gateway traffic yet: savings are '
            "measured on served calls, never on imported logs).</p>"
        )
    rows = [
        [
            _e(s.task),
            f"{s.calls:,}",
            f"${s.upstream_cost:,.4f}",
            f"${s.specialist_cost:,.4f}",
            f"${s.saved:,.4f}",
            f"${s.upstream_spend:,.4f}",
        ]
        for s in savings.by_task
    ]
    head = ["task", "served calls", "LLM cost avoided", "specialist cost", "saved (net)", "spent upstream"]
    share = (
        f" ({_pct(savings.share_saved)} of what the LLM would have cost)"
        if savings.share_saved is not None
        else ""
    )
    unpriced = (
        f" {savings.unpriced_calls:,} calls of a model without a price are counted apart."
        if savings.unpriced_calls
        else ""
    )
    return (
        f'<p class="facts" id="savings-total">saved ${savings.saved:,.4f} net on {savings.calls:,} served calls'
        f"{share}; ${savings.upstream_spend:,.4f} still spent upstream.{unpriced}</p>"
        f'<p class="note">{_e(savings.note)}. <span title="{_e(savings.estimate)}">Served calls\' tokens are '
        "estimated (hover for how).</span></p>" + _table(head, rows, {0})
    )


def _conversion_section(conversions: list[Conversion]) -> str:
    if not conversions:
        return '<p class="empty">no discovery run: nothing to convert yet.</p>'
    rows = [
        [
            _e(c.name),
            f"{c.volume:,}",
            _pct(c.share),
            _interval(c.share, c.measured_on),
            f"{c.measured_on:,}" if c.measured_on else "–",
            _e(c.source),
            _e(c.specialist) if c.specialist else "–",
        ]
        for c in sorted(conversions, key=lambda c: (c.share is None, -c.volume, c.task))
    ]
    measured = [c for c in conversions if c.share is not None]
    volume = sum(c.volume for c in conversions)
    taken = sum(c.volume * (c.share or 0.0) for c in measured)
    head = ["task", "calls in the log", "share taken", "95% interval", "measured on", "source", "specialist"]
    summary = (
        f"{len(measured)} of {len(conversions)} tasks have a measured share; applied to their calls in the log, "
        f"specialists take {taken:,.0f} of {volume:,} calls ({taken / volume:.1%})."
        if volume
        else ""
    )
    return (
        '<p class="facts">The share of each task\'s calls a specialist takes (served, or would serve in '
        "shadow), measured: on replayed traffic (route decisions) where there is some, else on the eval "
        "report's test split at the calibrated threshold; a task with neither shows none. Nothing is "
        f'estimated.</p><p class="facts" id="conversion-total">{summary}</p>'
        + f'<div class="scroll">{_table(head, rows, {0, 5, 6})}</div>'
    )


def render_report(figures: ReportFigures, savings: Savings | None) -> str:
    """The whole page."""
    f = figures
    sources = ", ".join(f"{_e(s)} {n:,}" for s, n in f.sources.items())
    sections = [
        ("tasks", "Tasks", _tasks_section(f)),
        ("specialists", "Specialists: agreement against coverage", _specialists_section(f)),
        ("routing", "Routing", _routing_section(f)),
        ("changes", "Mode changes and rollbacks", _changes_section(f)),
        ("money", "Money", _money_section(savings)),
        ("conversion", "Conversion analysis", _conversion_section(f.conversions)),
    ]
    body = "".join(
        f'<section id="{key}"><h2>{title}</h2>{content}</section>' for key, title, content in sections
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8"><title>downsize report</title>'
        f"<style>{STYLE}</style></head><body>"
        "<h1>downsize report</h1>"
        f'<p class="facts">generated {_e(f.generated_at)} · {f.exchanges:,} logged calls ({sources})</p>'
        f"{body}</body></html>\n"
    )


def default_path() -> Path:
    return home() / "reports" / "report.html"


def write_report(store: Store, path: Path | None = None, progress: Progress | None = None) -> Path:
    """Gather the figures, render the page and write it to `path` (default `$DOWNSIZE_HOME/reports/report.html`)."""
    figures = gather(store, progress)
    target = Path(path) if path is not None else default_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_report(figures, measured_savings(store)), encoding="utf-8")
    return target
