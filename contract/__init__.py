"""The contract other systems rely on: wire messages, the coverage reply, the rejection, and
the names of subjects, streams and buckets (``docs/contract.md``).

This package sits beneath ``consumers/`` and ``projections/`` and above ``ledger/``: it knows
the domain's refusal reasons and time zone, and nothing about NATS clients or storage.
"""
