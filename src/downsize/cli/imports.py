"""`downsize import openai-jsonl`, `llm-logs` and `cassettes`: bring other tools' logs into the store.

Attached to the `import` group by `register(import_group)` in `cli/main.py`. Thin: parse, call the importer,
print what it did.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from downsize.cli.options import db_option, open_store
from downsize.cli.splits import echo_splits
from downsize.importers.tau_airline import default_path as default_tau_airline


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
@db_option
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
    echo_splits(store, "openai-jsonl")


@click.command("llm-logs")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@db_option
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
    echo_splits(store, "llm-logs")


@click.command("cassettes")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--agent", help="Agent name for the calls (default: the name of the folder imported).")
@click.option("--source", default="cassettes", show_default=True, help="Source name stored with the calls.")
@db_option
def cassettes(paths: tuple[Path, ...], agent: str | None, source: str, db: str | None) -> None:
    """Import the OpenAI chat completions recorded in VCR (vcrpy) YAML cassettes (folders or files).

    One exchange per chat completion (streams reassembled); a cassette is a session. Other calls
    (Anthropic, Gemini, Responses API, embeddings, telemetry, errors) are counted by reason, not imported.
    Importing the same folder twice adds nothing.
    """
    from downsize.importers.cassettes import import_cassettes
    from downsize.store import Store

    store = Store.open(db)
    report = import_cassettes(store, paths, agent=agent, source=source)
    click.echo(
        f"read {report.files} cassettes, {report.interactions} interactions: {report.read} chat completions "
        f"({report.streamed} streamed), added {report.added} new ({report.already_stored} already stored)"
    )
    if report.kinds:
        kinds = sorted(report.kinds.items(), key=lambda item: (-item[1], item[0]))
        click.echo("by response kind: " + ", ".join(f"{kind} {n}" for kind, n in kinds))
    if report.skipped:
        click.echo(f"skipped {sum(report.skipped.values())} interactions:")
        width = len(str(max(report.skipped.values())))
        for reason, count in sorted(report.skipped.items(), key=lambda item: (-item[1], item[0])):
            click.echo(f"  {count:>{width}}  {reason}")
    for path, problem in report.bad_files:
        click.echo(f"  bad cassette {path}: {problem}", err=True)
    if report.bad_files:
        click.echo(f"{len(report.bad_files)} files were not cassettes (named above)")
    click.echo(f"store: {store.count_exchanges(source=source)} {source} exchanges")
    echo_splits(store, source)


@click.command("tau-airline")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@db_option
def import_tau(path: Path | None, db: str | None) -> None:
    """Import tau-bench airline trajectories (default: ../shared/data/tau-airline).

    Every assistant message becomes one exchange; task ids 35-49 are the test split. Importing twice adds nothing.
    """
    from downsize.importers.tau_airline import import_tau_airline

    store = open_store(db)
    read, added = import_tau_airline(store, path or default_tau_airline())
    click.echo(f"read {read} exchanges, added {added} new ({read - added} already stored)")
    click.echo(
        f"store: {store.count_exchanges(source='tau-airline')} tau-airline exchanges, "
        f"{store.count_exchanges(source='tau-airline', response_kind='tool_call')} of them tool calls"
    )
    echo_splits(store, "tau-airline")


def register(import_group: click.Group) -> None:
    """Attach the commands to `downsize import`."""
    import_group.add_command(import_tau)
    import_group.add_command(openai_jsonl)
    import_group.add_command(llm_logs)
    import_group.add_command(cassettes)
