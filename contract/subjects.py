"""Every subject, stream and bucket name of the contract, in one place.

The LEDGER stream's own name and prefix can be changed per deployment (``NATS_STREAM``,
``NATS_SUBJECT_PREFIX``); the defaults are here.
"""

from __future__ import annotations

from typing import Final

from ledger.senders import SENDERS, UNATTRIBUTED

# Upstream facts. A sender publishes ``upstream.<noun>.<verb>`` in its own NATS account; its
# account's import delivers it to the ledger's account as ``upstream.<sender>.<noun>.<verb>``,
# stored in the sender's intake stream ``UPSTREAM_<SENDER>`` (which deduplicates on
# Nats-Msg-Id within the sender's messages only). A message published on the ledger's own
# account without a sender token (a server without accounts) lands in ``UPSTREAM_UNATTRIBUTED``.
# UPSTREAM, the ledger's one ordered intake, is derived by the server from all of them.
UPSTREAM_STREAM: Final = "UPSTREAM"
UPSTREAM_PREFIX: Final = "upstream"
UPSTREAM_SUBJECTS: Final = f"{UPSTREAM_PREFIX}.>"
UPSTREAM_SENDERS: Final = (*SENDERS, UNATTRIBUTED)
"""Every intake: one per sender account, and the unattributed one."""

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


def upstream_subject(fact: str, sender: str | None = None) -> str:
    """Where ``fact`` (``upstream.<noun>.<verb>``) from ``sender`` is stored in the ledger's
    account (``upstream.<sender>.<noun>.<verb>``); without a sender, ``fact`` itself."""
    if sender is None or sender == UNATTRIBUTED:
        return fact
    noun_verb = fact.split(".", 1)[1]
    return f"{UPSTREAM_PREFIX}.{sender}.{noun_verb}"


def split_upstream(subject: str) -> tuple[str | None, str]:
    """(sender, fact subject) of a subject on UPSTREAM: ``upstream.tax.payment.received`` →
    ("tax", "upstream.payment.received"); ``upstream.payment.received`` → (None, itself); a
    subject of any other shape → (None, itself), for the decoder to refuse."""
    tokens = subject.split(".")
    if len(tokens) == 4 and tokens[0] == UPSTREAM_PREFIX and tokens[1] in SENDERS:
        return tokens[1], f"{UPSTREAM_PREFIX}.{tokens[2]}.{tokens[3]}"
    return None, subject


def intake_stream(sender: str) -> str:
    """The stream holding what ``sender`` (or ``unattributed``) sent: ``UPSTREAM_<SENDER>``."""
    return f"{UPSTREAM_STREAM}_{sender.upper()}"


def intake_subjects(sender: str) -> str:
    """The subjects of ``sender``'s intake stream."""
    if sender == UNATTRIBUTED:
        return f"{UPSTREAM_PREFIX}.*.*"
    return f"{UPSTREAM_PREFIX}.{sender}.*.*"


def rejected_subject(reason: str, sender: str | None) -> str:
    """Where a rejection of ``sender``'s message is published: ``ledger.rejected.<reason>.<sender>``."""
    return f"{REJECTED_PREFIX}.{reason}.{sender or UNATTRIBUTED}"


def sender_rejected_stream(sender: str) -> str:
    """The stream a sender reads its own rejections from: ``REJECTED_<SENDER>``."""
    return f"{REJECTED_STREAM}_{sender.upper()}"


def checkpoints_stream(ledger_stream: str = LEDGER_STREAM) -> str:
    return f"{ledger_stream}{CHECKPOINTS_SUFFIX}"


def changed_subject(district: str) -> str:
    return f"{CHANGED_PREFIX}.{district}"
