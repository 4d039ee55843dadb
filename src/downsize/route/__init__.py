"""Routing: decide, per request, between a live specialist and the upstream LLM. No HTTP, no torch."""

from downsize.route.router import RouteOutcome, Router

__all__ = ["RouteOutcome", "Router"]
