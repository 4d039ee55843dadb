"""`downsize train`, `eval`, `promote` and `specialists`: make, prove and list specialists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from downsize.cli.options import (
    config_option,
    count_option,
    db_option,
    engine_option,
    json_option,
    open_store,
)
from downsize.config import TRAIN_KINDS, TRAIN_METHODS, EvalConfig, TrainConfig, load_yaml, resolve
from downsize.errors import DownsizeError


@click.command()
@config_option("TrainConfig")
@click.option("--student", help="Catalog name (smollm2-135m, gemma3-270m), Hugging Face id or local folder.")
@click.option(
    "--specialist",
    help="Name of the specialist (default: its task keys, else AGENT-calls for its call site).",
)
@click.option(
    "--agent", help="Train on this agent's calls only (the X-Downsize-Agent header, or --agent at import)."
)
@click.option("--source", help="Train on this source's calls only (`downsize splits` lists them).")
@click.option(
    "--tools",
    help="The call site: train on requests offering exactly these tools (comma-separated names).",
)
@click.option(
    "--site", help="The call site by key (`downsize sites` lists them): tools:a,b or prompt:HASH[:SCHEMA]."
)
@click.option(
    "--kind",
    type=click.Choice(list(TRAIN_KINDS)),
    help="The answers' kind (default auto: detected from the teacher's answers); --kind text also trains long "
    "free text, which auto leaves to the LLM.",
)
@click.option(
    "--method",
    type=click.Choice(list(TRAIN_METHODS)),
    help="lora (default), dora, full (every weight; learning rate 5e-5 unless set), "
    "qlora (4-bit base: needs CUDA and bitsandbytes).",
)
@click.option("--max-tokens", type=int, help="Stop after this many trained tokens.")
@click.option("--max-minutes", type=float, help="Stop after this many minutes of training.")
@click.option("--epochs", type=float, help="Upper bound on passes over the data (default 1).")
@click.option("--batch-size", type=int)
@click.option("--learning-rate", type=float, help="Default: 1e-3 for adapters, 5e-5 for --method full.")
@click.option("--max-prompt-tokens", type=int, help="Token budget of the pruned prompt.")
@click.option("--seed", type=int)
@click.option("--threads", type=int, help="torch threads (default: all cores).")
@click.option("--curated", is_flag=True, default=None, help="Train on the newest `downsize curate` run.")
@click.option(
    "--task",
    "tasks",
    multiple=True,
    help="A discovered task key (see `downsize tasks`) to train on, tool:NAME for every tool-call task whose "
    "dominant tool is NAME, or site:KEY for every answer at a call site; repeat for several tasks.",
)
@click.option(
    "--discovery-run", type=int, help="The discovery run the --task keys come from (default: newest)."
)
@click.option(
    "--suitable",
    is_flag=True,
    help="Train a specialist for every task `downsize tasks` marks suitable, within --budget-minutes in all.",
)
@click.option("--budget-minutes", type=float, help="Total training time of --suitable (default 20).")
@click.option(
    "--cross-fit",
    type=int,
    help="Also train K-1 fold models (K from 2 to 10; same tokens each) so `downsize eval` calibrates on every "
    "dev call, each scored by a model that never saw its workflow (takes K times the training time).",
)
@db_option
def train(
    config_file: Path | None, db: str | None, suitable: bool, budget_minutes: float | None, **flags: Any
) -> None:
    """Fine-tune a student on the dev split's calls of one call site or task (pruned prompts, loss on the
    answer only): tool calls, JSON, labels, text-format tool use or short text, as the teacher answered
    there; with --suitable, one specialist per suitable task or unit.

    LoRA by default; DoRA, full fine-tuning or QLoRA with --method. Runs on a GPU when one is present.
    """
    from downsize.train.lora import train_specialist

    flags["tasks"] = list(flags["tasks"]) or None
    flags["tools"] = (
        [t.strip() for t in flags["tools"].split(",") if t.strip()] if flags.get("tools") else None
    )
    config = resolve(TrainConfig, load_yaml(config_file) if config_file else None, **flags)
    store = open_store(db)
    if suitable:
        _train_suitable(store, config, budget_minutes or 20.0)
        return
    if budget_minutes is not None:
        raise DownsizeError("--budget-minutes goes with --suitable; for one specialist use --max-minutes")
    result = train_specialist(store, config)
    click.echo(
        f"trained specialist {store.specialist(result.specialist_id).name} (id {result.specialist_id}): {result.examples} examples "
        f"({result.skipped} skipped: target too long or off the contract), {result.steps} steps = {result.epochs:.2f} epochs, "
        f"{result.tokens} tokens in {result.seconds / 60:.1f} min = {result.tokens_per_s:.0f} tokens/s, "
        f"final loss {result.final_loss:.3f} ({result.method}, {result.device}, {result.precision})"
    )
    click.echo(f"{'model' if result.method == 'full' else 'adapter'}: {result.adapter_path}")


def _train_suitable(store: Any, config: TrainConfig, budget_minutes: float) -> None:
    from downsize.train.plan import train_suitable

    if config.tasks:
        raise DownsizeError("--suitable picks the tasks itself: drop --task")
    runs = train_suitable(store, config, budget_minutes, say=lambda m: click.echo(m, err=True))
    trained = [r for r in runs if r.trained]
    click.echo(f"trained {len(trained)} of {len(runs)} tasks within {budget_minutes:g} min:")
    for r in runs:
        what = f"specialist {r.name} (id {r.specialist_id}), {r.minutes:.1f} min" if r.trained else r.reason
        click.echo(
            f"  {r.fit.task_key:<10} {r.fit.output_kind:<9} train {r.fit.train:>4} val {r.fit.validation:>3}  "
            f"{r.fit.label[:40]:<40}  {what}"
        )
    if trained:
        click.echo("next: `downsize eval ID` for each, then `downsize promote ID`")


@click.command("eval")
@click.argument("specialist", required=False)
@config_option("EvalConfig")
@click.option(
    "--target-agreement", type=float, help="Agreement the calibrated threshold must reach (default 0.95)."
)
@click.option("--limit", type=int, help="Evaluate at most this many calls per split (quick look).")
@click.option("--batch-size", type=int)
@click.option(
    "--read-only",
    help="Tool-name patterns (comma-separated globs) that only read: promotion at parity may serve them. Tools "
    "the agent annotates (MCP readOnlyHint / destructiveHint) need none; every other tool is strict.",
)
@click.option("--destructive", help="Tool-name patterns that destroy or pay: served only at 0.99 agreement.")
@count_option(default=None)
@engine_option("Engine to calibrate on (serve on the same one).")
@db_option
def eval_cmd(
    specialist: str | None,
    config_file: Path | None,
    db: str | None,
    engine: str,
    read_only: str | None,
    destructive: str | None,
    **flags: Any,
) -> None:
    """Evaluate a specialist (default: the newest) against the teacher's logged answers; calibrate its threshold."""
    from downsize.evaluate.tool_calls import evaluate_specialist

    config = resolve(EvalConfig, load_yaml(config_file) if config_file else None, **flags)
    for tier, patterns in (("read_only", read_only), ("destructive", destructive)):
        if patterns:
            config.risk = {**config.risk, tier: [p.strip() for p in patterns.split(",") if p.strip()]}
    store = open_store(db)
    sp = store.specialist(specialist)
    report = evaluate_specialist(store, sp, config, engine=engine)
    t = report.test_tool_calls
    thr = report.threshold
    noun = "tool calls" if report.kind == "tool_call" else f"{report.kind} answers"
    click.echo(f"specialist {sp.name} (id {sp.id}) on {t.calls} held-out test {noun} in its scope:")
    if t.tool_name_accuracy is not None:
        click.echo(f"  tool-name accuracy   {t.tool_name_accuracy:.3f}")
    click.echo(
        f"  exact agreement      {t.exact_agreement:.3f} (lower95 {t.exact_agreement_lower95:.3f}; the rule served)"
    )
    if t.equivalent_agreement is not None:
        rule = (
            "BFCL's possible-answer rule"
            if report.kind == "tool_call"
            else "the strict rule normalises already"
        )
        click.echo(
            f"  equivalent agreement {t.equivalent_agreement:.3f} (lower95 {t.equivalent_agreement_lower95:.3f}; "
            f"{rule}: reported, not served on)"
        )
    if t.graded_score is not None:
        click.echo(
            f"  graded score         {t.graded_score:.3f} (field F1 / similarity: reported, not served on)"
        )
    click.echo(f"  valid answers        {t.valid_share:.3f}")
    ceiling = report.teacher_ceiling or {}
    if ceiling.get("agreement") is not None:
        click.echo(
            f"  teacher vs itself    {ceiling['agreement']:.3f} (lower95 {ceiling['agreement_lower95']:.3f}) over "
            f"{ceiling['pairs']} answer pairs in {ceiling['situations']} situations that recur in other workflows "
            f"(same last {ceiling['recent_turns']} turns): no student can be expected to agree with one sample more"
        )
    else:
        click.echo(
            "  teacher vs itself    no situation recurs in another workflow of this scope: ceiling unknown"
        )
    chosen = (report.calibration or {}).get("signal") or {}
    if chosen.get("auroc"):
        listed = (
            ", ".join(f"{k} {v:.3f}" for k, v in chosen["auroc"].items() if v is not None)
            or "none (no right and wrong answers to rank)"
        )
        click.echo(
            f"  confidence signals   AUROC on {chosen.get('calls', 0)} valid calibration answers: {listed}; "
            f"serving on {chosen.get('name')}"
        )
    tiers = (report.calibration or {}).get("tiers") or {}
    if tiers:
        listed = ", ".join(f"{tier} {figures['calls']}" for tier, figures in tiers.items())
        click.echo(
            f"  risk tiers           valid calibration answers by the called tool's tier: {listed} "
            "(`promote --rule parity` serves only read-only tools at parity; others need the strict target)"
        )
    cal = report.calibration or {}
    clustering = cal.get("workflows") or {}
    if clustering.get("workflows"):
        click.echo(
            f"  workflows            {clustering['workflows']} workflows hold the {clustering['valid_answers']} "
            f"valid calibration answers; correlation within a workflow {clustering['intra_workflow_correlation']:.2f}"
            f", design effect {clustering['design_effect']:.2f}: they weigh as about "
            f"{clustering['valid_answers'] / clustering['design_effect']:.0f} independent calls; thresholds count "
            f"served calls by {clustering.get('count', 'calls')}"
        )
    if thr is None:
        click.echo(
            f"  no threshold shows {config.target_agreement:.0%} agreement on the {report.validation.calls} "
            "calibration calls (Learn-then-Test, 95% confidence): the specialist would serve nothing"
            + (
                ""
                if cal.get("method") == "cross_fit"
                else "; `train --cross-fit 2` calibrates on every dev call"
            )
        )
    else:
        v = report.validation.at_threshold
        signal = (cal.get("signal") or {}).get("name", "min")
        where = (
            f"{report.validation.calls} dev calls cross-fitted over {cal.get('folds')} folds"
            if cal.get("method") == "cross_fit"
            else f"{report.validation.calls} validation calls"
        )
        click.echo(
            f"  threshold            {thr:.4f} (signal {signal}; Learn-then-Test at delta {cal.get('delta', 0.05)} "
            f"on {where})"
        )
        effective = clustering.get("at_threshold") or {}
        click.echo(
            f"  calibration at thr   served {v.served} ({v.served_share:.1%} of {noun}), "
            f"agreement {v.agreement:.3f}"
            + (
                f" (lower95 {effective['agreement_lower95']:.3f} counting calls, "
                f"{effective['agreement_lower95_effective']:.3f} counting workflows' evidence)"
                if effective
                else ""
            )
        )
        a = report.test.at_threshold
        click.echo(
            f"  test at thr          served {a.served} ({a.served_share:.1%} of {noun}), "
            f"agreement {a.agreement:.3f} (lower95 {a.agreement_lower95:.3f})"
        )
    click.echo(
        f"  by target agreement (threshold from the calibration calls; test over all {report.test.calls} calls, "
        "text replies included):"
    )
    for row in report.by_target:
        tv = row.test
        served = (
            "serves nothing"
            if row.threshold is None
            else (
                f"serves {tv.served} ({tv.served_share:.1%}), agreement {tv.agreement:.3f} "
                f"(lower95 {tv.agreement_lower95:.3f})"
            )
        )
        click.echo(f"    {row.target:.2f}  {served}")
    if report.validation.calls < 20:
        click.echo(
            f"  note: {report.validation.calls} validation calls are too few to calibrate with confidence; "
            "the figures above are indicative only (import more logs of this task)"
        )
    click.echo(f"report: {report.path} (engine {report.engine})")
    click.echo(f"agreement-vs-coverage curves: {report.curve_path}")


@click.command()
@click.argument("specialist")
@click.option(
    "--to", "to", type=click.Choice(["shadow", "live"]), help="Target status (default: the next one)."
)
@click.option(
    "--target",
    type=float,
    default=0.90,
    show_default=True,
    help="Agreement lower bound (95% Wilson) live needs.",
)
@click.option(
    "--min-served", type=int, default=20, show_default=True, help="Served validation calls live needs."
)
@click.option(
    "--rule",
    type=click.Choice(["strict", "parity"]),
    default="strict",
    show_default=True,
    help="strict: the lower bound reaches --target; parity: it is not below the teacher's own agreement (where "
    "a situation recurs) minus --margin, and the threshold becomes the one that serves most at parity.",
)
@click.option("--margin", type=float, default=0.05, show_default=True, help="With --rule parity.")
@count_option()
@db_option
def promote(
    specialist: str,
    to: str | None,
    target: float,
    min_served: int,
    rule: str,
    margin: float,
    count: str,
    db: str | None,
) -> None:
    """Move a specialist candidate -> shadow -> live, only when its gate holds on held-out calls.

    shadow needs a calibrated threshold (`downsize eval`): the specialist then runs beside the LLM and logs
    what it would have answered. live needs the 95% lower bound of its validation agreement at that
    threshold to reach --target on at least --min-served calls.
    """
    from downsize.evaluate.promotion import ORDER, promotion_gate, record_promotion

    store = open_store(db)
    sp = store.specialist(specialist)
    assert sp.id is not None
    to = to or (ORDER[ORDER.index(sp.status) + 1] if sp.status in ORDER[:-1] else "live")
    result = promotion_gate(sp, to, target, min_served, rule=rule, margin=margin, count=count)
    if not result.allowed:
        raise DownsizeError(f"cannot promote specialist {sp.name} (id {sp.id}) to {to}: {result.reason}")
    record_promotion(store, sp, to, result)  # the status, its threshold and the figures behind the decision
    click.echo(f"specialist {sp.name} (id {sp.id}) is {to} for task {sp.task}: {result.reason}")


@click.command()
@json_option()
@db_option
def specialists(as_json: bool, db: str | None) -> None:
    """List trained specialists: what each answers (agent, tasks), status, threshold and held-out figures."""
    from downsize.artifacts import specialist_summary

    rows = [specialist_summary(sp) for sp in open_store(db).specialists()]
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("no specialists yet: run `downsize train`")
        return

    def num(value: float | None, spec: str) -> str:
        return format(value, spec) if value is not None else "-"

    click.echo(
        f"{'id':>3}  {'name':<28} {'status':<9} {'answers':<30} {'threshold':>9}  {'exact':>5}  {'served':>6}  "
        "(test)"
    )
    for r in rows:
        answers = (
            (r["agent"] or r["source"] or "any agent")
            + ": "
            + (", ".join(r["tasks"]) if r["tasks"] else _site_words(r))
        )
        click.echo(
            f"{r['id']:>3}  {r['name'][:28]:<28} {r['status']:<9} {answers[:30]:<30} "
            f"{num(r['threshold'], '.4f'):>9}  {num(r['test_exact_agreement'], '.3f'):>5}  "
            f"{num(r['test_served_share'], '.1%'):>6}"
        )


def _site_words(row: dict[str, Any]) -> str:
    """What a specialist without discovered tasks answers: its call site, and the kind when not tool calls."""
    if row.get("kind", "tool_call") == "tool_call":
        return f"call site of {row['tools']} tools"
    sites = row.get("sites") or []
    return f"{row['kind']} at {sites[0] if len(sites) == 1 else f'{len(sites)} sites'}"
