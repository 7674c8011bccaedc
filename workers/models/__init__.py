"""Model files seekq makes itself (tiny models for tests and demos)."""
