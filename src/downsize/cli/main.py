"""`downsize` command groups. Parse, call the library, render; errors become one line and exit code 1."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from downsize import __version__
from downsize.config import TRAIN_METHODS, EvalConfig, TrainConfig, default_tau_airline, load_yaml, resolve
from downsize.errors import DownsizeError


class DownsizeGroup(click.Group):
    """Maps DownsizeError to a one-line message and exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DownsizeError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)


def _store(db: str | None) -> Any:
    from downsize.store import Store

    return Store.open(db)


db_option = click.option(
    "--db", envvar="DOWNSIZE_DB", help="SQLAlchemy URL of the store (default: $DOWNSIZE_HOME/downsize.db)."
)


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


@import_group.command("tau-airline")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@db_option
def import_tau(path: Path | None, db: str | None) -> None:
    """Import tau-bench airline trajectories (default: ../shared/data/tau-airline).

    Every assistant message becomes one exchange; task ids 35-49 are the test split. Importing twice adds nothing.
    """
    from downsize.importers.tau_airline import import_tau_airline

    store = _store(db)
    read, added = import_tau_airline(store, path or default_tau_airline())
    click.echo(f"read {read} exchanges, added {added} new ({read - added} already stored)")
    click.echo(
        f"store: {store.count_exchanges(source='tau-airline')} tau-airline exchanges, "
        f"{store.count_exchanges(source='tau-airline', response_kind='tool_call')} of them tool calls"
    )


@main.command()
@click.option(
    "--config", "config_file", type=click.Path(path_type=Path), help="YAML file of TrainConfig settings."
)
@click.option("--student", help="Catalog name (smollm2-135m, gemma3-270m), Hugging Face id or local folder.")
@click.option("--specialist", help="Name of the specialist to train (default: tau-airline).")
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
    help="A discovered task key (see `downsize tasks`) to train on, or tool:NAME for every tool-call task whose "
    "dominant tool is NAME; repeat for several. Default: every tool call.",
)
@click.option(
    "--discovery-run", type=int, help="The discovery run the --task keys come from (default: newest)."
)
@db_option
def train(config_file: Path | None, db: str | None, **flags: Any) -> None:
    """Fine-tune a student on the dev split's tool calls (pruned prompts, loss on the call only).

    LoRA by default; DoRA, full fine-tuning or QLoRA with --method. Runs on a GPU when one is present.
    """
    from downsize.train.lora import train_specialist

    flags["tasks"] = list(flags["tasks"]) or None
    config = resolve(TrainConfig, load_yaml(config_file) if config_file else None, **flags)
    store = _store(db)
    result = train_specialist(store, config)
    click.echo(
        f"trained specialist {config.specialist} (id {result.specialist_id}): {result.examples} examples "
        f"({result.skipped} skipped: target too long), {result.steps} steps = {result.epochs:.2f} epochs, "
        f"{result.tokens} tokens in {result.seconds / 60:.1f} min = {result.tokens_per_s:.0f} tokens/s, "
        f"final loss {result.final_loss:.3f} ({result.method}, {result.device}, {result.precision})"
    )
    click.echo(f"{'model' if result.method == 'full' else 'adapter'}: {result.adapter_path}")


@main.command("eval")
@click.argument("specialist", required=False)
@click.option(
    "--config", "config_file", type=click.Path(path_type=Path), help="YAML file of EvalConfig settings."
)
@click.option(
    "--target-agreement", type=float, help="Agreement the calibrated threshold must reach (default 0.95)."
)
@click.option("--limit", type=int, help="Evaluate at most this many calls per split (quick look).")
@click.option("--batch-size", type=int)
@engine_option("Engine to calibrate on (serve on the same one).")
@db_option
def eval_cmd(
    specialist: str | None, config_file: Path | None, db: str | None, engine: str, **flags: Any
) -> None:
    """Evaluate a specialist (default: the newest) against gpt-4o's logged calls; calibrate its threshold."""
    from downsize.evaluate.tool_calls import evaluate_specialist

    config = resolve(EvalConfig, load_yaml(config_file) if config_file else None, **flags)
    store = _store(db)
    sp = store.specialist(specialist)
    report = evaluate_specialist(store, sp, config, engine=engine)
    t = report["test_tool_calls"]
    thr = report["threshold"]
    click.echo(f"specialist {sp.name} (id {sp.id}) on {t['calls']} held-out test tool calls:")
    click.echo(f"  tool-name accuracy   {t['tool_name_accuracy']:.3f}")
    click.echo(
        f"  exact agreement      {t['exact_agreement']:.3f} (lower95 {t['exact_agreement_lower95']:.3f})"
    )
    click.echo(f"  valid calls          {t['valid_share']:.3f}")
    if thr is None:
        click.echo(
            f"  no threshold reaches {config.target_agreement:.0%} agreement on validation: the specialist would serve nothing"
        )
    else:
        v = report["validation"]["at_threshold"]
        click.echo(
            f"  threshold            {thr:.4f} (min token log-prob; calibrated on {report['validation']['calls']} validation calls)"
        )
        click.echo(
            f"  validation at thr    served {v['served']} ({v['served_share']:.1%} of tool calls), agreement {v['agreement']:.3f}"
        )
        a = report["test"]["at_threshold"]
        click.echo(
            f"  test at thr          served {a['served']} ({a['served_share']:.1%} of tool calls), agreement {a['agreement']:.3f} (lower95 {a['agreement_lower95']:.3f})"
        )
    click.echo(
        f"  by target agreement (threshold from validation; test over all {report['test']['calls']} calls, "
        "text replies included):"
    )
    for row in report["by_target"]:
        tv = row["test"]
        served = (
            "serves nothing"
            if row["threshold"] is None
            else (
                f"serves {tv['served']} ({tv['served_share']:.1%}), agreement {tv['agreement']:.3f} "
                f"(lower95 {tv['agreement_lower95']:.3f})"
            )
        )
        click.echo(f"    {row['target']:.2f}  {served}")
    click.echo(f"report: {report['path']} (engine {report['engine']})")
    click.echo(f"agreement-vs-coverage curves: {report['curve_path']}")


@main.command()
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
@db_option
def promote(specialist: str, to: str | None, target: float, min_served: int, db: str | None) -> None:
    """Move a specialist candidate -> shadow -> live, only when its gate holds on held-out calls.

    shadow needs a calibrated threshold (`downsize eval`): the specialist then runs beside the LLM and logs
    what it would have answered. live needs the 95% lower bound of its validation agreement at that
    threshold to reach --target on at least --min-served calls.
    """
    from downsize.evaluate.promotion import ORDER, promotion_gate

    store = _store(db)
    sp = store.specialist(specialist)
    assert sp.id is not None
    to = to or (ORDER[ORDER.index(sp.status) + 1] if sp.status in ORDER[:-1] else "live")
    result = promotion_gate(sp, to, target, min_served)
    if not result.allowed:
        raise DownsizeError(f"cannot promote specialist {sp.name} (id {sp.id}) to {to}: {result.reason}")
    store.set_status(sp.id, to)
    click.echo(f"specialist {sp.name} (id {sp.id}) is {to} for task {sp.task}: {result.reason}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@db_option
def specialists(as_json: bool, db: str | None) -> None:
    """List trained specialists: version, status, threshold and headline metrics."""
    rows = _store(db).specialists()
    if as_json:
        click.echo(json.dumps([asdict(r) for r in rows], indent=2, default=str))
        return
    if not rows:
        click.echo("no specialists yet: run `downsize train`")
        return
    click.echo(
        f"{'id':>3}  {'name':<16} {'status':<9} {'student':<14} {'threshold':>9}  {'test exact':>10}  adapter"
    )
    for r in rows:
        exact = (r.metrics.get("eval") or {}).get("test_tool_calls", {}).get("exact_agreement")
        thr = f"{r.threshold:.4f}" if r.threshold is not None else "-"
        ex = f"{exact:.3f}" if exact is not None else "-"
        click.echo(
            f"{r.id:>3}  {r.name:<16} {r.status:<9} {r.base_model:<14} {thr:>9}  {ex:>10}  {r.adapter_path}"
        )


@main.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    help="YAML file of GatewayConfig settings (docs/gateway.md); flags override it.",
)
@click.option(
    "--upstream",
    multiple=True,
    help="Base URL of an OpenAI-compatible upstream, e.g. https://api.openai.com/v1; repeat for fallbacks, in order.",
)
@click.option("--host", help="Interface to listen on (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default 8787).")
@click.option("--specialist", help="Route to this specialist (name or id) instead of the live one.")
@click.option("--no-route", is_flag=True, help="Only log: forward every request upstream.")
@click.option("--threshold", type=float, help="Override the specialist's calibrated threshold.")
@engine_option("Specialist runtime.")
@click.option(
    "--upstream-timeout", type=float, help="Seconds to wait for an upstream, per attempt (default 120)."
)
@click.option(
    "--upstream-retries", type=int, help="Extra rounds over the upstreams on 429/5xx/errors (default 2)."
)
@click.option(
    "--upstream-api-key-env",
    help="Variable holding the upstream key used when an agent sends none of its own.",
)
@click.option("--specialist-timeout", type=float, help="Seconds a specialist may take before going upstream.")
@click.option(
    "--capture-mode",
    type=click.Choice(["async", "sync"]),
    help="async: store after answering (default); sync: answer once the exchange is committed.",
)
@click.option(
    "--queue-policy",
    type=click.Choice(["block", "shed"]),
    help="When the capture queue is full: wait for room (block, default) or drop and count (shed).",
)
@click.option("--queue-max", type=int, help="Exchanges the capture queue holds (default 10000).")
@click.option(
    "--gateway-key",
    "gateway_keys",
    multiple=True,
    metavar="ROLE=ENV_VAR",
    help="Require gateway keys: ROLE is agent, reader or admin, ENV_VAR holds the key. Repeatable.",
)
@click.option(
    "--anonymize/--no-anonymize",
    default=None,
    help="Store user/session/agent ids as HMAC-SHA256 hashes (key in $DOWNSIZE_ANON_KEY).",
)
@click.option(
    "--encrypt-bodies/--no-encrypt-bodies",
    default=None,
    help="Require the store key ($DOWNSIZE_STORE_KEY) and encrypt request/response bodies at rest.",
)
@click.option("--redact", help="Capture-time redaction hook, as package.module:function.")
@click.option(
    "--cors-origin", "cors_origins", multiple=True, help="Allow this browser origin (CORS). Repeatable."
)
@click.option(
    "--log-format", type=click.Choice(["json", "text"]), help="Log format on stderr (default json)."
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@db_option
def serve(
    config_file: Path | None,
    upstream: tuple[str, ...],
    specialist: str | None,
    no_route: bool,
    threshold: float | None,
    upstream_timeout: float | None,
    specialist_timeout: float | None,
    gateway_keys: tuple[str, ...],
    db: str | None,
    engine: str,
    **flags: Any,
) -> None:
    """Run the OpenAI-compatible gateway: log every call, serve confident specialist calls, forward the rest.

    SIGTERM or Ctrl-C stops it gracefully: open requests finish and queued exchanges are written first.
    """
    from downsize.config import load_gateway_config
    from downsize.gateway.server import serve as run_server
    from downsize.route.loading import load_router
    from downsize.store import Store

    if not upstream and config_file is None:
        raise DownsizeError("give --upstream URL (or a --config file that names the upstream)")
    keys = []
    for spec in gateway_keys:
        role, sep, env = spec.partition("=")
        if not sep or not role or not env:
            raise DownsizeError(
                f"--gateway-key takes ROLE=ENV_VAR, e.g. agent=DOWNSIZE_AGENT_KEY, not {spec!r}"
            )
        keys.append({"role": role, "env": env, "name": f"{role}:{env}"})
    config = load_gateway_config(
        config_file,
        upstream=list(upstream),
        upstream_timeout_s=upstream_timeout,
        specialist_timeout_s=specialist_timeout,
        gateway_keys=keys,
        **flags,
    )
    store = Store.open(db, encryption_key=os.environ.get(config.store_key_env) or None)
    worker = None

    def start_specialist_worker(sp: Any) -> Any:
        """torch stays out of the gateway: the specialist runs in a child process on a loopback port."""
        nonlocal worker
        from downsize.backends.specialist_worker import RemoteRuntime, start_worker
        from downsize.backends.transformers_runtime import resolve_engine
        from downsize.demo.servers import free_port

        used = resolve_engine(engine, sp)
        if used == "llamacpp":
            from downsize.backends.llamacpp_runtime import check_llama_cpp

            check_llama_cpp()  # fail here, in one line, rather than in the worker
        calibrated = (sp.metrics.get("eval") or {}).get("engine")
        if calibrated and calibrated != used:
            click.echo(
                f"warning: {sp.name}'s threshold was calibrated on {calibrated}, serving on {used}: run "
                f"`downsize eval {sp.id} --engine {used}` to calibrate it for this engine",
                err=True,
            )
        port = free_port()
        click.echo(
            f"starting the specialist worker for {sp.name} (id {sp.id}, {used}) on port {port} ...", err=True
        )
        worker = start_worker(str(sp.id), db, port, engine=used)
        return RemoteRuntime(f"http://127.0.0.1:{port}", timeout_s=config.specialist_timeout_s or 30.0)

    router = None if no_route else load_router(store, specialist, threshold, start_specialist_worker)
    where = (
        f"specialist {router.specialist.name} (id {router.specialist.id}), threshold {router.threshold:.4f}"
        if router
        else "no specialist (logging only)"
    )
    chain = " -> ".join(t.url for t in config.upstreams)
    click.echo(
        f"downsize gateway on http://{config.host}:{config.port}/v1 -> {chain}; routing: {where}; "
        f"capture: {config.capture_mode}, queue {config.queue_policy}; "
        f"bodies encrypted: {'yes' if store.encrypts else 'no'}; "
        f"gateway keys: {len(config.gateway_keys) or 'none'}",
        err=True,
    )
    try:
        run_server(config, store, router)
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)


@main.command("specialist-worker")
@click.argument("specialist")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8788, show_default=True)
@engine_option("Specialist runtime.")
@db_option
def specialist_worker(specialist: str, host: str, port: int, engine: str, db: str | None) -> None:
    """Serve one specialist's model over loopback HTTP for the gateway (started by `downsize serve`).

    The model (and torch) live in this process, so the gateway's stays light and a model crash cannot take
    the gateway down: the router falls back upstream when the worker fails or is slow.
    """
    import uvicorn

    from downsize.backends.specialist_worker import create_worker_app
    from downsize.backends.transformers_runtime import runtime_for

    runtime = runtime_for(_store(db).specialist(specialist), engine=engine)
    uvicorn.run(create_worker_app(runtime), host=host, port=port, log_level="warning", access_log=False)


@main.command()
@click.option("--max-minutes", type=float, default=8.0, show_default=True, help="Training budget.")
@click.option(
    "--data", type=click.Path(path_type=Path), help="tau-airline folder (default ../shared/data/tau-airline)."
)
@engine_option("Engine to calibrate and serve on.")
def demo(max_minutes: float, data: Path | None, engine: str) -> None:
    """The embedded default end to end: import, train, eval, then replay the test split through the gateway."""
    from downsize.demo.run import run_demo

    summary = run_demo(data or default_tau_airline(), train_minutes=max_minutes, engine=engine)
    click.echo(json.dumps(summary, indent=2))


def _register() -> None:
    from downsize.cli.curate import curate
    from downsize.cli.discover import discover, tasks
    from downsize.cli.imports import register as register_imports
    from downsize.cli.models import models

    register_imports(import_group)
    main.add_command(curate)
    main.add_command(discover)
    main.add_command(tasks)
    main.add_command(models)


_register()

if __name__ == "__main__":
    sys.exit(main())
