"""The people the ledger knows and the requests asked about them, all built before any clock.

``build(people, requests)``:

- ``people`` distinct ID numbers (``bench.ingest.population.distinct_id_numbers``: Hefei
  districts, born 1940–2015); each requests a ``resident`` enrollment for coverage year 2022
  between 2021-09-01 and 2021-12-28 (the concentrated period), on ``wechat`` or
  ``community_qr``; all but ``UNPAID_SHARE`` of them then pay the full contribution within three
  days (so they are ``enrolled``, benefits from 2022-01-01); the others stay
  ``awaiting_payment``;
- ``requests`` ``coverage.query`` requests ``{"id_number", "date"}``: a known person drawn
  uniformly (with replacement) except ``UNKNOWN_SHARE`` of valid ID numbers the ledger has never
  seen (answer ``not_enrolled``); the date is in 2022 for ``IN_YEAR_SHARE`` of them, otherwise in
  the second half of 2021 or the first half of 2023 (no enrollment covers it: ``not_enrolled``).
  No ``as_of`` (that path folds the person's whole history from the store; not measured here).

``populate(ledger, population)`` records the people through the ``Ledger``'s own methods
(``request_enrollment``, ``receive_payment``) inside ``ledger.batch()``, as ingestion does, so the
events are exactly what ``ledger serve`` would have recorded from upstream messages.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import msgspec

from bench.ingest.population import CST, HEFEI_DISTRICTS, LAST_PAYMENT, LAST_REQUEST, SEASON_START, distinct_id_numbers
from ledger.application import Actor, Ledger
from ledger.commands import ReceivePayment, RequestEnrollment
from ledger.domain.policy import DEFAULT_POLICY, load_policy

COVERAGE_YEAR = 2022
UNPAID_SHARE = 0.08
"""People who request an enrollment but never pay (``awaiting_payment``)."""
UNKNOWN_SHARE = 0.02
"""Requests about valid ID numbers the ledger has never seen."""
IN_YEAR_SHARE = 0.80
"""Requests dated inside the coverage year; the rest fall before or after it."""
CHANNELS = ("wechat", "community_qr")
PEOPLE_PER_BATCH = 200
"""People applied per ``ledger.batch()`` (it saves itself whenever it nears the atomic limit)."""

_encode = msgspec.json.encode


@dataclass(frozen=True, slots=True)
class Person:
    id_number: str
    district: str
    channel: str
    requested: datetime
    paid: datetime | None


@dataclass
class Population:
    people: list[Person]
    unknown: list[str]
    requests: list[bytes]
    """The request bodies, in the order they are sent."""
    asked: list[int]
    """For each request, the index of the person asked about (-1: unknown to the ledger)."""
    first_asks: int = 0
    """Requests that are the first one about their person (the others ask again)."""
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def paid(self) -> int:
        return sum(p.paid is not None for p in self.people)

    def first_ask(self) -> list[bool]:
        """For each request: whether it is the first about its person (unknown people: False)."""
        seen: set[int] = set()
        first = []
        for who in self.asked:
            first.append(who >= 0 and who not in seen)
            seen.add(who)
        return first

    def describe(self) -> str:
        unknown = sum(1 for who in self.asked if who < 0)
        asked = len({who for who in self.asked if who >= 0})
        return (
            f"{len(self.people):,} people enrolled for {COVERAGE_YEAR} ({self.paid:,} paid, "
            f"{len(self.people) - self.paid:,} awaiting payment); {len(self.requests):,} requests about "
            f"{asked:,} of them ({unknown:,} about people the ledger has never seen), "
            f"{100 * IN_YEAR_SHARE:.0f}% dated in {COVERAGE_YEAR}"
        )


def _moment(rng: random.Random, start: datetime, end: datetime) -> datetime:
    return start + timedelta(seconds=rng.randrange(int((end - start).total_seconds())))


def _day(rng: random.Random, first: date, last: date) -> date:
    return date.fromordinal(first.toordinal() + rng.randrange(last.toordinal() - first.toordinal() + 1))


def build(people: int, requests: int, seed: int = 2022) -> Population:
    rng = random.Random(seed)
    pairs = distinct_id_numbers(people + max(1, round(people * UNKNOWN_SHARE)), rng)
    known, unknown = pairs[:people], [number for number, _ in pairs[people:]]
    unpaid = set(rng.sample(range(people), round(people * UNPAID_SHARE)))
    persons = []
    for i, (id_number, _code) in enumerate(known):
        requested = _moment(rng, SEASON_START, LAST_REQUEST)
        paid = None if i in unpaid else min(requested + timedelta(seconds=rng.randrange(120, 3 * 86_400)), LAST_PAYMENT)
        persons.append(Person(id_number, HEFEI_DISTRICTS[i % len(HEFEI_DISTRICTS)], rng.choice(CHANNELS), requested, paid))

    bodies, asked = [], []
    for _ in range(requests):
        if rng.random() < UNKNOWN_SHARE:
            who, id_number = -1, rng.choice(unknown)
        else:
            who = rng.randrange(people)
            id_number = persons[who].id_number
        if rng.random() < IN_YEAR_SHARE:
            day = _day(rng, date(COVERAGE_YEAR, 1, 1), date(COVERAGE_YEAR, 12, 31))
        elif rng.random() < 0.5:
            day = _day(rng, date(COVERAGE_YEAR - 1, 7, 1), date(COVERAGE_YEAR - 1, 12, 31))
        else:
            day = _day(rng, date(COVERAGE_YEAR + 1, 1, 1), date(COVERAGE_YEAR + 1, 6, 30))
        bodies.append(_encode({"id_number": id_number, "date": day.isoformat()}))
        asked.append(who)
    population = Population(persons, unknown, bodies, asked)
    population.first_asks = sum(population.first_ask())
    return population


def probe_request(population: Population) -> bytes:
    """A request about the first paid person, dated in the coverage year (readiness probe)."""
    person = next(p for p in population.people if p.paid is not None)
    return _encode({"id_number": person.id_number, "date": f"{COVERAGE_YEAR}-06-01"})


def _operator(person: Person) -> str | None:
    return None if person.channel == "wechat" else f"op-{person.district}-00"


def populate(ledger: Ledger, population: Population, log: Callable[[str], None] | None = None) -> int:
    """Record every person's enrollment (and payment) through the ledger. Returns facts applied."""
    policy = load_policy(DEFAULT_POLICY)
    full_fen = policy.funding_year(COVERAGE_YEAR - 1).individual_contribution_fen
    facts = 0
    people = population.people
    for start in range(0, len(people), PEOPLE_PER_BATCH):
        chunk = people[start : start + PEOPLE_PER_BATCH]
        with ledger.batch(p.id_number for p in chunk):
            for i, p in enumerate(chunk, start=start):
                ledger.request_enrollment(RequestEnrollment(
                    msg_id=f"enr-{i:07d}", occurred_at=p.requested, id_number=p.id_number,
                    coverage_year=COVERAGE_YEAR, category="resident", channel=p.channel, district=p.district,
                ), Actor("enrollment", channel=p.channel, operator_id=_operator(p)))  # fmt: skip
                facts += 1
                ledger.flush_if_full()
                if p.paid is not None:
                    ledger.receive_payment(ReceivePayment(
                        msg_id=f"pay-{i:07d}", occurred_at=p.paid, id_number=p.id_number,
                        coverage_year=COVERAGE_YEAR, amount_fen=full_fen, channel=p.channel, paid_at=p.paid,
                        payer_account=f"wx-{i:012x}" if p.channel == "wechat" else None,
                    ), Actor("payment", channel=p.channel, operator_id=_operator(p)))  # fmt: skip
                    facts += 1
                    ledger.flush_if_full()
        if log is not None and (start // PEOPLE_PER_BATCH) % 10 == 9:
            log(f"  {start + len(chunk):,} of {len(people):,} people recorded")
    return facts


__all__ = ["CST", "Population", "build", "populate", "probe_request"]
