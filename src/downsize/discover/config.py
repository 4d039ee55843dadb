"""`DiscoverConfig`: how logged calls are grouped into recurring tasks (to move into downsize.config later)."""

from __future__ import annotations

from dataclasses import dataclass, field

from downsize.errors import ConfigError

EMBEDDERS = ("minilm", "lsa")
ALGORITHMS = ("hdbscan", "kmeans")
REDUCERS = ("pca", "none")
SELECTION_METHODS = ("eom", "leaf")
KINDS = ("tool_call", "json", "text")


@dataclass
class DiscoverConfig:
    """Task discovery: structural signature first, then clusters of what varies inside each signature.

    The clustering defaults are the best by NMI on CLINC150's validation split, averaged over 10, 15 and 20
    utterances per intent so that the choice holds as the log grows (see docs/log.md): PCA to 32
    dimensions; HDBSCAN with leaf selection, min_samples 1 and a minimum task size of 0.12 x sqrt(the
    signature's calls), at least 5; outliers within cosine 0.3 of a centroid joined to it; then ten
    k-means steps from the HDBSCAN centroids. See benchmarks/bench_discover.py (`--tune`).
    """

    source: str | None = None  # only exchanges of this source (gateway, openai-jsonl, ...)
    # only this split: dev (default: the test split's answers must not shape the tasks or the assigner that
    # scopes evaluation), test, or all
    split: str | None = "dev"
    response_kinds: list[str] = field(default_factory=lambda: list(KINDS))  # errors and empties never
    limit: int | None = None  # at most this many exchanges (quick looks)
    # -- the signature ------------------------------------------------------------------------------
    call_site: bool = True  # the agent and X-Downsize-Task headers are part of the signature
    template_similarity: float = 0.9  # masked system prompts this alike (word diff ratio) are one template
    # -- what varies: the recent conversation, newest turn first (the embedder truncates the tail) ---
    max_messages: int = 3
    max_chars: int = 600  # per turn, head and tail kept
    # -- embeddings and clustering ------------------------------------------------------------------
    embedder: str = "minilm"  # minilm (all-MiniLM-L6-v2, offline) | lsa (TF-IDF + SVD, no torch)
    batch_size: int = 64
    algorithm: str = "hdbscan"  # hdbscan | kmeans
    reduce: str = "pca"  # pca | none: before HDBSCAN (density estimates degrade in 384 dimensions)
    reduce_dims: int = 32
    min_cluster_size: int = 5  # the fewest calls a task has
    min_cluster_growth: float = 0.12  # and at least this x sqrt(the signature's calls): grows with the log
    min_samples: int | None = 1  # HDBSCAN's; None means the minimum task size
    cluster_selection_method: str = "leaf"  # eom | leaf (leaf: many fine clusters, as tasks should be)
    n_clusters: int | None = None  # k-means only; None means sqrt(n / 2)
    reassign_outliers: float | None = 0.3  # cosine to the nearest centroid to join it; None keeps outliers
    refine_steps: int = 10  # k-means steps from the HDBSCAN centroids (sharper boundaries); 0: none
    seed: int = 0
    # -- labels, cost and suitability ---------------------------------------------------------------
    label_terms: int = 3
    # USD per million prompt tokens when no cost was logged and the model has no price in `prices.toml`
    price_input_per_mtok: float = 2.5  # (gpt-4o's)
    price_output_per_mtok: float = 10.0
    text_regularity_weight: float = 0.5  # free text is harder to check than a call or JSON
    # -- the assigner -------------------------------------------------------------------------------
    assign_min_similarity: float | None = None  # None: the 1st percentile of the run's own similarities
    assign_max_features: int = 30_000
    map: bool = True  # write the 2-D map of the clusters under $DOWNSIZE_HOME/reports/
    # -- stable keys (`discover/stable.py`) ---------------------------------------------------------
    keep_keys: bool = True  # a cluster continuing a task of the previous finished run keeps that task's key

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("embedder", self.embedder, EMBEDDERS),
            ("algorithm", self.algorithm, ALGORITHMS),
            ("reduce", self.reduce, REDUCERS),
            ("cluster_selection_method", self.cluster_selection_method, SELECTION_METHODS),
        ):
            if value not in allowed:
                raise ConfigError(f"discover {name} must be one of {', '.join(allowed)}, not {value!r}")
        bad = [k for k in self.response_kinds if k not in KINDS]
        if bad or not self.response_kinds:
            raise ConfigError(f"response_kinds must be a non-empty subset of {', '.join(KINDS)}, not {bad}")
        if self.min_cluster_size < 2:
            raise ConfigError(f"min_cluster_size must be at least 2, not {self.min_cluster_size}")
        if self.min_samples is not None and self.min_samples < 1:
            raise ConfigError(f"min_samples must be at least 1 (or null), not {self.min_samples}")
        if self.n_clusters is not None and self.n_clusters < 1:
            raise ConfigError(f"n_clusters must be at least 1 (or null for a default), not {self.n_clusters}")
        if self.min_cluster_growth < 0 or self.refine_steps < 0:
            raise ConfigError(
                f"min_cluster_growth and refine_steps must be >= 0, not "
                f"{self.min_cluster_growth} and {self.refine_steps}"
            )
        if self.reduce_dims < 2:
            raise ConfigError(f"reduce_dims must be at least 2, not {self.reduce_dims}")
        if not 0.0 < self.template_similarity <= 1.0:
            raise ConfigError(f"template_similarity must be in (0, 1], not {self.template_similarity}")
        if self.reassign_outliers is not None and not -1.0 <= self.reassign_outliers <= 1.0:
            raise ConfigError(
                f"reassign_outliers is a cosine in [-1, 1] (or null), not {self.reassign_outliers}"
            )
        if self.assign_min_similarity is not None and not 0.0 <= self.assign_min_similarity <= 1.0:
            raise ConfigError(
                f"assign_min_similarity must be in [0, 1] (or null), not {self.assign_min_similarity}"
            )
        if self.max_messages < 1 or self.max_chars < 20 or self.batch_size < 1:
            raise ConfigError("max_messages and batch_size must be >= 1, max_chars >= 20")
