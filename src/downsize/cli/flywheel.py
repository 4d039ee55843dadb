"""`downsize flywheel`: retrain, evaluate and promote specialists as logs arrive (register in main)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from downsize.cli.options import config_option, db_option, json_option


@click.command("flywheel")
@click.option(
    "--once", is_flag=True, help="One pass (or the resumption of a crashed one), then exit: for cron."
)
@click.option(
    "--every-exchanges",
    type=int,
    help="Turn after this many new exchanges since the last run began (default 500; with --once: run only "
    "when they have arrived).",
)
@click.option("--interval", "interval_s", type=float, help="Turn this many seconds after the last run ended.")
@click.option("--max-minutes", type=float, help="Training minutes a run shares among its units (default 20).")
@click.option(
    "--rule",
    type=click.Choice(["strict", "parity"]),
    help="The promotion rule for live: strict (the target's 95% lower bound; default) or parity with the teacher.",
)
@click.option(
    "--unit", "units", multiple=True, help="Only this unit (tool:NAME, site:KEY or a task key); repeatable."
)
@config_option("FlywheelConfig (stages as nested mappings: curate, discover, train, eval)")
@json_option("each run's report as JSON")
@db_option
def flywheel(
    once: bool,
    every_exchanges: int | None,
    interval_s: float | None,
    max_minutes: float | None,
    rule: str | None,
    units: tuple[str, ...],
    config_file: Path | None,
    as_json: bool,
    db: str | None,
) -> None:
    """Keep specialists current, unattended: after N new exchanges or on a schedule, curate -> discover
    (tasks keep their keys across runs) -> retrain the units whose training calls changed or whose
    specialist was rolled back -> evaluate -> promote behind the gate.

    A new version goes live only when its gate holds; otherwise the live one stays. Every run and each step's
    result is recorded in the store (`flywheel_runs`); a run whose process died is resumed by the next one
    from its first unfinished step.
    """
    from downsize.config import load_yaml
    from downsize.flywheel import due, flywheel_config, run_flywheel, run_loop
    from downsize.store import Store

    config = flywheel_config(
        load_yaml(config_file) if config_file else None,
        every_exchanges=every_exchanges,
        interval_s=interval_s,
        max_minutes=max_minutes,
        rule=rule,
        units=list(units) or None,
    )
    store = Store.open(db)

    def say(message: str) -> None:
        click.echo(f"[flywheel {time.strftime('%H:%M:%S')}] {message}", err=True)

    if not once:
        say(
            f"watching the store: a run after {config.every_exchanges} new exchanges"
            + (f" or every {config.interval_s:g} s" if config.interval_s else "")
            + f" (polling every {config.poll_s:g} s; Ctrl-C stops)"
        )
        try:
            run_loop(store, config, say)
        except KeyboardInterrupt:
            say("stopped")
        return
    trigger = due(store, config) if every_exchanges is not None else "once"
    if trigger is None:
        say(f"nothing to do: fewer than {config.every_exchanges} new exchanges since the last run")
        return
    report = run_flywheel(store, config, "once" if trigger in ("first", "resume") else trigger, say)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2, default=str))
        return
    click.echo(f"flywheel run {report.run_id}: {report.status} in {report.seconds:.0f} s")
    for unit, record in report.units.items():
        click.echo(f"  {unit:<34} {record.get('why', ''):<16} {record.get('outcome', '?')}")
