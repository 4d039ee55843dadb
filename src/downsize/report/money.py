"""Money saved, as the report shows it: an adapter over the cost model (`evaluate/costs.py`).

The cost model measures savings on the gateway's served traffic (never on imported logs, never extrapolated);
this module only picks the figures the page shows, so a change in the cost model's report touches one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from downsize.evaluate.costs import measure_savings
from downsize.store import Store


@dataclass
class TaskSavings:
    task: str
    calls: int  # served calls the saving was measured on
    upstream_cost: float  # what the LLM would have cost for them, USD
    specialist_cost: float  # what serving and checking them cost, USD (compute and probe calls)
    saved: float  # net
    upstream_spend: float  # what the task's calls that still went to the LLM cost


@dataclass
class Savings:
    by_task: list[TaskSavings] = field(default_factory=list)
    calls: int = 0
    saved: float = 0.0
    upstream_spend: float = 0.0
    share_saved: float | None = None
    unpriced_calls: int = 0
    note: str = ""  # what the figures rest on: the window, the prices' date, the hourly rate
    estimate: str = ""  # how the served calls' tokens were estimated


def measured_savings(store: Store) -> Savings | None:
    """Savings per task and overall from the cost model; None when there is no gateway traffic to measure."""
    report = measure_savings(store)
    overall = report.overall
    if report.first_call is None:
        return None
    by_task = [
        TaskSavings(
            task,
            f.calls_served,
            f.upstream_cost_avoided_usd,
            f.specialist_cost_usd + f.probe_cost_usd,
            f.net_saving_usd,
            f.upstream_spend_usd,
        )
        for task, f in sorted(report.by_task.items(), key=lambda item: -item[1].net_saving_usd)
    ]
    note = (
        f"{report.measured_on}, {report.first_call} to {report.last_call}; list prices read on "
        f"{report.prices_read_on}; specialists at ${report.specialist_hourly_usd:g} an hour "
        f"({report.specialist_hourly_source})"
    )
    return Savings(
        by_task=by_task,
        calls=overall.calls_served,
        saved=overall.net_saving_usd,
        upstream_spend=overall.upstream_spend_usd,
        share_saved=overall.share_saved,
        unpriced_calls=overall.calls_served_unpriced + overall.calls_upstream_unpriced,
        note=note,
        estimate=report.estimate.how,
    )
