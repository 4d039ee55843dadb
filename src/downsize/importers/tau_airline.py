"""Import tau-bench airline trajectories: every assistant message becomes one logged LLM call.

The request is every message before it plus the agent's tools (`tools.json`; the trajectories
don't store them), the response is that message. Sessions are `task_id#trial` (one workflow, several runs); the outcome is the
episode's reward. Task ids 35-49 are the test split, the rest dev.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from downsize.errors import ImportDataError
from downsize.shapes import completion, describe_response
from downsize.store import Store
from downsize.types import Exchange

SOURCE = "tau-airline"
TEACHER = "gpt-4o"
TEST_TASK_IDS = range(35, 50)
TRAJECTORIES = "trajectories-gpt-4o.json"


def default_path() -> Path:
    """../shared/data/tau-airline beside the project (as in a checkout and in CI)."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
        candidate = base.parent / "shared" / "data" / "tau-airline"
        if candidate.is_dir():
            return candidate
    return Path.cwd().parent / "shared" / "data" / "tau-airline"


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise ImportDataError(
            f"{path} not found: point `downsize import tau-airline PATH` at the tau-airline folder"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ImportDataError(f"{path} is not valid JSON ({exc})") from exc


def read_exchanges(folder: str | Path) -> Iterator[Exchange]:
    """Yield one Exchange per assistant message of every trajectory in the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImportDataError(f"{folder} is not a folder: expected one holding {TRAJECTORIES} and tools.json")
    trajectories = _load_json(folder / TRAJECTORIES)
    tools = _load_json(folder / "tools.json")
    if not isinstance(trajectories, list) or not isinstance(tools, list):
        raise ImportDataError(f"{folder}: {TRAJECTORIES} and tools.json must each hold a JSON list")
    for record in trajectories:
        try:
            task_id, trial, traj = int(record["task_id"]), int(record["trial"]), record["traj"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ImportDataError(
                f"{folder / TRAJECTORIES}: a record lacks task_id, trial or traj ({exc})"
            ) from exc
        session = f"{task_id}#{trial}"
        for index, message in enumerate(traj):
            if message.get("role") != "assistant":
                continue
            request = {"model": TEACHER, "messages": traj[:index], "tools": tools}
            response = completion(message, TEACHER, 0, f"tau-{task_id}-{trial}-{index}")
            kind, names = describe_response(response)
            yield Exchange(
                request=request,
                response=response,
                source=SOURCE,
                source_key=f"{SOURCE}:{task_id}:{trial}:{index}",
                agent="tau-airline",
                session=session,
                model=TEACHER,
                response_kind=kind,
                tool_names=names,
                upstream_status=200,
                route="upstream",
                is_hci=kind == "text",
                outcome=float(record.get("reward", 0.0)),
                split="test" if task_id in TEST_TASK_IDS else "dev",
            )


def import_tau_airline(store: Store, folder: str | Path, batch: int = 500) -> tuple[int, int]:
    """Import the folder into the store; returns (exchanges read, exchanges added). Idempotent."""
    return store.add_exchanges_batched(read_exchanges(folder), batch)
