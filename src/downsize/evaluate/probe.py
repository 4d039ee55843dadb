"""What the consistency probe measured: the teacher against itself on the same request, live.

The gateway's probe (`probe:` in its config) re-asks the upstream a share of calls and stores the second answer
as an exchange of the same request with route `probe` (never trained or discovered on). Here each probe is
paired with the call it repeats (same workflow, same request), and the pair is judged by the strict rule of the
answers' kind: tool calls by their canonical form (a text reply against a tool call disagrees; two text replies
at a tool-call site are not compared, as in `ceiling.py`), JSON by canonical JSON, text normalised. Per call
site: the teacher's self-agreement with its Wilson interval and, where a specialist served the first call (the
probe's `live` mode), the served answer's agreement with the teacher's. The cost is the probes' own tokens.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from downsize.contracts import OutputContract, answer_of, canonical_json
from downsize.evaluate.metrics import wilson_lower
from downsize.sites import site_key
from downsize.types import PROBE_ROUTE, Exchange


@dataclass
class ProbeFigures:
    """One call site's probes."""

    probes: int = 0  # probe answers stored
    paired: int = 0  # probes whose first call was found
    pairs: int = 0  # teacher-teacher pairs that count
    agreed: int = 0
    agreement: float | None = None
    agreement_lower95: float | None = None
    served_pairs: int = 0  # the first call was served by a specialist (live mode)
    served_agreed: int = 0
    prompt_tokens: int = 0  # what the probes cost upstream
    completion_tokens: int = 0


@dataclass
class ProbeReport:
    by_site: dict[str, ProbeFigures] = field(default_factory=dict)
    overall: ProbeFigures = field(default_factory=ProbeFigures)


def request_key(request: dict[str, Any]) -> str:
    """The request as the upstream saw it, streaming options aside."""
    return canonical_json({k: v for k, v in request.items() if k not in ("stream", "stream_options")})


def _kind(a: Exchange, b: Exchange) -> str:
    kinds = {a.response_kind, b.response_kind}
    if "tool_call" in kinds:
        return "tool_call"
    if kinds == {"json"}:
        return "json"
    return "text"


def answers_agree(a: Exchange, b: Exchange) -> bool | None:
    """The strict rule on two answers to one request; None when the pair does not count (two text replies at a
    tool-call site, or an answer that is not one: an error, nothing)."""
    kind = _kind(a, b)
    if kind == "tool_call" and a.response_kind == b.response_kind == "text":
        return None
    first = answer_of(kind, a.response)
    if first is None:  # a text reply against the probe's call disagrees; no answer at all does not count
        return False if kind == "tool_call" and answer_of("text", a.response) is not None else None
    return OutputContract(kind).agrees(first, b.response)


def pair_probes(exchanges: Iterable[Exchange]) -> list[tuple[Exchange, Exchange]]:
    """(first call, its probe) for every probe whose first call is among these exchanges: same workflow and
    same request; the latest first call stored before the probe."""
    firsts: dict[tuple[str, str], list[Exchange]] = defaultdict(list)
    probes: list[Exchange] = []
    for ex in exchanges:
        if ex.route == PROBE_ROUTE:
            probes.append(ex)
        else:
            firsts[(ex.workflow or ex.session or "", request_key(ex.request))].append(ex)
    out = []
    for probe in probes:
        key = (probe.workflow or probe.session or "", request_key(probe.request))
        earlier = [ex for ex in firsts.get(key, []) if (ex.id or 0) < (probe.id or 0)]
        if earlier:
            out.append((earlier[-1], probe))
    return out


def probe_report(exchanges: Iterable[Exchange]) -> ProbeReport:
    """Every probe among these exchanges (pass them with `probes=True` from the store), by call site."""
    listed = list(exchanges)
    report = ProbeReport()
    by_site: dict[str, ProbeFigures] = defaultdict(ProbeFigures)
    for ex in listed:
        if ex.route == PROBE_ROUTE:
            for figures in (report.overall, by_site[site_key(ex.request)]):
                figures.probes += 1
                figures.prompt_tokens += ex.prompt_tokens or 0
                figures.completion_tokens += ex.completion_tokens or 0
    for first, probe in pair_probes(listed):
        verdict = answers_agree(first, probe)
        for figures in (report.overall, by_site[site_key(first.request)]):
            figures.paired += 1
            if verdict is None:
                continue
            if (first.route or "").startswith("specialist:"):
                figures.served_pairs += 1
                figures.served_agreed += verdict
            else:
                figures.pairs += 1
                figures.agreed += verdict
    for figures in (report.overall, *by_site.values()):
        if figures.pairs:
            figures.agreement = figures.agreed / figures.pairs
            figures.agreement_lower95 = wilson_lower(figures.agreed, figures.pairs)
    report.by_site = dict(sorted(by_site.items()))
    return report


def describe(report: ProbeReport) -> str:
    """The report as `downsize probes` prints it."""
    if not report.overall.probes:
        return (
            "no probe answers stored: turn the consistency probe on in the gateway config "
            "(probe: {fraction: 0.05}) and send traffic through `downsize serve`"
        )
    lines = [
        f"{'call site':<48} {'probes':>6} {'pairs':>5} {'agree':>6} {'lower95':>7} {'served':>6} {'tokens':>8}"
    ]
    for site, f in [*report.by_site.items(), ("all", report.overall)]:
        agreement = f"{f.agreement:.3f}" if f.agreement is not None else "-"
        lower = f"{f.agreement_lower95:.3f}" if f.agreement_lower95 is not None else "-"
        served = f"{f.served_agreed}/{f.served_pairs}" if f.served_pairs else "-"
        lines.append(
            f"{site[:48]:<48} {f.probes:>6} {f.pairs:>5} {agreement:>6} {lower:>7} {served:>6} "
            f"{f.prompt_tokens + f.completion_tokens:>8}"
        )
    lines.append(
        "agree: the teacher's second answer against its first (strict rule); served: a specialist's served answer "
        "that the teacher's matched; tokens: what the probes cost upstream"
    )
    return "\n".join(lines)


def as_json(report: ProbeReport) -> str:
    from dataclasses import asdict

    return json.dumps(
        {"overall": asdict(report.overall), "by_site": {k: asdict(v) for k, v in report.by_site.items()}}
    )
