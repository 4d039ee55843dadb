"""Stable task keys: a new discovery run's clusters keep the keys of the previous run's tasks they continue.

Why: a specialist is trained on task keys (`downsize train --task t003`), routing modes and rollbacks name
them, and the flywheel retrains a task only when its data changed. If every run numbered its clusters afresh
by volume, one more day of logs would rename half the tasks. So each new cluster is matched to a previous
task of the same structural signature (call site, template, tools, answer kind):

- by the calls both runs hold: the Jaccard index of the two tasks' members among exchanges present in both
  runs. Above 0.5 the match is unique (two disjoint clusters cannot both share more than half of one task's
  calls), so a task that grew keeps its key and a task split in two keeps it for the half that dominates;
- else, when both runs embedded with the same fixed model (MiniLM; LSA is refitted on every run, so its
  spaces do not compare), by the cosine of the two centroids stored in the tasks' `details`, at least
  `min_cosine`.

Pairs are taken greedily, best score first, one to one. A cluster matching nothing gets a key never used
before (the highest number of any earlier run's keys, plus one), so a key never changes meaning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MIN_JACCARD = 0.5
MIN_COSINE = 0.9
FIXED_EMBEDDERS = ("minilm",)  # embedders whose space is the same in every run
KEY = re.compile(r"^t(\d+)$")


@dataclass
class KeyMatch:
    """How a run's clusters were keyed: the renaming, and which previous tasks continue or end."""

    previous_run: int | None
    renamed: dict[str, str] = field(default_factory=dict)  # the run's provisional key -> its stable key
    kept: dict[str, str] = field(default_factory=dict)  # stable key -> how it matched (jaccard 0.83, ...)
    new: list[str] = field(default_factory=list)  # keys first seen in this run
    ended: list[str] = field(default_factory=list)  # previous keys no cluster continues

    def as_dict(self) -> dict[str, Any]:
        return {
            "previous_run": self.previous_run,
            "kept": len(self.kept),
            "new": self.new,
            "ended": self.ended,
        }


def next_key_number(keys: list[str]) -> int:
    """One past the highest `tNNN` key among `keys` (0 when there is none)."""
    numbers = [int(m.group(1)) for k in keys if (m := KEY.match(k))]
    return max(numbers, default=-1) + 1


def match_keys(
    current: list[dict[str, Any]],
    members: dict[str, set[int]],
    previous: list[dict[str, Any]],
    previous_members: dict[str, set[int]],
    *,
    comparable_space: bool,
    used_keys: list[str],
    previous_run: int | None = None,
    min_jaccard: float = MIN_JACCARD,
    min_cosine: float = MIN_COSINE,
) -> KeyMatch:
    """Stable keys for `current` tasks (rows with task_key, signature, output_kind, details.centroid) given
    the `previous` run's tasks; `members` map each key to its exchange ids. `used_keys`: every key any earlier
    run gave out (new keys start past them)."""
    match = KeyMatch(previous_run)
    both = set().union(*members.values()) & set().union(*previous_members.values()) if members else set()
    pairs: list[tuple[float, int, str, str, str]] = []
    for cur in current:
        mine = members.get(cur["task_key"], set()) & both
        cur_centroid = _centroid(cur)
        for old in previous:
            if (cur["signature"], cur["output_kind"]) != (old["signature"], old["output_kind"]):
                continue
            theirs = previous_members.get(old["task_key"], set()) & both
            union = mine | theirs
            shared = len(mine & theirs)
            if union and shared:
                jaccard = shared / len(union)
                if jaccard > min_jaccard:
                    pairs.append(
                        (1.0 + jaccard, shared, cur["task_key"], old["task_key"], f"jaccard {jaccard:.2f}")
                    )
                continue
            if comparable_space and not union:  # no call in common at all: compare where they sit
                old_centroid = _centroid(old)
                if cur_centroid is not None and old_centroid is not None:
                    cosine = float(cur_centroid @ old_centroid)
                    if cosine >= min_cosine:
                        pairs.append((cosine, 0, cur["task_key"], old["task_key"], f"cosine {cosine:.3f}"))
    taken_cur: set[str] = set()
    taken_old: set[str] = set()
    for _score, _shared, cur_key, old_key, how in sorted(pairs, key=lambda p: (-p[0], -p[1], p[2], p[3])):
        if cur_key in taken_cur or old_key in taken_old:
            continue
        taken_cur.add(cur_key)
        taken_old.add(old_key)
        match.renamed[cur_key] = old_key
        match.kept[old_key] = how
    number = next_key_number(used_keys)
    for cur in current:  # in the run's own order (largest first), so new keys are numbered by volume
        if cur["task_key"] not in match.renamed:
            fresh = f"t{number:03d}"
            number += 1
            match.renamed[cur["task_key"]] = fresh
            match.new.append(fresh)
    match.ended = sorted(old["task_key"] for old in previous if old["task_key"] not in taken_old)
    return match


def _centroid(task: dict[str, Any]) -> np.ndarray | None:
    values = (task.get("details") or {}).get("centroid")
    if not values:
        return None
    vector = np.asarray(values, dtype=np.float32)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm else None
