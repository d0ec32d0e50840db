"""``coverage.query``: the request, and where the reply's shape comes from.

The reply is the domain's coverage answer (``ledger.domain.coverage_question.CoverageAnswer``),
field for field, with ``ledger_seq`` added: the last LEDGER event the answer had seen.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

import msgspec

from contract.messages import Documented, check_days


class CoverageRequest(Documented, frozen=True, kw_only=True):
    """A coverage question: ``as_of`` asks what the ledger knew at that recorded time."""

    id_number: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    date: date
    as_of: Annotated[datetime, msgspec.Meta(tz=True)] | None = None

    def __post_init__(self) -> None:
        check_days(self, ("date", "as_of"))  # the days upstream messages may carry, no others
