"""coverage.query latency benchmark (docstring to come)."""
