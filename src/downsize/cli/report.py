"""`downsize report`: one self-contained HTML page of the store's tasks, specialists, routing and savings."""

from __future__ import annotations

from pathlib import Path

import click

from downsize.cli.options import db_option


@click.command("report")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the page (default: $DOWNSIZE_HOME/reports/report.html).",
)
@db_option
def report(out: Path | None, db: str | None) -> None:
    """Write one HTML file (inline SVG, nothing fetched) that shows the tasks (table and map, named by their
    prompts), each specialist's agreement-coverage curve with the teacher's ceiling, routing share and
    agreement over time, fallbacks by reason, mode changes and rollbacks, money saved, and the share of each
    task's calls specialists take, measured."""
    from downsize.report.page import write_report
    from downsize.store import Store

    store = Store.open(db)
    path = write_report(store, out, progress=lambda msg: click.echo(msg, err=True))
    click.echo(f"report: {path}")
