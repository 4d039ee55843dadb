"""`downsize models`: the candidate student catalog, optionally filtered to what fits this machine and screened
zero-/few-shot on the store's validation calls (register in main)."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from downsize.cli.options import json_option
from downsize.select.catalog import CATALOG, PRECISIONS, CatalogEntry, offline_source
from downsize.select.filters import DEFAULT_HEADROOM, LICENCE_POLICIES, Candidate, Hardware, select_candidates


@click.command("models")
@json_option("the catalog as JSON")
@click.option(
    "--fits",
    is_flag=True,
    help="Apply the hard filters (licence, context, memory) for this machine; list only what passes.",
)
@click.option(
    "--licence",
    "licence_policy",
    type=click.Choice(list(LICENCE_POLICIES)),
    default="commercial",
    show_default=True,
    help="With --fits: permissive (Apache/MIT), commercial (+ Llama, Gemma, NVIDIA terms) or research (+ non-commercial).",
)
@click.option(
    "--prompt-tokens",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="With --fits: the task's longest pruned prompt plus completion, in tokens.",
)
@click.option(
    "--precision",
    type=click.Choice(list(PRECISIONS)),
    help="With --fits: precision of the weights (default: bf16 on a GPU, fp32 on CPU).",
)
@click.option("--memory-gb", type=float, help="With --fits: memory to fit in instead of this machine's.")
@click.option(
    "--screen",
    is_flag=True,
    help="Apply the hard filters, then run every passing student whose weights are here zero-shot and few-shot "
    "on the store's validation tool calls; print the ranking.",
)
@click.option(
    "--student",
    "students",
    multiple=True,
    help="With --screen: screen these students (catalog name, HF id or folder) instead of the filtered catalog.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=40,
    show_default=True,
    help="With --screen: validation calls to screen on (evenly spread).",
)
@click.option(
    "--shots",
    "k",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="With --screen: few-shot examples.",
)
@click.option(
    "--source", default=None, help="With --screen: only exchanges of this source (default: every source)."
)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="With --screen.")
@click.option(
    "--db",
    envvar="DOWNSIZE_DB",
    help="With --screen: SQLAlchemy URL of the store (default: $DOWNSIZE_HOME/downsize.db).",
)
def models(
    as_json: bool,
    fits: bool,
    licence_policy: str,
    prompt_tokens: int,
    precision: str | None,
    memory_gb: float | None,
    screen: bool,
    students: tuple[str, ...],
    limit: int,
    k: int,
    source: str | None,
    batch_size: int,
    db: str | None,
) -> None:
    """List candidate student models: parameters, licence, context, memory at fp32/bf16/4-bit, published
    BFCL and IFEval scores (with sources in --json), and whether the weights are available offline here.

    Memory is the weights alone: parameters x 4 (fp32), 2 (bf16) or 0.56 (4-bit) bytes; --fits adds
    20% headroom for KV cache and activations.

    --screen ranks students by BFCL-style AST match (then exact match, tool-name accuracy) of their untrained
    answers to the task's validation calls (`downsize import tau-airline` first); few-shot examples are the
    nearest training calls by MiniLM embedding. Example: downsize models --screen --limit 20
    """
    if screen:
        _screen(
            students,
            limit,
            k,
            source,
            batch_size,
            db,
            as_json,
            licence_policy,
            prompt_tokens,
            precision,
            memory_gb,
        )
        return
    candidates: list[Candidate] = [Candidate(entry, ()) for entry in CATALOG]
    hardware = Hardware(cores=0, ram_gb=0.0)
    if fits:
        # detect only when filtering: on a GPU machine detection imports torch (seconds)
        given = Hardware(cores=os.cpu_count() or 1, ram_gb=memory_gb) if memory_gb is not None else None
        hardware = given or Hardware.detect()
        candidates = select_candidates(
            {"longest_prompt_tokens": prompt_tokens}, hardware, licence_policy, precision, DEFAULT_HEADROOM
        )
    if as_json:
        payload: dict[str, Any] = {"models": [_as_dict(c, fits) for c in candidates]}
        if fits:
            payload["hardware"] = hardware.describe()
            payload["precision"] = precision or hardware.default_precision
            payload["licence_policy"] = licence_policy
        click.echo(json.dumps(payload, indent=2))
        return
    shown = [c for c in candidates if c.ok]
    click.echo(render_table([c.entry for c in shown]))
    if fits:
        click.echo(
            f"\n{len(shown)} of {len(candidates)} fit {hardware.describe()} at "
            f"{precision or hardware.default_precision}, licence policy '{licence_policy}', "
            f"{prompt_tokens} prompt tokens; rejected:"
        )
        for c in candidates:
            if not c.ok:
                click.echo(f"  {c.entry.name}: {c.verdict}")


def _as_dict(candidate: Candidate, fits: bool) -> dict[str, Any]:
    entry = candidate.entry
    row: dict[str, Any] = {
        "name": entry.name,
        "hf_id": entry.hf_id,
        "params_b": entry.params_b,
        "licence": entry.licence,
        "licence_kind": entry.licence_kind,
        "context_window": entry.context_window,
        "memory_gb": {p: round(entry.footprint_gb(p), 3) for p in PRECISIONS},
        "scores": {k: {"value": v, "source": s} for k, (v, s) in entry.scores.items()},
        "offline": offline_source(entry),
        "offline_package": entry.offline_package,
        "notes": entry.notes,
    }
    if fits:
        row["fits"] = candidate.ok
        row["rejected_because"] = list(candidate.reasons)
    return row


def _score(entry: CatalogEntry, benchmark: str) -> str:
    value = entry.scores.get(benchmark)
    return f"{value[0]:.1f}" if value else "-"


def render_table(entries: list[CatalogEntry]) -> str:
    """The catalog as an aligned text table."""
    header = (
        "name",
        "params",
        "licence",
        "context",
        "fp32 GB",
        "bf16 GB",
        "4bit GB",
        "BFCL",
        "IFEval",
        "offline",
    )
    rows = [header]
    for e in entries:
        rows.append(
            (
                e.name,
                f"{e.params_b:g}B",
                e.licence if len(e.licence) <= 26 else e.licence[:25] + "…",
                f"{e.context_window:,}",
                f"{e.footprint_gb('fp32'):.2f}",
                f"{e.footprint_gb('bf16'):.2f}",
                f"{e.footprint_gb('4bit'):.2f}",
                _score(e, "BFCL"),
                _score(e, "IFEval"),
                "yes" if offline_source(e) else "no",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    numeric = {1, 3, 4, 5, 6, 7, 8}
    lines = []
    for r in rows:
        cells = [
            c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _screen(
    students: tuple[str, ...],
    limit: int,
    k: int,
    source: str | None,
    batch_size: int,
    db: str | None,
    as_json: bool,
    licence_policy: str,
    prompt_tokens: int,
    precision: str | None,
    memory_gb: float | None,
) -> None:
    from downsize.errors import ConfigError
    from downsize.select.cases import screen_cases
    from downsize.select.prompts import estimate_prompt_tokens
    from downsize.select.screen import screen_students
    from downsize.store import Store

    store = Store.open(db)
    try:
        cases, pool = screen_cases(store, limit=limit, source=source or None)
    finally:
        store.close()
    if not cases:
        raise ConfigError(
            f"the store holds no validation tool calls{f' from {source!r}' if source else ''} in its dev split: "
            "import your agent's logs first (`downsize import openai-jsonl FILE`, or capture with `downsize serve`)"
        )
    skipped: dict[str, str] = {}
    if students:
        chosen = list(students)
    else:
        hardware = (
            Hardware(cores=os.cpu_count() or 1, ram_gb=memory_gb)
            if memory_gb is not None
            else Hardware.detect()
        )
        needed = max(prompt_tokens, estimate_prompt_tokens(cases, k))
        chosen = []
        for c in select_candidates({"longest_prompt_tokens": needed}, hardware, licence_policy, precision):
            name = screen_name(c.entry)
            if not c.ok:
                skipped[c.entry.name] = c.verdict
            elif name is None:
                skipped[c.entry.name] = "weights not available offline here"
            else:
                chosen.append(name)
    if not chosen:
        raise ConfigError(
            "no student passes the hard filters with weights here: see `downsize models --fits`"
        )
    click.echo(
        f"screening {', '.join(chosen)} on {len(cases)} validation calls ({len(pool)} training calls for shots)",
        err=True,
    )
    report = screen_students(cases, pool, chosen, k=k, batch_size=batch_size, progress=not as_json)
    if as_json:
        payload = report.as_dict(with_answers=5)
        payload["skipped"] = skipped
        click.echo(json.dumps(payload, indent=2))
        return
    click.echo(report.table())
    for name, why in report.failed.items():
        click.echo(f"  could not load {name}: {why}")
    if skipped:
        click.echo(
            f"{len(skipped)} catalog entries not screened (hard filters or no offline weights); see --json"
        )


def screen_name(entry: CatalogEntry) -> str | None:
    """What to load a catalog entry by for the screen: its catalog name when it ships offline, else a cached HF id."""
    from downsize.backends.students import OFFLINE_STUDENTS

    if entry.name in OFFLINE_STUDENTS:
        return entry.name
    where = offline_source(entry)
    if where and where.startswith("hf-cache:"):
        return entry.hf_id
    return None
