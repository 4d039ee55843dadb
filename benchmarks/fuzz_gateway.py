"""Fuzz the gateway with 10,000+ hypothesis cases: the strategies and invariant of tests/test_gateway_fuzz.py.

Run: `python benchmarks/fuzz_gateway.py [--cases 10000] [--json PATH]` (a few minutes on 2 cores;
`benchmarks/bench_gateway.py` runs it last). The cases are split 60/25/15 between chat completions, the
admin endpoints and unknown paths/methods. Invariant: no 5xx, an OpenAI-shaped error on every 4xx, the
gateways healthy at the end with no exchange lost to a store failure. Prints the counts; exit code 1 on
any failure (hypothesis shrinks the first one per family and it is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import test_gateway_fuzz as fuzz  # noqa: E402
from fault_upstream import FaultUpstream  # noqa: E402

SHARES = {"chat": 0.60, "admin": 0.25, "paths": 0.15}


def _settings(cases: int) -> settings:
    return settings(
        max_examples=cases,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


def _case(call: Any) -> Any:
    """A plain function hypothesis can wrap (it inspects the signature of what it is given)."""

    def case(**kwargs: Any) -> None:
        call(**kwargs)

    return case


def run(cases: int) -> dict[str, Any]:
    for name, value in fuzz.KEY_ENV.items():
        os.environ[name] = value
    failures: list[dict[str, str]] = []
    healthy = False
    started = time.perf_counter()
    with FaultUpstream(record=False) as upstream, tempfile.TemporaryDirectory(prefix="fuzz-gateway-") as tmp:
        target = fuzz.FuzzTarget(upstream.base_url, Path(tmp))
        try:
            families: dict[str, tuple[Any, dict[str, Any]]] = {
                "chat": (target.chat, {"body": fuzz.chat_bodies, "headers": fuzz.meta_headers}),
                "admin": (
                    target.admin,
                    {
                        "path": fuzz.admin_paths,
                        "authorization": fuzz.any_authorization,
                        "limit": fuzz.limits,
                        "body": fuzz.outcome_bodies,
                    },
                ),
                "paths": (
                    target.anywhere,
                    {
                        "method": fuzz.methods,
                        "path": fuzz.paths,
                        "body": st.binary(max_size=40),
                        "keyed": st.booleans(),
                    },
                ),
            }
            for family, (call, strategies) in families.items():
                wanted = int(cases * SHARES[family]) + 1
                # hypothesis stops early on a small search space; go round again (new seeds) until enough ran
                while target.stats.cases.get(family, 0) < wanted:
                    before = target.stats.cases.get(family, 0)
                    try:
                        # a fresh wrapper each round: hypothesis refuses a second @settings on one test
                        _settings(wanted - before)(given(**strategies)(_case(call)))()
                    except Exception as exc:  # a failing case: keep the shrunk example and move on
                        error = f"{type(exc).__name__}: {exc}"[:2000]
                        failures.append(
                            {"family": family, "error": error, "trace": traceback.format_exc()[-3000:]}
                        )
                        break
                    if target.stats.cases.get(family, 0) == before:
                        break
                print(f"{family}: {target.stats.cases.get(family, 0)} cases", flush=True)
            try:
                target.check_healthy()
                healthy = True
            except AssertionError as exc:
                healthy = False
                failures.append(
                    {"family": "health", "error": str(exc), "trace": traceback.format_exc()[-3000:]}
                )
        finally:
            target.close()
    return {
        "cases": target.stats.total,
        "by_family": target.stats.cases,
        "statuses": {str(k): v for k, v in sorted(target.stats.statuses.items())},
        "failures": len(failures),
        "failure_details": failures,
        "healthy_after": healthy,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--json", type=Path, help="Also write the result here.")
    args = parser.parse_args()
    result = run(args.cases)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"fuzz: {result['cases']} cases in {result['seconds']} s, statuses {result['statuses']}, "
        f"failures {result['failures']}, healthy after: {result['healthy_after']}"
    )
    for failure in result["failure_details"]:
        print(f"--- {failure['family']}: {failure['error']}\n{failure['trace']}", file=sys.stderr)
    sys.exit(1 if result["failures"] else 0)


if __name__ == "__main__":
    main()
