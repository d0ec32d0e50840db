"""Benchmarks of the enrollment ledger (run as ``python -m bench.<name>``)."""
