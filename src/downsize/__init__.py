"""downsize: turn an agent's LLM calls into routed specialist small language models."""

__version__ = "0.1.0"
