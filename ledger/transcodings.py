"""Transcodings for the values ledger events carry (dates, tuples, the event's ``Source``).

Registered by the ``Ledger`` application with whatever transcoder the store uses; the
``MsgspecTranscoder`` builds in ``TupleAsList`` and its factory registers ``DateAsISO``.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from eventsourcing.persistence import Transcoding

from ledger.domain.source import Source


class TupleAsList(Transcoding):
    """Represents tuples as lists. Built into ``MsgspecTranscoder``.

    Register it with a ``JSONTranscoder`` to let that read tuples written by
    ``MsgspecTranscoder``.
    """

    type = tuple
    name = "tuple_as_list"

    def encode(self, obj: tuple[Any, ...]) -> list[Any]:
        return list(obj)

    def decode(self, data: list[Any]) -> tuple[Any, ...]:
        return tuple(data)


class DateAsISO(Transcoding):
    """Represents :class:`datetime.date` objects as ISO 8601 strings (``YYYY-MM-DD``)."""

    type = date
    name = "date_iso"

    def encode(self, obj: date) -> str:
        return obj.isoformat()

    def decode(self, data: str) -> date:
        return date.fromisoformat(data)


class SourceAsDict(Transcoding):
    """Represents an event's ``Source`` as a dict of its fields."""

    type = Source
    name = "ledger_source"

    def encode(self, obj: Source) -> dict[str, Any]:
        return obj.as_dict()

    def decode(self, data: dict[str, Any]) -> Source:
        return Source(**data)


LEDGER_TRANSCODINGS: tuple[Transcoding, ...] = (DateAsISO(), TupleAsList(), SourceAsDict())
"""Everything a ledger event needs beyond the library's UUID, Decimal and datetime."""
