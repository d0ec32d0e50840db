"""The synthetic Hefei enrollment season the replay benchmark rebuilds its views from.

``plan(people, ...)`` draws a season (households, people, and every upstream fact about them,
with its effective time) without touching the ledger; ``generate(...)`` applies the facts in
time order to an in-memory ``Ledger`` (the library's POPO store), the application's own methods
deciding everything, and stops at the first fact after which the store holds the number of
events asked for. What the season contains is in the package docstring.

Times: the fraud rule ``backdated`` compares an event's effective time (from the message) with
the wall-clock time it was recorded (now, while this runs), so the season is the last 30 days
before now, in the concentrated period (Sep 1 – Dec 31) of funding year F = this year, for
coverage year F + 1. ``deploy/policy/hefei.toml`` has funding years up to 2021 only, so
``bench_policy`` adds a **synthetic** funding year F with the 2021 figures (contribution, fiscal
subsidy, rates) and marks the policy version ``…+bench-fyF``. Run outside Sep 2 – Dec 31, the
season is December of last year's period instead and ``backdated_days`` is raised to cover it
(said in the output), so that the work done is the same.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

import msgspec

from ledger.application import Actor, Ledger
from ledger.commands import (
    Command,
    ListSubsidy,
    ReceivePayment,
    RegisterDeath,
    RegisterPerson,
    RemitCash,
    RequestEnrollment,
    SetTarget,
)
from ledger.domain.identity import PersonKeyer, generate_id_number
from ledger.domain.policy import FundingYear, RegionPolicy
from ledger.domain.refusals import Refusal

CST = timezone(timedelta(hours=8))
DAY = 86_400.0
HOUR = 3_600.0
SEASON_DAYS = 30
"""The season ends 10 minutes before now and lasts this many days (backdated flags at > 45)."""

SECRET = "bench-replay-person-key-secret"
"""The person-key secret of the synthetic season (not a real one: the data is synthetic)."""

DISTRICT_WEIGHTS = {
    "340102": 9, "340103": 6, "340104": 10, "340111": 11, "340121": 9,
    "340122": 12, "340123": 11, "340124": 13, "340181": 9,
}  # fmt: skip
"""Rough share of resident-insurance people per district (synthetic; more in the counties)."""
COMMITTEES_PER_DISTRICT = 40
OPERATORS_PER_COMMITTEE = 2
HOUSEHOLD_SIZES = ((1, 25), (2, 30), (3, 25), (4, 15), (5, 5))
CHANNELS = (("wechat", 50), ("community_qr", 22), ("community_cash", 10), ("tax", 18))
FULL_SUBSIDIES = (("extreme_poverty", "civil_affairs"), ("scattered_orphan", "civil_affairs"),
                  ("family_planning_special", "health_commission"))  # fmt: skip
PARTIAL_SUBSIDIES = (
    ("dibao", "civil_affairs"), ("low_income_elderly", "civil_affairs"), ("poverty_returned", "rural_revitalisation"),
    ("poverty_unstable", "rural_revitalisation"), ("monitored_low_income", "rural_revitalisation"),
)  # fmt: skip
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超兰霞平刚桂华文辉建国玉梅红志宇浩然子涵欣怡梓轩雨萱"

# Shares (of people, households, payments ...) that shape the season.
LISTED_SHARE = 0.05  # on a subsidy roster; a fifth of them fully subsidised (enrolled automatically)
FULL_SHARE_OF_LISTED = 0.2
REGISTERED_SHARE = 0.9  # registered by the household registry before anything else
ENROLL_SHARE = 0.93  # of the others, request an enrollment in the season
PAY_SHARE = 0.95  # of those, pay (the rest are still awaiting payment)
OWN_PHONE_SHARE = 0.25  # members of a household with a phone of their own (else the head's)
AGENT_HOUSEHOLD_SHARE = 0.003  # households whose phone and payer account are a village agent's
WRONG_AMOUNT_SHARE = 0.01  # payments first sent with a wrong amount (refused), then right
RECEIPT_REUSE_SHARE = 0.002  # cash payments first sent with a receipt number already used
SECOND_ENROLLMENT_SHARE = 0.002  # enrolled people whose second request is refused
CROSS_DISTRICT_SHARE = 0.003  # community enrollments by an operator of another district
DEATH_SHARE = 0.0008  # paid people who die before the season ends
REGISTRATION_CHANGE_SHARE = 0.01  # people re-registered (a new phone) later in the season
LAZY_COLLECTOR_SHARE = 0.05  # collectors who never remit in the season
BURST_SIZE = 75  # one operator per district enters this many enrollments within 50 minutes


@dataclass(frozen=True)
class Season:
    """When the season is, for which years, under which policy."""

    start: datetime
    end: datetime
    funding_year: int
    policy: RegionPolicy
    notes: tuple[str, ...]

    @property
    def coverage_year(self) -> int:
        return self.funding_year + 1


def season_for(now: datetime, base: RegionPolicy) -> Season:
    """The last 30 days before ``now`` in the concentrated period, and the policy for them."""
    end = (now - timedelta(minutes=10)).astimezone(CST)
    funding_year = end.year
    period_start = datetime(funding_year, 9, 1, 8, 0, tzinfo=CST)
    notes = []
    backdated_days = None
    if end.month >= 9 and end - period_start >= timedelta(days=1):
        start = max(end - timedelta(days=SEASON_DAYS), period_start)
    else:  # off season: last year's December, and the backdated rule widened to match
        funding_year -= 1
        start = datetime(funding_year, 12, 1, 8, 0, tzinfo=CST)
        end = datetime(funding_year, 12, 31, 20, 0, tzinfo=CST)
        backdated_days = (now.astimezone(CST) - start).days + 2
        notes.append(
            f"run outside the concentrated period: the season is {start:%Y-%m-%d} – {end:%Y-%m-%d} and the "
            f"synthetic policy's backdated_days is {backdated_days} (not 45) so that it flags what it would in season"
        )
    policy, synthetic = bench_policy(base, funding_year, backdated_days)
    if synthetic:
        notes.insert(0, synthetic)
    return Season(start=start, end=end, funding_year=funding_year, policy=policy, notes=tuple(notes))


def bench_policy(base: RegionPolicy, funding_year: int, backdated_days: int | None = None) -> tuple[RegionPolicy, str]:
    """``base`` with funding year ``funding_year`` added, if missing, as a copy of its latest
    year (SYNTHETIC figures), and the note that says so ('' when nothing was added)."""
    years = {row.year: row for row in base.funding_years}
    changes: dict[str, Any] = {}
    note = ""
    if funding_year not in years:
        latest: FundingYear = years[max(years)]
        row = msgspec.structs.replace(latest, year=funding_year)
        changes["funding_years"] = (*base.funding_years, row)
        changes["version"] = f"{base.version}+bench-fy{funding_year}"
        note = (
            f"SYNTHETIC funding year {funding_year} (coverage year {funding_year + 1}): "
            f"{base.region}'s policy file stops at {max(years)}, so the benchmark adds {funding_year} as a copy "
            f"of {latest.year} (individual {latest.individual_contribution_fen // 100} yuan, fiscal "
            f"{(latest.fiscal_subsidy_fen or 0) // 100} yuan, the same subsidy rates), policy version "
            f"{changes['version']}; not real {funding_year} figures"
        )
    if backdated_days is not None:
        changes["fraud"] = msgspec.structs.replace(base.fraud, backdated_days=backdated_days)
    return (msgspec.structs.replace(base, **changes) if changes else base), note


# ---- the plan ------------------------------------------------------------------------------


@dataclass(slots=True)
class Person:
    id_number: str
    name: str
    district: str
    household: str
    phone: str


# Fact kinds, applied in time order (ties: this order).
TARGET, REGISTER, LIST, ENROLL, PAY, REMIT, REREGISTER, DEATH = range(8)
KIND_NAMES = ("target set", "person registered", "subsidy listed", "enrollment requested", "payment received",
              "cash remitted", "registration updated", "death registered")  # fmt: skip

Fact = tuple[float, int, int, int, Any]
"""(effective time as epoch seconds, kind, sequence, person index or -1, arguments)."""


@dataclass
class Plan:
    season: Season
    people: list[Person]
    facts: list[Fact]
    households: int
    expected_events: int
    """Events the facts should record if every planned refusal is refused and nothing else."""
    planned_refusals: Counter[str] = field(default_factory=Counter)
    refused_seqs: set[int] = field(default_factory=set)
    """The facts planned to be refused (a wrong amount, a receipt used twice, a second request)."""
    by_channel: Counter[str] = field(default_factory=Counter)
    by_subsidy: Counter[str] = field(default_factory=Counter)
    agent_households: int = 0
    committees: int = 0


class _Planner:
    def __init__(self, season: Season, seed: int) -> None:
        self.season = season
        self.rng = random.Random(seed)
        self.t0 = season.start.timestamp()
        self.t1 = season.end.timestamp()
        self.facts: list[Fact] = []
        self.seq = 0
        self.events = 0
        self.refusals: Counter[str] = Counter()
        self.refused_seqs: set[int] = set()
        districts = [d for d in season.policy.districts if d in DISTRICT_WEIGHTS] or list(season.policy.districts)
        self.districts = districts
        self.district_weights = [DISTRICT_WEIGHTS.get(d, 10) for d in districts]
        # Committees (社区/村委会) of very different sizes; each has operators and collects cash.
        self.committees = {
            d: [f"cc-{d}-{k:03d}" for k in range(COMMITTEES_PER_DISTRICT)] for d in districts
        }
        self.committee_weights = {
            d: [self.rng.paretovariate(1.2) for _ in range(COMMITTEES_PER_DISTRICT)] for d in districts
        }
        self.lazy = {c for cs in self.committees.values() for c in cs if self.rng.random() < LAZY_COLLECTOR_SHARE}
        self.cash: dict[str, list[tuple[float, str, int]]] = {}
        """Per collector: (time, receipt number, fen) of every cash payment the ledger will record."""
        self.receipts = 0
        self.ids: set[str] = set()

    def add(self, t: float, kind: int, person: int, args: Any, events: int) -> None:
        self.facts.append((t, kind, self.seq, person, args))
        self.seq += 1
        self.events += events

    def refused(self, t: float, kind: int, person: int, args: Any, reason: str) -> None:
        self.refused_seqs.add(self.seq)
        self.add(t, kind, person, args, 0)
        self.refusals[reason] += 1

    def moment(self, after: float = 0.0, before: float | None = None) -> float:
        """A time in the season after ``after``, mostly in office hours (8:00–21:00 CST)."""
        lo, hi = max(self.t0, after), self.t1 if before is None else min(self.t1, before)
        if hi <= lo:
            return lo
        for _ in range(8):
            t = self.rng.uniform(lo, hi)
            hour = ((t / HOUR) + 8) % 24
            if 8 <= hour < 21 or self.rng.random() < 0.1:
                return t
        return t

    def id_number(self, district: str, born: date) -> str:
        while True:
            number = generate_id_number(self.rng, division_code=district, birth_date=born)
            if number not in self.ids:
                self.ids.add(number)
                return number

    def birth(self, lo: int, hi: int) -> date:
        first = date(lo, 1, 1).toordinal()
        last = min(date(hi, 12, 31), self.season.start.date() - timedelta(days=200)).toordinal()
        return date.fromordinal(self.rng.randrange(first, last + 1))

    def name(self) -> str:
        rng = self.rng
        return rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2, 2))))

    def receipt(self, district: str) -> str:
        """A new special-receipt number (专用票据)."""
        self.receipts += 1
        return f"HF{self.season.funding_year}{district[-2:]}{self.receipts:08d}"

    def phone(self) -> str:
        return f"1{self.rng.choice('3456789')}{self.rng.randrange(10**9):09d}"


def plan(people_wanted: int, season: Season, seed: int = 2026) -> Plan:
    """About ``people_wanted`` people in households, and every fact about them (see the module)."""
    p = _Planner(season, seed)
    rng = p.rng
    policy = season.policy
    _year, fy = season.coverage_year, season.funding_year
    full_fen = policy.funding_year(fy).individual_contribution_fen
    people: list[Person] = []
    by_channel: Counter[str] = Counter()
    by_subsidy: Counter[str] = Counter()
    channels, channel_weights = zip(*CHANNELS, strict=True)
    sizes, size_weights = zip(*HOUSEHOLD_SIZES, strict=True)

    # Targets (参保任务) per district at the start, three changed mid-season: set below, once
    # the people per district are known.
    per_district: Counter[str] = Counter()
    operators_used: dict[str, str] = {}
    community: dict[str, list[int]] = {}  # district → indices of community_qr enrollment facts
    households = agents = 0
    agent_phone, agent_account, agent_left = "", "", 0

    while len(people) < people_wanted:
        households += 1
        district = rng.choices(p.districts, p.district_weights)[0]
        committee = rng.choices(p.committees[district], p.committee_weights[district])[0]
        household = f"hh-{district}-{households:07d}"
        size = rng.choices(sizes, size_weights)[0]
        head_phone = p.phone()
        payer = f"wx-{rng.getrandbits(48):012x}"
        if agent_left == 0 and rng.random() < AGENT_HOUSEHOLD_SHARE / 8:
            # A village agent (代办员) who gives their own phone and pays with their own account
            # for 6–10 households nearby (the shared_contact rule flags more than 5).
            agent_phone, agent_account, agent_left = p.phone(), f"wx-{rng.getrandbits(48):012x}", rng.randrange(6, 11)
        if agent_left and rng.random() < 0.5:
            agent_left -= 1
            agents += 1
            head_phone, payer = agent_phone, agent_account
        channel = rng.choices(channels, channel_weights)[0]
        household_start = p.moment(before=p.t1 - 2 * HOUR)
        for member in range(size):
            index = len(people)
            born = p.birth(1950, 2000) if member == 0 else p.birth(1940, 2025)
            phone = head_phone if member == 0 or rng.random() > OWN_PHONE_SHARE else p.phone()
            person = Person(p.id_number(district, born), p.name(), district, household, phone)
            people.append(person)
            per_district[district] += 1
            age = season.start.year - born.year

            # Registration by the household registry, before anything else about the person
            # (the others are created by their first fact: one event more then).
            first = min(household_start + rng.uniform(0, 2 * DAY), p.t1 - HOUR)
            registered = rng.random() < REGISTERED_SHARE
            if registered:
                t_reg = p.moment(before=first)
                p.add(t_reg, REGISTER, index, None, 1)
                first = max(first, t_reg + 60)
            else:
                p.events += 1  # Registered, by the person's first fact below

            # Subsidy roster (资助参保名单): monthly rosters from the departments.
            listed = rng.random() < LISTED_SHARE
            category = None
            if listed and rng.random() < FULL_SHARE_OF_LISTED:
                category, department = rng.choice(FULL_SUBSIDIES)
                t = p.moment(after=first)
                p.add(t, LIST, index, (category, department, _roster(t)), 3)  # listed + requested + decided
                by_subsidy[category] += 1
                by_channel["auto"] += 1
                continue  # enrolled automatically, nothing to pay
            if listed:
                category, department = rng.choice(PARTIAL_SUBSIDIES)
                by_subsidy[category] += 1
            if rng.random() > ENROLL_SHARE:
                if listed:
                    t = p.moment(after=first)
                    p.add(t, LIST, index, (category, department, _roster(t)), 1)
                elif not registered:
                    p.events -= 1  # no fact about this person at all: not in the ledger
                continue

            # The enrollment request, by the household's channel (school children by the school).
            t_enroll = p.moment(after=first)
            own_channel = channel
            enroll_category = "resident"
            operator = org = None
            if 6 <= age <= 17 and rng.random() < 0.3:
                own_channel, enroll_category, org = "school", "student", f"school-{district}-{rng.randrange(60):02d}"
            elif 18 <= age <= 19 and rng.random() < 0.2:
                own_channel, enroll_category, org = "university", "university_new", f"univ-{rng.randrange(12):02d}"
            elif own_channel in ("community_qr", "community_cash"):
                org = committee
                operator_district = district
                if rng.random() < CROSS_DISTRICT_SHARE:
                    operator_district = rng.choice([d for d in p.districts if d != district] or [district])
                    org = rng.choice(p.committees[operator_district])
                operator = f"op-{org.removeprefix('cc-')}-{rng.randrange(OPERATORS_PER_COMMITTEE)}"
                operators_used.setdefault(operator, operator_district)
            elif own_channel == "tax":
                org = f"tax-{district}"
            by_channel[own_channel] += 1
            enrollment = (own_channel, operator, org, district, enroll_category)
            if listed and rng.random() < 0.7:  # on the roster before the request: priced with it
                t_list = p.moment(after=first, before=t_enroll)
                p.add(min(t_list, t_enroll), LIST, index, (category, department, _roster(t_list)), 1)
                listed_before = True
            else:
                listed_before = False
            p.add(t_enroll, ENROLL, index, enrollment, 1)
            if own_channel in ("community_qr",):
                community.setdefault(district, []).append(len(p.facts) - 1)
            if rng.random() < SECOND_ENROLLMENT_SHARE:
                second = ("wechat", None, None, district, "resident")
                p.refused(p.moment(after=t_enroll + HOUR), ENROLL, index, second, "already_enrolled")

            # The payment: right away on WeChat and at the desk, later through the tax office.
            pays = rng.random() < PAY_SHARE
            lag = rng.uniform(30, 600) if own_channel in ("wechat", "community_qr", "community_cash") else rng.uniform(
                HOUR, 5 * DAY
            )
            if rng.random() < 0.25:
                lag += rng.uniform(HOUR, 7 * DAY)  # paid later
            t_pay = t_enroll + lag
            if listed and not listed_before:  # listed while the request awaits payment
                t_list = min(t_enroll + rng.uniform(0.2, 0.8) * lag, p.t1) if pays else p.moment(after=t_enroll)
                if t_list <= p.t1:
                    p.add(t_list, LIST, index, (category, department, _roster(t_list)), 2)  # + reassessed
                    listed_before = True
            owed = policy.individual_share_fen(fy, category) if listed_before else full_fen
            if not pays or t_pay > p.t1:
                continue
            cash = own_channel == "community_cash"
            payer_account = payer if own_channel in ("wechat", "community_qr") else None
            collector = (org or committee) if cash else None
            if rng.random() < WRONG_AMOUNT_SHARE:  # last year's amount, or the full one when subsidised
                wrong = full_fen if owed != full_fen else full_fen - 4_000
                voided = p.receipt(district) if cash else None  # a receipt voided after the refusal
                p.refused(t_pay, PAY, index, _payment(own_channel, wrong, voided, collector, payer_account, operator),
                          "amount_mismatch")  # fmt: skip
                t_pay = min(t_pay + rng.uniform(HOUR, DAY), p.t1)
            if cash:
                assert collector is not None
                earlier = [r for r in p.cash.get(collector, ()) if r[0] < t_pay - 60]
                if earlier and rng.random() < RECEIPT_REUSE_SHARE:
                    used = rng.choice(earlier)[1]  # a receipt number already used (misprinted, or worse)
                    p.refused(t_pay, PAY, index, _payment("community_cash", owed, used, collector, None, operator),
                              "duplicate_receipt")  # fmt: skip
                    t_pay = min(t_pay + rng.uniform(600, HOUR), p.t1)
                receipt = p.receipt(district)
                opened = collector not in p.cash
                p.cash.setdefault(collector, []).append((t_pay, receipt, owed))
                # PaymentReceived + CoverageDecided, the receipt's Issued, the collector's CashReceived
                # (and Opened, the first time)
                p.add(t_pay, PAY, index, _payment("community_cash", owed, receipt, collector, None, operator),
                      4 + opened)  # fmt: skip
            else:
                p.add(t_pay, PAY, index, _payment(own_channel, owed, None, None, payer_account, operator), 2)

            if rng.random() < REGISTRATION_CHANGE_SHARE and registered:
                p.add(p.moment(after=t_pay), REREGISTER, index, p.phone(), 1)
            if rng.random() < DEATH_SHARE and t_pay + 2 * HOUR < p.t1:
                t_death = p.moment(after=t_pay + HOUR)
                died = datetime.fromtimestamp(t_death, CST).date() - timedelta(days=rng.randrange(3))
                died = max(died, datetime.fromtimestamp(t_pay, CST).date())
                p.add(t_death, DEATH, index, died, 2)  # death registered + coverage ended
                t_after = t_death + rng.uniform(HOUR, 2 * DAY)
                if registered and rng.random() < 0.3 and t_after < p.t1:  # a registry update after the death
                    p.add(t_after, REREGISTER, index, p.phone(), 1)

    _bursts(p, community, operators_used)
    _remittances(p)
    _targets(p, per_district)
    p.facts.sort()
    return Plan(
        season=season, people=people, facts=p.facts, households=households, expected_events=p.events,
        planned_refusals=p.refusals, refused_seqs=p.refused_seqs, by_channel=by_channel, by_subsidy=by_subsidy, agent_households=agents,
        committees=len(p.cash),
    )  # fmt: skip


def _roster(t: float) -> str:
    return f"{datetime.fromtimestamp(t, CST):%Y-%m}"


def _payment(channel: str, fen: int, receipt: str | None, collector: str | None, payer: str | None, operator: str | None) -> tuple:
    return (channel, fen, receipt, collector, payer, operator)


def _bursts(p: _Planner, community: dict[str, list[int]], operators: dict[str, str]) -> None:
    """One bulk session per district: an operator enters BURST_SIZE community enrollments
    within 50 minutes (the ``operator_anomaly`` rule flags more than 60 in an hour)."""
    for district, indices in community.items():
        if len(indices) < BURST_SIZE * 4:
            continue
        start = p.moment(after=p.t0 + DAY, before=p.t1 - 3 * DAY)
        later = [i for i in indices if p.facts[i][0] > start + HOUR]
        if len(later) < BURST_SIZE:
            continue
        chosen = p.rng.sample(later, BURST_SIZE)
        operator = f"op-bulk-{district}"
        operators[operator] = district
        for k, i in enumerate(sorted(chosen)):
            t, kind, seq, person, (channel, _op, org, d, category) = p.facts[i]
            moved = start + k * 40 + p.rng.uniform(0, 30)  # earlier than it was: the person's later facts stay later
            p.facts[i] = (moved, kind, seq, person, (channel, operator, org, d, category))


def _remittances(p: _Planner) -> None:
    """Each collector hands its cash to the tax office every 4–10 days (not the lazy ones)."""
    for collector, received in p.cash.items():
        if collector in p.lazy:
            continue
        received.sort()
        t = p.t0 + p.rng.uniform(2, 6) * DAY
        k = 0
        vouchers = 0
        while t < p.t1:
            numbers, fen = [], 0
            while k < len(received) and received[k][0] < t - HOUR:
                numbers.append(received[k][1])
                fen += received[k][2]
                k += 1
            if numbers:
                vouchers += 1
                voucher = f"V-{collector.removeprefix('cc-')}-{vouchers:03d}"
                p.add(t, REMIT, -1, (collector, fen, voucher, tuple(numbers)), 1)
            t = p.moment(after=t + p.rng.uniform(4, 10) * DAY)
            if t >= p.t1 - 60:
                break


def _targets(p: _Planner, per_district: Counter[str]) -> None:
    for district in p.districts:
        target = round(per_district[district] * p.rng.uniform(1.0, 1.08))
        p.add(p.t0, TARGET, -1, (district, target), 1)
    for district in p.rng.sample(p.districts, min(3, len(p.districts))):
        p.add(p.moment(after=p.t0 + 5 * DAY), TARGET, -1, (district, round(per_district[district] * 1.05)), 1)


# ---- applying it ---------------------------------------------------------------------------


@dataclass
class Generated:
    ledger: Ledger
    plan: Plan
    facts_applied: int
    events: int
    refused: list[tuple[int, int, str, str, str | None, bytes]]
    """(fact sequence, kind, reason, detail, person key, the fact as JSON) of each refused fact."""
    seconds: float
    people_touched: int

    @property
    def unplanned_refusals(self) -> int:
        """Refusals of facts the plan meant to be recorded (expected: none)."""
        return sum(1 for seq, *_ in self.refused if seq not in self.plan.refused_seqs)


def memory_ledger(policy: RegionPolicy) -> Ledger:
    """The application on the library's in-memory (POPO) store, with the aggregate cache
    ``ledger serve`` uses (so that generating does not replay each person for each fact)."""
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.popo",
        "AGGREGATE_CACHE_MAXSIZE": "2000000",
        "AGGREGATE_CACHE_FASTFORWARD": "n",
        "DEEPCOPY_FROM_AGGREGATE_CACHE": "n",
    }
    return Ledger(env, policy=policy, keyer=PersonKeyer(SECRET.encode()))


def generate(
    the_plan: Plan, events_wanted: int, progress: Callable[[int, int], None] | None = None
) -> Generated:
    """Apply the plan's facts in time order until the store holds ``events_wanted`` events."""
    season = the_plan.season
    ledger = memory_ledger(season.policy)
    year = season.coverage_year
    people = the_plan.people
    recorded = 0
    refused: list[tuple[int, int, str, str, str | None, bytes]] = []
    touched: set[int] = set()
    started = time.perf_counter()
    last_report = started
    applied = 0
    for t, kind, seq, index, args in the_plan.facts:
        if recorded >= events_wanted:
            break
        at = datetime.fromtimestamp(t, CST).replace(microsecond=0)
        person = people[index] if index >= 0 else None
        call = _CALLS[kind]
        kwargs = call(person, args, at, year, seq)
        actor = kwargs.pop("actor")
        try:
            outcome = ledger.handle(_COMMANDS[kind](**kwargs), actor)
        except Refusal as refusal:
            key = ledger.keyer(person.id_number) if person is not None else None
            refused.append((seq, kind, refusal.reason, refusal.detail, key, msgspec.json.encode(kwargs)))
        else:
            recorded += outcome.recorded
        if person is not None:
            touched.add(index)
        applied += 1
        now = time.perf_counter()
        if progress is not None and now - last_report >= 5:
            last_report = now
            progress(recorded, events_wanted)
    return Generated(
        ledger=ledger, plan=the_plan, facts_applied=applied, events=recorded, refused=refused,
        seconds=time.perf_counter() - started, people_touched=len(touched),
    )  # fmt: skip


_COMMANDS: dict[int, type[Command]] = {
    TARGET: SetTarget, REGISTER: RegisterPerson, LIST: ListSubsidy, ENROLL: RequestEnrollment,
    PAY: ReceivePayment, REMIT: RemitCash, REREGISTER: RegisterPerson, DEATH: RegisterDeath,
}  # fmt: skip


def _target(person: Person | None, args: Any, at: datetime, year: int, seq: int) -> dict[str, Any]:
    district, count = args
    return dict(msg_id=f"tgt-{seq}", occurred_at=at, district=district, coverage_year=year, target_count=count,
                actor=Actor("medical_security_bureau"))  # fmt: skip


def _register(person: Person | None, args: Any, at: datetime, year: int, seq: int) -> dict[str, Any]:
    assert person is not None
    return dict(msg_id=f"reg-{seq}", occurred_at=at, id_number=person.id_number, name=person.name,
                district=person.district, phone=args or person.phone, household_id=person.household,
                actor=Actor("household_registry"))  # fmt: skip


def _list(person: Person | None, args: Any, at: datetime, year: int, seq: int) -> dict[str, Any]:
    assert person is not None
    category, department, roster = args
    return dict(msg_id=f"sub-{seq}", occurred_at=at, id_number=person.id_number, coverage_year=year,
                subsidy_category=category, department=department, roster=roster,
                actor=Actor("subsidy_roster", org_id=department))  # fmt: skip


def _enroll(person: Person | None, args: Any, at: datetime, year: int, seq: int) -> dict[str, Any]:
    assert person is not None
    channel, operator, org, district, category = args
    return dict(msg_id=f"enr-{seq}", occurred_at=at, id_number=person.id_number, coverage_year=year,
                category=category, channel=channel, district=district,
                actor=Actor("enrollment", channel=channel, operator_id=operator, org_id=org))  # fmt: skip


def _pay(person: Person | None, args: Any, at: datetime, year: int, seq: int) -> dict[str, Any]:
    assert person is not None
    channel, fen, receipt, collector, payer, operator = args
    published = at + timedelta(seconds=seq % 50 + 1)  # the message follows the payment
    return dict(msg_id=f"pay-{seq}", occurred_at=published, paid_at=at, id_number=person.id_number,
                coverage_year=year, amount_fen=fen, channel=channel, receipt_no=receipt, collector_id=collector,
                payer_account=payer, actor=Actor("payment", channel=channel, operator_id=operator, org_id=collector))  # fmt: skip


def _remit(person: Person | None, args: Any, at: datetime, year: int, seq: int) -> dict[str, Any]:
    collector, fen, voucher, receipts = args
    return dict(msg_id=f"rem-{seq}", occurred_at=at, collector_id=collector, amount_fen=fen, voucher_no=voucher,
                remitted_at=at, receipt_nos=receipts,
                actor=Actor("cash_remittance", channel="community_cash", org_id=collector))  # fmt: skip


def _death(person: Person | None, args: Any, at: datetime, year: int, seq: int) -> dict[str, Any]:
    assert person is not None
    return dict(msg_id=f"dth-{seq}", occurred_at=at, id_number=person.id_number, date_of_death=args,
                actor=Actor("death_registry"))  # fmt: skip


_CALLS = {TARGET: _target, REGISTER: _register, LIST: _list, ENROLL: _enroll, PAY: _pay, REMIT: _remit,
          REREGISTER: _register, DEATH: _death}  # fmt: skip


def plan_for_events(events_wanted: int, season: Season, seed: int = 2026) -> Plan:
    """A plan whose facts record at least ``events_wanted`` events (a little more: the run stops
    at the first fact that reaches the number)."""
    trial = plan(max(200, events_wanted // 40), season, seed)
    per_person = trial.expected_events / len(trial.people)
    people = int(events_wanted / per_person * 1.03) + 50
    for _ in range(4):
        found = plan(people, season, seed)
        if found.expected_events >= events_wanted:
            return found
        people = int(people * events_wanted / max(found.expected_events, 1) * 1.03) + 50
    return found
