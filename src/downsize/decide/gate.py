"""The task gate: a fast linear classifier that decides, from the recent conversation alone, what the
teacher does next — call a particular tool, or answer in text.

Why: a 135M student trained for minutes on a CPU is a fair argument-filler but a poor judge of *whether*
to call a tool and *which*; that decision rides on a single token and collapses under class imbalance.
A TF-IDF + logistic-regression gate trains in seconds on every logged call (text replies included),
and its probability is a confidence that calibrates cleanly. The specialist then generates only the
arguments of the tool the gate chose. scikit-learn only: no torch in the serving path.

Its input (`gate_input`) is the last turns' text plus structural signals (who spoke last, the previous
action, tools called so far, identifier shapes new to the conversation): on the shipped airline agent's logs the signals
raise next-action accuracy on unseen workflows from 0.69 to 0.75 (docs/log.md, 2026-12-01).
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from downsize.errors import ConfigError
from downsize.prompting import SIGNALS, TEXT_REPLY, gate_input

GATE_FILE = "gate.pkl"


@dataclass
class GateDecision:
    label: str  # a tool name, or TEXT_REPLY
    probability: float

    @property
    def log_probability(self) -> float:
        return math.log(self.probability) if self.probability > 0 else -math.inf


class TaskGate:
    """Predicts the teacher's next action (tool name or text) from a request's messages."""

    def __init__(self, vectorizer: Any, classifier: Any, signals: Any = None) -> None:
        self.vectorizer = vectorizer
        self.signals = signals  # binary bag of structural signals; None for gates saved before them
        self.classifier = classifier
        self.labels: list[str] = [str(c) for c in classifier.classes_]

    @classmethod
    def fit(cls, texts: list[str], labels: list[str], seed: int = 0, c: float = 4.0) -> TaskGate:
        """Fit on `gate_input(messages)` strings (plain text without signals works too) and next-action labels."""
        from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        if len(set(labels)) < 2:
            raise ConfigError("the task gate needs at least two kinds of next action in its training data")
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=50_000)
        signals: Any = CountVectorizer(token_pattern=r"\S+", lowercase=False, binary=True)
        text_part, signal_part = _split(texts)
        vectorizer.fit(text_part)
        if any(signal_part):
            signals.fit(signal_part)
        else:
            signals = None
        classifier = LogisticRegression(C=c, max_iter=5000, random_state=seed)
        classifier.fit(_features(vectorizer, signals, texts), labels)
        return cls(vectorizer, classifier, signals)

    def decide_texts(self, texts: list[str]) -> list[GateDecision]:
        if not texts:
            return []
        probs = self.classifier.predict_proba(_features(self.vectorizer, self.signals, texts))
        out = []
        for row in probs:
            best = int(row.argmax())
            out.append(GateDecision(self.labels[best], float(row[best])))
        return out

    def decide(self, messages: list[dict[str, Any]]) -> GateDecision:
        return self.decide_texts([gate_input(messages)])[0]

    def decide_many(self, conversations: list[list[dict[str, Any]]]) -> list[GateDecision]:
        return self.decide_texts([gate_input(m) for m in conversations])

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / GATE_FILE
        path.write_bytes(
            pickle.dumps(
                {"vectorizer": self.vectorizer, "classifier": self.classifier, "signals": self.signals}
            )
        )
        return path

    @classmethod
    def load(cls, folder: str | Path) -> TaskGate | None:
        """The gate saved beside an adapter, or None when the specialist was trained without one.

        The file is a pickle that downsize itself wrote into the adapter folder: load only your own artifacts.
        """
        path = Path(folder) / GATE_FILE
        if not path.is_file():
            return None
        data = pickle.loads(path.read_bytes())  # noqa: S301 - our own artifact, see docstring
        return cls(data["vectorizer"], data["classifier"], data.get("signals"))


def _features(vectorizer: Any, signals: Any, texts: list[str]) -> Any:
    """TF-IDF of the text part, beside the binary bag of signals (when the gate has them)."""
    from scipy.sparse import hstack

    text_part, signal_part = _split(texts)
    features = vectorizer.transform(text_part)
    if signals is None:
        return features
    return hstack([features, signals.transform(signal_part)]).tocsr()


def _split(texts: list[str]) -> tuple[list[str], list[str]]:
    """(text part, signals part) of each gate input."""
    pairs = [t.partition(SIGNALS) for t in texts]
    return [p[0] for p in pairs], [p[2] for p in pairs]


def gate_label(response_kind: str | None, tool_names: list[str]) -> str:
    """The gate's training label of a logged call."""
    return tool_names[0] if response_kind == "tool_call" and tool_names else TEXT_REPLY
