"""Cash collected by community committees (社区(村)居委会现金缴费, Hefei plan §五(一)).

A committee prints a numbered special receipt (专用票据) for each cash payment and must remit
the cash to the tax office within 30 days, or as soon as it holds 200,000 yuan. Two aggregates:

- ``CashReceipt``: one per receipt number, created once. Its id derives from the number, so the
  store's optimistic concurrency makes a reused number fail even when two payments race.
- ``CashCollector``: one per committee: cash received per receipt, remittances, the balance and
  the oldest receipt not yet remitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from ledger.domain.person import LEDGER_NAMESPACE
from ledger.domain.refusals import AmountMismatch, DuplicateReceipt
from ledger.domain.source import Source


def receipt_id(receipt_no: str) -> UUID:
    return uuid5(LEDGER_NAMESPACE, f"receipt/{receipt_no}")


def collector_id(collector: str) -> UUID:
    return uuid5(LEDGER_NAMESPACE, f"collector/{collector}")


class CashReceipt(Aggregate):
    """A special receipt number, used once province-wide."""

    @staticmethod
    def create_id(receipt_no: str, **_: object) -> UUID:
        return receipt_id(receipt_no)

    @event("Issued")
    def __init__(
        self, receipt_no: str, collector_id: str, person_key: str, coverage_year: int, amount_fen: int, source: Source
    ) -> None:
        self.receipt_no = receipt_no
        self.collector_id = collector_id
        self.person_key = person_key
        self.coverage_year = coverage_year
        self.amount_fen = amount_fen


@dataclass
class HeldReceipt:
    receipt_no: str
    amount_fen: int
    received_at: datetime


class CashCollector(Aggregate):
    """The cash a committee holds: received per receipt, remitted by voucher (税收缴款书)."""

    @staticmethod
    def create_id(collector: str, **_: object) -> UUID:
        return collector_id(collector)

    @event("Opened")
    def __init__(self, collector: str, source: Source) -> None:
        self.collector = collector
        self.held: dict[str, HeldReceipt] = {}
        self.received_fen = 0
        self.remitted_fen = 0
        self.seen: dict[str, str | None] = {}
        self.vouchers: dict[str, int] = {}
        """Each remittance voucher (税收缴款书) recorded, with its amount."""

    @property
    def balance_fen(self) -> int:
        return self.received_fen - self.remitted_fen

    def oldest_unremitted(self) -> HeldReceipt | None:
        return min(self.held.values(), key=lambda r: r.received_at, default=None)

    def remittance_overdue(self, on: date, *, days: int) -> bool:
        """Cash must reach the tax office within ``days`` days of collection (30 in Hefei)."""
        oldest = self.oldest_unremitted()
        return oldest is not None and (on - oldest.received_at.date()).days > days

    def receive_cash(self, *, receipt_no: str, amount_fen: int, source: Source) -> None:
        self._cash_received(receipt_no=receipt_no, amount_fen=amount_fen, source=source)

    @event("CashReceived")
    def _cash_received(self, receipt_no: str, amount_fen: int, source: Source) -> None:
        self.held[receipt_no] = HeldReceipt(receipt_no, amount_fen, source.effective_at)
        self.received_fen += amount_fen
        self.seen[source.fact_key] = source.digest

    def already_remitted(self, voucher_no: str, amount_fen: int) -> bool:
        """Whether this remittance was recorded before, under the same voucher: the tax office and
        the committee may both report it (two senders, two ``msg_id``s), and it counts once.
        Raises ``DuplicateReceipt`` when the voucher was recorded with another amount."""
        recorded = self.__dict__.setdefault("vouchers", {}).get(voucher_no)  # (older snapshots lack it)
        if recorded is None:
            return False
        if recorded != amount_fen:
            raise DuplicateReceipt(f"voucher {voucher_no} was recorded for {recorded} fen, not {amount_fen} fen")
        return True

    def remit(self, *, voucher_no: str, amount_fen: int, receipt_nos: tuple[str, ...], source: Source) -> None:
        """A remittance to the tax office. With receipt numbers, they must be held and add up to
        the amount; without, the oldest receipts are remitted first and must add up exactly."""
        if receipt_nos:
            missing = [n for n in receipt_nos if n not in self.held]
            if missing:
                raise AmountMismatch(f"receipts not held by {self.collector}: {', '.join(missing)}")
            chosen = list(dict.fromkeys(receipt_nos))  # a receipt named twice is remitted once
        else:
            chosen, total = [], 0
            for held in sorted(self.held.values(), key=lambda r: r.received_at):
                if total >= amount_fen:
                    break
                chosen.append(held.receipt_no)
                total += held.amount_fen
        total = sum(self.held[n].amount_fen for n in chosen)
        if total != amount_fen:
            raise AmountMismatch(
                f"remitted {amount_fen} fen, the receipts add up to {total} fen (balance {self.balance_fen} fen)"
            )
        self._cash_remitted(voucher_no=voucher_no, amount_fen=amount_fen, receipt_nos=tuple(chosen), source=source)

    @event("CashRemitted")
    def _cash_remitted(self, voucher_no: str, amount_fen: int, receipt_nos: tuple[str, ...], source: Source) -> None:
        for number in receipt_nos:
            self.held.pop(number, None)
        self.remitted_fen += amount_fen
        self.seen[source.fact_key] = source.digest
        self.__dict__.setdefault("vouchers", {})[voucher_no] = amount_fen
