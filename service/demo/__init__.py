"""Demonstration data: a simulated enrollment season sent through the upstream contract."""
