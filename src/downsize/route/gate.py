"""The task gate: a fast linear classifier that decides, from the recent conversation alone, what the
teacher does next — call a particular tool, or answer in text.

Why: a 135M student trained for minutes on a CPU is a fair argument-filler but a poor judge of *whether*
to call a tool and *which*; that decision rides on a single token and collapses under class imbalance.
A TF-IDF + logistic-regression gate trains in seconds on every logged call (text replies included),
and its probability is a confidence that calibrates cleanly. The specialist then generates only the
arguments of the tool the gate chose. scikit-learn only: no torch in the serving path.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from downsize.errors import ConfigError
from downsize.prompting import TEXT_REPLY, gate_text

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

    def __init__(self, vectorizer: Any, classifier: Any) -> None:
        self.vectorizer = vectorizer
        self.classifier = classifier
        self.labels: list[str] = [str(c) for c in classifier.classes_]

    @classmethod
    def fit(cls, texts: list[str], labels: list[str], seed: int = 0, c: float = 4.0) -> TaskGate:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        if len(set(labels)) < 2:
            raise ConfigError("the task gate needs at least two kinds of next action in its training data")
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=50_000)
        features = vectorizer.fit_transform(texts)
        classifier = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        classifier.fit(features, labels)
        return cls(vectorizer, classifier)

    def decide_texts(self, texts: list[str]) -> list[GateDecision]:
        probs = self.classifier.predict_proba(self.vectorizer.transform(texts))
        out = []
        for row in probs:
            best = int(row.argmax())
            out.append(GateDecision(self.labels[best], float(row[best])))
        return out

    def decide(self, messages: list[dict[str, Any]]) -> GateDecision:
        return self.decide_texts([gate_text(messages)])[0]

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / GATE_FILE
        path.write_bytes(pickle.dumps({"vectorizer": self.vectorizer, "classifier": self.classifier}))
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
        return cls(data["vectorizer"], data["classifier"])


def gate_label(response_kind: str | None, tool_names: list[str]) -> str:
    """The gate's training label of a logged call."""
    return tool_names[0] if response_kind == "tool_call" and tool_names else TEXT_REPLY
