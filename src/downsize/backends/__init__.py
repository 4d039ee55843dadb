"""Where models are served: the OpenAI-compatible upstream client (and, later, local runtimes)."""
