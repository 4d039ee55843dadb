"""Options that several `downsize` commands share, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

db_option = click.option(
    "--db", envvar="DOWNSIZE_DB", help="SQLAlchemy URL of the store (default: $DOWNSIZE_HOME/downsize.db)."
)


def config_option(settings: str) -> Any:
    """`--config FILE.yaml` of a stage's settings (flags override the file)."""
    return click.option(
        "--config",
        "config_file",
        type=click.Path(path_type=Path),
        help=f"YAML file of {settings} settings; flags override it.",
    )


def json_option(what: str = "JSON instead of a table") -> Any:
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what}.")


def engine_option(what: str) -> Any:
    """`--engine` of the commands that run a specialist: `what` it is used for, then the choices explained."""
    return click.option(
        "--engine",
        type=click.Choice(["auto", "transformers", "llamacpp"]),
        default="auto",
        show_default=True,
        help=f"{what} transformers: the reference path (adapter merged, torch); llamacpp: the shipped GGUF + "
        "the adapter as a GGUF LoRA, fast on CPU (the serve extra); auto: the engine the threshold was "
        "calibrated on, else llamacpp where installed.",
    )


def count_option(default: str | None = "workflows") -> Any:
    """`--count`: how a gate counts served calls as evidence."""
    return click.option(
        "--count",
        type=click.Choice(["workflows", "calls"]),
        default=default,
        show_default=default is not None,
        help="How served calls count as evidence: workflows (calls of one workflow agree or fail together, "
        "so they weigh as calls / design effect) or calls (as independent: the laxer rule, bounds too narrow "
        "where an agent's workflows repeat their steps).",
    )


def open_store(db: str | None) -> Any:
    from downsize.store import Store

    return Store.open(db)
