"""Workflows and splits, frozen by hash, so no conversation leaks between training, validation and test.

The unit is the workflow. A session id of the form `WORKFLOW#RUN` groups every run of one workflow (for
the airline agent's four trials of one task); an exchange without a session belongs to its conversation,
named by the hash of its root (the system prompt and the first user message): an agent resends its
growing history on every call, so every call of one conversation shares that root and lands on one side.

Every exchange gets a split when it is stored: a source's own split wins where the importer sets one
(rule `source`, e.g. a benchmark's own test task ids); otherwise the split of its workflow when the workflow
is already stored (so a workflow never straddles, whatever the rule that placed it), else a hash of the
workflow (rule `hash`: stable as more logs arrive). `reassign_by_time` re-cuts a source so the newest
workflows are the test split (rule `time`), as a user with months of logs would hold out. Within the dev
split, a workflow's role (train or validation) is a second, independent hash at the fraction the stage asks.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from downsize.types import Exchange

TEST_FRACTION = 0.2  # share of workflows held out as test when a source defines no split of its own
SPLIT_RULES = ("source", "hash", "time")


def workflow(session: str | None) -> str:
    return (session or "").split("#", 1)[0]


def hash_fraction(key: str) -> float:
    """A stable number in [0, 1) for a key."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def conversation_root(request: dict[str, Any]) -> str:
    """Hash of a request's system prompt and first user message: shared by every call of one conversation."""
    messages = request.get("messages") if isinstance(request, dict) else None
    root: list[Any] = []
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict):
            continue
        if message.get("role") in ("system", "developer") and not root:
            root.append(message.get("content"))
        elif message.get("role") == "user":
            root.append(message.get("content"))
            break
    text = json.dumps(root, sort_keys=True, ensure_ascii=False, default=str)
    return "root:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def workflow_key(exchange: Exchange) -> str:
    """The workflow an exchange belongs to: its recorded one, its session's, else its conversation's root."""
    if exchange.workflow:
        return exchange.workflow
    if exchange.session:
        return workflow(exchange.session)
    return conversation_root(exchange.request)


def hash_split(workflow_id: str, test_fraction: float = TEST_FRACTION) -> str:
    """'test' or 'dev' for a workflow, by a hash independent of the train/validation one."""
    return "test" if hash_fraction("test:" + workflow_id) < test_fraction else "dev"


def dev_role(exchange: Exchange, validation_fraction: float, fold: int = 0) -> str:
    """'train' or 'validation' for a dev-split exchange, fixed by its workflow's hash.

    The dev workflows fall into folds of `validation_fraction` each, by that hash: fold k is the hashes in
    [k * fraction, (k + 1) * fraction). The validation part is fold `fold` (0 by default); cross-fitting
    (`evaluate/crossfit.py`) trains one model per fold, each holding out its own.
    """
    low = fold * validation_fraction
    return (
        "validation" if low <= hash_fraction(workflow_key(exchange)) < low + validation_fraction else "train"
    )


def fold_of(exchange: Exchange, folds: int) -> int:
    """The cross-fitting fold of a dev exchange's workflow, of `folds` (fold 0 is the validation part at
    `validation_fraction = 1 / folds`)."""
    return min(folds - 1, int(hash_fraction(workflow_key(exchange)) * folds))


def role(exchange: Exchange, validation_fraction: float, fold: int = 0) -> str:
    """'train', 'validation' or 'test': the part of the data an exchange serves."""
    if exchange.split == "test":
        return "test"
    return dev_role(exchange, validation_fraction, fold)
