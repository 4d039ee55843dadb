"""Cross-fitted calibration and the choice of confidence signal.

A specialist calibrated on its validation part alone sees few calls per task (a few workflows), so its
threshold rests on little evidence. Trained with `cross_fit=K` (`train/lora.py`), the dev workflows fall into
K folds by hash; the specialist holds out fold 0 and K - 1 fold models, trained the same way for the same
number of tokens, each hold out one other fold. Here each fold's calls are decided by the model that never
trained on them (its own task gate, copied-argument rules and adapter), so every dev call in scope becomes a
calibration call, scored by a model that did not see its workflow: about K times the evidence. The fold
models stand in for the specialist (same data size, same compute); the threshold they calibrate is applied to
the specialist, whose own held-out fold is part of the set, and the gap between the calibration calls'
agreement at the threshold and the test calls' is reported.

The confidence signal is chosen on the same calls: each candidate (`decide.decision.SIGNALS`) is ranked by
AUROC (how often a right answer scores above a wrong one); the learned combination is judged on
out-of-fold predictions (fitted on the other folds' calls), then refitted on all. The signal with the best
AUROC serves; `min` wins ties within 0.005, and keeps its place unless there are at least 15 right and 15 wrong
answers to tell the signals apart.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from downsize.artifacts import fold_dir
from downsize.decide.decision import FEATURES, SIGNALS, Decider, Decision, confidence_of
from downsize.evaluate.metrics import auroc
from downsize.splits import hash_fraction, workflow_key
from downsize.types import Exchange, Specialist

TIE = 0.005  # an AUROC within this of the default signal's does not displace it
MIN_EACH = 15  # right and wrong calibration answers each needed before another signal may displace `min`


@dataclass
class SignalChoice:
    """The confidence signal calibration uses and serves with, and every candidate's AUROC."""

    name: str = "min"
    weights: dict[str, float] | None = None
    auroc: dict[str, float | None] = field(default_factory=dict)
    calls: int = 0  # valid calibration answers the AUROCs are measured on

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "weights": self.weights, "auroc": self.auroc, "calls": self.calls}


def groups_of(exchanges: Sequence[Exchange], folds: int) -> list[int]:
    """A group per exchange for out-of-fold fitting: its workflow's fold (of `folds`, by hash)."""
    return [min(folds - 1, int(hash_fraction(workflow_key(ex)) * folds)) for ex in exchanges]


def _features(decision: Decision) -> dict[str, float] | None:
    signals = decision.details.get("signals") if decision.valid else None
    return signals if isinstance(signals, dict) else None


def _fit_weights(rows: list[dict[str, float]], labels: list[bool]) -> dict[str, float] | None:
    if len(set(labels)) < 2:
        return None
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1.0, max_iter=2000)
    model.fit([[r[name] for name in FEATURES] for r in rows], labels)
    weights = {name: float(w) for name, w in zip(FEATURES, model.coef_[0], strict=True)}
    weights["bias"] = float(model.intercept_[0])
    return weights


def choose_signal(
    decisions: Sequence[Decision], agrees: Sequence[bool], groups: Sequence[int]
) -> SignalChoice:
    """The signal that ranks right answers above wrong ones best on these calibration decisions."""
    rows, labels, row_groups, valid = [], [], [], []
    for decision, right, group in zip(decisions, agrees, groups, strict=True):
        features = _features(decision)
        if features is not None:
            rows.append(features)
            labels.append(bool(right))
            row_groups.append(group)
            valid.append(decision)
    scores: dict[str, float | None] = {}
    for name in SIGNALS:
        if name == "learned":
            continue
        values = [
            decision.confidence if name == "min" else confidence_of(name, row)
            for decision, row in zip(valid, rows, strict=True)
        ]
        scores[name] = auroc([(-1e9 if math.isinf(v) else v) for v in values], labels)
    # the learned combination, judged out of fold: each group's calls scored by weights fitted on the others
    out_of_fold = _out_of_fold(rows, labels, row_groups)
    scores["learned"] = auroc(out_of_fold, labels) if out_of_fold is not None else None
    base = scores.get("min")
    best, best_score = "min", base if base is not None else -1.0
    if min(sum(labels), len(labels) - sum(labels)) < MIN_EACH:  # too few to tell signals apart: the default
        return SignalChoice("min", None, _rounded(scores), len(rows))
    for name in SIGNALS:
        value = scores.get(name)
        if value is not None and value > best_score + (TIE if best == "min" else 0.0):
            best, best_score = name, value
    weights = _fit_weights(rows, labels) if best == "learned" else None
    return SignalChoice(best, weights, _rounded(scores), len(rows))


def _out_of_fold(rows: list[dict[str, float]], labels: list[bool], groups: list[int]) -> list[float] | None:
    """The learned combination's score of each row by weights fitted on the other groups' rows; None when
    there are fewer than two groups or a group's complement holds one label only."""
    if len(set(groups)) < 2:
        return None
    scores = [0.0] * len(rows)
    for group in sorted(set(groups)):
        train = [i for i, g in enumerate(groups) if g != group]
        weights = _fit_weights([rows[i] for i in train], [labels[i] for i in train])
        if weights is None:
            return None
        for i, g in enumerate(groups):
            if g == group:
                scores[i] = confidence_of("learned", rows[i], weights)
    return scores


def _rounded(scores: dict[str, float | None]) -> dict[str, float | None]:
    return {k: (round(v, 4) if v is not None else None) for k, v in scores.items()}


def apply_signal(decisions: Sequence[Decision], choice: SignalChoice) -> None:
    """Set each valid decision's confidence to the chosen signal's value (in place)."""
    if choice.name == "min":
        return
    for decision in decisions:
        features = _features(decision)
        if features is not None:
            decision.confidence = confidence_of(choice.name, features, choice.weights)


def apply_signal_out_of_fold(
    decisions: Sequence[Decision], agrees: Sequence[bool], groups: Sequence[int], choice: SignalChoice
) -> None:
    """`apply_signal` for the calibration decisions themselves. The learned combination's weights were fitted on
    these very calls, so scoring them with those weights ranks them in-sample, and a threshold calibrated on that
    ranking promises more than new calls get (on signals that carry nothing, an AUROC of about 0.61 in-sample
    against 0.46 out of fold: `tests/test_calibration.py`). Each call is scored instead by
    weights fitted on the other groups (workflows, folds); the served traffic gets `choice.weights`, fitted on
    all. Signals without fitted parameters are applied as they are."""
    if choice.name != "learned":
        apply_signal(decisions, choice)
        return
    valid = [(d, bool(a), g) for d, a, g in zip(decisions, agrees, groups, strict=True) if _features(d)]
    rows = [_features(d) or {} for d, _, _ in valid]
    scores = _out_of_fold(rows, [a for _, a, _ in valid], [g for _, _, g in valid])
    if scores is None:  # cannot happen after choose_signal picked `learned`, which needs the same fits
        apply_signal(decisions, choice)
        return
    for (decision, _, _), score in zip(valid, scores, strict=True):
        decision.confidence = score


def fold_decisions(
    specialist: Specialist,
    folds: int,
    calls_of_fold: Callable[[int], list[Exchange]],
    decide: Callable[[Any, list[Exchange], Decider, str], list[Decision]],
    make_runtime: Callable[[Specialist], Any],
    decider: Decider,
) -> tuple[list[Exchange], list[Decision], list[int]]:
    """The held-out calls of folds 1..K-1, each decided by its own fold model (adapter, gate, copied rules):
    (exchanges, decisions, fold of each). Fold 0 is the specialist's own validation part, decided by the
    caller. One fold model is loaded at a time."""
    from downsize.decide.gate import TaskGate
    from downsize.errors import ConfigError

    exchanges: list[Exchange] = []
    decisions: list[Decision] = []
    fold_ids: list[int] = []
    for fold in range(1, folds):
        path = fold_dir(specialist.adapter_path, fold)
        if not (path / "downsize.json").exists():
            raise ConfigError(
                f"specialist {specialist.id} was trained with cross_fit={folds} but its fold model {fold} is "
                f"missing ({path}): train it again"
            )
        calls = calls_of_fold(fold)
        if not calls:
            continue
        model = replace(specialist, adapter_path=str(path))
        runtime = make_runtime(model)
        fold_decider = replace(decider, gate=TaskGate.load(str(path)) if decider.gate is not None else None)
        decisions += decide(runtime, calls, fold_decider, f"cross-fit fold {fold}/{folds - 1}")
        exchanges += calls
        fold_ids += [fold] * len(calls)
        close = getattr(runtime, "close", None)
        if callable(close):
            close()
        del runtime
        gc.collect()
    return exchanges, decisions, fold_ids
