"""Clusters of embeddings inside one signature: HDBSCAN from scikit-learn (k-means as an option).

Why these steps: HDBSCAN finds however many dense groups there are and leaves the rest as outliers,
which suits logs where the number of tasks is unknown. Its density estimates degrade in 384
dimensions, so the unit vectors are first projected by PCA (cheap, deterministic, no extra package)
and re-normalised. Leaf selection keeps fine clusters (a task is narrow by design); the minimum task
size grows with the square root of the signature's volume, so that a bigger log does not shatter
into ever more leaves, while new tasks can still appear in it. Outliers close enough to a cluster's centroid (cosine in the full embedding
space) then join it: an outlier should be a call unlike any task, not merely one in a sparse region.
Last, a few k-means steps started from the HDBSCAN centroids move boundary points to the task they
are closest to in the full space, which PCA and density estimates blur.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from downsize.discover.config import DiscoverConfig
from downsize.discover.embed import normalize_rows
from downsize.errors import ConfigError


@dataclass
class Clustering:
    """Cluster labels (0.. by size, -1 outlier) and each point's membership confidence in [0, 1]."""

    labels: np.ndarray
    confidence: np.ndarray

    @property
    def n_clusters(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) and self.labels.max() >= 0 else 0


def reduce_embeddings(x: np.ndarray, dims: int, seed: int = 0) -> np.ndarray:
    """PCA to `dims` dimensions, rows re-normalised (euclidean distance then tracks cosine)."""
    from sklearn.decomposition import PCA

    k = min(dims, x.shape[1], x.shape[0] - 1)
    if k < 2 or k >= x.shape[1]:
        return x
    return normalize_rows(PCA(n_components=k, random_state=seed).fit_transform(x))


def centroids(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unit-length mean vector of each cluster 0..k-1."""
    k = int(labels.max()) + 1 if len(labels) else 0
    out = np.zeros((k, x.shape[1]), dtype=np.float32)
    for c in range(k):
        out[c] = x[labels == c].mean(axis=0)
    return normalize_rows(out)


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Relabel clusters 0.. in decreasing size (ties by first appearance); -1 stays."""
    kept = labels[labels >= 0]
    if not len(kept):
        return labels
    ids, counts = np.unique(kept, return_counts=True)
    order = ids[np.argsort(-counts, kind="stable")]
    mapping = {int(old): new for new, old in enumerate(order)}
    return np.array([mapping.get(int(v), -1) for v in labels], dtype=np.int64)


def min_task_size(n: int, config: DiscoverConfig) -> int:
    """The fewest calls a cluster of a signature with `n` calls may have."""
    return max(config.min_cluster_size, round(config.min_cluster_growth * math.sqrt(n)))


def _hdbscan(x: np.ndarray, config: DiscoverConfig) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import HDBSCAN

    points = reduce_embeddings(x, config.reduce_dims, config.seed) if config.reduce == "pca" else x
    size = min_task_size(len(x), config)
    model = HDBSCAN(
        min_cluster_size=size,
        min_samples=min(config.min_samples, size) if config.min_samples else None,
        cluster_selection_method=config.cluster_selection_method,
        copy=True,
    )
    model.fit(points.astype(np.float64))
    return np.asarray(model.labels_, dtype=np.int64), np.asarray(model.probabilities_, dtype=np.float32)


def _kmeans(x: np.ndarray, config: DiscoverConfig) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import KMeans

    k = config.n_clusters or max(1, round(math.sqrt(len(x) / 2)))
    k = min(k, len(x))
    model = KMeans(n_clusters=k, n_init=3, random_state=config.seed)
    labels = np.asarray(model.fit_predict(x), dtype=np.int64)
    return labels, np.ones(len(x), dtype=np.float32)


def cluster_embeddings(x: np.ndarray, config: DiscoverConfig) -> Clustering:
    """Cluster unit-length embeddings; a group too small to split is one cluster, one smaller still none."""
    n = len(x)
    if n < config.min_cluster_size:  # fewer calls than a task needs: outliers
        return Clustering(np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.float32))
    if config.algorithm == "kmeans":
        if config.n_clusters is None and n < 2 * config.min_cluster_size:
            return Clustering(np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.float32))
        labels, conf = _kmeans(x, config)
    elif config.algorithm == "hdbscan":
        if n < 2 * config.min_cluster_size:
            return Clustering(np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.float32))
        labels, conf = _hdbscan(x, config)
    else:
        raise ConfigError(f"unknown clustering algorithm {config.algorithm!r}: use hdbscan or kmeans")
    labels = _by_size(labels)
    if (labels < 0).all():  # no density structure at all: one task rather than none
        return Clustering(np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.float32))
    if config.reassign_outliers is not None:
        labels, conf = reassign_outliers(x, labels, conf, config.reassign_outliers)
    if config.algorithm == "hdbscan" and config.refine_steps:
        labels = refine(x, labels, config.refine_steps, config.min_cluster_size, config.reassign_outliers)
    members = labels >= 0
    if not members.any():
        return Clustering(labels, np.zeros(n, dtype=np.float32))
    cents = centroids(x, labels)
    cosine = (x * cents[np.maximum(labels, 0)]).sum(axis=1)
    return Clustering(labels, np.where(members, np.clip(cosine, 0.0, 1.0), 0.0).astype(np.float32))


def refine(
    x: np.ndarray, labels: np.ndarray, steps: int, min_size: int, min_cosine: float | None
) -> np.ndarray:
    """k-means steps over the clustered points, started from their clusters' centroids.

    A cluster that shrinks below `min_size` is dissolved: its points join the nearest remaining centroid
    when within `min_cosine` (any, when None), else become outliers.
    """
    from sklearn.cluster import KMeans

    members = np.flatnonzero(labels >= 0)
    k = int(labels.max()) + 1
    if k < 2 or len(members) <= k:
        return labels
    init = centroids(x[members], labels[members])
    model = KMeans(n_clusters=k, init=init, n_init=1, max_iter=steps)
    out = labels.copy()
    out[members] = model.fit_predict(x[members])
    ids, counts = np.unique(out[members], return_counts=True)
    small = ids[counts < min_size]
    if len(small) and len(small) < len(ids):
        out[np.isin(out, small)] = -1
        out = _by_size(out)
        out, _ = reassign_outliers(x, out, np.zeros(len(out), dtype=np.float32), min_cosine or -1.0)
        if min_cosine is None:
            out[labels < 0] = -1  # outliers stay outliers when nothing is reassigned
    return _by_size(out)


def reassign_outliers(
    x: np.ndarray, labels: np.ndarray, confidence: np.ndarray, min_cosine: float
) -> tuple[np.ndarray, np.ndarray]:
    """Outliers whose nearest centroid is at least `min_cosine` away join that cluster (confidence: the cosine)."""
    out = labels < 0
    labels, confidence = labels.copy(), confidence.copy()
    if not out.any() or labels.max() < 0:
        return labels, confidence
    cents = centroids(x, labels)
    sims = x[out] @ cents.T
    best = sims.argmax(axis=1)
    best_sim = sims[np.arange(len(best)), best]
    join = best_sim >= min_cosine
    idx = np.flatnonzero(out)
    labels[idx[join]] = best[join]
    confidence[idx] = np.where(join, np.clip(best_sim, 0.0, 1.0), 0.0)
    return labels, confidence
