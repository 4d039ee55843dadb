"""`downsize route`: each task's routing mode (off, shadow, canary, live), changing it, and the rollback check."""

from __future__ import annotations

import json

import click

from downsize.cli.options import count_option, db_option, json_option, open_store


@click.command()
@click.argument("task", required=False)
@click.argument("mode", required=False, type=click.Choice(["off", "shadow", "canary", "live"]))
@click.option(
    "--traffic", type=float, help="canary: the share of the task's traffic it answers (default 0.1)."
)
@click.option(
    "--rule",
    type=click.Choice(["strict", "parity"]),
    default="strict",
    show_default=True,
    help="live: the promotion rule its gate applies.",
)
@count_option()
@click.option("--force", is_flag=True, help="Route without the gate (recorded as forced).")
@click.option("--reason", default="", help="Why, kept with the change.")
@click.option(
    "--check",
    is_flag=True,
    help="Check every canary and live task against the rollback limits and roll back those past them (for "
    "cron; a running gateway does this itself).",
)
@click.option("--dry-run", is_flag=True, help="With --check: show the verdicts, change nothing.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), help="Gateway YAML.")
@json_option()
@db_option
def route(
    task: str | None,
    mode: str | None,
    traffic: float | None,
    rule: str,
    count: str,
    force: bool,
    reason: str,
    check: bool,
    dry_run: bool,
    config_file: str | None,
    as_json: bool,
    db: str | None,
) -> None:
    """Show or set a task's routing mode: off, shadow (the LLM answers, the specialist runs beside it and its
    agreement is stored), canary (--traffic of the task's sessions go to the specialist), live.

    TASK is a specialist (id or name) or its task. shadow and canary need a calibrated specialist; live needs
    its promotion gate (--rule). A running gateway picks the change up within `route.reload_s` seconds, without
    dropping a request. Every change is kept, with who made it and why (`downsize route` shows the last).
    """
    from downsize.errors import DownsizeError
    from downsize.route.modes import routes_table, set_mode

    store = open_store(db)
    if check:
        from pathlib import Path

        from downsize.config import load_gateway_config
        from downsize.route.rollback import check_all

        limits = load_gateway_config(Path(config_file) if config_file else None).rollback
        verdicts = check_all(store, limits, apply=not dry_run)
        if as_json:
            verdict_rows = [
                {
                    "specialist_id": v.specialist.id,
                    "task": v.specialist.task,
                    "roll_back": v.roll_back,
                    "reason": v.reason,
                    "evidence": v.evidence,
                }
                for v in verdicts
            ]
            click.echo(json.dumps(verdict_rows, indent=2, default=str))
            return
        if not verdicts:
            click.echo("no canary or live task to check")
        for v in verdicts:
            done = ("would roll back" if dry_run else "rolled back to shadow") if v.roll_back else "ok"
            click.echo(f"{v.specialist.task} (specialist {v.specialist.id}): {done}: {v.reason}")
        return
    if task is not None:
        if mode is None:
            raise DownsizeError("give the mode too: downsize route TASK off|shadow|canary|live")
        change = set_mode(
            store,
            task,
            mode,
            traffic=traffic,
            rule=rule,
            count=count,
            force=force,
            actor="cli",
            reason=reason,
        )
        share = f" ({change.traffic:.0%} of its traffic)" if change.traffic is not None else ""
        click.echo(
            f"task {change.specialist.task}: {change.from_mode} -> {change.to_mode}{share} with specialist "
            f"{change.specialist.name} (id {change.specialist.id}): {change.reason}"
        )
        return
    rows = routes_table(store)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo(
            "no specialists yet: run `downsize train`, `downsize eval`, then `downsize route TASK shadow`"
        )
        return
    for r in rows:
        r["who"] = f"{r['specialist_id']} {r['specialist']}"
    task_w = min(40, max(4, *(len(r["task"]) for r in rows)))
    who_w = min(40, max(10, *(len(r["who"]) for r in rows)))
    click.echo(
        f"{'task':<{task_w}} {'specialist':<{who_w}} {'mode':<7} {'traffic':>7}  {'changed by':<10} reason"
    )
    for r in rows:
        share = f"{r['traffic']:.0%}" if r["traffic"] is not None else "-"
        reason = r["reason"] or ""
        click.echo(
            f"{r['task'][:task_w]:<{task_w}} {r['who'][:who_w]:<{who_w}} {r['mode']:<7} {share:>7}  "
            f"{(r['changed_by'] or '-'):<10} {reason if len(reason) <= 90 else reason[:89] + '…'}".rstrip()
        )
