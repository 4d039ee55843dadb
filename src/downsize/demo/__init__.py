"""The embedded default: gpt-4o's tau-airline logs, a CPU-trained specialist, and a replay through the gateway."""
