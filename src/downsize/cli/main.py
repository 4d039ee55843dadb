"""`downsize` command groups. Parse, call the library, render; errors become one line and exit code 1."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from downsize import __version__
from downsize.errors import DownsizeError


class DownsizeGroup(click.Group):
    """Maps DownsizeError to a one-line message and exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DownsizeError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)


@click.group(cls=DownsizeGroup)
@click.version_option(__version__, prog_name="downsize")
def main() -> None:
    """downsize: route an agent's narrow LLM calls to specialist small models trained on its own logs.

    The loop: serve (log calls) -> import -> train -> eval -> promote -> serve (route).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from packages or local folders, never a hub


@main.group("import")
def import_group() -> None:
    """Bring existing agent logs into the store."""


def _register() -> None:
    from downsize.cli.costs import savings
    from downsize.cli.curate import curate
    from downsize.cli.discover import discover, tasks
    from downsize.cli.imports import register as register_imports
    from downsize.cli.models import models
    from downsize.cli.report import report
    from downsize.cli.routing import route
    from downsize.cli.serving import demo, probes, serve, specialist_worker
    from downsize.cli.sites import sites
    from downsize.cli.specialists import eval_cmd, promote, specialists, train
    from downsize.cli.splits import splits

    register_imports(import_group)
    for command in (
        splits,
        sites,
        curate,
        discover,
        tasks,
        models,
        train,
        eval_cmd,
        promote,
        route,
        specialists,
        serve,
        probes,
        report,
        savings,
    ):
        main.add_command(command)
    main.add_command(specialist_worker)
    main.add_command(demo)
    from downsize.cli.flywheel import flywheel

    main.add_command(flywheel)


_register()

if __name__ == "__main__":
    sys.exit(main())
