"""Splits frozen by hash, so no conversation leaks between training, validation and test.

The unit is the workflow: a session id of the form `WORKFLOW#RUN` groups every run of one workflow
(for tau-airline, the four trials of one task) on the same side of the split.
"""

from __future__ import annotations

import hashlib

from downsize.types import Exchange


def workflow(session: str | None) -> str:
    return (session or "").split("#", 1)[0]


def hash_fraction(key: str) -> float:
    """A stable number in [0, 1) for a key."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def dev_role(exchange: Exchange, validation_fraction: float) -> str:
    """'train' or 'validation' for a dev-split exchange, fixed by its workflow's hash."""
    return "validation" if hash_fraction(workflow(exchange.session)) < validation_fraction else "train"
