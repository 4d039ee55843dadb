"""`downsize discover` and `downsize tasks`: find the recurring tasks in the log, and list them (register in main)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from downsize.cli.options import config_option, db_option, json_option


@click.command("discover")
@click.option("--source", help="Only exchanges of this source (tau-airline, gateway, ...).")
@click.option(
    "--split",
    type=click.Choice(["dev", "test", "all"]),
    help="Discover on this split (default dev: the test split's answers never shape the tasks or the assigner).",
)
@click.option(
    "--embedder",
    type=click.Choice(["minilm", "lsa"]),
    help="minilm: all-MiniLM-L6-v2, offline (default); lsa: TF-IDF + SVD, no torch.",
)
@click.option(
    "--algorithm",
    type=click.Choice(["hdbscan", "kmeans"]),
    help="Clustering inside a signature (default hdbscan).",
)
@click.option("--min-cluster-size", type=int, help="HDBSCAN: the fewest calls a task has (default 5).")
@click.option("--n-clusters", type=int, help="k-means: clusters per signature (default sqrt(n/2)).")
@click.option("--limit", type=int, help="Discover over at most this many exchanges (quick look).")
@click.option("--no-map", is_flag=True, help="Do not write the 2-D map of the clusters.")
@config_option("DiscoverConfig")
@json_option("the run's report as JSON")
@db_option
def discover(config_file: Path | None, as_json: bool, db: str | None, no_map: bool, **flags: Any) -> None:
    """Group logged calls into recurring tasks, fit the task assigner, and record a discovery run.

    Calls are split by structural signature (call site, system-prompt template with variables masked, tool
    set, response kind), then what varies (the recent conversation) is embedded and clustered. Each task gets
    a label, volume, tokens, cost, output kind and a suitability score; `downsize tasks` lists them.
    """
    from downsize.config import load_yaml, resolve
    from downsize.discover.config import DiscoverConfig
    from downsize.discover.discovery import discover as run_discovery
    from downsize.store import Store

    if no_map:
        flags["map"] = False
    config = resolve(DiscoverConfig, load_yaml(config_file) if config_file else None, **flags)
    store = Store.open(db)
    result = run_discovery(store, config, progress=lambda msg: click.echo(msg, err=True))
    if as_json:
        click.echo(json.dumps(result.report, indent=2))
        return
    report = result.report
    click.echo(
        f"discovery run {report['run_id']}: {report['tasks']} tasks over {report['calls']} calls "
        f"({report['signatures']} signatures, {report['outliers']} outliers); "
        + ", ".join(f"{k} {v:.1f} s" for k, v in report["seconds"].items())
    )
    from downsize.discover.names import task_names

    names = task_names(store, report["run_id"])
    click.echo(render_tasks([{**t, "name": names.get(t["task_key"])} for t in result.tasks], limit=15))
    click.echo(f"assigner: {report['assigner_path']}")
    if report.get("map_path"):
        click.echo(f"map: {report['map_path']}")


@click.command("tasks")
@click.option("--run", "run_id", type=int, help="Discovery run id (default: the newest finished run).")
@click.option("--limit", type=int, default=30, show_default=True, help="Rows to show (0: all).")
@json_option()
@db_option
def tasks(run_id: int | None, limit: int, as_json: bool, db: str | None) -> None:
    """List the tasks of a discovery run, most suitable first: label, volume, tokens, cost, kind, suitability,
    and whether a specialist can be trained for it (with the reason when not)."""
    from dataclasses import asdict

    from downsize.discover.names import task_names
    from downsize.discover.runs import require_run, run_tasks
    from downsize.discover.suitability import assess_tasks
    from downsize.store import Store

    store = Store.open(db)
    run_id = require_run(store, run_id)
    rows = run_tasks(store, run_id)
    names = task_names(store, run_id)
    for row in rows:
        row["name"] = names.get(row["task_key"], row["label"])
    verdicts = {fit.task_key: fit for fit in assess_tasks(store, run_id)}
    if as_json:
        for row in rows:
            (row.get("details") or {}).pop("centroid", None)
            fit = verdicts.get(row["task_key"])
            row["specialist"] = asdict(fit) if fit else None
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    units = [f for f in verdicts.values() if f.task_key.startswith("tool:")]
    sites = [f for f in verdicts.values() if f.task_key.startswith("site:")]
    suitable = [f.task_key for f in verdicts.values() if f.suitable]
    click.echo(
        f"discovery run {run_id}: {len(rows)} tasks; suitable for a specialist: "
        f"{', '.join(suitable) if suitable else 'none'} (`downsize train --suitable` trains them)"
    )
    click.echo(render_tasks(rows, limit=limit or None, verdicts=verdicts))
    if units:
        click.echo("tool units (the tasks of one tool, trained as one specialist: `--task tool:NAME`):")
        for f in units:
            verdict = "yes" if f.suitable else f"no: {f.reason}"
            click.echo(
                f"  {f.task_key:<34} train {f.train:>5}  validation {f.validation:>4}  test {f.test:>4}  | {verdict}"
            )
    if sites:
        shown = sites if limit == 0 else sites[: max(limit, 1)]
        click.echo(
            "call-site units (every answer at a call site offering no tools, one specialist: `--task site:KEY`):"
        )
        for f in shown:
            verdict = "yes" if f.suitable else f"no: {f.reason}"
            click.echo(
                f"  {f.task_key:<44} {f.output_kind:<9} train {f.train:>4}  validation {f.validation:>3}  "
                f"test {f.test:>3}  | {verdict}"
            )
        if len(shown) < len(sites):
            click.echo(f"  ... {len(sites) - len(shown)} more (`downsize tasks --limit 0` shows all)")


def render_tasks(
    rows: list[dict[str, Any]], limit: int | None = None, verdicts: dict[str, Any] | None = None
) -> str:
    """Tasks as a fixed-width table, most suitable first; with `verdicts`, whether a specialist fits and why."""
    rows = sorted(rows, key=lambda r: (-r["suitability"], -r["volume"], r["task_key"]))
    head = (
        f"{'task':<5} {'kind':<9} {'calls':>6} {'tokens':>10} {'cost $':>9} {'regular':>7} {'suits':>5}  name"
    )
    lines = [head + (" | specialist?" if verdicts else "")]
    for r in rows[:limit]:
        shown = (
            r.get("name") or r["label"]
        )  # the readable name where `tasks` read it, else the c-TF-IDF label
        label = shown if len(shown) <= 60 else shown[:59] + "…"
        line = (
            f"{r['task_key']:<5} {r['output_kind']:<9} {r['volume']:>6} {r['tokens']:>10} {r['cost']:>9.3f} "
            f"{r['regularity']:>7.2f} {r['suitability']:>5.2f}  {label}"
        )
        fit = (verdicts or {}).get(r["task_key"])
        if fit is not None:  # the kind its answers follow (a label, JSON, text-format tool use, ...)
            line = line.replace(f" {r['output_kind']:<9} ", f" {fit.output_kind:<9} ", 1)
            line = f"{line:<120} | " + ("yes" if fit.suitable else f"no: {fit.reason}")
        lines.append(line)
    if limit is not None and len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more (`downsize tasks --limit 0` shows all)")
    return "\n".join(lines)
