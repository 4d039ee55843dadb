"""The store: every exchange, specialist and route decision, over SQLAlchemy Core."""

from downsize.store.store import Store

__all__ = ["Store"]
