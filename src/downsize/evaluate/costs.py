"""What the specialists saved: upstream cost avoided on served calls, less what serving and checking them cost.

Measured on the gateway's own traffic (source `gateway`), never on imported logs and never extrapolated unless
asked (`per_month`, labelled a projection). For each call a specialist served, the cost avoided is what the
model the agent asked for (the request's `model`) would have charged for it. A served call has no upstream
usage, so its tokens are estimated, and the report says so and how: its prompt's characters (messages, tools,
response format as JSON) times the tokens-per-character ratio measured on upstream calls of the same agent
and model (any source, any date: imported logs are good evidence of a tokenizer), else of the same model, else
4 characters a token; the answer's characters likewise for completion tokens; the cached share of the prompt
as measured on those calls. A model with no price (`pricing.py`) is counted apart, never guessed.

Subtracted: the specialists' compute, every route decision's measured latency (served ones, and shadow runs
and fallbacks, which cost compute and saved nothing) at an hourly rate; and the consistency probe's own
upstream calls (route `probe`). Beside the saving: the LLM spend on the calls that still went upstream, so a
reader sees the share saved. Per task (the deciding specialist's task), per agent, and overall.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from downsize.errors import ConfigError
from downsize.evaluate.probe import pair_probes
from downsize.pricing import PriceTable, load_prices
from downsize.shapes import response_message
from downsize.store import Store
from downsize.types import PROBE_ROUTE, Exchange

SCHEMA_VERSION = 1
DEFAULT_CHARS_PER_TOKEN = 4.0  # where no upstream call of the model has measured tokens
GATEWAY_SOURCE = "gateway"
MONTH_DAYS = 30.0
NO_AGENT = "(no agent)"

ESTIMATE_HOW = (
    "served calls have no upstream usage: their prompt and completion tokens are estimated from their "
    "characters at the tokens-per-character ratio measured on upstream calls of the same agent and model, "
    "else of the same model, else 4 characters a token (`basis` counts the calls of each); their cached share "
    "of the prompt as measured on those calls"
)


@dataclass
class CostFigures:
    """One task's, one agent's, or all traffic's figures (USD; seconds of specialist wall-clock time)."""

    calls_served: int = 0
    calls_served_unpriced: int = 0  # served calls whose model has no price: no cost avoided counted
    upstream_cost_avoided_usd: float = 0.0
    specialist_seconds_served: float = 0.0
    specialist_seconds_unserved: float = 0.0  # shadow runs and fallbacks: compute that saved nothing
    specialist_cost_usd: float = 0.0
    probe_calls: int = 0
    probe_cost_usd: float = 0.0
    net_saving_usd: float = 0.0  # avoided - specialist - probe
    calls_upstream: int = 0  # calls that still went to the LLM (fallbacks and plain upstream; probes apart)
    calls_upstream_unpriced: int = 0
    upstream_spend_usd: float = 0.0
    share_saved: float | None = None  # avoided / (avoided + upstream spend)

    def finish(self, hourly_usd: float) -> None:
        self.specialist_cost_usd = (
            (self.specialist_seconds_served + self.specialist_seconds_unserved) * hourly_usd / 3600
        )
        self.net_saving_usd = self.upstream_cost_avoided_usd - self.specialist_cost_usd - self.probe_cost_usd
        bill = self.upstream_cost_avoided_usd + self.upstream_spend_usd
        self.share_saved = self.upstream_cost_avoided_usd / bill if bill > 0 else None


@dataclass
class TokenEstimate:
    """How the served calls' tokens were estimated."""

    how: str = ESTIMATE_HOW
    basis: dict[str, int] = field(default_factory=lambda: {"agent_model": 0, "model": 0, "default": 0})
    prompt_tokens: int = 0  # estimated, over the priced served calls
    completion_tokens: int = 0
    upstream_calls_estimated: int = 0  # upstream calls that came back without usage, estimated the same way
    ratios: list[MeasuredRatio] = field(default_factory=list)  # the measured ratios the estimates used


@dataclass
class MeasuredRatio:
    """Tokens per character measured on one agent's (or, basis `model`, every agent's) upstream calls."""

    basis: str  # agent_model | model
    agent: str | None
    model: str | None
    calls: int  # upstream calls measured
    prompt_tokens_per_char: float
    completion_tokens_per_char: float
    cached_share: float  # of prompt tokens


@dataclass
class SavingsReport:
    """What `savings` returns (as a dict): the figures and everything needed to read them right."""

    schema_version: int
    measured_on: str  # what the figures cover, in words
    since: str | None
    first_call: str | None  # the window of gateway traffic measured
    last_call: str | None
    overall: CostFigures
    by_task: dict[str, CostFigures]
    by_agent: dict[str, CostFigures]
    estimate: TokenEstimate
    unpriced_models: dict[str, int]  # model -> calls (served or upstream) without a price
    specialist_hourly_usd: float
    specialist_hourly_source: str
    prices_read_on: str
    price_files: list[str]
    per_month: dict[str, Any] | None = None  # only when asked; a projection, labelled


@dataclass
class _Ratio:
    calls: int = 0
    prompt_chars: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_chars: int = 0
    completion_tokens: int = 0


def prompt_chars(request: dict[str, Any]) -> int:
    """The characters of what the provider tokenizes in a request: messages, tools, response format."""
    parts = {k: request[k] for k in ("messages", "tools", "response_format") if request.get(k) is not None}
    return len(json.dumps(parts, ensure_ascii=False))


def completion_chars(response: dict[str, Any] | None) -> int:
    """The characters of an answer: its text, and each tool call's name and arguments."""
    message = response_message(response) or {}
    content = message.get("content")
    total = len(content) if isinstance(content, str) else 0
    for call in message.get("tool_calls") or []:
        fn = (call.get("function") or {}) if isinstance(call, dict) else {}
        total += len(str(fn.get("name") or "")) + len(str(fn.get("arguments") or ""))
    return total


def asked_model(ex: Exchange) -> str | None:
    """The model the agent asked for (a served call's stored model is the specialist's)."""
    model = ex.request.get("model") if isinstance(ex.request, dict) else None
    return model if isinstance(model, str) and model else ex.model


def billed_model(ex: Exchange) -> str | None:
    """The model an upstream call was billed as: the response's (a dated snapshot), else the one asked."""
    return ex.model or asked_model(ex)


def cached_tokens(ex: Exchange) -> int:
    usage = ex.response.get("usage") if isinstance(ex.response, dict) else None
    details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else None
    value = details.get("cached_tokens") if isinstance(details, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _served(ex: Exchange) -> bool:
    return (ex.route or "").startswith("specialist:")


def _measured(ex: Exchange) -> bool:
    return (
        not _served(ex)
        and ex.prompt_tokens is not None
        and ex.completion_tokens is not None
        and ex.prompt_tokens > 0
    )


class _Estimator:
    """Tokens from characters at the ratios measured on upstream calls."""

    def __init__(self, exchanges: list[Exchange]) -> None:
        self.by_agent_model: dict[tuple[str | None, str | None], _Ratio] = defaultdict(_Ratio)
        self.by_model: dict[str | None, _Ratio] = defaultdict(_Ratio)
        self.used: dict[tuple[str, str | None, str | None], _Ratio] = {}
        for ex in exchanges:
            if not _measured(ex):
                continue
            model = asked_model(ex)
            p_chars, c_chars = prompt_chars(ex.request), completion_chars(ex.response)
            for ratio in (self.by_agent_model[(ex.agent, model)], self.by_model[model]):
                ratio.calls += 1
                ratio.prompt_chars += p_chars
                ratio.prompt_tokens += ex.prompt_tokens or 0
                ratio.cached_tokens += cached_tokens(ex)
                ratio.completion_chars += c_chars
                ratio.completion_tokens += ex.completion_tokens or 0

    def tokens(self, ex: Exchange) -> tuple[float, float, float, str]:
        """(prompt, completion, cached prompt tokens, basis) for one call without usage."""
        model = asked_model(ex)
        p_chars, c_chars = prompt_chars(ex.request), completion_chars(ex.response)
        for basis, ratio in (
            ("agent_model", self.by_agent_model.get((ex.agent, model))),
            ("model", self.by_model.get(model)),
        ):
            if ratio is not None and ratio.prompt_chars > 0 and ratio.completion_chars > 0:
                self.used[(basis, ex.agent if basis == "agent_model" else None, model)] = ratio
                prompt = p_chars * ratio.prompt_tokens / ratio.prompt_chars
                completion = c_chars * ratio.completion_tokens / ratio.completion_chars
                return prompt, completion, prompt * ratio.cached_tokens / ratio.prompt_tokens, basis
        return p_chars / DEFAULT_CHARS_PER_TOKEN, c_chars / DEFAULT_CHARS_PER_TOKEN, 0.0, "default"

    def measured(self) -> list[MeasuredRatio]:
        """The ratios the estimates used, each once."""
        return [
            MeasuredRatio(
                basis=basis,
                agent=agent,
                model=model,
                calls=r.calls,
                prompt_tokens_per_char=r.prompt_tokens / r.prompt_chars,
                completion_tokens_per_char=r.completion_tokens / r.completion_chars,
                cached_share=r.cached_tokens / r.prompt_tokens,
            )
            for (basis, agent, model), r in sorted(self.used.items(), key=lambda kv: str(kv[0]))
        ]


def _since_text(since: str | datetime | None) -> str | None:
    """`since` in the stored form (UTC, milliseconds), so that it compares as text with `created_at`; a
    time without a zone is UTC."""
    if since is None:
        return None
    if isinstance(since, str):
        try:
            since = datetime.fromisoformat(since)
        except ValueError as exc:
            raise ConfigError(
                f"since must be an ISO time such as 2026-12-01 or 2026-12-01T08:00:00+00:00, not {since!r}"
            ) from exc
    moment = since.replace(tzinfo=UTC) if since.tzinfo is None else since.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds")


def _days_between(first: str, last: str) -> float:
    try:
        span = datetime.fromisoformat(last) - datetime.fromisoformat(first)
    except ValueError:
        return 0.0
    return span.total_seconds() / 86400


def measure_savings(
    store: Store,
    prices: PriceTable | None = None,
    hourly_usd: float | None = None,
    since: str | datetime | None = None,
    per_month: bool = False,
) -> SavingsReport:
    """The savings of the gateway's traffic from `since` (ISO time, inclusive; all when None). `prices`
    defaults to `load_prices()`, `hourly_usd` to the table's `specialist_hourly_usd`."""
    table = prices if prices is not None else load_prices()
    rate = table.specialist_hourly_usd if hourly_usd is None else float(hourly_usd)
    start = _since_text(since)
    everything = list(store.exchanges(probes=True))
    estimator = _Estimator(everything)
    by_id = {ex.id: ex for ex in everything if ex.id is not None}
    task_of = {sp.id: sp.task for sp in store.specialists()}

    def counted(ex: Exchange) -> bool:
        return ex.source == GATEWAY_SOURCE and (start is None or (ex.created_at or "") >= start)

    overall = CostFigures()
    by_task: dict[str, CostFigures] = defaultdict(CostFigures)
    by_agent: dict[str, CostFigures] = defaultdict(CostFigures)
    estimate = TokenEstimate()
    unpriced: dict[str, int] = defaultdict(int)
    decided_task: dict[int, str] = {}  # exchange id -> the task of the specialist that decided it

    for decision in store.route_decisions():
        ex = by_id.get(decision["exchange_id"])
        if ex is None or not counted(ex):
            continue
        task = task_of.get(decision["specialist_id"], f"specialist {decision['specialist_id']}")
        decided_task[decision["exchange_id"]] = task
        seconds = (decision["latency_ms"] or 0.0) / 1000
        attr = "specialist_seconds_served" if decision["served"] else "specialist_seconds_unserved"
        for figures in (overall, by_task[task], by_agent[ex.agent or NO_AGENT]):
            setattr(figures, attr, getattr(figures, attr) + seconds)

    window: list[str] = []
    for ex in everything:
        if not counted(ex) or ex.route == PROBE_ROUTE:
            continue
        window.append(ex.created_at or "")
        groups = [overall, by_agent[ex.agent or NO_AGENT]]
        if ex.id in decided_task:
            groups.append(by_task[decided_task[ex.id]])
        if _served(ex):
            model = asked_model(ex)
            price = table.lookup(model)
            for figures in groups:
                figures.calls_served += 1
            if price is None:
                unpriced[model or "(none)"] += 1
                for figures in groups:
                    figures.calls_served_unpriced += 1
                continue
            prompt, completion, cached, basis = estimator.tokens(ex)
            estimate.basis[basis] += 1
            estimate.prompt_tokens += round(prompt)
            estimate.completion_tokens += round(completion)
            avoided = price.cost(prompt, completion, cached)
            for figures in groups:
                figures.upstream_cost_avoided_usd += avoided
            continue
        for figures in groups:
            figures.calls_upstream += 1
        if ex.upstream_status is not None and ex.upstream_status >= 400:
            continue  # an error answer is not billed
        price = table.lookup(billed_model(ex))
        if price is None:
            unpriced[billed_model(ex) or "(none)"] += 1
            for figures in groups:
                figures.calls_upstream_unpriced += 1
            continue
        if _measured(ex):
            spent = price.cost(ex.prompt_tokens or 0, ex.completion_tokens or 0, cached_tokens(ex))
        else:
            prompt, completion, cached, _ = estimator.tokens(ex)
            estimate.upstream_calls_estimated += 1
            spent = price.cost(prompt, completion, cached)
        for figures in groups:
            figures.upstream_spend_usd += spent

    probes = [ex for ex in everything if ex.route == PROBE_ROUTE and counted(ex)]
    first_of = {probe.id: first for first, probe in pair_probes(everything) if counted(probe)}
    for probe in probes:
        groups = [overall, by_agent[probe.agent or NO_AGENT]]
        first = first_of.get(probe.id)
        if first is not None and first.id in decided_task:
            groups.append(by_task[decided_task[first.id]])
        price = table.lookup(billed_model(probe))
        if price is None:
            unpriced[billed_model(probe) or "(none)"] += 1
            cost = 0.0
        elif _measured(probe):
            cost = price.cost(probe.prompt_tokens or 0, probe.completion_tokens or 0, cached_tokens(probe))
        else:
            prompt, completion, cached, _ = estimator.tokens(probe)
            estimate.upstream_calls_estimated += 1
            cost = price.cost(prompt, completion, cached)
        for figures in groups:
            figures.probe_calls += 1
            figures.probe_cost_usd += cost

    for figures in (overall, *by_task.values(), *by_agent.values()):
        figures.finish(rate)
    estimate.ratios = estimator.measured()
    first_call, last_call = (min(window), max(window)) if window else (None, None)
    report = SavingsReport(
        schema_version=SCHEMA_VERSION,
        measured_on=(
            "calls through the gateway"
            + (f" since {start}" if start else "")
            + "; served calls' tokens estimated (see estimate)"
        ),
        since=start,
        first_call=first_call,
        last_call=last_call,
        overall=overall,
        by_task=dict(sorted(by_task.items())),
        by_agent=dict(sorted(by_agent.items())),
        estimate=estimate,
        unpriced_models=dict(sorted(unpriced.items())),
        specialist_hourly_usd=rate,
        specialist_hourly_source=(
            table.specialist_hourly_source if hourly_usd is None else "given (--hourly-usd)"
        ),
        prices_read_on=table.read_on,
        price_files=list(table.files),
    )
    if per_month:
        report.per_month = _per_month(overall, first_call, last_call)
    return report


def _span(days: float) -> str:
    seconds = days * 86400
    if seconds < 120:
        return f"{seconds:.0f} seconds"
    if seconds < 7200:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds / 3600:.1f} hours" if days < 2 else f"{days:.1f} days"


def _per_month(overall: CostFigures, first: str | None, last: str | None) -> dict[str, Any]:
    """The measured window's net saving scaled to 30 days: a projection, labelled as one."""
    days = _days_between(first, last) if first and last else 0.0
    if days <= 0:
        return {
            "label": "projection: not possible, the traffic measured spans no time",
            "net_saving_usd": None,
        }
    label = (
        f"projection, not a measurement: the net saving of {_span(days)} of traffic scaled to "
        f"{MONTH_DAYS:.0f} days, assuming the same traffic"
    )
    if days < 1:
        label += " (less than a day measured: a replay or a burst says little of a month's rate)"
    return {
        "label": label,
        "measured_days": days,
        "net_saving_usd": overall.net_saving_usd * MONTH_DAYS / days,
        "upstream_cost_avoided_usd": overall.upstream_cost_avoided_usd * MONTH_DAYS / days,
    }


def savings(
    store: Store,
    prices: PriceTable | str | Path | None = None,
    hourly_usd: float | None = None,
    since: str | datetime | None = None,
    per_month: bool = False,
) -> dict[str, Any]:
    """`measure_savings` as a JSON-ready dict (the gateway's `GET /v1/downsize/savings`, `downsize savings
    --json`). `prices` is a loaded table or the path of a user price file (over the shipped one)."""
    table = prices if isinstance(prices, PriceTable) else load_prices(prices)
    return asdict(measure_savings(store, table, hourly_usd, since, per_month))
