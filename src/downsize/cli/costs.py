"""`downsize savings`: what the specialists saved on the gateway's traffic, per task, per agent and overall."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import click

from downsize.cli.options import db_option, json_option, open_store

COLUMNS = (
    f"{'':<24} {'served':>7} {'avoided $':>11} {'compute $':>10} {'probe $':>9} {'net $':>11} "
    f"{'upstream':>8} {'spent $':>11} {'saved':>6}"
)


def _row(name: str, f: dict[str, Any]) -> str:
    share = f"{f['share_saved']:.1%}" if f["share_saved"] is not None else "-"
    return (
        f"{name[:24]:<24} {f['calls_served']:>7} {f['upstream_cost_avoided_usd']:>11.4f} "
        f"{f['specialist_cost_usd']:>10.4f} {f['probe_cost_usd']:>9.4f} {f['net_saving_usd']:>11.4f} "
        f"{f['calls_upstream']:>8} {f['upstream_spend_usd']:>11.4f} {share:>6}"
    )


def describe(report: dict[str, Any]) -> str:
    """The report as `downsize savings` prints it."""
    overall = report["overall"]
    if not report["first_call"]:
        since = f" since {report['since']}" if report["since"] else ""
        return (
            f"no calls through the gateway{since}: savings are measured on served traffic only. Send the "
            "agent's calls through `downsize serve` with a live or canary specialist, then run this again."
        )
    lines = [
        f"measured on {report['measured_on']}",
        f"from {report['first_call']} to {report['last_call']}",
        "",
    ]
    for title, rows in (("task", report["by_task"]), ("agent", report["by_agent"])):
        lines.append(COLUMNS.replace(" " * 24, f"{'by ' + title:<24}", 1))
        lines.extend(_row(name, f) for name, f in rows.items())
        lines.append("")
    lines.append(_row("all", overall))
    lines.append("")
    notes: list[str] = [
        "avoided: what the model asked for would have charged for the served calls; compute: the specialists' "
        "measured time; probe: the consistency probe's own calls; net: avoided less both; upstream and spent: "
        "the calls that still went to the LLM and their cost; saved: avoided / (avoided + spent)."
    ]
    estimate = report["estimate"]
    basis = ", ".join(f"{k} {v}" for k, v in estimate["basis"].items() if v) or "none"
    notes.append(
        f"tokens of served calls are ESTIMATED ({estimate['prompt_tokens']:,} prompt, "
        f"{estimate['completion_tokens']:,} completion; basis: {basis}): {estimate['how']}."
    )
    for r in estimate["ratios"]:
        who = f"{r['agent'] or 'any agent'} / {r['model']}"
        notes.append(
            f"measured on {who}'s {r['calls']} upstream calls: {r['prompt_tokens_per_char']:.3f} prompt and "
            f"{r['completion_tokens_per_char']:.3f} completion tokens a character, {r['cached_share']:.0%} of "
            "the prompt cached."
        )
    if estimate["upstream_calls_estimated"]:
        notes.append(
            f"{estimate['upstream_calls_estimated']} upstream calls had no usage: estimated the same way."
        )
    if report["unpriced_models"]:
        models = ", ".join(f"{m} ({n})" for m, n in report["unpriced_models"].items())
        notes.append(
            f"no price for: {models}; {overall['calls_served_unpriced']} served and "
            f"{overall['calls_upstream_unpriced']} upstream calls are counted but not priced "
            "(add them to $DOWNSIZE_HOME/prices.toml)."
        )
    notes.append(
        f"compute: {overall['specialist_seconds_served']:.1f} s serving + "
        f"{overall['specialist_seconds_unserved']:.1f} s shadow/fallback at ${report['specialist_hourly_usd']}/h "
        f"({report['specialist_hourly_source']})."
    )
    notes.append(
        f"prices read on {report['prices_read_on']} from {', '.join(report['price_files'])}: check them."
    )
    month = report.get("per_month")
    if month:
        value = month.get("net_saving_usd")
        figure = f"${value:.2f} net a month" if value is not None else "no figure"
        notes.append(f"PROJECTION {figure}: {month['label']}.")
    for note in notes:
        lines.extend(
            textwrap.wrap(note, 110, subsequent_indent="  ", break_on_hyphens=False, break_long_words=False)
        )
    return "\n".join(lines)


@click.command()
@json_option("the figures as JSON")
@click.option(
    "--prices",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A price file over the shipped table (default: $DOWNSIZE_HOME/prices.toml when there is one).",
)
@click.option(
    "--hourly-usd",
    type=click.FloatRange(min=0),
    help="USD an hour of the machine serving the specialists (default: the price table's "
    "specialist_hourly_usd).",
)
@click.option("--since", help="Only calls from this ISO time on (e.g. 2026-12-01).")
@click.option(
    "--per-month",
    is_flag=True,
    help="Also project the net saving to 30 days from the measured window (labelled a projection).",
)
@db_option
def savings(
    as_json: bool,
    prices: Path | None,
    hourly_usd: float | None,
    since: str | None,
    per_month: bool,
    db: str | None,
) -> None:
    """What the specialists saved on the gateway's served calls: upstream cost avoided (tokens estimated, at
    the asked model's list price), less their compute and the consistency probe's calls; per task, per agent,
    overall, beside what the calls that went upstream cost."""
    from downsize.evaluate.costs import savings as measure

    report = measure(open_store(db), prices, hourly_usd, since, per_month=per_month)
    click.echo(json.dumps(report, indent=2) if as_json else describe(report))
