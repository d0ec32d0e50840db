"""The synthetic population: contract messages for one enrollment season, built before any clock.

``build(n)`` budgets exactly ``n`` messages: P people each send an ``upstream.enrollment.requested``
and an ``upstream.payment.received``; S of them (about 10% of P) are first listed on a subsidy
roster (``upstream.subsidy.listed``), so ``2·P + S = n``. Everything is valid under the Hefei
policy (``deploy/policy/hefei.toml``), so each message should be recorded and none rejected:

- ID numbers from ``generate_id_number``, birth dates 1940–2015, division code one of the nine
  Hefei districts; all distinct (checked);
- enrollments: category ``resident``, coverage year 2022, requested between 2021-09-01 and
  2021-12-28 (the concentrated period), district spread over the nine codes, channel ``wechat``
  (60%), ``community_qr`` (25%) or ``community_cash`` (15%); community channels carry an operator;
- payments: the same channel, a few minutes to three days after the request (never after
  2021-12-31), of the amount owed: 32,000 fen, or for the subsidised the individual share the
  policy leaves them (dibao 90% → 3,200 fen, poverty_returned 80% → 6,400 fen, …). Cash payments
  carry a unique receipt number and the community collector's id (five collectors a district);
- subsidy listings: a partial-subsidy category (never a full one, which would enroll the person
  automatically and make the payment a rejection), one to ten days before the request.

The stream order is the timeline: all messages sorted by ``occurred_at`` (a roster entry before
its person's request, a payment after it, people interleaved as in a real season).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import msgspec

from ledger.domain.identity import generate_id_number
from ledger.domain.policy import DEFAULT_POLICY, load_policy

HEFEI_DISTRICTS = ("340102", "340103", "340104", "340111", "340121", "340122", "340123", "340124", "340181")
CHANNELS = (("wechat", 60), ("community_qr", 25), ("community_cash", 15))
SUBSIDY_SHARE = 0.10
"""About this share of people are listed on a roster before they enroll."""
PARTIAL_SUBSIDIES = (
    ("dibao", "civil_affairs"),
    ("low_income_elderly", "civil_affairs"),
    ("poverty_returned", "rural_revitalisation"),
    ("poverty_unstable", "rural_revitalisation"),
    ("monitored_low_income", "rural_revitalisation"),
)
COLLECTORS_PER_DISTRICT = 5
COVERAGE_YEAR = 2022
FUNDING_YEAR = COVERAGE_YEAR - 1
CST = timezone(timedelta(hours=8))
SEASON_START = datetime(2021, 9, 1, 8, 0, tzinfo=CST)
LAST_REQUEST = datetime(2021, 12, 28, 18, 0, tzinfo=CST)
LAST_PAYMENT = datetime(2021, 12, 31, 20, 0, tzinfo=CST)

_encode = msgspec.json.encode


@dataclass(frozen=True, slots=True)
class Message:
    subject: str
    msg_id: str
    data: bytes
    headers: dict[str, str]
    """``Nats-Msg-Id`` = ``msg_id``, as upstream publishers (and ``ledger publish``) set it."""


@dataclass
class Population:
    people: int
    subsidised: int
    messages: list[Message]
    by_subject: Counter[str] = field(default_factory=Counter)
    by_channel: Counter[str] = field(default_factory=Counter)
    by_subsidy: Counter[str] = field(default_factory=Counter)
    payload_bytes: int = 0

    def describe(self) -> str:
        subjects = ", ".join(f"{n:,} {s.removeprefix('upstream.')}" for s, n in self.by_subject.most_common())
        total = sum(self.by_channel.values())
        channels = ", ".join(f"{c} {100 * n / total:.0f}%" for c, n in self.by_channel.most_common())
        return (
            f"{len(self.messages):,} messages for {self.people:,} people ({subjects}); "
            f"channels {channels}; {self.payload_bytes / len(self.messages):.0f} bytes a message on average"
        )


def budget(n: int) -> tuple[int, int]:
    """(people, subsidised) with 2·people + subsidised = n and subsidised ≈ 10% of people."""
    people = round(n / (2 + SUBSIDY_SHARE))
    subsidised = n - 2 * people
    if subsidised < 0:  # tiny n
        people, subsidised = n // 2, n % 2
    return people, subsidised


def distinct_id_numbers(count: int, rng: random.Random) -> list[tuple[str, str]]:
    """``count`` distinct (ID number, division code) pairs, birth dates 1940–2015."""
    found: dict[str, str] = {}
    first, span = date(1940, 1, 1).toordinal(), date(2015, 12, 31).toordinal() - date(1940, 1, 1).toordinal()
    while len(found) < count:
        code = rng.choice(HEFEI_DISTRICTS)
        born = date.fromordinal(first + rng.randrange(span + 1))
        found.setdefault(generate_id_number(rng, division_code=code, birth_date=born), code)
    pairs = list(found.items())
    assert len({number for number, _ in pairs}) == count, "ID numbers are not distinct"
    return pairs


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def build(n: int, seed: int = 2021) -> Population:
    """Exactly ``n`` messages (see the module docstring), in stream order."""
    rng = random.Random(seed)
    policy = load_policy(DEFAULT_POLICY)
    full_fen = policy.funding_year(FUNDING_YEAR).individual_contribution_fen
    people, subsidised = budget(n)
    ids = distinct_id_numbers(people, rng)
    listed = set(rng.sample(range(people), subsidised))
    channels = [c for c, _ in CHANNELS]
    weights = [w for _, w in CHANNELS]
    request_span = int((LAST_REQUEST - SEASON_START).total_seconds())

    timeline: list[tuple[datetime, int, dict[str, object], str]] = []
    population = Population(people, subsidised, [])
    receipts = 0
    for i, (id_number, _code) in enumerate(ids):
        district = HEFEI_DISTRICTS[i % len(HEFEI_DISTRICTS)]
        channel = rng.choices(channels, weights)[0]
        requested = SEASON_START + timedelta(seconds=rng.randrange(request_span))
        paid = min(requested + timedelta(seconds=rng.randrange(120, 3 * 86_400)), LAST_PAYMENT)
        owed = full_fen
        if i in listed:
            category, department = rng.choice(PARTIAL_SUBSIDIES)
            owed = policy.individual_share_fen(FUNDING_YEAR, category)
            on_roster = requested - timedelta(seconds=rng.randrange(86_400, 10 * 86_400))
            population.by_subsidy[category] += 1
            timeline.append(
                (
                    on_roster,
                    0,
                    {
                        "msg_id": f"sub-{i:07d}",
                        "occurred_at": _iso(on_roster),
                        "id_number": id_number,
                        "coverage_year": COVERAGE_YEAR,
                        "subsidy_category": category,
                        "department": department,
                        "roster": f"{on_roster:%Y-%m}",
                    },
                    "upstream.subsidy.listed",
                )
            )
        enrollment: dict[str, object] = {
            "msg_id": f"enr-{i:07d}",
            "occurred_at": _iso(requested),
            "id_number": id_number,
            "coverage_year": COVERAGE_YEAR,
            "category": "resident",
            "channel": channel,
            "district": district,
        }
        payment: dict[str, object] = {
            "msg_id": f"pay-{i:07d}",
            "occurred_at": _iso(paid),
            "id_number": id_number,
            "coverage_year": COVERAGE_YEAR,
            "amount_fen": owed,
            "channel": channel,
            "paid_at": _iso(paid),
        }
        if channel == "wechat":
            payment["payer_account"] = f"wx-{rng.getrandbits(48):012x}"
        else:
            operator = f"op-{district}-{rng.randrange(COLLECTORS_PER_DISTRICT):02d}"
            enrollment["operator_id"] = operator
            payment["operator_id"] = operator
        if channel == "community_cash":
            receipts += 1
            payment["receipt_no"] = f"HF{FUNDING_YEAR}{receipts:08d}"
            payment["collector_id"] = f"cc-{district}-{rng.randrange(COLLECTORS_PER_DISTRICT):02d}"
        population.by_channel[channel] += 1
        timeline.append((requested, 1, enrollment, "upstream.enrollment.requested"))
        timeline.append((paid, 2, payment, "upstream.payment.received"))

    timeline.sort(key=lambda item: (item[0], item[1]))
    for _, _, body, subject in timeline:
        data = _encode(body)
        msg_id = str(body["msg_id"])
        population.messages.append(Message(subject, msg_id, data, {"Nats-Msg-Id": msg_id}))
        population.by_subject[subject] += 1
        population.payload_bytes += len(data)
    if len(population.messages) != n:
        raise AssertionError(f"built {len(population.messages)} messages, not {n}")
    if len({m.msg_id for m in population.messages}) != n:
        raise AssertionError("msg_ids are not distinct")
    return population
