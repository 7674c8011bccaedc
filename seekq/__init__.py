"""seekq: the composition root (CLI, embedded all-in-one stack, benchmarks)."""

__version__ = "0.1.0"
