"""`downsize splits`: what each source holds in train, validation and test, and a time-ordered re-cut."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import click

from downsize.cli.options import db_option, json_option, open_store
from downsize.splits import TEST_FRACTION


def split_table(store: Any) -> list[dict[str, Any]]:
    """Per source: exchanges, tool calls and workflows in dev and test, and the rule that placed them."""
    store.assign_splits()
    rows: dict[str, dict[str, Any]] = defaultdict(lambda: {"rules": set()})
    for r in store.split_counts():
        row = rows[r["source"]]
        row["source"] = r["source"]
        split = r["split"] or "unplaced"
        for key in ("exchanges", "tool_calls", "workflows"):
            row[f"{split}_{key}"] = row.get(f"{split}_{key}", 0) + int(r[key] or 0)
        if r["split_rule"]:
            row["rules"].add(r["split_rule"])
    out = []
    for row in rows.values():
        row["rules"] = sorted(row["rules"])
        out.append(row)
    return sorted(out, key=lambda r: r["source"])


def echo_splits(store: Any, source: str) -> None:
    """One line after an import: how the source's workflows fall in dev and test."""
    for row in split_table(store):
        if row["source"] == source:
            click.echo(
                f"splits ({'/'.join(row['rules'])}): dev {row.get('dev_workflows', 0)} workflows "
                f"({row.get('dev_exchanges', 0)} calls), test {row.get('test_workflows', 0)} workflows "
                f"({row.get('test_exchanges', 0)} calls); `downsize splits` for every source"
            )


@click.group("splits", invoke_without_command=True)
@json_option()
@db_option
@click.pass_context
def splits(ctx: click.Context, as_json: bool, db: str | None) -> None:
    """Show each source's calls and workflows in the dev split (train and validation) and the test split.

    Every exchange, imported or captured, belongs to a workflow (its session, else its conversation) and gets
    its split when it is stored: the source's own where it has one (rule `source`), else by a hash of the
    workflow (rule `hash`: stable as more logs arrive). `downsize splits by-time SOURCE` holds out the newest
    workflows instead. Stages then take validation workflows out of dev by a second hash.
    """
    if ctx.invoked_subcommand is not None:
        return
    table = split_table(open_store(db))
    if as_json:
        click.echo(json.dumps(table, indent=2))
        return
    if not table:
        click.echo("the store is empty: `downsize import ...` or `downsize serve` first")
        return
    click.echo(
        f"{'source':<20} {'rule':<12} {'dev calls':>9} {'tool':>6} {'flows':>6}  {'test calls':>10} {'tool':>6} {'flows':>6}"
    )
    for r in table:
        click.echo(
            f"{r['source'][:20]:<20} {'/'.join(r['rules']):<12} {r.get('dev_exchanges', 0):>9} "
            f"{r.get('dev_tool_calls', 0):>6} {r.get('dev_workflows', 0):>6}  {r.get('test_exchanges', 0):>10} "
            f"{r.get('test_tool_calls', 0):>6} {r.get('test_workflows', 0):>6}"
        )


@splits.command("by-time")
@click.argument("source")
@click.option(
    "--test-fraction",
    type=float,
    default=TEST_FRACTION,
    show_default=True,
    help="Share of the source's workflows, newest first, held out as the test split.",
)
@db_option
def by_time(source: str, test_fraction: float, db: str | None) -> None:
    """Re-cut SOURCE so its newest workflows (by their first call) are the test split.

    As a user with months of logs would hold out: the specialist is proven on traffic newer than anything it
    trained on. A source's own split is never changed. Specialists trained before the re-cut saw a different
    split: evaluate them again (`downsize eval`) before trusting their figures.
    """
    store = open_store(db)
    counts = store.reassign_by_time(source, test_fraction)
    click.echo(f"{source}: {counts['dev']} workflows in dev, the newest {counts['test']} in test")
