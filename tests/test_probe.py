"""The consistency probe against a real sampling model: llama-cpp-python's OpenAI-compatible server with the
shipped SmolLM2-135M as a stand-in teacher (never a mock)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from downsize.config import GatewayConfig, ProbeConfig
from downsize.demo.servers import BackgroundServer, free_port
from downsize.store import Store
from downsize.types import PROBE_ROUTE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sampling_server() -> Iterator[str]:
    from downsize.backends.llamacpp_runtime import serving_gguf

    # the weights downsize itself serves the student from (converted once from the shipped Q4_1 file): llama.cpp
    # 0.3.36 built on a CPU with AMX crashes decoding the shipped Q4_1 file itself
    model = serving_gguf("smollm2-135m")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1"]
        + ["--port", str(port), "--n_ctx", "1024", "--n_threads", "2", "--verbose", "false"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            pytest.fail(f"llama-cpp-python's server did not start: {err}")
        time.sleep(0.5)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _stored(store: Store, n: int, timeout_s: float = 90.0) -> list:
    deadline = time.monotonic() + timeout_s
    while True:
        rows = list(store.exchanges(probes=True))
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_the_probe_reasks_a_real_sampling_upstream_and_measures_its_self_agreement(
    sampling_server: str, tmp_path: Path
) -> None:
    import openai

    from downsize.cli.main import main
    from downsize.evaluate.probe import probe_report
    from downsize.gateway.app import create_app

    store = Store.open()
    words = ["colour", "animal", "city", "fruit", "number", "tree"]
    config = GatewayConfig(upstream=sampling_server, probe=ProbeConfig(fraction=1.0))
    with BackgroundServer(create_app(config, store)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-not-a-real-key", max_retries=0)
        for i, word in enumerate(words):
            client.chat.completions.create(
                model="smollm2",
                messages=[{"role": "user", "content": f"Name one {word}. Answer with one word."}],
                temperature=1.0,
                max_tokens=12,
                extra_headers={"X-Downsize-Session": f"probe-test-{i}"},
            )
        rows = _stored(store, 2 * len(words))
    probes = [r for r in rows if r.route == PROBE_ROUTE]
    firsts = [r for r in rows if r.route != PROBE_ROUTE]
    assert len(firsts) == len(words) and len(probes) == len(words)
    # the probe's answer is the same request in the same workflow and split, and no stage ever sees it
    by_session = {r.session: r for r in firsts}
    for probe in probes:
        first = by_session[probe.session]
        assert probe.request["messages"] == first.request["messages"]
        assert (probe.workflow, probe.split) == (first.workflow, first.split)
    assert len(list(store.exchanges())) == len(words)
    report = probe_report(rows)
    overall = report.overall
    assert overall.probes == overall.paired == overall.pairs == len(words)
    assert overall.prompt_tokens > 0 and overall.completion_tokens > 0  # the cost is shown
    # sampled at temperature 1, a 135M model does not say the same thing twice every time
    assert overall.agreed < len(words) and overall.agreement is not None
    shown = CliRunner().invoke(main, ["probes"])
    assert shown.exit_code == 0 and f"{len(words):>6}" in shown.output and "tokens" in shown.output

    # off by default: no second call
    quiet = Store.open(f"sqlite:///{tmp_path / 'quiet.db'}")
    with BackgroundServer(create_app(GatewayConfig(upstream=sampling_server), quiet)) as url:
        openai.OpenAI(base_url=f"{url}/v1", api_key="sk-x", max_retries=0).chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert len(_stored(quiet, 2, timeout_s=3)) == 1
