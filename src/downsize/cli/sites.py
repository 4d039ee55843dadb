"""`downsize sites`: every call site of the logged calls, its answers' kind, and whether it can get a specialist.

No discovery run is needed: a call site (`sites.site_key`) is where an agent asks the same kind of thing
every time (a tool set, or a system-prompt template and response schema), and `downsize train --site KEY`
trains one specialist for it.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import click

from downsize.cli.options import db_option, json_option, open_store


def site_table(
    store: Any, source: str | None = None, agent: str | None = None, validation_fraction: float = 0.25
) -> list[dict[str, Any]]:
    """Per call site: calls by split role, the answers' kind (`contracts.detect_contract` on the training
    calls) and the verdict, most training calls first."""
    from downsize.contracts import OutputContract, detect_contract
    from downsize.discover.suitability import verdict
    from downsize.sites import site_example, site_key
    from downsize.splits import role

    store.assign_splits()
    roles: dict[tuple[str, str | None], Counter[str]] = {}
    trained_on: dict[tuple[str, str | None], list[Any]] = {}
    examples: dict[tuple[str, str | None], str] = {}
    for ex in store.exchanges(source=source, agent=agent):
        if ex.response_kind not in ("tool_call", "json", "text"):
            continue
        key = (site_key(ex.request), ex.agent)
        where = role(ex, validation_fraction)
        roles.setdefault(key, Counter())[where] += 1
        examples.setdefault(key, site_example(ex.request))
        if where == "train":
            trained_on.setdefault(key, []).append(ex)
    rows = []
    for (site, who), counts in roles.items():
        calls = trained_on.get((site, who), [])
        if site.startswith("tools:"):
            tool_calls = [ex for ex in calls if ex.response_kind == "tool_call"]
            contract = OutputContract("tool_call", calls=len(calls), conforming=len(tool_calls))
            train = len(tool_calls)
        else:
            contract = detect_contract(calls)
            train = counts["train"]
        reason = verdict(contract, train, counts["validation"])
        rows.append(
            {
                "site": site,
                "agent": who,
                "kind": contract.kind,
                "train": train,
                "validation": counts["validation"],
                "test": counts["test"],
                "suitable": reason == "suitable",
                "verdict": reason,
                "why_kind": contract.reason,
                "example": examples[(site, who)],
            }
        )
    return sorted(rows, key=lambda r: (not r["suitable"], -r["train"], r["site"]))


@click.command()
@click.option("--source", help="Only calls of this source.")
@click.option("--agent", help="Only calls of this agent.")
@click.option("--limit", type=int, default=30, show_default=True, help="Rows to show (0: all).")
@json_option("the call sites as JSON")
@db_option
def sites(source: str | None, agent: str | None, limit: int, as_json: bool, db: str | None) -> None:
    """List the call sites of the logged calls: answer kind, calls per split, and whether a specialist fits."""
    rows = site_table(open_store(db), source, agent)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(
            "no calls in the store: import logs (`downsize import ...`) or capture with `downsize serve`"
        )
        return
    shown = rows if limit == 0 else rows[:limit]
    click.echo(
        f"{'call site':<38} {'agent':<16} {'kind':<9} {'train':>5} {'val':>4} {'test':>4}  {'example':<42} specialist?"
    )
    for r in shown:
        verdict = "yes (`downsize train --site KEY`)" if r["suitable"] else f"no: {r['verdict']}"
        click.echo(
            f"{r['site'][:38]:<38} {(r['agent'] or '-')[:16]:<16} {r['kind']:<9} {r['train']:>5} "
            f"{r['validation']:>4} {r['test']:>4}  {r['example'][:42]:<42} {verdict}"
        )
    if len(shown) < len(rows):
        click.echo(f"... {len(rows) - len(shown)} more (`downsize sites --limit 0` shows all)")
