"""Routing: decide, per request, between a live specialist and the upstream LLM. No HTTP, no torch."""

from downsize.route.router import Generation, RouteOutcome, Router, SpecialistRuntime

__all__ = ["Generation", "RouteOutcome", "Router", "SpecialistRuntime"]
