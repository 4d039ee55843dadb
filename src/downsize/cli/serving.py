"""`downsize serve`, `specialist-worker` and `demo`: the gateway, the process that runs specialists, the demo."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import click

from downsize.artifacts import EvalReport
from downsize.cli.options import config_option, db_option, engine_option, json_option, open_store
from downsize.errors import DownsizeError
from downsize.importers.tau_airline import default_path as default_tau_airline


@click.command()
@config_option("GatewayConfig (docs/gateway.md)")
@click.option(
    "--upstream",
    multiple=True,
    help="Base URL of an OpenAI-compatible upstream, e.g. https://api.openai.com/v1; repeat for fallbacks, in order.",
)
@click.option("--host", help="Interface to listen on (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default 8787).")
@click.option(
    "--specialist",
    multiple=True,
    help="Route to this specialist (name or id) instead of every live one; repeatable.",
)
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
    "--probe",
    "probe_fraction",
    type=float,
    help="Consistency probe: re-ask the upstream this share of calls (0-1) in the background and store the second "
    "answer, to measure the teacher against itself (`downsize probes`). Each probe is a paid call. Default off.",
)
@click.option(
    "--probe-mode",
    type=click.Choice(["shadow", "live"]),
    help="shadow: probe calls the upstream answered (default); live: also calls a specialist served.",
)
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
    specialist: tuple[str, ...],
    no_route: bool,
    threshold: float | None,
    upstream_timeout: float | None,
    specialist_timeout: float | None,
    gateway_keys: tuple[str, ...],
    db: str | None,
    engine: str,
    probe_fraction: float | None,
    probe_mode: str | None,
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
    if probe_fraction is not None or probe_mode is not None:
        from downsize.config import ProbeConfig

        config.probe = ProbeConfig(
            fraction=probe_fraction if probe_fraction is not None else config.probe.fraction,
            mode=probe_mode or config.probe.mode,
            max_in_flight=config.probe.max_in_flight,
        )
    route = config.route  # the YAML's `route:` section; flags override it
    no_route = no_route or not route.enabled
    threshold = threshold if threshold is not None else route.threshold
    specialist = specialist or tuple(route.specialists)
    engine = engine if engine != "auto" else route.engine
    store = Store.open(db, encryption_key=os.environ.get(config.store_key_env) or None)
    worker: Any = None
    worker_port = 0
    lock = threading.Lock()

    def remote_runtime(sp: Any) -> Any:
        """torch stays out of the gateway: every specialist runs in one child process on a loopback port,
        started on the first request a specialist must answer; each model loads on its own first request."""
        nonlocal worker, worker_port
        from downsize.backends.engines import resolve_engine
        from downsize.backends.specialist_worker import RemoteRuntime, start_worker
        from downsize.demo.servers import free_port

        used = resolve_engine(engine, sp)
        if used == "llamacpp":
            from downsize.backends.llamacpp_runtime import check_llama_cpp

            check_llama_cpp()  # fail here, in one line, rather than in the worker
        evaluated = EvalReport.of(sp)
        calibrated = evaluated.engine if evaluated else None
        if calibrated and calibrated != used:
            click.echo(
                f"warning: {sp.name}'s threshold was calibrated on {calibrated}, serving on {used}: run "
                f"`downsize eval {sp.id} --engine {used}` to calibrate it for this engine",
                err=True,
            )
        elif calibrated == used == "llamacpp":
            from downsize.backends.llamacpp_runtime import base_gguf, serving_gguf

            # evaluations before the weights were recorded ran on the shipped GGUF
            was = (evaluated.weights if evaluated else None) or base_gguf(sp.base_model).name
            now = serving_gguf(sp.base_model).name
            if was != now:
                click.echo(
                    f"warning: {sp.name}'s threshold was calibrated on the weights {was}, serving on {now}: run "
                    f"`downsize eval {sp.id}` to calibrate it for these (or set DOWNSIZE_GGUF_WEIGHTS)",
                    err=True,
                )
        with lock:
            if worker is None:
                worker_port = free_port()
                ids = [str(slot.specialist.id) for slot in router.slots] if router else [str(sp.id)]
                click.echo(f"starting the specialist worker on port {worker_port} ...", err=True)
                worker = start_worker(ids, db, worker_port, engine=engine)
        return RemoteRuntime(
            f"http://127.0.0.1:{worker_port}",
            timeout_s=config.specialist_timeout_s or 30.0,
            specialist=str(sp.id),
        )

    if route.modes and not no_route:
        from downsize.route.modes import set_mode

        for task, value in route.modes.items():  # the config file's modes, gated as `downsize route` is
            wanted: dict[str, Any] = value if isinstance(value, dict) else {"mode": value}
            change = set_mode(store, str(task), wanted["mode"], traffic=wanted.get("traffic"), actor="config")
            click.echo(
                f"route: task {change.specialist.task} is {change.to_mode} (from the config)", err=True
            )

    def reload() -> Any:
        return load_router(store, specialist, threshold, remote_runtime)

    router = None if no_route else reload()
    where = (
        "; ".join(
            f"{slot.specialist.name} (id {slot.specialist.id}, {slot.mode}, threshold {slot.threshold:.4f})"
            for slot in router.slots
        )
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
        run_server(config, store, router, reload=None if no_route else reload)
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)


@click.command()
@click.option("--source", help="Only this source's calls (default: every source).")
@click.option("--agent", help="Only this agent's calls.")
@json_option()
@db_option
def probes(source: str | None, agent: str | None, as_json: bool, db: str | None) -> None:
    """What the gateway's consistency probe measured: the teacher's agreement with itself per call site, a served
    specialist's agreement with the teacher (live mode), and what the probes cost."""
    from downsize.evaluate.probe import as_json as report_json
    from downsize.evaluate.probe import describe, probe_report

    store = open_store(db)
    report = probe_report(store.exchanges(source=source, agent=agent, probes=True))
    click.echo(report_json(report) if as_json else describe(report))


@click.command("specialist-worker")
@click.argument("specialists", nargs=-1, required=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8788, show_default=True)
@engine_option("Specialist runtime.")
@db_option
def specialist_worker(
    specialists: tuple[str, ...], host: str, port: int, engine: str, db: str | None
) -> None:
    """Serve specialists' models over loopback HTTP for the gateway (started by `downsize serve`).

    The models (and torch) live in this process, so the gateway's stays light and a model crash cannot take
    the gateway down: the router falls back upstream when the worker fails or is slow. Each specialist's
    model loads on its first request.
    """
    import uvicorn

    from downsize.backends.engines import runtime_for
    from downsize.backends.llamacpp_runtime import StudentPool
    from downsize.backends.specialist_worker import create_worker_app

    store = open_store(db)
    known = {str(store.specialist(ref).id): store.specialist(ref) for ref in specialists}
    loaded: dict[str, Any] = {}
    pool = StudentPool()  # llama.cpp: one student per GGUF, shared; an adapter per specialist

    def runtime(specialist_id: str | None) -> Any:
        key = specialist_id or next(iter(known))
        if key not in known and key.isdigit():  # routed after the gateway started (`downsize route`)
            found = [sp for sp in store.specialists() if str(sp.id) == key and sp.status != "retired"]
            known.update({key: found[0]} if found else {})
        if key not in known:
            raise DownsizeError(f"this worker does not serve specialist {key!r}")
        if key not in loaded:
            loaded[key] = runtime_for(known[key], engine=engine, pool=pool)
        return loaded[key]

    try:
        uvicorn.run(create_worker_app(runtime), host=host, port=port, log_level="warning", access_log=False)
    finally:
        pool.close()


@click.command()
@click.option("--max-minutes", type=float, default=8.0, show_default=True, help="Training budget.")
@click.option(
    "--data", type=click.Path(path_type=Path), help="tau-airline folder (default ../shared/data/tau-airline)."
)
@click.option(
    "--cross-fit",
    type=int,
    default=2,
    show_default=True,
    help="K >= 2: split the budget over the specialist and K-1 fold models and calibrate on every dev call "
    "(2,023 calls instead of ~270: what lets the demo serve); 0: calibrate on the validation part only.",
)
@click.option(
    "--student",
    default="smollm2-135m",
    show_default=True,
    help="Catalog name (smollm2-135m, gemma3-270m), Hugging Face id or local folder.",
)
@engine_option("Engine to calibrate and serve on.")
def demo(max_minutes: float, data: Path | None, engine: str, cross_fit: int, student: str) -> None:
    """The embedded default end to end: import, train, eval, then replay the test split through the gateway."""
    from downsize.demo.run import run_demo

    summary = run_demo(
        data or default_tau_airline(),
        train_minutes=max_minutes,
        student=student,
        engine=engine,
        cross_fit=cross_fit,
    )
    click.echo(json.dumps(summary, indent=2))
