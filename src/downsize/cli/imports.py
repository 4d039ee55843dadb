"""`downsize import openai-jsonl` and `downsize import llm-logs`: bring other tools' logs into the store.

Attached to the `import` group by `register(import_group)` in `cli/main.py`. Thin: parse, call the importer,
print what it did.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

_db_option = click.option(
    "--db", envvar="DOWNSIZE_DB", help="SQLAlchemy URL of the store (default: $DOWNSIZE_HOME/downsize.db)."
)


def default_llm_logs() -> Path:
    """Where llm keeps logs.db: $LLM_USER_PATH, else its app folder (`llm logs path` prints the same)."""
    folder = os.environ.get("LLM_USER_PATH")
    return Path(folder) / "logs.db" if folder else Path(click.get_app_dir("io.datasette.llm")) / "logs.db"


@click.command("openai-jsonl")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--skip-invalid",
    is_flag=True,
    help="Skip lines that are not valid records (counted and shown) instead of stopping at the first.",
)
@_db_option
def openai_jsonl(paths: tuple[Path, ...], skip_invalid: bool, db: str | None) -> None:
    """Import OpenAI-format JSONL logs (`.jsonl` or `.jsonl.gz`), one call per line.

    Each line: {"timestamp", "workload_id", "client_id", "request", "response"} (the Data Flywheel log
    shape): workload_id becomes the task hint, client_id the agent. Importing twice adds nothing.
    """
    from downsize.importers.openai_jsonl import import_openai_jsonl
    from downsize.store import Store

    store = Store.open(db)
    for path in paths:
        report = import_openai_jsonl(store, path, skip_invalid=skip_invalid)
        click.echo(
            f"{path}: read {report.read} records, added {report.added} new "
            f"({report.already_stored} already stored), skipped {report.skipped} invalid lines"
        )
        for problem in report.problems:
            click.echo(f"  skipped {problem}", err=True)
    click.echo(f"store: {store.count_exchanges(source='openai-jsonl')} openai-jsonl exchanges")


@click.command("llm-logs")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@_db_option
def llm_logs(path: Path | None, db: str | None) -> None:
    """Import simonw/llm's logs.db (default: llm's own, as `llm logs path` prints it).

    Every logged response becomes one exchange; a conversation is a session. Importing twice adds nothing.
    """
    from downsize.importers.llm_logs import import_llm_logs
    from downsize.store import Store

    store = Store.open(db)
    source = path or default_llm_logs()
    read, added = import_llm_logs(store, source)
    click.echo(f"{source}: read {read} responses, added {added} new ({read - added} already stored)")
    click.echo(f"store: {store.count_exchanges(source='llm-logs')} llm-logs exchanges")


def register(import_group: click.Group) -> None:
    """Attach the commands to `downsize import`."""
    import_group.add_command(openai_jsonl)
    import_group.add_command(llm_logs)
