"""Every subject, stream and bucket name of the contract, in one place.

The LEDGER stream's own name and prefix can be changed per deployment (``NATS_STREAM``,
``NATS_SUBJECT_PREFIX``); the defaults are here.
"""

from __future__ import annotations

from typing import Final

# Upstream facts, as sent (the stream deduplicates on Nats-Msg-Id = msg_id).
UPSTREAM_STREAM: Final = "UPSTREAM"
UPSTREAM_PREFIX: Final = "upstream"
UPSTREAM_SUBJECTS: Final = f"{UPSTREAM_PREFIX}.>"

# The ledger's own stream: events, rejections, parkings and the ingestion's tracking records.
LEDGER_STREAM: Final = "LEDGER"
LEDGER_PREFIX: Final = "ledger"
LEDGER_FOLLOWER: Final = "Ledger"
"""The name the ingestion's tracking subject gives the follower: ``ledger.trk.Ledger.UPSTREAM``."""
CHECKPOINTS_SUFFIX: Final = "_CHECKPOINTS"
"""The signed checkpoints of LEDGER live in ``LEDGER_CHECKPOINTS``."""

# Rejections, derived by the server from LEDGER's ``ledger.rej.<reason>``.
REJECTED_STREAM: Final = "REJECTED"
REJECTED_PREFIX: Final = "ledger.rejected"

# Downstream: the latest coverage per person and the changes, per district.
COVERAGE_BUCKET: Final = "coverage"
COVERAGE_STREAM: Final = "COVERAGE"
CHANGED_PREFIX: Final = "coverage.changed"
COVERAGE_QUERY: Final = "coverage.query"
COVERAGE_QUERY_GROUP: Final = "ledger-coverage-query"

# Operations.
WRITER_BUCKET: Final = "ledger_writer"
WRITER_KEY: Final = "ingest"
PARKED_RETRY_SUBJECT: Final = "ledger.admin.parked.retry"

# Headers the ledger sets on what it publishes downstream.
LEDGER_SEQ_HEADER: Final = "Ledger-Seq"
"""The ledger sequence of the change (KV and COVERAGE messages)."""
LEDGER_SOURCE_HEADER: Final = "Ledger-Source"
"""The ledger stream a change comes from (``<stream>@<created>``)."""


def checkpoints_stream(ledger_stream: str = LEDGER_STREAM) -> str:
    return f"{ledger_stream}{CHECKPOINTS_SUFFIX}"


def changed_subject(district: str) -> str:
    return f"{CHANGED_PREFIX}.{district}"
