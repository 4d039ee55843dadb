"""Readable task labels: the words that set a cluster apart (class-based TF-IDF) and its dominant tool.

c-TF-IDF (as BERTopic names it) treats each cluster's texts as one document: a term scores high when it is
frequent in the cluster and rare across clusters, which names what the cluster is about rather than what
every call shares ("user", "reservation" in an airline log).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

# Words that say nothing about a task in an agent's log: role markers, JSON and tool-call plumbing.
LOG_STOP_WORDS = frozenset(
    {
        "user",
        "assistant",
        "tool",
        "returned",
        "called",
        "true",
        "false",
        "null",
        "none",
        "uuid",
        "email",
        "url",
        "date",
        "time",
        "hex",
        "id",
        "num",
        "ll",
        "ve",
        "don",
        "isn",
        "doesn",
        "didn",
        "can",
        "could",
        "would",
        "please",
        "like",
        "want",
        "need",
    }
)


def class_terms(texts: Sequence[str], labels: Sequence[int], top_n: int = 3) -> dict[int, list[str]]:
    """The `top_n` c-TF-IDF terms of each label >= 0 (outliers, -1, count in the idf only)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

    label_ids = sorted({int(v) for v in labels})
    if not texts or not any(v >= 0 for v in label_ids):
        return {}
    joined: dict[int, list[str]] = {lab: [] for lab in label_ids}
    for text, lab in zip(texts, labels, strict=True):
        joined[int(lab)].append(text)
    docs = [" ".join(joined[lab]) for lab in label_ids]
    vectorizer = CountVectorizer(
        token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z_]+\b",
        stop_words=sorted(ENGLISH_STOP_WORDS | LOG_STOP_WORDS),
        lowercase=True,
    )
    try:
        counts = vectorizer.fit_transform(docs)
    except ValueError:  # no term left at all
        return {lab: [] for lab in label_ids if lab >= 0}
    terms = np.asarray(vectorizer.get_feature_names_out())
    tf = counts.toarray().astype(np.float64)
    words_per_class = tf.sum(axis=1, keepdims=True)
    tf_norm = tf / np.where(words_per_class == 0, 1.0, words_per_class)
    avg_words = float(words_per_class.mean()) or 1.0
    term_freq = tf.sum(axis=0)
    idf = np.log(1.0 + avg_words / np.where(term_freq == 0, 1.0, term_freq))
    scores = tf_norm * idf
    out: dict[int, list[str]] = {}
    for row, lab in enumerate(label_ids):
        if lab < 0:
            continue
        order = np.argsort(-scores[row], kind="stable")
        out[lab] = [str(terms[i]) for i in order[:top_n] if scores[row, i] > 0]
    return out


def dominant(values: Sequence[str | None]) -> tuple[str | None, float]:
    """The most common non-empty value and its share of all values (0 when none)."""
    counted = Counter(v for v in values if v)
    if not counted:
        return None, 0.0
    value, n = counted.most_common(1)[0]
    return value, n / len(values)


def task_label(kind: str, dominant_tool: str | None, terms: Sequence[str]) -> str:
    """`get_reservation_details: cancel refund booking` or `text: baggage allowance`."""
    head = dominant_tool if kind == "tool_call" and dominant_tool else kind
    return f"{head}: {' '.join(terms)}" if terms else head
