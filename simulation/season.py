"""A simulated enrollment season (集中参保期) of a synthetic population, as upstream messages.

``simulate`` builds, from a seed, everything the upstream systems of ``contract.md`` would send the
ledger for one coverage year: the bureau's district targets, the household registry's
registrations, the departments' subsidy rosters, enrollments and payments through every channel,
cash remittances, deaths, employee-insurance lapses and discharges from the army. Every ID number
is synthetic (``generate_id_number``), never a real one; the same seed gives the same messages.

The season is the last one the policy table can price: its latest funding year F (Hefei: 2021,
320 yuan) for coverage year Y = F + 1 (2022). Registrations arrive in July and August of F, the
August roster (``F-08``) in the last days of August, enrollments in the concentrated period
(Sep 1 – Dec 31 of F; busiest in its first fortnight and in the check-up phase from Dec 10),
migrant workers' payments until the end of February of Y, and the facts of Y (newborns, lapses,
discharges, deaths, new assistance recipients, late comers) through Y.

Who does what, as shares of ``people`` (``ROLE_SHARES`` and ``EVENT_SHARES``):

- **WeChat** (the rest, ~55%): enroll and pay at once (8% pay days later); minors as ``resident``
  or ``minor_of_employee``; 8% of adults hold a residence permit (``residence_permit``).
- **Community committee, QR code** (10%): ``community_qr`` with ``operator_id`` and ``org_id``
  (the planted operator bursts of 61+ people each are counted here: small seasons have more).
- **Community committee, cash** (9%, mostly the elderly): ``community_cash`` with a numbered
  receipt (专用票据) and ``collector_id``; every 7–12 days each committee remits what it holds
  (``upstream.cash.remitted`` naming the ``receipt_nos``), well within the policy's 30 days.
- **Tax office** (5%): ``tax``; the office reports payments the next morning.
- **Universities** (4%): a third ``university_new`` (covered from the day the fee is collected),
  the rest ``student``; enrolled in September in batches, the fees reported in October.
- **Schools** (5%, pupils of 6–16): one batch per school (``school``); parents pay through WeChat.
- **Migrant rural workers** (2%, rural districts): ``migrant_worker``, ``resident``; half enroll
  in December, half in the new year; all pay from mid-January to the end of February of Y.
- **Assistance rosters** (4%): 85% on the August roster, the rest added in Sep–Nov, 10% on two
  rosters. Fully subsidised people are enrolled by the ledger itself (no enrollment message); the
  others enroll (40% QR, 30% cash, 30% WeChat) and pay their share (``individual_share_fen``);
  10% never pay.
- **Never covered** (4%): most do nothing; 0.5% enroll and never pay; 0.5% come too late.
- **Employee-insurance lapses** (0.8%): employment ends early in Y after ≥ 24 continuous months
  (half were also synced as still insured in August); then ``cross_scheme``, 80% within 3 months
  (no waiting period), 20% later (6-month waiting period).
- **Newborns** (0.6%, born January–June of Y): registered, then ``newborn`` with ``birth_date``;
  85% within 3 months of birth (covered from birth), the rest later (from the day after payment).
- **Discharged soldiers** (0.1%, March or September of Y; 30% with a non-working spouse,
  ``spouse_id_number``): then ``veteran`` for each.
- **New assistance recipients** (0.1%): a roster of Y; fully subsidised ones are enrolled by the
  ledger, the others enroll as ``assistance_new``.
- **Deaths** (0.5%, mostly the elderly): during Y, registered within ten days.

At 20,000 people the enrollment requests are about 59% WeChat, 12% QR, 10% cash, 5% tax,
5% school and 4% university; about 0.7% are enrolled automatically and 4.5% are not covered.
Households of 1–5 people live in one community; 35% share one phone; each pays from one WeChat
account. District targets are the district's registered population ÷ 0.99, so rates land around 95%.

Bad input (about 2.3% of people, each kind at least once; ``Season.bad_input`` names each
message's expected rejection reason):

- ``amount_mismatch`` (0.6%): a wrong amount (last year's, double, the full contribution for a
  subsidised person …), then the right one; and a few remittances that do not add up, then corrected;
- ``invalid_id_number`` (0.4%): an enrollment with a mistyped check character, then the right one;
- ``outside_enrollment_period`` (0.5%): ordinary residents enrolling in Y, or paying in January;
- ``no_enrollment`` (0.4%): a tax payment reported before its enrollment (resent after it), or a
  payment for the wrong coverage year;
- ``malformed`` (0.3%): a registration, enrollment, payment or roster entry missing a required
  field, then sent whole;
- ``deceased`` and ``duplicate_receipt``: the planted cases below.

Planted fraud (``Season.planted``, one case of each kind per 2,000 people, at least one):
a payment dated after a registered death (refused ``deceased`` → ``after_death``); a phone number
registered for people of more than ``phone_max_people`` households, and a WeChat account paying
for people of more than ``payer_account_max_people`` households (→ ``shared_contact``); a
committee that stops remitting its cash (→ ``cash_unremitted``); a receipt number reported a
second time (refused ``duplicate_receipt`` → ``receipt_reused``); an operator enrolling more than
``operator_burst_per_hour`` people within an hour (→ ``operator_anomaly``).

Other rules flag an honest season too, by design: ``backdated`` for coverage decided
retroactively (newborns from birth, migrants paying in February covered from January 1) and
deaths registered late, and ``adverse_selection`` for migrants paying in the extension with no
coverage the year before (the simulated population has no earlier year).
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Final

from ledger.domain.coverage import add_months
from ledger.domain.identity import Sex, check_character, generate_id_number
from ledger.domain.policy import RegionPolicy, load_policy
from ledger.senders import SENDERS

CST: Final = timezone(timedelta(hours=8))
"""China Standard Time: every upstream time carries +08:00."""

ROLE_SHARES: Final[dict[str, float]] = {
    "community_qr": 0.10,
    "community_cash": 0.09,
    "tax": 0.05,
    "university": 0.04,
    "school": 0.05,
    "migrant": 0.02,
    "subsidised": 0.04,
    "never": 0.04,
    "employee_lapse": 0.008,
    "newborn": 0.006,
    "veteran": 0.001,
    "assistance_new": 0.001,
}
"""How people come to the season, as shares of all people; everyone else enrolls through WeChat."""

EVENT_SHARES: Final[dict[str, float]] = {
    "death": 0.005,
    "amount_mismatch": 0.006,
    "invalid_id_number": 0.004,
    "outside_enrollment_period": 0.005,
    "no_enrollment": 0.004,
    "malformed": 0.003,
    "awaiting_payment": 0.005,
    "remittance_mismatch": 0.0005,
}
"""What happens to some of them, as shares of all people (each at least once)."""

PLANTED_EVERY: Final = 2_000
"""One planted case of each kind per this many people (at least one)."""

MIN_PEOPLE: Final = 200
"""Fewer people cannot hold one case of everything (an operator burst alone takes 61)."""

SUBSIDY_MIX: Final[dict[str, float]] = {
    # Civil affairs' rolls are the largest (低保 first); a guess at Hefei's proportions.
    "dibao": 0.35,
    "monitored_low_income": 0.20,
    "poverty_unstable": 0.15,
    "low_income_elderly": 0.10,
    "extreme_poverty": 0.08,
    "family_planning_special": 0.05,
    "poverty_returned": 0.05,
    "scattered_orphan": 0.02,
}

DEPARTMENT: Final[dict[str, str]] = {
    # 方案 §五(五): which department keeps which roster.
    "extreme_poverty": "civil_affairs",
    "scattered_orphan": "civil_affairs",
    "family_planning_special": "health_commission",
    "dibao": "civil_affairs",
    "low_income_elderly": "civil_affairs",
    "poverty_returned": "rural_revitalisation",
    "poverty_unstable": "rural_revitalisation",
    "monitored_low_income": "civil_affairs",
}

HEFEI_POPULATION: Final[dict[str, int]] = {
    # Approximate residents by district (thousands, 2020 census, rounded): the weights with
    # which people are placed. Another region's districts weigh the same.
    "340102": 1010,  # 瑶海区
    "340103": 700,  # 庐阳区
    "340104": 1170,  # 蜀山区
    "340111": 1220,  # 包河区
    "340121": 790,  # 长丰县
    "340122": 930,  # 肥东县
    "340123": 930,  # 肥西县
    "340124": 900,  # 庐江县
    "340181": 720,  # 巢湖市
}
RURAL: Final = frozenset({"340121", "340122", "340123", "340124", "340181"})
"""Counties (and the county-level city) whose people work away from home (外出务工)."""

ORIGINS: Final = (
    # Where people with a residence permit, and many students, were first registered.
    "341221", "341222", "341225", "341623", "342221", "340828", "341523", "320321", "411523", "360321",
    "421126", "370827",
)  # fmt: skip

SURNAMES: Final = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘汪程"
GIVEN: Final = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超兰霞平刚华玉萍红建国志文辉海燕晨浩宇欣怡涵萱诺梅兵"


@dataclass(frozen=True)
class Message:
    """One upstream message, as an integrator publishes it."""

    subject: str
    """E.g. ``upstream.payment.received``."""
    body: dict[str, Any]
    """JSON-ready: dates ``YYYY-MM-DD``, times ISO 8601 with ``+08:00``, money in fen; with
    ``msg_id`` and ``occurred_at``. Optional fields that do not apply are absent."""

    @property
    def sender(self) -> str:
        """The upstream system (its account, ``ledger.senders``) that sends this message."""
        return sender_of(self.subject, self.body)


_SENDER_OF_SUBJECT: Final[dict[str, str]] = {
    "upstream.person.registered": "public_security",
    "upstream.cash.remitted": "community",
    "upstream.death.registered": "public_security",
    "upstream.employee_insurance.changed": "employee_insurance",
    "upstream.discharge.registered": "veterans",
    "upstream.target.set": "bureau",
    # a message lacking what says its sender (the season's malformed ones) comes from:
    "upstream.enrollment.requested": "community",
    "upstream.payment.received": "community",
    "upstream.subsidy.listed": "civil_affairs",
}


def sender_of(subject: str, body: dict[str, Any]) -> str:
    """Who sends a message of ``subject`` like ``body``: by its channel (enrollments and
    payments), its roster category (rosters, by department), else the office that keeps such
    facts."""
    for sender, entitled in SENDERS.items():
        if body.get("channel") in entitled.channels or body.get("subsidy_category") in entitled.subsidy_categories:
            return sender
    return _SENDER_OF_SUBJECT[subject]


@dataclass(frozen=True)
class Planted:
    """A fraud case planted in the season, and the rule of ``projections/fraud.py`` that must
    catch it."""

    kind: str
    rule: str
    id_number: str | None
    """The person the flag is about; ``None`` when its subject is not a person."""
    subject_key_hint: str | None
    """The flag's subject when it is not a person (``collector:<id>``, ``operator:<id>``)."""
    description: str


@dataclass(frozen=True)
class ExpectedBadInput:
    """A message the ledger must refuse, and the contract's reason it must give."""

    msg_id: str
    reason: str


@dataclass
class Season:
    """What ``simulate`` produced."""

    messages: list[Message]
    """In publishing order: ascending ``occurred_at``; ties in causal order (register, enroll, pay)."""
    planted: list[Planted]
    bad_input: list[ExpectedBadInput]
    people: int

    def by_subject(self) -> Counter[str]:
        """How many messages each subject has."""
        return Counter(message.subject for message in self.messages)


def simulate(people: int = 20_000, *, seed: int = 2021, policy: RegionPolicy | None = None) -> Season:
    """A season of ``people`` synthetic people (newborns, veterans and spouses included), the same
    for the same ``seed``, priced and dated by ``policy`` (Hefei's by default).

    Raises ``ValueError`` below ``MIN_PEOPLE`` people.
    """
    if people < MIN_PEOPLE:
        raise ValueError(f"a season needs at least {MIN_PEOPLE} people, not {people}")
    return _Simulation(people, random.Random(seed), policy or load_policy()).run()


# ---- the simulation ------------------------------------------------------------------------------

REGISTERED = "upstream.person.registered"
ENROLLMENT = "upstream.enrollment.requested"
PAYMENT = "upstream.payment.received"
SUBSIDY = "upstream.subsidy.listed"
REMITTED = "upstream.cash.remitted"
DEATH = "upstream.death.registered"
EMPLOYEE = "upstream.employee_insurance.changed"
DISCHARGE = "upstream.discharge.registered"
TARGET = "upstream.target.set"

_RANK = {
    TARGET: 0, REGISTERED: 1, EMPLOYEE: 2, DISCHARGE: 2, SUBSIDY: 3, ENROLLMENT: 4, PAYMENT: 5, REMITTED: 6, DEATH: 7,
}  # fmt: skip
"""Causal order of messages stamped with the same time."""

_SENDER = {
    "wechat": "wx",
    "community_qr": "sq",
    "community_cash": "sq",
    "tax": "tax",
    "university": "univ",
    "school": "school",
}
"""The msg_id prefix of each channel's system."""


@dataclass
class _Person:
    id_number: str
    name: str
    born: date
    sex: Sex
    district: str
    community: int
    role: str
    residence_permit: bool = False
    hukou_district: str | None = None
    household_id: str | None = None
    phone: str | None = None
    payer_account: str | None = None
    trouble: str | None = None
    """At most one bad input or planted case per person."""
    extra: dict[str, Any] = field(default_factory=dict)

    def age_on(self, day: date) -> int:
        return day.year - self.born.year - ((day.month, day.day) < (self.born.month, self.born.day))


@dataclass
class _Draft:
    """A message before the season is put in order (cash receipts are numbered last)."""

    at: datetime
    rank: int
    seq: int
    subject: str
    body: dict[str, Any]


class _Simulation:
    def __init__(self, people: int, rng: random.Random, policy: RegionPolicy) -> None:
        self.n = people
        self.rng = rng
        self.policy = policy
        self.F = max(policy.years)
        self.Y = self.F + 1
        self.period_start, self.period_end = policy.concentrated_period(self.F)
        self.check_up_start, _ = policy.check_up(self.F)
        self.migrant_end = (
            policy.migrant_extension_end(self.F) if policy.migrant_extension_until_month is not None else None
        )
        self.contribution = policy.funding_year(self.F).individual_contribution_fen
        self.previous_year_priced = (self.F - 1) in policy.years
        self.refuses_late = policy.late_enrollment_rule == "refuse"
        self.cases = max(1, round(people / PLANTED_EVERY))
        self.districts = list(policy.districts)
        weights = [HEFEI_POPULATION.get(code, 1000) for code in self.districts]
        self.district_weights = weights
        total = sum(weights)
        self.communities = {  # about 250 people each
            code: max(1, round(people * weight / total / 250))
            for code, weight in zip(self.districts, weights, strict=True)
        }
        self.drafts: list[_Draft] = []
        self.planted: list[Planted] = []
        self.bad: list[ExpectedBadInput] = []
        self.persons: list[_Person] = []
        self._ids: set[str] = set()
        self._phones: set[str] = set()
        self._numbers = itertools.count(1)
        self._seq = itertools.count()
        self.cash: dict[str, list[_Draft]] = {}
        """Cash payments per collector, receipts not yet numbered."""
        self.reference_day = self.period_start
        days = [self.period_start + timedelta(days=i) for i in range((self.period_end - self.period_start).days + 1)]
        self._period_days = days
        self._online_weights = list(itertools.accumulate(self._day_weight(d) for d in days))
        self._desk_weights = list(
            itertools.accumulate(self._day_weight(d) * (0.3 if d.weekday() >= 5 else 1.0) for d in days)
        )

    # ---- the run ----------------------------------------------------------------------------

    def run(self) -> Season:
        self._populate()
        self._households()
        self._troubles()
        self._targets()
        for person in self.persons:
            if person.role not in ("newborn", "veteran", "spouse"):
                self._register(person)
        stories = {  # one person at a time; universities, schools and bursts go by the group below
            "wechat": self._wechat,
            "community_qr": self._community,
            "community_cash": self._community,
            "tax": self._tax,
            "migrant": self._migrant,
            "subsidised": self._subsidised,
            "never": self._never,
            "employee_lapse": self._employee_lapse,
            "newborn": self._newborn,
            "veteran": self._veteran,  # with the spouse, if any
            "assistance_new": self._assistance_new,
        }
        for person in self.persons:
            story = stories.get(person.role)
            if story is not None:
                story(person)
        self._universities()
        self._schools()
        self._bursts()
        self._deaths()
        self._reused_receipts()
        self._number_receipts()
        self._withholding_collectors()
        self._remittances()
        return self._season()

    # ---- people -----------------------------------------------------------------------------

    def _populate(self) -> None:
        rng = self.rng
        counts = {role: round(share * self.n) for role, share in ROLE_SHARES.items()}
        for role in ("veteran", "assistance_new", "migrant", "university", "school", "tax"):
            counts[role] = max(counts[role], 1)
        for role in ("newborn", "employee_lapse"):  # one of each rule's two outcomes
            counts[role] = max(counts[role], 2)
        counts["subsidised"] = max(counts["subsidised"], 4)
        counts["community_cash"] = max(counts["community_cash"], 2 * self.cases + 4)
        late = self._count("outside_enrollment_period", 2)
        counts["never"] = max(counts["never"], late + self._count("awaiting_payment") + 2)
        spouses = max(1, round(0.3 * counts["veteran"]))
        burst_size = self.policy.fraud.operator_burst_per_hour + 1
        bursts = [burst_size + rng.randrange(4) for _ in range(self.cases)]
        counts["burst"] = sum(bursts)
        counts["community_qr"] = max(counts["community_qr"] - counts["burst"], 2)
        wechat = self.n - sum(counts.values()) - spouses
        minimum = 6 * self.cases + 40
        if wechat < minimum:
            raise ValueError(f"{self.n} people are too few for this season's mix (WeChat would get {wechat})")
        counts["wechat"] = wechat

        for role, count in counts.items():
            if role == "burst":
                continue
            for nth in range(count):
                person = self._person(role)
                person.extra["nth"] = nth
                self.persons.append(person)
        for index, size in enumerate(bursts):
            district = self._district()
            community = 1 + rng.randrange(self.communities[district])
            for _ in range(size):
                person = self._person("burst", district=district, community=community)
                person.extra["burst"] = index
                self.persons.append(person)
        soldiers = [p for p in self.persons if p.role == "veteran"]
        for soldier in soldiers[:spouses]:
            spouse = self._person("spouse", district=soldier.district, community=soldier.community)
            soldier.extra["spouse"] = spouse
            self.persons.append(spouse)
        assert len(self.persons) == self.n
        rng.shuffle(self.persons)

    def _count(self, event: str, minimum: int = 1) -> int:
        return max(minimum, round(EVENT_SHARES[event] * self.n))

    def _district(self, rural: bool = False) -> str:
        if rural:
            choices = [d for d in self.districts if d in RURAL] or self.districts
            return self.rng.choice(choices)
        return self.rng.choices(self.districts, weights=self.district_weights)[0]

    def _person(self, role: str, *, district: str | None = None, community: int | None = None) -> _Person:
        rng = self.rng
        district = district or self._district(rural=role == "migrant")
        community = community or 1 + rng.randrange(self.communities[district])
        sex: Sex = rng.choice(("male", "female"))
        extra: dict[str, Any] = {}
        origin = district
        permit = False
        if role == "veteran":
            sex, born = "male", self._aged(20, 28)
        elif role == "spouse":
            sex, born = "female", self._aged(20, 30)
        elif role == "newborn":
            start = date(self.Y, 1, 1)
            born = start + timedelta(days=rng.randrange((date(self.Y, 6, 30) - start).days + 1))
        elif role == "university":
            extra["new"] = rng.random() < 0.35
            born = self._aged(17, 18) if extra["new"] else self._aged(19, 22)
            if rng.random() < 0.5:
                origin = rng.choice(ORIGINS)
        elif role == "school":
            born = self._aged(6, 16)
        elif role == "community_cash":
            born = self._aged(60, 92) if rng.random() < 0.85 else self._aged(40, 59)
        elif role in ("community_qr", "burst"):
            born = self._aged(18, 59) if rng.random() < 0.7 else self._aged(60, 85)
        elif role == "tax":
            born = self._aged(22, 59)
        elif role == "migrant":
            born = self._aged(20, 55)
        elif role == "never":
            born = self._aged(18, 45) if rng.random() < 0.8 else self._aged(46, 70)
        elif role == "employee_lapse":
            born = self._aged(25, 55)
        elif role == "assistance_new":
            born = self._aged(30, 80)
        elif role == "subsidised":
            first = rng.choices(list(SUBSIDY_MIX), weights=list(SUBSIDY_MIX.values()))[0]
            extra["categories"] = [first]
            born = {
                "scattered_orphan": lambda: self._aged(3, 15),
                "low_income_elderly": lambda: self._aged(60, 90),
                "family_planning_special": lambda: self._aged(50, 80),
            }.get(first, lambda: self._aged(18, 85))()
        else:  # wechat
            roll = rng.random()
            born = self._aged(1, 17) if roll < 0.25 else self._aged(18, 59) if roll < 0.85 else self._aged(60, 80)
        adult = self.reference_day.year - born.year >= 20
        if role in ("wechat", "community_qr", "tax") and adult and rng.random() < 0.08:
            permit, origin = True, rng.choice(ORIGINS)
        person = _Person(
            id_number=self._new_id(origin, born, sex),
            name=rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2, 2)))),
            born=born,
            sex=sex,
            district=district,
            community=community,
            role=role,
            residence_permit=permit,
            hukou_district=origin if permit else None,
            extra=extra,
        )
        return person

    def _aged(self, youngest: int, oldest: int) -> date:
        """A birth date of someone aged ``youngest``…``oldest`` when the period starts."""
        ref = self.reference_day
        latest = date(ref.year - youngest, ref.month, ref.day) - timedelta(days=1)
        earliest = date(ref.year - oldest - 1, ref.month, ref.day)
        return earliest + timedelta(days=self.rng.randrange((latest - earliest).days + 1))

    def _new_id(self, division: str, born: date, sex: Sex) -> str:
        while True:
            number = generate_id_number(
                self.rng, division_code=division, birth_date=born, sex=sex
            )
            if number not in self._ids:
                self._ids.add(number)
                return number

    def _new_phone(self) -> str:
        while True:
            phone = "1" + self.rng.choice("3578") + "".join(self.rng.choice("0123456789") for _ in range(9))
            if phone not in self._phones:
                self._phones.add(phone)
                return phone

    def _households(self) -> None:
        """Households of 1–5 people of one community; 35% share one phone; one payment account each."""
        rng = self.rng
        by_community: dict[tuple[str, int], list[_Person]] = {}
        for person in self.persons:
            if person.role in ("university", "newborn", "veteran", "spouse"):
                continue
            by_community.setdefault((person.district, person.community), []).append(person)
        self.households: dict[str, list[list[_Person]]] = {}
        number = itertools.count(1)
        for (district, _), members in by_community.items():
            while members:
                size = rng.choices((1, 2, 3, 4, 5), weights=(25, 30, 22, 15, 8))[0]
                household, members = members[:size], members[size:]
                self._make_household(household, f"hh-{district}-{next(number):06d}")
                self.households.setdefault(district, []).append(household)
        for person in self.persons:
            if person.role == "university":
                person.phone = self._new_phone()
                person.payer_account = self._new_account()
            elif person.role == "veteran":
                couple = [person] + ([person.extra["spouse"]] if "spouse" in person.extra else [])
                self._make_household(couple, f"hh-{person.district}-{next(number):06d}")
            elif person.role == "newborn":
                families = self.households.get(person.district)
                if families:
                    family = rng.choice(families)
                    person.household_id = family[0].household_id
                    person.phone = next((m.phone for m in family if m.phone), None)
                    person.payer_account = family[0].payer_account
                else:
                    self._make_household([person], f"hh-{person.district}-{next(number):06d}")

    def _make_household(self, members: list[_Person], household_id: str) -> None:
        rng = self.rng
        shared = self._new_phone() if rng.random() < 0.35 else None
        account = self._new_account()
        for member in members:
            member.household_id = household_id
            member.payer_account = account
            age = member.age_on(self.reference_day)
            if shared is not None:
                member.phone = shared
            elif age >= 16 and not (age >= 80 and rng.random() < 0.3):
                member.phone = self._new_phone()
        fallback = next((m.phone for m in members if m.phone), None)
        for member in members:
            if member.phone is None and member.age_on(self.reference_day) < 16:
                member.phone = fallback

    def _new_account(self) -> str:
        return f"wxp-{self.rng.getrandbits(48):012x}"

    # ---- who gets into trouble --------------------------------------------------------------

    def _troubles(self) -> None:
        """Bad input and planted cases, at most one per person."""
        rng = self.rng
        free = self.persons

        def pick(count: int, roles: tuple[str, ...], trouble: str, *, older: int | None = None) -> list[_Person]:
            pool = [p for p in free if p.role in roles and p.trouble is None]
            if older is not None:
                aged = [p for p in pool if p.age_on(self.reference_day) >= older]
                pool = aged if len(aged) >= count else pool
            chosen = rng.sample(pool, min(count, len(pool)))
            for person in chosen:
                person.trouble = trouble
            return chosen

        pick(self._count("amount_mismatch"), ("wechat", "community_qr", "tax", "subsidised"), "amount_mismatch")
        pick(self._count("invalid_id_number"), ("wechat", "community_qr"), "invalid_id_number")
        no_enrollment = self._count("no_enrollment")
        if self.previous_year_priced:  # a payment for the year before needs that year's table
            tax_cases = pick(max(1, no_enrollment // 2), ("tax",), "payment_before_enrollment")
            pick(no_enrollment - len(tax_cases), ("wechat",), "payment_for_wrong_year")
        else:
            pick(no_enrollment, ("tax",), "payment_before_enrollment")
        roles: tuple[str, ...]
        for kind, roles in (
            ("malformed_registration", ("wechat", "community_qr", "tax")),
            ("malformed_enrollment", ("wechat", "community_qr")),
            ("malformed_payment", ("wechat", "community_qr", "tax")),
            ("malformed_roster", ("subsidised",)),
        ):
            pick(1, roles, kind)
        for _ in range(self._count("malformed") - 4):
            kind = rng.choice(("malformed_enrollment", "malformed_payment", "malformed_registration"))
            pick(1, ("wechat", "community_qr"), kind)
        late = self._count("outside_enrollment_period", 2)
        pick(1, ("never",), "late_payment")
        pick(late - 1, ("never",), "late_enrollment")
        pick(self._count("awaiting_payment"), ("never",), "awaiting_payment")
        pick(self.cases, ("wechat",), "payment_after_death", older=60)
        # Shared contacts: one more household than the policy's limit.
        fraud = self.policy.fraud
        for kind, roles, limit in (
            ("shared_phone", ("wechat", "community_qr", "tax", "community_cash"), fraud.phone_max_people),
            ("shared_account", ("wechat",), fraud.payer_account_max_people),
        ):
            for case in range(self.cases):
                pool = [p for p in free if p.role in roles and p.trouble is None]
                rng.shuffle(pool)
                seen: set[str | None] = set()
                group = []
                for person in pool:
                    if person.household_id not in seen:
                        seen.add(person.household_id)
                        group.append(person)
                    if len(group) == limit + 1:
                        break
                shared = self._new_phone() if kind == "shared_phone" else self._new_account()
                for person in group:
                    person.trouble = kind
                    person.extra["shared"] = (case, shared)
                    if kind == "shared_phone":
                        person.phone = shared
                    else:
                        person.payer_account = shared
        pick(self._count("death"), ("wechat", "community_qr", "community_cash", "tax"), "dies", older=65)

    # ---- messages ---------------------------------------------------------------------------

    def emit(self, subject: str, sender: str, at: datetime, body: dict[str, Any], *, bad: str | None = None) -> _Draft:
        msg_id = f"{sender}-{next(self._numbers):07d}"
        full = {"msg_id": msg_id, "occurred_at": at.isoformat()}
        full.update((k, v.isoformat() if isinstance(v, date) else v) for k, v in body.items() if v is not None)
        draft = _Draft(at, _RANK[subject], next(self._seq), subject, full)
        self.drafts.append(draft)
        if bad is not None:
            self.bad.append(ExpectedBadInput(msg_id, bad))
        return draft

    def _malformed(self, subject: str, sender: str, at: datetime, body: dict[str, Any], missing: str) -> None:
        draft = self.emit(subject, sender, at, body, bad="malformed")
        del draft.body[missing]

    def _targets(self) -> None:
        population = Counter(p.district for p in self.persons if p.role not in ("newborn", "veteran", "spouse"))
        at = self._clock(self.period_start - timedelta(days=16), 9, 10)
        for minute, district in enumerate(self.districts):
            count = round(population[district] / 0.99)
            self.emit(
                TARGET, "msb", at + timedelta(minutes=minute),
                {"district": district, "coverage_year": self.Y, "target_count": count},
            )  # fmt: skip

    def _register(self, person: _Person, at: datetime | None = None) -> None:
        if at is None:
            first = self.period_start - timedelta(days=62)
            at = self._clock(first + timedelta(days=self.rng.randrange(46)), 9, 17)
        body = {
            "id_number": person.id_number,
            "name": person.name,
            "district": person.district,
            "phone": person.phone,
            "household_id": person.household_id,
            "residence_permit": True if person.residence_permit else None,
            "hukou_district": person.hukou_district,
        }
        if person.trouble == "malformed_registration":
            self._malformed(REGISTERED, "hr", at, body, "name")
            at += timedelta(minutes=self.rng.randint(5, 30))
        self.emit(REGISTERED, "hr", at, body)

    def _enroll(
        self,
        person: _Person,
        at: datetime,
        *,
        category: str,
        channel: str,
        operator: str | None = None,
        org: str | None = None,
        migrant: bool = False,
    ) -> datetime:
        """The enrollment request (after the bad version the person's trouble calls for); returns
        when the good one was sent."""
        body = {
            "id_number": person.id_number,
            "coverage_year": self.Y,
            "category": category,
            "channel": channel,
            "district": person.district,
            "operator_id": operator,
            "org_id": org,
            "migrant_worker": True if migrant else None,
            "birth_date": person.born if category == "newborn" else None,
        }
        sender = _SENDER[channel]
        if person.trouble == "invalid_id_number":
            mistyped = {**body, "id_number": _miskeyed(person.id_number)}
            self.emit(ENROLLMENT, sender, at, mistyped, bad="invalid_id_number")
            at += timedelta(minutes=self.rng.randint(2, 10))
        elif person.trouble == "malformed_enrollment":
            self._malformed(ENROLLMENT, sender, at, body, "district")
            at += timedelta(minutes=self.rng.randint(2, 10))
        self.emit(ENROLLMENT, sender, at, body)
        return at

    def _pay(
        self,
        person: _Person,
        paid_at: datetime,
        *,
        amount: int,
        channel: str,
        reported: datetime | None = None,
        operator: str | None = None,
        collector: str | None = None,
        payer: bool = False,
        bad: str | None = None,
    ) -> _Draft:
        """The payment (after the bad version the person's trouble calls for)."""
        rng = self.rng
        reported = reported or paid_at + timedelta(seconds=rng.randint(5, 90))
        body: dict[str, Any] = {
            "id_number": person.id_number,
            "coverage_year": self.Y,
            "amount_fen": amount,
            "channel": channel,
            "paid_at": paid_at,
            "collector_id": collector,
            "payer_account": person.payer_account if payer else None,
            "operator_id": operator,
        }
        sender = "cash" if collector else _SENDER.get(channel, "pay")
        if bad is not None:
            return self.emit(PAYMENT, sender, reported, body, bad=bad)
        retry = timedelta(minutes=rng.randint(2, 10))
        if person.trouble == "amount_mismatch":
            wrong = {**body, "amount_fen": self._wrong_amount(amount)}
            self.emit(PAYMENT, sender, reported, wrong, bad="amount_mismatch")
        elif person.trouble == "malformed_payment":
            self._malformed(PAYMENT, sender, reported, body, "amount_fen")
        elif person.trouble == "payment_for_wrong_year":
            self.emit(PAYMENT, sender, reported, {**body, "coverage_year": self.Y - 1}, bad="no_enrollment")
        else:
            retry = timedelta(0)
        body["paid_at"] = paid_at + retry
        draft = self.emit(PAYMENT, sender, reported + retry, body)
        if collector is not None:
            self.cash.setdefault(collector, []).append(draft)
        return draft

    def _wrong_amount(self, due: int) -> int:
        """Last year's contribution, twice the amount, a yuan off, the full contribution …"""
        previous = self.policy.funding_year(self.F - 1).individual_contribution_fen if self.previous_year_priced else 0
        options = [a for a in (previous, due * 2, due + 100, self.contribution, due - 100) if a > 0 and a != due]
        return self.rng.choice(options)

    # ---- time -------------------------------------------------------------------------------

    def _day_weight(self, day: date) -> float:
        if (day - self.period_start).days < 15:
            return 3.0  # the opening fortnight
        if day >= self.check_up_start:
            return 2.5  # check-up: the committees remind everyone not yet enrolled
        if (self.check_up_start - day).days <= 10:
            return 1.5
        if day.month == 10 and day.day <= 7:
            return 0.5  # National Day holidays
        return 1.0

    def _period_day(self, desk: bool = False, *, until: date | None = None) -> date:
        weights = self._desk_weights if desk else self._online_weights
        while True:
            day = self.rng.choices(self._period_days, cum_weights=weights)[0]
            if until is None or day <= until:
                return day

    def _clock(self, day: date, start_hour: float, end_hour: float) -> datetime:
        seconds = self.rng.randrange(int(start_hour * 3600), int(end_hour * 3600))
        return datetime.combine(day, time(), CST) + timedelta(seconds=seconds)

    def _between(self, first: date, last: date) -> date:
        return first + timedelta(days=self.rng.randrange((last - first).days + 1))

    # ---- stories ----------------------------------------------------------------------------

    def _due(self, person: _Person) -> int:
        categories = person.extra.get("categories")
        if not categories:
            return self.contribution
        best = max(categories, key=lambda c: self.policy.subsidy_rate(self.F, c))
        return self.policy.individual_share_fen(self.F, best)

    def _ordinary_category(self, person: _Person, day: date) -> str:
        if person.residence_permit:
            return "residence_permit"
        if person.age_on(day) < 18 and self.rng.random() < 0.4:
            return "minor_of_employee"
        return "resident"

    def _wechat(self, person: _Person) -> None:
        rng = self.rng
        if person.trouble == "payment_after_death":
            self._paid_after_death(person)
            return
        day = self._period_day()
        category = self._ordinary_category(person, day)
        at = self._enroll(person, self._clock(day, 7, 22.5), category=category, channel="wechat")
        if rng.random() < 0.92:
            paid = at + timedelta(seconds=rng.randint(30, 1200))
        else:
            later = min(day + timedelta(days=rng.randint(1, 10)), self.period_end)
            paid = max(self._clock(later, 7, 22.5), at + timedelta(minutes=1))
        self._pay(person, paid, amount=self._due(person), channel="wechat", payer=True)

    def _community(self, person: _Person, *, channel: str | None = None, day: date | None = None) -> None:
        rng = self.rng
        channel = channel or person.role
        day = day or self._period_day(desk=True)
        community = self._community_id(person)
        operator = self._operator(person)
        category = "resident" if person.role == "subsidised" else self._ordinary_category(person, day)
        at = self._enroll(
            person, self._clock(day, 8.5, 17), category=category, channel=channel, operator=operator, org=community
        )
        paid = at + timedelta(seconds=rng.randint(120, 900))
        if channel == "community_qr" and rng.random() < 0.1:
            later = min(day + timedelta(days=rng.randint(1, 14)), self.period_end)
            paid = max(self._clock(later, 8.5, 17), paid)
        cash = channel == "community_cash"
        self._pay(
            person, paid, amount=self._due(person), channel=channel, operator=operator,
            collector=community if cash else None, payer=not cash,
        )  # fmt: skip

    def _operator(self, person: _Person) -> str:
        """One of the two desk operators of the person's community."""
        return f"op-{person.district}-{person.community:02d}-{self.rng.randint(1, 2)}"

    def _community_id(self, person: _Person) -> str:
        kind = "cun" if person.district in RURAL else "sq"
        return f"{person.district}-{kind}-{person.community:02d}"

    def _tax(self, person: _Person) -> None:
        rng = self.rng
        org = f"tax-{person.district}"
        if person.trouble == "payment_before_enrollment":
            # Paid through the tax app, reported at once; the enrollment was keyed in the next
            # morning, and the office resent the payment in the afternoon.
            day = self._period_day(until=self.period_end - timedelta(days=2))
            paid, next_day = self._clock(day, 8, 20), day + timedelta(days=1)
            early = paid + timedelta(minutes=10)
            self._pay(person, paid, amount=self.contribution, channel="tax", reported=early, bad="no_enrollment")
            self._enroll(person, self._clock(next_day, 9, 11), category="resident", channel="tax", org=org)
            self._pay(person, paid, amount=self.contribution, channel="tax", reported=self._clock(next_day, 14, 17))
            return
        day = self._period_day()
        category = self._ordinary_category(person, day)
        at = self._enroll(person, self._clock(day, 8, 22), category=category, channel="tax", org=org)
        paid = at + timedelta(seconds=rng.randint(60, 1800))
        reported = self._clock(day + timedelta(days=1), 8, 11)
        self._pay(person, paid, amount=self.contribution, channel="tax", reported=reported)

    def _universities(self) -> None:
        """Universities enroll their students in September in batches and collect the fee with
        tuition (the day of collection), then report the payments in October."""
        rng = self.rng
        by_district: dict[str, list[_Person]] = {}
        for student in (p for p in self.persons if p.role == "university"):
            by_district.setdefault(student.district, []).append(student)
        assigned: dict[str, list[_Person]] = {}
        for district, students in by_district.items():
            count = max(1, len(students) // 150)
            for student in students:
                assigned.setdefault(f"univ-{district}-{rng.randint(1, count):02d}", []).append(student)
        for university, members in assigned.items():
            batch_days = sorted({self.period_start + timedelta(days=rng.randint(2, 19)) for _ in range(3)})
            report_day = self.period_start + timedelta(days=rng.randint(39, 60))
            report = self._clock(report_day, 9, 11)
            for i, student in enumerate(members):
                day = batch_days[i % len(batch_days)]
                at = self._clock(day, 9, 10) + timedelta(seconds=i)
                category = "university_new" if student.extra["new"] else "student"
                self._enroll(student, at, category=category, channel="university", org=university)
                collected = min(day + timedelta(days=rng.randint(0, 5)), self.period_start + timedelta(days=29))
                paid = max(self._clock(collected, 9, 17), at + timedelta(minutes=1))
                reported = report + timedelta(seconds=i)
                self._pay(student, paid, amount=self.contribution, channel="university", reported=reported)

    def _schools(self) -> None:
        """Each school enrolls its pupils in one batch; the parents pay through WeChat."""
        rng = self.rng
        by_district: dict[str, list[_Person]] = {}
        for pupil in (p for p in self.persons if p.role == "school"):
            by_district.setdefault(pupil.district, []).append(pupil)
        for district, pupils in by_district.items():
            schools = [f"school-{district}-{i + 1:02d}" for i in range(max(1, len(pupils) // 80))]
            for index, school in enumerate(schools):
                members = pupils[index :: len(schools)]
                day = self.period_start + timedelta(days=rng.randint(5, 60))
                start = self._clock(day, 14, 15)
                for i, pupil in enumerate(members):
                    at = start + timedelta(seconds=5 * i)
                    at = self._enroll(pupil, at, category="student", channel="school", org=school)
                    pay_day = min(day + timedelta(days=rng.randint(0, 5)), self.period_end)
                    paid = max(self._clock(pay_day, 19, 22), at + timedelta(minutes=1))
                    self._pay(pupil, paid, amount=self.contribution, channel="wechat", payer=True)

    def _bursts(self) -> None:
        """Planted: an operator enrolling more than the hourly limit within one hour."""
        rng = self.rng
        cohorts: dict[int, list[_Person]] = {}
        for person in self.persons:
            if person.role == "burst":
                cohorts.setdefault(person.extra["burst"], []).append(person)
        for index, cohort in sorted(cohorts.items()):
            first = cohort[0]
            operator = f"op-{first.district}-{first.community:02d}-x{index + 1}"
            community = self._community_id(first)
            day = self._period_day(desk=True, until=self.period_end - timedelta(days=1))
            start = self._clock(day, 9, 11)
            span = rng.randint(40 * 60, 55 * 60)
            moments = sorted(rng.randrange(span) for _ in cohort)
            for person, offset in zip(cohort, moments, strict=True):
                at = self._enroll(
                    person, start + timedelta(seconds=offset), category="resident", channel="community_qr",
                    operator=operator, org=community,
                )  # fmt: skip
                paid = at + timedelta(seconds=rng.randint(30, 180))
                self._pay(
                    person, paid, amount=self.contribution, channel="community_qr", operator=operator, payer=True
                )
            limit = self.policy.fraud.operator_burst_per_hour
            self.planted.append(
                Planted(
                    kind="operator_burst", rule="operator_anomaly", id_number=None,
                    subject_key_hint=f"operator:{operator}",
                    description=f"operator {operator} enrolled {len(cohort)} people within {span // 60} minutes "
                    f"on {day} (limit {limit} an hour)",
                )
            )  # fmt: skip

    def _migrant(self, person: _Person) -> None:
        """Migrant rural workers (农村外出务工人员) pay when they come home for Spring Festival."""
        rng = self.rng
        if self.migrant_end is None:
            self._wechat(person)
            return
        desk = rng.random() < 0.3
        channel = "community_qr" if desk else "wechat"
        operator = self._operator(person) if desk else None
        org = self._community_id(person) if desk else None
        pay_day = self._between(date(self.Y, 1, 15), self.migrant_end)
        in_december = rng.random() < 0.5
        enroll_day = self._between(self.period_end - timedelta(days=30), self.period_end) if in_december else pay_day
        at = self._enroll(
            person, self._clock(enroll_day, 8.5, 17), category="resident", channel=channel, operator=operator,
            org=org, migrant=True,
        )  # fmt: skip
        paid = self._clock(pay_day, 8.5, 20) if in_december else at + timedelta(seconds=rng.randint(60, 900))
        self._pay(person, paid, amount=self.contribution, channel=channel, operator=operator, payer=True)

    def _subsidised(self, person: _Person) -> None:
        """On the August roster (or added during the period); fully subsidised people are
        enrolled by the ledger, the others enroll and pay their share."""
        rng = self.rng
        categories: list[str] = person.extra["categories"]
        if rng.random() < 0.1:
            second = rng.choice([c for c in SUBSIDY_MIX if c not in categories and c != "scattered_orphan"])
            categories.append(second)
        august = rng.random() < 0.85
        if august:
            listed = self._between(self.period_start - timedelta(days=12), self.period_start - timedelta(days=1))
        else:
            month = rng.choice((9, 10, 11))
            listed = date(self.F, month, rng.randint(1, 25))
        for i, category in enumerate(categories):
            at = self._clock(listed + timedelta(days=i), 9, 17)
            body = {
                "id_number": person.id_number,
                "coverage_year": self.Y,
                "subsidy_category": category,
                "department": DEPARTMENT[category],
                "roster": f"{at:%Y-%m}",
            }
            if person.trouble == "malformed_roster" and i == 0:
                self._malformed(SUBSIDY, DEPARTMENT[category], at, body, "department")
                at += timedelta(minutes=rng.randint(5, 30))
            self.emit(SUBSIDY, DEPARTMENT[category], at, body)
        if self._due(person) == 0:
            return  # enrolled by the ledger when the roster arrives
        if rng.random() < 0.1 and person.trouble is None:
            return  # listed for door-to-door mobilisation, never pays
        start = max(listed + timedelta(days=len(categories)), self.period_start)
        day = self._period_day(desk=True)
        while day < start:
            day = self._period_day(desk=True)
        roll = rng.random()
        if person.trouble == "amount_mismatch" or roll < 0.4:
            self._community(person, channel="community_qr", day=day)
        elif roll < 0.7:
            self._community(person, channel="community_cash", day=day)
        else:
            at = self._enroll(person, self._clock(day, 7, 22.5), category="resident", channel="wechat")
            paid = at + timedelta(seconds=rng.randint(30, 900))
            self._pay(person, paid, amount=self._due(person), channel="wechat", payer=True)

    def _never(self, person: _Person) -> None:
        """Never covered: most do nothing; some enroll and never pay; some come too late."""
        reason = "outside_enrollment_period" if self.refuses_late else None
        if person.trouble == "late_enrollment":
            day = self._between(date(self.Y, 1, 5), date(self.Y, 6, 30))
            self.emit(
                ENROLLMENT, "wx", self._clock(day, 7, 22.5),
                {"id_number": person.id_number, "coverage_year": self.Y, "category": "resident", "channel": "wechat",
                 "district": person.district},
                bad=reason,
            )  # fmt: skip
        elif person.trouble == "late_payment":
            day = self._between(self.period_end - timedelta(days=20), self.period_end)
            self._enroll(person, self._clock(day, 7, 22.5), category="resident", channel="wechat")
            paid = self._clock(self._between(date(self.Y, 1, 2), date(self.Y, 1, 20)), 7, 22.5)
            self._pay(person, paid, amount=self.contribution, channel="wechat", payer=True, bad=reason)
        elif person.trouble == "awaiting_payment":
            day = self._period_day()
            self._enroll(person, self._clock(day, 7, 22.5), category="resident", channel="wechat")

    def _employee_lapse(self, person: _Person) -> None:
        """Employee insurance (职工医保) ends early in Y; a cross-scheme enrollment follows, within
        the lapse the policy forgives (no waiting period) or after it (waiting period)."""
        rng = self.rng
        policy = self.policy
        nth = person.extra["nth"]
        waiting = nth == 1 or (nth > 1 and rng.random() < 0.2)
        month = rng.randint(1, 3)
        until = add_months(date(self.Y, month, 1), 1) - timedelta(days=1)
        months = rng.randint(policy.employee_min_continuous_months, 180)
        since = add_months(date(self.Y, month, 1), -(months - 1))
        spare = months - policy.employee_min_continuous_months  # back payments that leave enough months
        back_paid = 0
        if not policy.employee_back_payments_count and spare > 0 and rng.random() < 0.2:
            back_paid = rng.randint(1, min(12, spare))
        if rng.random() < 0.5:  # synced in August, still insured
            synced = self._clock(self.period_start - timedelta(days=rng.randint(13, 16)), 9, 17)
            so_far = (synced.year - since.year) * 12 + synced.month - since.month
            body = {"id_number": person.id_number, "insured_from": since, "continuous_months": so_far}
            self.emit(EMPLOYEE, "ei", synced, body)
        reported = self._clock(until + timedelta(days=rng.randint(3, 12)), 9, 17)
        self.emit(
            EMPLOYEE, "ei", reported,
            {"id_number": person.id_number, "insured_from": since, "insured_until": until, "continuous_months": months,
             "back_paid_months": back_paid or None},
        )  # fmt: skip
        forgiven = add_months(until, policy.employee_lapse_months)
        if waiting:
            last = min(forgiven + timedelta(days=120), date(self.Y, 12, 15))
            pay_day = self._between(forgiven + timedelta(days=1), last)
        else:
            pay_day = self._between(reported.date() + timedelta(days=1), forgiven)
        self._outside_period_enrollment(person, pay_day, "cross_scheme")

    def _outside_period_enrollment(self, person: _Person, day: date, category: str) -> None:
        """Enrolled and paid in one go, through WeChat or at the community's desk (QR code)."""
        rng = self.rng
        if rng.random() < 0.7:
            at = self._enroll(person, self._clock(day, 7, 22), category=category, channel="wechat")
            paid = at + timedelta(seconds=rng.randint(30, 900))
            self._pay(person, paid, amount=self._due(person), channel="wechat", payer=True)
        else:
            operator = self._operator(person)
            at = self._enroll(
                person, self._clock(day, 8.5, 17), category=category, channel="community_qr", operator=operator,
                org=self._community_id(person),
            )  # fmt: skip
            paid = at + timedelta(seconds=rng.randint(60, 900))
            self._pay(person, paid, amount=self._due(person), channel="community_qr", operator=operator, payer=True)

    def _newborn(self, person: _Person) -> None:
        """Registered within a month of birth, enrolled by the parents (85% within the window)."""
        rng = self.rng
        registered = self._clock(person.born + timedelta(days=rng.randint(7, 30)), 9, 17)
        self._register(person, registered)
        window_end = add_months(person.born, self.policy.newborn_window_months)
        nth = person.extra["nth"]
        if nth == 0 or (nth > 1 and rng.random() < 0.85):
            day = self._between(registered.date() + timedelta(days=1), window_end)
        else:
            day = self._between(window_end + timedelta(days=1), window_end + timedelta(days=60))
        at = self._enroll(person, self._clock(day, 7, 22), category="newborn", channel="wechat")
        paid = at + timedelta(seconds=rng.randint(30, 900))
        self._pay(person, paid, amount=self.contribution, channel="wechat", payer=True)

    def _veteran(self, soldier: _Person) -> None:
        """Discharged in March or September of Y (退出现役), home, registered, then enrolled."""
        rng = self.rng
        discharged = date(self.Y, rng.choice((3, 9)), rng.randint(1, 15))
        spouse: _Person | None = soldier.extra.get("spouse")
        registered = self._clock(discharged + timedelta(days=rng.randint(2, 10)), 9, 17)
        for person in (soldier, spouse):
            if person is not None:
                self._register(person, registered + timedelta(minutes=rng.randint(1, 20)))
        notified = self._clock(registered.date() + timedelta(days=rng.randint(1, 7)), 9, 17)
        self.emit(
            DISCHARGE, "va", notified,
            {"id_number": soldier.id_number, "discharged_on": discharged,
             "spouse_id_number": spouse.id_number if spouse else None},
        )  # fmt: skip
        for person in (soldier, spouse):
            if person is not None:
                day = notified.date() + timedelta(days=rng.randint(3, 45))
                self._outside_period_enrollment(person, day, "veteran")

    def _assistance_new(self, person: _Person) -> None:
        """Newly identified during Y (动态新增): a monthly roster; fully subsidised people are
        enrolled by the ledger, the others enroll as ``assistance_new`` and pay their share."""
        rng = self.rng
        first = person.extra["nth"] == 0  # one fully subsidised, whom the ledger enrolls itself
        category = "extreme_poverty" if first else rng.choice(("dibao", "poverty_returned", "extreme_poverty"))
        person.extra["categories"] = [category]
        month = rng.randint(3, 6)
        at = self._clock(date(self.Y, month, rng.randint(1, 25)), 9, 17)
        self.emit(
            SUBSIDY, DEPARTMENT[category], at,
            {"id_number": person.id_number, "coverage_year": self.Y, "subsidy_category": category,
             "department": DEPARTMENT[category], "roster": f"{at:%Y-%m}"},
        )  # fmt: skip
        if self._due(person) > 0:
            day = at.date() + timedelta(days=rng.randint(2, 20))
            self._outside_period_enrollment(person, day, "assistance_new")

    # ---- deaths -----------------------------------------------------------------------------

    def _paid_after_death(self, person: _Person) -> None:
        """Planted: enrolled, died before paying, then a payment dated after the death."""
        rng = self.rng
        day = self._between(self.period_start, self.period_start + timedelta(days=40))
        self._enroll(person, self._clock(day, 7, 22), category="resident", channel="wechat")
        died = day + timedelta(days=rng.randint(5, 30))
        registered = self._clock(died + timedelta(days=rng.randint(1, 5)), 9, 17)
        self.emit(DEATH, "ps", registered, {"id_number": person.id_number, "date_of_death": died})
        paid = self._clock(registered.date() + timedelta(days=rng.randint(2, 20)), 7, 22)
        draft = self._pay(person, paid, amount=self.contribution, channel="wechat", payer=True, bad="deceased")
        self.planted.append(
            Planted(
                kind="payment_after_death", rule="after_death", id_number=person.id_number, subject_key_hint=None,
                description=f"died {died}, death registered {registered.date()}; a WeChat payment dated "
                f"{paid.date()} (msg {draft.body['msg_id']}) is refused as deceased",
            )
        )  # fmt: skip

    def _deaths(self) -> None:
        """Deaths during the coverage year, registered within ten days."""
        rng = self.rng
        for person in self.persons:
            if person.trouble != "dies":
                continue
            died = self._between(date(self.Y, 1, 10), date(self.Y, 12, 20))
            at = self._clock(died + timedelta(days=rng.randint(1, 10)), 9, 17)
            self.emit(DEATH, "ps", at, {"id_number": person.id_number, "date_of_death": died})

    # ---- cash -------------------------------------------------------------------------------

    def _reused_receipts(self) -> None:
        """Planted: a committee reports a payment under a receipt number already used; the
        refusal is followed by the payment under a fresh receipt minutes later."""
        rng = self.rng
        self._reuses: list[tuple[_Draft, _Draft]] = []
        candidates = []  # one payment per committee, with the receipts it took before
        for drafts in self.cash.values():
            options = [(d, [e for e in drafts if e.at < d.at - timedelta(minutes=1)]) for d in drafts]
            options = [(d, earlier) for d, earlier in options if earlier]
            if options:
                candidates.append(rng.choice(options))
        for draft, earlier in rng.sample(candidates, min(self.cases, len(candidates))):
            original = rng.choice(earlier)
            body = {k: v for k, v in draft.body.items() if k not in ("msg_id", "occurred_at")}
            refused = self.emit(PAYMENT, "cash", draft.at, body, bad="duplicate_receipt")
            shift = timedelta(minutes=rng.randint(3, 8))
            draft.at += shift
            draft.body["occurred_at"] = draft.at.isoformat()
            draft.body["paid_at"] = (datetime.fromisoformat(draft.body["paid_at"]) + shift).isoformat()
            self._reuses.append((refused, original))

    def _number_receipts(self) -> None:
        """Each committee's receipt book, numbered in the order it took the cash."""
        for collector, drafts in self.cash.items():
            drafts.sort(key=lambda d: (d.body["paid_at"], d.seq))
            for number, draft in enumerate(drafts, start=1):
                draft.body["receipt_no"] = f"HF{self.F}-{collector}-{number:05d}"
        for refused, original in self._reuses:
            refused.body["receipt_no"] = original.body["receipt_no"]
            self.planted.append(
                Planted(
                    kind="reused_receipt", rule="receipt_reused", id_number=refused.body["id_number"],
                    subject_key_hint=None,
                    description=f"receipt {original.body['receipt_no']} reported again for another person "
                    f"(msg {refused.body['msg_id']}), refused as duplicate_receipt",
                )
            )  # fmt: skip

    def _withholding_collectors(self) -> None:
        """Planted: committees that stop remitting: cash taken from some day on stays with them."""
        rng = self.rng
        days = self.policy.cash_remit_days
        latest = self.period_end - timedelta(days=days + 1)
        candidates = [c for c, drafts in self.cash.items() if any(d.at.date() <= latest for d in drafts)]
        rng.shuffle(candidates)
        self.withheld: dict[str, datetime] = {}
        for collector in candidates[: self.cases]:
            eligible = [d for d in self.cash[collector] if d.at.date() <= latest]
            cutoff = eligible[len(eligible) // 2]
            self.withheld[collector] = cutoff.at
            kept = [d for d in self.cash[collector] if d.at >= cutoff.at]
            self.planted.append(
                Planted(
                    kind="cash_never_remitted", rule="cash_unremitted", id_number=None,
                    subject_key_hint=f"collector:{collector}",
                    description=f"committee {collector} never remits the {len(kept)} receipts "
                    f"({sum(d.body['amount_fen'] for d in kept)} fen) it took from {cutoff.at.date()} on "
                    f"(limit {days} days)",
                )
            )  # fmt: skip

    def _remittances(self) -> None:
        """Every 7–12 days each committee hands the cash it holds to the tax office, naming the
        receipts; a few remittances are first sent with a wrong amount and then corrected."""
        rng = self.rng
        remittances: list[_Draft] = []
        for collector, drafts in self.cash.items():
            cutoff = self.withheld.get(collector)
            held = sorted((d for d in drafts if cutoff is None or d.at < cutoff), key=lambda d: d.at)
            if not held:
                continue
            day = held[0].at.date() + timedelta(days=rng.randint(5, 12))
            taken = 0
            voucher = itertools.count(1)
            while taken < len(held):
                at = self._clock(day, 9, 16)
                batch = [d for d in held[taken:] if d.at < at]
                if batch:
                    taken += len(batch)
                    remittances.append(
                        self.emit(
                            REMITTED, "remit", at,
                            {"collector_id": collector, "amount_fen": sum(d.body["amount_fen"] for d in batch),
                             "voucher_no": f"SJ{self.F}-{collector}-{next(voucher):03d}", "remitted_at": at,
                             "receipt_nos": [d.body["receipt_no"] for d in batch]},
                        )
                    )  # fmt: skip
                day += timedelta(days=rng.randint(7, 12))
        for draft in rng.sample(remittances, min(len(remittances), self._count("remittance_mismatch"))):
            at = draft.at - timedelta(minutes=rng.randint(10, 40))
            body = {k: v for k, v in draft.body.items() if k not in ("msg_id", "occurred_at")}
            body["amount_fen"] = draft.body["amount_fen"] + rng.choice((-100, 100, self.contribution))
            body["remitted_at"] = at.isoformat()
            self.emit(REMITTED, "remit", at, body, bad="amount_mismatch")

    # ---- the season -------------------------------------------------------------------------

    def _season(self) -> Season:
        self.drafts.sort(key=lambda d: (d.at, d.rank, d.seq))
        messages = [Message(d.subject, d.body) for d in self.drafts]
        bad_ids = {b.msg_id for b in self.bad}
        self._shared_contacts(messages, bad_ids)
        order = {m.body["msg_id"]: i for i, m in enumerate(messages)}
        self.bad.sort(key=lambda b: order[b.msg_id])
        return Season(messages=messages, planted=self.planted, bad_input=self.bad, people=self.n)

    def _shared_contacts(self, messages: list[Message], bad_ids: set[str]) -> None:
        """The person whose registration (or payment) takes a shared phone (or account) over the
        policy's limit: the flag is about them."""
        groups: dict[tuple[str, int], list[_Person]] = {}
        for person in self.persons:
            if person.trouble in ("shared_phone", "shared_account"):
                case, _ = person.extra["shared"]
                groups.setdefault((person.trouble, case), []).append(person)
        for (kind, _), members in sorted(groups.items()):
            numbers = {p.id_number for p in members}
            subject = REGISTERED if kind == "shared_phone" else PAYMENT
            last = [
                m.body["id_number"] for m in messages
                if m.subject == subject and m.body.get("id_number") in numbers and m.body["msg_id"] not in bad_ids
            ][-1]  # fmt: skip
            shared = members[0].extra["shared"][1]
            if kind == "shared_phone":
                limit = self.policy.fraud.phone_max_people
                what = f"phone {shared} registered"
            else:
                limit = self.policy.fraud.payer_account_max_people
                what = f"WeChat account {shared} paid"
            self.planted.append(
                Planted(
                    kind=kind, rule="shared_contact", id_number=last, subject_key_hint=None,
                    description=f"{what} for {len(members)} people of {len(members)} households (limit {limit})",
                )
            )  # fmt: skip


def _miskeyed(id_number: str) -> str:
    """The number with a wrong check character, as a mistyped form would carry it."""
    right = check_character(id_number[:17])
    return id_number[:17] + next(c for c in "0123456789X" if c != right and c != id_number[17])
