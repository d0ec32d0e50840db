"""The ledger's event store: an ``eventsourcing`` persistence module on NATS JetStream.

Select it with ``PERSISTENCE_MODULE=ledger.jetstream`` and ``NATS_URL``; see ``factory`` for
every setting.
"""

from ledger.jetstream.factory import JetStreamFactory

__all__ = ["JetStreamFactory"]
