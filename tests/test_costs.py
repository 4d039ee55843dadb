"""Prices (`pricing.py`) and savings (`evaluate/costs.py`, `downsize savings`) on real tau-airline calls.

The store below holds, through the gateway (source `gateway`), one tau-airline request answered four ways:
a shadow run that went upstream (measured tokens), the same request served by specialist A, a probe of that
served call (measured tokens, a quarter of them cached), and served by specialist B under two other models
(one priced, one not); plus a plain upstream call of another model and an imported call that must not count.
Every expected figure is worked out by hand in the comments.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from downsize.cli.main import main
from downsize.errors import ConfigError
from downsize.evaluate.costs import prompt_chars, savings
from downsize.importers.tau_airline import read_exchanges
from downsize.pricing import load_prices
from downsize.store import Store
from downsize.types import PROBE_ROUTE, Exchange, RouteDecision, Specialist

HOURLY = 3.6  # USD an hour: a thousandth of a dollar a second, so compute costs read off the latencies


@pytest.fixture(scope="module")
def tau_calls(tau_path: Path) -> list[Exchange]:
    return list(itertools.islice(read_exchanges(tau_path), 6))


def _gateway(ex: Exchange, when: str, **changes: Any) -> Exchange:
    """A tau-airline call as the gateway would have stored it."""
    return replace(ex, source="gateway", source_key=None, created_at=when, **changes)


def _served_response(ex: Exchange, name: str) -> dict[str, Any]:
    """The router's answer: the same message, the specialist's model name, no upstream prompt tokens."""
    response = json.loads(json.dumps(ex.response))
    response["model"] = f"downsize/{name}"
    response["usage"] = {"prompt_tokens": 0, "completion_tokens": 7, "total_tokens": 7}
    return response


def _with_model(request: dict[str, Any], model: str) -> dict[str, Any]:
    return {**request, "model": model}


@pytest.fixture
def store(tau_calls: list[Exchange]) -> Store:
    store = Store.open()
    a = store.add_specialist(Specialist("a", "task-a", "smollm2", "", {}, "h", status="live"))
    b = store.add_specialist(Specialist("b", "task-b", "smollm2", "", {}, "h", status="live"))
    imported, call, other = tau_calls[0], tau_calls[2], tau_calls[5]
    assert call.response_kind == "tool_call" and prompt_chars(call.request) == 16489
    store.add_exchanges([imported])  # imported (source tau-airline): not gateway traffic
    day = "2026-12-01T10:00:00.000+00:00"
    # shadow: the LLM answered (4000 + 20 tokens measured); specialist A ran 0.6 s beside it
    store.record(
        _gateway(call, day, prompt_tokens=4000, completion_tokens=20, route="fallback:shadow"),
        RouteDecision(False, "shadow", specialist=str(a), latency_ms=600.0),
        a,
    )
    # served by A in 1.8 s
    served_a = _gateway(
        call,
        "2026-12-01T10:00:01.000+00:00",
        model="downsize/a",
        response=_served_response(call, "a"),
        prompt_tokens=0,
        completion_tokens=7,
        route=f"specialist:{a}",
    )
    store.record(served_a, RouteDecision(True, "served", specialist=str(a), latency_ms=1800.0), a)
    # the probe of that served call: 4000 + 20 tokens, 1000 of the prompt read from the cache
    probe_response = json.loads(json.dumps(call.response))
    probe_response["usage"] = {
        "prompt_tokens": 4000,
        "completion_tokens": 20,
        "prompt_tokens_details": {"cached_tokens": 1000},
    }
    store.record(
        _gateway(
            call,
            "2026-12-01T10:00:02.000+00:00",
            model="gpt-4o-2024-08-06",
            response=probe_response,
            prompt_tokens=4000,
            completion_tokens=20,
            route=PROBE_ROUTE,
        ),
        None,
        None,
    )
    # served by B for another agent, under a priced model nobody measured and under a model with no price
    for model, second in (("gpt-4o-mini", "03"), ("my-private-model", "04")):
        store.record(
            _gateway(
                call,
                f"2026-12-01T10:00:{second}.000+00:00",
                agent="other",
                request=_with_model(call.request, model),
                model="downsize/b",
                response=_served_response(call, "b"),
                prompt_tokens=0,
                completion_tokens=7,
                route=f"specialist:{b}",
            ),
            RouteDecision(True, "served", specialist=str(b), latency_ms=400.0),
            b,
        )
    # a plain upstream call of gpt-4.1 a day later: 6000 + 50 tokens measured
    store.record(
        _gateway(
            other,
            "2026-12-02T10:00:00.000+00:00",
            request=_with_model(other.request, "gpt-4.1"),
            model="gpt-4.1",
            prompt_tokens=6000,
            completion_tokens=50,
            route="upstream",
        ),
        None,
        None,
    )
    return store


# -- prices --------------------------------------------------------------------------------------------------


def test_exact_id_before_the_longest_prefix() -> None:
    table = load_prices()
    assert table.lookup("gpt-4o-2024-05-13").input == 5.00  # its own entry, not gpt-4o's 2.50
    snapshot = table.lookup("gpt-4o-2024-08-06")
    assert snapshot is not None and snapshot.model == "gpt-4o" and snapshot.output == 10.00
    mini = table.lookup("gpt-4o-mini-2024-07-18")
    assert mini is not None and mini.model == "gpt-4o-mini"  # the longer listed id wins
    assert table.lookup("openai/gpt-4o").model == "gpt-4o"  # a provider path is dropped
    assert table.lookup("GPT-4o").model == "gpt-4o"
    assert table.lookup("gpt-4oo") is None  # a prefix counts only before a separator
    assert table.lookup("my-private-model") is None and table.lookup(None) is None


def test_every_shipped_entry_is_dated_and_sourced() -> None:
    table = load_prices()
    assert table.specialist_hourly_usd > 0 and table.read_on
    for needed in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3", "o4-mini"):
        assert needed in table.prices
    assert any(k.startswith("claude") for k in table.prices)
    assert any(k.startswith("gemini-2") for k in table.prices)
    for price in table.prices.values():
        assert price.source.startswith("https://") and price.read_on, price.model


def test_a_price_costs_cached_input_at_its_own_rate() -> None:
    price = load_prices().lookup("gpt-4o")
    # 3000 x 2.50 + 1000 x 1.25 + 20 x 10.00, per million
    assert price.cost(4000, 20, cached_tokens=1000) == pytest.approx(0.00895)
    assert load_prices().cost("nobody", 10, 10) is None


def test_the_home_file_replaces_and_adds(downsize_home: Path) -> None:
    downsize_home.mkdir(parents=True, exist_ok=True)
    (downsize_home / "prices.toml").write_text(
        "specialist_hourly_usd = 0.5\n"
        '[[price]]\nmodels = ["gpt-4o"]\ninput = 1.0\noutput = 2.0\nsource = "contract"\n'
        '[[price]]\nmodels = ["my-private-model"]\ninput = 0.2\noutput = 0.3\n'
    )
    table = load_prices()
    assert table.lookup("gpt-4o-2024-08-06").input == 1.0  # replaced, prefix matching still applies
    assert table.lookup("gpt-4o-2024-08-06").cached_input is None  # the whole entry, not merged
    assert table.lookup("gpt-4o-mini").input == 0.15  # untouched
    assert table.lookup("my-private-model").output == 0.3  # added
    assert table.specialist_hourly_usd == 0.5
    assert str(downsize_home / "prices.toml") in table.files


def test_a_given_file_is_used_instead_of_the_home_one(downsize_home: Path, tmp_path: Path) -> None:
    downsize_home.mkdir(parents=True, exist_ok=True)
    (downsize_home / "prices.toml").write_text('[[price]]\nmodels = ["gpt-4o"]\ninput = 1.0\noutput = 2.0\n')
    given = tmp_path / "mine.toml"
    given.write_text('[[price]]\nmodels = ["gpt-4o"]\ninput = 7.0\noutput = 8.0\n')
    assert load_prices(given).lookup("gpt-4o").input == 7.0


@pytest.mark.parametrize(
    "text, message",
    [
        ("[[price]\n", "is not valid TOML"),
        (
            '[[price]]\nmodels = ["a"]\ninput = 1\noutput = 1\n[[price]]\nmodels = ["b"]\ninput = 1\n',
            r"price entry 2 \(b\): 'output' is missing",
        ),
        (
            '[[price]]\nmodels = ["a"]\ninput = -1\noutput = 1\n',
            r"price entry 1 \(a\): 'input' must be a non-negative",
        ),
        ('[[price]]\nmodels = ["a"]\ninput = "2.5"\noutput = 1\n', r"'input' must be a non-negative number"),
        ("[[price]]\ninput = 1\noutput = 1\n", r"price entry 1: 'models' must be a non-empty list"),
        (
            '[[price]]\nmodels = ["a"]\ninput = 1\noutput = 1\ncahced_input = 1\n',
            r"unknown keys \['cahced_input'\]",
        ),
        ('specialist_hourly_usd = "cheap"\n', "'specialist_hourly_usd' must be"),
    ],
)
def test_a_bad_file_names_itself_and_the_entry(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_prices(path)
    assert str(path) in str(caught.value)


def test_a_missing_given_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_prices(tmp_path / "nope.toml")


# -- savings -------------------------------------------------------------------------------------------------

# Served by A: the same request as the shadow call, so at the measured ratio (4000 + 4000 prompt tokens over
# 2 x 16489 characters, the shadow call and the probe) it is 4000 prompt and 20 completion tokens, an eighth
# of the prompt cached (1000 of 8000): 3500 x 2.50 + 500 x 1.25 + 20 x 10 = 9575 micro-dollars.
AVOIDED_A = 0.009575
# Served by B as gpt-4o-mini: no gpt-4o-mini call measured, so 4 characters a token: 16489 / 4 prompt and
# 41 / 4 completion tokens (the tool call's name and arguments), at 0.15 and 0.60.
AVOIDED_B = 16489 / 4 * 0.15e-6 + 41 / 4 * 0.60e-6
PROBE = 0.00895  # 3000 x 2.50 + 1000 x 1.25 + 20 x 10
SHADOW_SPEND = 4000 * 2.5e-6 + 20 * 10e-6  # the shadow call went upstream
GPT41_SPEND = 6000 * 2.0e-6 + 50 * 8.0e-6


def test_savings_by_task(store: Store) -> None:
    report = savings(store, hourly_usd=HOURLY)
    a, b = report["by_task"]["task-a"], report["by_task"]["task-b"]
    assert a["calls_served"] == 1 and a["upstream_cost_avoided_usd"] == pytest.approx(AVOIDED_A)
    assert a["specialist_seconds_served"] == pytest.approx(1.8)
    assert a["specialist_seconds_unserved"] == pytest.approx(0.6)  # the shadow run saved nothing
    assert a["specialist_cost_usd"] == pytest.approx(0.0024)
    assert a["probe_calls"] == 1 and a["probe_cost_usd"] == pytest.approx(PROBE)
    assert a["net_saving_usd"] == pytest.approx(AVOIDED_A - 0.0024 - PROBE)
    assert a["calls_upstream"] == 1 and a["upstream_spend_usd"] == pytest.approx(SHADOW_SPEND)
    assert a["share_saved"] == pytest.approx(AVOIDED_A / (AVOIDED_A + SHADOW_SPEND), abs=1e-6)
    assert b["calls_served"] == 2 and b["calls_served_unpriced"] == 1
    assert b["upstream_cost_avoided_usd"] == pytest.approx(AVOIDED_B)
    assert b["specialist_cost_usd"] == pytest.approx(0.0008)
    assert b["net_saving_usd"] == pytest.approx(AVOIDED_B - 0.0008)


def test_savings_overall_and_by_agent(store: Store) -> None:
    report = savings(store, hourly_usd=HOURLY)
    overall = report["overall"]
    assert overall["calls_served"] == 3 and overall["calls_served_unpriced"] == 1
    assert overall["upstream_cost_avoided_usd"] == pytest.approx(AVOIDED_A + AVOIDED_B)
    assert overall["specialist_cost_usd"] == pytest.approx(0.0032)
    assert overall["probe_cost_usd"] == pytest.approx(PROBE)
    assert overall["net_saving_usd"] == pytest.approx(AVOIDED_A + AVOIDED_B - 0.0032 - PROBE)
    # the imported call (source tau-airline) is not gateway traffic
    assert overall["calls_upstream"] == 2
    assert overall["upstream_spend_usd"] == pytest.approx(SHADOW_SPEND + GPT41_SPEND)
    tau, other = report["by_agent"]["tau-airline"], report["by_agent"]["other"]
    assert tau["calls_served"] == 1 and tau["calls_upstream"] == 2 and tau["probe_calls"] == 1
    assert other["calls_served"] == 2 and other["calls_upstream"] == 0
    assert report["first_call"].startswith("2026-12-01") and report["last_call"].startswith("2026-12-02")


def test_the_estimate_and_the_unpriced_are_reported(store: Store) -> None:
    report = savings(store, hourly_usd=HOURLY)
    estimate = report["estimate"]
    assert estimate["basis"] == {"agent_model": 1, "model": 0, "default": 1}
    assert estimate["prompt_tokens"] == 4000 + round(16489 / 4)
    assert estimate["completion_tokens"] == 20 + round(41 / 4)
    assert "estimated" in estimate["how"] and "estimated" in report["measured_on"]
    (ratio,) = estimate["ratios"]  # the one measured ratio used: tau-airline's gpt-4o calls
    assert (ratio["basis"], ratio["agent"], ratio["model"], ratio["calls"]) == (
        "agent_model",
        "tau-airline",
        "gpt-4o",
        2,  # the shadow call and the probe
    )
    assert ratio["prompt_tokens_per_char"] == pytest.approx(4000 / 16489)
    assert ratio["completion_tokens_per_char"] == pytest.approx(20 / 41)
    assert ratio["cached_share"] == pytest.approx(1 / 8)
    assert report["unpriced_models"] == {"my-private-model": 1}
    assert report["per_month"] is None  # never extrapolated unless asked


def test_the_default_rate_comes_from_the_price_table(store: Store) -> None:
    report = savings(store)
    assert report["specialist_hourly_usd"] == load_prices().specialist_hourly_usd
    assert report["overall"]["specialist_cost_usd"] == pytest.approx(
        3.2 * report["specialist_hourly_usd"] / 3600
    )


def test_a_price_file_changes_the_figures(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[[price]]\nmodels = ["my-private-model"]\ninput = 1.0\noutput = 1.0\n')
    report = savings(store, prices=path, hourly_usd=HOURLY)
    assert report["unpriced_models"] == {}
    b = report["by_task"]["task-b"]
    assert b["calls_served_unpriced"] == 0
    assert b["upstream_cost_avoided_usd"] == pytest.approx(AVOIDED_B + (16489 / 4 + 41 / 4) * 1e-6)


def test_since_and_the_labelled_projection(store: Store) -> None:
    later = savings(store, hourly_usd=HOURLY, since="2026-12-02")
    assert later["overall"]["calls_served"] == 0 and later["overall"]["calls_upstream"] == 1
    assert later["overall"]["upstream_spend_usd"] == pytest.approx(GPT41_SPEND)
    assert later["by_task"] == {}
    assert later["since"] == "2026-12-02T00:00:00.000+00:00"  # a date is midnight UTC
    # 09:00 at UTC-2 is 11:00 UTC, after the last call; 11:00 at UTC+2 is 09:00 UTC, before it
    assert savings(store, since="2026-12-02T09:00:00-02:00")["overall"]["calls_upstream"] == 0
    assert savings(store, since="2026-12-02T11:00:00+02:00")["overall"]["calls_upstream"] == 1
    with pytest.raises(ConfigError, match="since must be an ISO time"):
        savings(store, since="yesterday")
    month = savings(store, hourly_usd=HOURLY, per_month=True)["per_month"]
    assert month["label"].startswith("projection, not a measurement")
    assert month["measured_days"] == pytest.approx(1.0)  # 2026-12-01T10:00:00 .. 2026-12-02T10:00:00
    assert month["net_saving_usd"] == pytest.approx((AVOIDED_A + AVOIDED_B - 0.0032 - PROBE) * 30)


# -- the command ---------------------------------------------------------------------------------------------


def _db(store: Store) -> str:
    return str(store.engine.url)


def test_the_command_prints_the_table(store: Store) -> None:
    result = CliRunner().invoke(main, ["savings", "--db", _db(store), "--hourly-usd", "3.6"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    row = next(line for line in lines if line.startswith("task-a"))
    assert row.split() == ["task-a", "1", "0.0096", "0.0024", "0.0089", "-0.0018", "1", "0.0102", "48.4%"]
    assert next(line for line in lines if line.startswith("all ")).split()[1] == "3"
    assert "ESTIMATED" in result.output and "my-private-model (1)" in result.output
    assert (
        "measured on tau-airline / gpt-4o's 2 upstream calls: 0.243 prompt and 0.488 completion"
        in result.output
    )
    assert "PROJECTION" not in result.output


def test_the_command_json_and_projection(store: Store) -> None:
    result = CliRunner().invoke(main, ["savings", "--json", "--db", _db(store), "--hourly-usd", "3.6"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == savings(store, hourly_usd=HOURLY)
    result = CliRunner().invoke(main, ["savings", "--db", _db(store), "--per-month"])
    assert "PROJECTION" in result.output and "not a measurement" in result.output


def test_the_command_on_an_empty_store() -> None:
    result = CliRunner().invoke(main, ["savings"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("no calls through the gateway: savings are measured on served traffic")


def test_the_command_on_a_bad_price_file(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[[price]]\nmodels = ["a"]\ninput = 1\n')
    result = CliRunner().invoke(main, ["savings", "--prices", str(path)])
    assert result.exit_code == 1
    assert (
        result.output.strip()
        == f"error: {path}: price entry 1 (a): 'output' is missing (USD per million tokens)"
    )


def test_the_command_has_help() -> None:
    result = CliRunner().invoke(main, ["savings", "--help"])
    assert result.exit_code == 0 and "--hourly-usd" in result.output and "--per-month" in result.output


# -- discovery's task cost reads the same table ----------------------------------------------------------------


def test_discovery_prices_calls_from_the_table(tau_calls: list[Exchange]) -> None:
    from downsize.discover.config import DiscoverConfig
    from downsize.discover.discovery import read_calls
    from downsize.discover.signature import TemplateIndex

    store = Store.open()
    call = tau_calls[2]
    rows = [("gpt-4o-mini-2024-07-18", "a"), ("my-private-model", "b"), ("gpt-4o", "c")]
    store.add_exchanges(
        replace(call, model=model, source_key=key, prompt_tokens=1000, completion_tokens=100)
        for model, key in rows
    )
    config = DiscoverConfig(source="tau-airline", embedder="lsa", map=False)
    costs = [c.cost for c in read_calls(store, config, TemplateIndex())]
    assert costs == pytest.approx(
        [
            1000 * 0.15e-6 + 100 * 0.60e-6,  # gpt-4o-mini's list price
            1000 * 2.5e-6 + 100 * 10e-6,  # no price: the config's fallback (gpt-4o's), as before
            1000 * 2.5e-6 + 100 * 10e-6,
        ]
    )
