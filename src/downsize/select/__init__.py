"""Select: the candidate small models, their facts, and the hard filters that pick students for a task."""

from downsize.select.catalog import CATALOG, CatalogEntry, find_entry, footprint_gb, offline_source
from downsize.select.filters import Candidate, Hardware, TaskStats, select_candidates

__all__ = [
    "CATALOG",
    "Candidate",
    "CatalogEntry",
    "Hardware",
    "TaskStats",
    "find_entry",
    "footprint_gb",
    "offline_source",
    "select_candidates",
]
