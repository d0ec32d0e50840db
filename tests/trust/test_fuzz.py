"""Hostile input: property-based fuzzing of every upstream schema and of ``coverage.query``.

Two layers:

- **fast** (no server, many examples): for every subject of ``contract.messages.SCHEMAS``,
  hypothesis builds a valid message of the contract and mutates it — one field given the wrong
  type, a huge string, a negative or overflowing amount, a date or time out of range or without
  its offset, invalid UTF-8, JSON nested 10,000 levels deep, NaN/Infinity, a missing field, a
  duplicate key — or mangles the whole body (empty, not an object, truncated, random bytes).
  Each body goes through ``Ingestor.process`` (what the consumer runs) on an in-memory ledger.
  ``coverage.query`` requests go through ``CoverageAnswerer`` the same way.
- **real** (a real nats-server, the real ``IngestService`` and ``coverage.query`` responder): a
  few hundred of those bodies (the certainly refused ones), plus hand-picked worst ones (a body
  near the server's ``max_payload``, JSON nested a million deep in an ignored field, a broken
  body labelled ``content-type: application/json``), published on ``upstream.*`` with
  ``Nats-Msg-Id``; every one must get exactly one rejection on REJECTED (counted by upstream
  sequence), LEDGER must stay empty, nothing may be retried, and the service must still record
  a valid message and answer a query afterwards. Hostile ``coverage.query`` requests each get
  an ``{"error": …}`` reply (never a timeout, never ``unavailable``).

Days out of the range a message may carry (1900-01-01 to 2199-12-31 in China Standard Time,
``contract.messages.EARLIEST``/``LATEST``) count as malformed, like days that do not exist.

Each mutation states what it must lead to, judged without the product's own decoder: ``malformed``
(certainly not a well-formed message of the contract: wrong type, broken JSON, not UTF-8, a
calendar date that does not exist, a time without offset…), ``refused`` (certainly refused, for
some reason of the contract's vocabulary), ``recorded`` (a valid message with something the
contract says is ignored), or ``any`` (it may still be valid: an extreme but real date, an
in-range amount, a duplicate key). Whatever the expectation, the outcome is final (never an
exception, never ``retry``), a refusal records nothing, and a recorded message is one Python's
strict JSON parser reads as an object with every required field.

The number of cases tried per schema is counted as the tests run (``FUZZ_CASES``) and printed by
``test_fuzz_cases_tried_per_schema`` (``pytest -rP`` or ``-s`` shows it).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

import msgspec
import nats
import pytest
from faststream.nats import NatsBroker
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from consumers.app import IngestService, IngestSettings
from consumers.ingest import Delivery, Ingestor, Verdict
from consumers.streams import IntakeLimits
from contract.coverage import CoverageRequest
from contract.messages import SCHEMAS
from ledger.application import Actor, Ledger
from ledger.commands import ReceivePayment, RequestEnrollment
from ledger.domain.identity import PersonKeyer, generate_id_number
from ledger.domain.policy import load_policy
from ledger.domain.refusals import REASONS
from ledger.jetstream.server import EmbeddedNatsServer
from projections.queries import CoverageAnswerer, CoverageQueryService
from service.bootstrap import answering, connected_broker, ingesting
from tests.integration.ingest_support import rejections

SECRET = b"fuzz-secret-fuzz-secret"
KEYER = PersonKeyer(SECRET)
POLICY = load_policy()
CST = timezone(timedelta(hours=8))
T0 = "2021-09-02T10:00:00+08:00"
_ids = random.Random("fuzz")
BORN = date(1990, 5, 17)
ID = generate_id_number(_ids, birth_date=BORN)
SPOUSE = generate_id_number(_ids, birth_date=date(1992, 3, 8))

FAST_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "400"))
"""Fast-layer examples per upstream subject (and for coverage.query); ``FUZZ_EXAMPLES`` for a longer run."""
REAL_PER_SUBJECT = 30
"""Real-layer bodies per subject: the first certainly refused ones of the strategy's draws."""

FUZZ_CASES: Counter[str] = Counter()
"""Cases tried per schema (fast layer), counted as they run."""
FUZZ_KINDS: Counter[tuple[str, str]] = Counter()
"""Cases tried per schema and expectation."""
REAL_CASES: Counter[str] = Counter()
"""Bodies published per subject, and hostile requests sent to coverage.query (real layer)."""

# ---- the contract, written out independently of contract.messages ---------------------------

CATEGORIES = {"resident", "minor_of_employee", "residence_permit", "student", "university_new",
              "foreign_expert_family", "newborn", "cross_scheme", "veteran", "assistance_new"}  # fmt: skip
CHANNELS = {"wechat", "community_qr", "community_cash", "university", "school", "tax", "auto"}
SUBSIDY_CATEGORIES = {"extreme_poverty", "scattered_orphan", "family_planning_special", "dibao",
                      "low_income_elderly", "poverty_returned", "poverty_unstable", "monitored_low_income"}  # fmt: skip
VOCABULARY = {"category": CATEGORIES, "channel": CHANNELS, "subsidy_category": SUBSIDY_CATEGORIES}

BASES: dict[str, dict[str, Any]] = {
    "upstream.person.registered": {
        "msg_id": "m", "occurred_at": T0, "id_number": ID, "name": "王五", "district": "340104",
        "phone": "13800000000", "household_id": "H-1", "residence_permit": False, "hukou_district": "340104",
    },
    "upstream.enrollment.requested": {
        "msg_id": "m", "occurred_at": T0, "id_number": ID, "coverage_year": 2022, "category": "resident",
        "channel": "wechat", "district": "340104", "operator_id": "op-1", "org_id": "org-1",
        "migrant_worker": False, "birth_date": BORN.isoformat(),
    },
    "upstream.payment.received": {
        "msg_id": "m", "occurred_at": T0, "id_number": ID, "coverage_year": 2022, "amount_fen": 32000,
        "channel": "wechat", "paid_at": T0, "receipt_no": "R-7", "collector_id": "C-7", "payer_account": "acct-1",
        "operator_id": "op-1",
    },
    "upstream.subsidy.listed": {
        "msg_id": "m", "occurred_at": T0, "id_number": ID, "coverage_year": 2022, "subsidy_category": "dibao",
        "department": "civil_affairs", "roster": "2021-08", "effective_from": "2021-09-01",
    },
    "upstream.cash.remitted": {
        "msg_id": "m", "occurred_at": "2021-09-20T10:00:00+08:00", "collector_id": "C-1", "amount_fen": 32000,
        "voucher_no": "V-1", "remitted_at": "2021-09-20T10:00:00+08:00", "receipt_nos": ["R-1"],
    },
    "upstream.death.registered": {
        "msg_id": "m", "occurred_at": "2022-05-02T09:00:00+08:00", "id_number": ID, "date_of_death": "2022-05-01",
    },
    "upstream.employee_insurance.changed": {
        "msg_id": "m", "occurred_at": T0, "id_number": ID, "insured_from": "2018-01-01", "continuous_months": 42,
        "insured_until": "2021-06-30", "back_paid_months": 0,
    },
    "upstream.discharge.registered": {
        "msg_id": "m", "occurred_at": T0, "id_number": ID, "discharged_on": "2021-07-01", "spouse_id_number": SPOUSE,
    },
    "upstream.target.set": {
        "msg_id": "m", "occurred_at": T0, "district": "340104", "coverage_year": 2022, "target_count": 9,
    },
}  # fmt: skip
"""A valid message of each subject, optional fields included (so they are mutated too)."""

_ENROLL_CASH = ("upstream.enrollment.requested", {
    "msg_id": "setup-e", "occurred_at": T0, "id_number": ID, "coverage_year": 2022, "category": "resident",
    "channel": "community_cash", "district": "340104"})  # fmt: skip
SETUP: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "upstream.payment.received": [_ENROLL_CASH],
    "upstream.cash.remitted": [
        _ENROLL_CASH,
        ("upstream.payment.received", {
            "msg_id": "setup-p", "occurred_at": T0, "id_number": ID, "coverage_year": 2022, "amount_fen": 32000,
            "channel": "community_cash", "paid_at": T0, "receipt_no": "R-1", "collector_id": "C-1"}),
    ],
}  # fmt: skip
"""What the ledger must already hold for each base message to be recorded."""

NEIGHBOUR = ("upstream.target.set", {"msg_id": "neighbour", "occurred_at": T0, "district": "340102",
                                     "coverage_year": 2022, "target_count": 5})  # fmt: skip
"""A valid message after the hostile one in the same batch: it must still be recorded."""

QUERY = "coverage.query"
QUERY_BASE = {"id_number": ID, "date": "2022-03-01", "as_of": "2022-06-01T00:00:00+08:00"}

# ---- fields -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    name: str
    kind: str
    """text, code (a text with a fixed form), id, int, bool, date, time, literal, list, unknown."""
    required: bool
    nullable: bool


def fields_of(schema: type) -> list[Field]:
    """Every field of a message (from its Struct), plus one the contract does not know."""
    found = []
    for f in msgspec.inspect.type_info(schema).fields:  # type: ignore[attr-defined]
        t, nullable = f.type, False
        if isinstance(t, msgspec.inspect.UnionType):
            nullable = any(isinstance(x, msgspec.inspect.NoneType) for x in t.types)
            (t,) = [x for x in t.types if not isinstance(x, msgspec.inspect.NoneType)]
        kind = {
            msgspec.inspect.IntType: "int", msgspec.inspect.BoolType: "bool", msgspec.inspect.DateType: "date",
            msgspec.inspect.DateTimeType: "time", msgspec.inspect.LiteralType: "literal",
            msgspec.inspect.VarTupleType: "list", msgspec.inspect.StrType: "text",
        }[type(t)]  # fmt: skip
        if kind == "text" and f.name.endswith("id_number"):
            kind = "id"
        elif kind == "text" and f.name in ("district", "hukou_district", "roster"):
            kind = "code"
        found.append(Field(f.name, kind, f.required, nullable))
    return [*found, Field("zz_not_in_the_contract", "unknown", False, True)]


FIELDS = {subject: fields_of(schema) for subject, schema in SCHEMAS.items()}
FIELDS[QUERY] = fields_of(CoverageRequest)


def test_the_fuzzed_fields_are_the_contracts() -> None:
    for subject, base in BASES.items():
        assert [f.name for f in FIELDS[subject][:-1]] == list(base), subject
    assert set(BASES) == set(SCHEMAS)


# ---- hostile values -----------------------------------------------------------------------


def enc(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


class Case:
    """A body for a subject, what it must lead to (malformed | refused | recorded | any), and
    which mutation made it. Not a dataclass: hypothesis would print a 1 MB body whole."""

    __slots__ = ("subject", "body", "expect", "label", "headers")

    def __init__(self, subject: str, body: bytes, expect: str, label: str, headers: dict[str, str] | None = None) -> None:
        self.subject, self.body, self.expect, self.label = subject, body, expect, label
        self.headers = headers or {}
        """Extra NATS headers (real layer)."""

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 300 else self.body[:300] + b"...(%d bytes)" % len(self.body)
        return f"Case({self.subject}, {self.label}, expect={self.expect}, body={body!r})"


Value = tuple[bytes, str, str]
"""(the JSON text of a field's value, the expectation, a label)."""

extreme_dates = st.dates(date(1900, 1, 1), date(2199, 12, 31)) | st.dates() | st.sampled_from(
    [date(1, 1, 1), date(9999, 12, 31), date(1900, 1, 1), date(2199, 12, 31), date(2000, 2, 29)])  # fmt: skip
"""Real days, mostly those a message may carry (1900–2199, contract.messages), some far outside."""

HUGE_SIZES = [10_000, 100_000, 1_000_000]
huge_text = st.builds(
    lambda ch, size: ch * (size // len(ch.encode())), st.sampled_from(["x", "中", "😀", " "]), st.sampled_from(HUGE_SIZES)
)
"""A huge string (10 kB to 1 MB of UTF-8)."""

INVALID_UTF8 = [b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe4\xb8", b"\x80", b"\xf8\x88\x80\x80\x80",
                b"\xf4\x90\x80\x80", b"\xc3", b"\xe2\x82"]  # fmt: skip


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


invalid_utf8_string = st.builds(
    lambda pre, bad, post: b'"' + pre.encode() + bad + post.encode() + b'"',
    st.sampled_from(["", "a", "中"]),
    st.sampled_from(INVALID_UTF8) | st.binary(min_size=1, max_size=6).filter(_not_utf8),
    st.sampled_from(["", "z", "文"]),
)
NOT_JSON_NUMBERS = [b"NaN", b"Infinity", b"-Infinity", b"nan", b"inf", b"-inf", b"+1", b".5", b"1.", b"0x10",
                    b"1_000", b"01", b"-", b"1e", b"--1", b"undefined", b"None", b"True"]  # fmt: skip
"""Number-like tokens JSON does not have (RFC 8259 §6)."""


def deep(depth: int, shape: str) -> bytes:
    if shape == "array":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


deep_json = st.builds(deep, st.sampled_from([10_000, 100_000]), st.sampled_from(["array", "object"]))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
"""Ordinary JSON values (for fields the contract does not know)."""

WRONG_TYPES: dict[str, list[Any]] = {
    "text": [1, 0, -1, 1.5, True, False, [], {}, ["x"], {"a": "b"}, 10**30],
    "int": ["32000", "", 1.5, 0.1, True, False, [], {}, [1], {"v": 1}, "1e3"],
    "bool": [0, 1, "true", "false", "", "yes", [], {}, [True], 0.0],
    "date": [20210101, 2021, 1.5, True, [], {}, [2021, 1, 1], {"y": 2021}],
    "time": [1630548000, 1630548000.5, True, [], {}, "2021-09-02", "10:00:00+08:00", ["2021-09-02T10:00:00+08:00"]],
    "literal": [1, True, [], {}, ["wechat"], {"wechat": 1}, 0.5],
    "list": ["R-1", 1, True, {}, {"0": "R-1"}, 1.5],
}
WRONG_TYPES["id"] = WRONG_TYPES["code"] = WRONG_TYPES["text"]


def _calendar_date(y: int, m: int, d: int) -> bool:
    try:
        date(y, m, d)
    except ValueError:
        return False
    return True


@st.composite
def date_text(draw: Any) -> tuple[str, bool]:
    """``YYYY-MM-DD`` with any numbers, and whether it is a calendar date (Python's calendar)."""
    y = draw(st.sampled_from([0, 1, 1899, 1900, 2000, 2020, 2021, 2022, 2100, 9999]) | st.integers(0, 9999))
    m = draw(st.integers(0, 13))
    d = draw(st.sampled_from([0, 1, 28, 29, 30, 31, 32]) | st.integers(1, 28))
    return f"{y:04d}-{m:02d}-{d:02d}", y > 0 and _calendar_date(y, m, d)


BAD_DATES = ["0000-01-01", "2021-02-30", "2021-02-29", "2021-13-01", "2021-00-10", "2021-04-31", "2021-01-32",
             "2021-1-1", "21-01-01", "20210101", "2021/01/01", "+10000-01-01", "-2021-01-01", "10000-01-01",
             "２０２１-01-01", "2021-01-01T00:00:00+08:00", "", " 2021-01-01", "2021-01-01 ", "yesterday",
             "0001-01-01", "9999-12-31", "1899-12-31", "2200-01-01"]  # fmt: skip
"""Not ``YYYY-MM-DD`` calendar dates (contract: dates ``YYYY-MM-DD``), or out of the range a
message's days may fall in (1900–2199, ``contract.messages.EARLIEST``/``LATEST``)."""
BAD_TIMES = ["2021-09-02T10:00:00", "2021-09-02T10:00:00.123", "2021-09-02", "2021-09-02T10:00", "10:00:00+08:00",
             "2021-09-02T10:00:00+08", "2021-09-02T10:00:00+0800x", "2021-09-02T24:00:01+08:00",
             "2021-09-02T10:60:00+08:00", "2021-09-02T10:00:00+24:00", "0000-01-01T00:00:00+08:00",
             "2021-02-30T10:00:00+08:00", "10000-01-01T00:00:00+08:00", "2021-09-02T10:00:00 +08:00",
             "1630548000", "", "now", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-23:59",
             "1899-12-31T23:59:59+08:00", "2199-12-31T23:00:00-12:00"]  # fmt: skip
"""Not ISO 8601 times with an offset (contract: times with offset), or out of range."""


@st.composite
def time_text(draw: Any) -> tuple[str, str]:
    """An ISO 8601 time with every part drawn, and what it must lead to: ``malformed`` unless
    the date exists, the clock is in range and it has an offset (``any`` then)."""
    day, real_day = draw(date_text())
    hh, mm, ss = draw(st.integers(0, 25)), draw(st.integers(0, 61)), draw(st.integers(0, 61))
    offset = draw(st.sampled_from(["", "Z", "+08:00", "-12:00", "+14:00", "+23:59", "-23:59", "+24:00", "+08:60"]))
    text = f"{day}T{hh:02d}:{mm:02d}:{ss:02d}{offset}"
    offset_ok = offset in ("Z", "+08:00", "-12:00", "+14:00", "+23:59", "-23:59")
    if not (real_day and hh < 24 and mm < 60 and ss <= 60 and offset_ok):
        return text, "malformed"
    return text, "any"  # a leap second (ss == 60) is RFC 3339's choice to allow: either way


@st.composite
def extreme_time(draw: Any) -> str:
    """A real instant anywhere in 0001–9999, with any whole-minute offset."""
    moment = draw(st.datetimes(min_value=datetime(1899, 12, 31), max_value=datetime(2200, 1, 1))
                  | st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))  # fmt: skip
    minutes = draw(st.integers(-(23 * 60 + 59), 23 * 60 + 59))
    sign = "+" if minutes >= 0 else "-"
    hh, mm = divmod(abs(minutes), 60)
    return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:{moment.minute:02d}:"
            f"{moment.second:02d}{sign}{hh:02d}:{mm:02d}")  # fmt: skip


def wrong_check_character(number: str) -> list[str]:
    return [number[:17] + c for c in "0123456789X" if c != number[17].upper()]


@st.composite
def field_value(draw: Any, field: Field, subject: str) -> Value:
    """A hostile (or merely unusual) value for ``field``."""
    kind = field.kind
    known = kind != "unknown"
    options = ["invalid_utf8", "deep", "not_json_number", "escaped_surrogate", "huge"]
    if known:
        options += ["wrong_type", "null"]
    options += {
        "int": ["bad_int", "any_int", "float_int"],
        "date": ["date_text", "bad_date", "extreme_date"],
        "time": ["time_text", "bad_time", "extreme_time"],
        "text": ["any_text", "empty"],
        "id": ["any_text", "bad_id", "padded_id", "empty"],
        "code": ["any_text", "bad_code", "empty"],
        "literal": ["bad_literal", "any_text"],
        "bool": [],
        "list": ["huge_list", "list_of_bad"],
        "unknown": ["json_value", "huge_number"],
    }[kind]
    specific = options[7 if known else 5 :]
    how = draw(st.sampled_from(options + specific + specific))  # the field's own kind, more often
    if how == "invalid_utf8":
        return draw(invalid_utf8_string), "malformed", how
    if how == "deep":
        return draw(deep_json), ("malformed" if known else "any"), how
    if how == "not_json_number":
        return draw(st.sampled_from(NOT_JSON_NUMBERS)), "malformed", how
    if how == "escaped_surrogate":
        token = draw(st.sampled_from([b'"\\ud800"', b'"x\\udc00"', b'"\\ud83d"', b'"\\udfff\\ud800"']))
        return token, ("malformed" if known else "any"), how
    if how == "huge":
        text = draw(huge_text)
        return enc(text), ("malformed" if known else "recorded"), how
    if how == "wrong_type":
        other = draw(st.sampled_from(WRONG_TYPES[kind]))
        return enc(other), "malformed", how
    if how == "null":
        return b"null", ("any" if field.nullable or not field.required else "malformed"), how
    if how == "bad_int":
        n = draw(st.integers(max_value=-1) | st.integers(min_value=2**63, max_value=2**4096)
                 | st.sampled_from([-1, -(2**63) - 1, 2**63, 2**64, 10**100]))  # fmt: skip
        token = draw(st.sampled_from([str(n).encode(), b"1e400", b"-1e400", b"-0.5", b"1e19"]))
        return token, "malformed", how
    if how == "any_int":
        n = draw(st.integers(0, 2**63 - 1) | st.sampled_from(
            [0, 1, 1999, 2000, 2021, 2100, 2101, 1200, 1201, 10**9, 10**9 + 1, 10**12, 10**12 + 1, 2**63 - 1]))  # fmt: skip
        return str(n).encode(), "any", how
    if how == "float_int":
        return draw(st.sampled_from([b"-0", b"1.0", b"1e3", b"32000.0", b"3.2e4", b"2022E0"])), "any", how
    if how == "date_text":
        text, real = draw(date_text())
        return enc(text), ("any" if real else "malformed"), how
    if how == "bad_date":
        return enc(draw(st.sampled_from(BAD_DATES))), "malformed", how
    if how == "extreme_date":
        day = draw(extreme_dates)
        return enc(f"{day.year:04d}-{day.month:02d}-{day.day:02d}"), "any", how
    if how == "time_text":
        text, expect = draw(time_text())
        return enc(text), expect, how
    if how == "bad_time":
        return enc(draw(st.sampled_from(BAD_TIMES))), "malformed", how
    if how == "extreme_time":
        text = draw(extreme_time() | st.sampled_from(
            ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-23:59", "9999-12-31T23:59:59.999999-12:00",
             "0001-01-01T00:00:00Z", "2021-09-02T10:00:00.123456789+08:00"]))  # fmt: skip
        return enc(text), "any", how
    if how == "any_text":
        text = draw(st.text(max_size=300))
        if kind == "literal" and text not in VOCABULARY[field.name]:  # type: ignore[operator]
            return enc(text), "malformed", how
        return enc(text), "any", how
    if how == "empty":
        return b'""', "any", how
    if how == "bad_id":
        number = SPOUSE if field.name == "spouse_id_number" else ID
        bad = draw(st.sampled_from([*wrong_check_character(number), number[:17], number + "1", number[:16] + "X1",
                                    "１" * 18, "000000" + number[6:], "X" * 18, number[:6] + "00000000" + number[14:]]))  # fmt: skip
        return enc(bad), "refused", how
    if how == "padded_id":
        return enc(draw(st.sampled_from([f" {ID} ", f"{ID}\n", ID.lower()]))), "any", how
    if how == "bad_code":
        bad = {
            "roster": ["2021-8", "202108", "2021/08", "21-08", "2021-08-01", "２０２１-08", "", "Aug 2021"],
        }.get(field.name, ["34010", "3401041", "abcdef", "３４０１０４", " 340104", "340104\n", "-34010", "34O104", ""])
        return enc(draw(st.sampled_from(bad))), "refused", how
    if how == "bad_literal":
        vocabulary = sorted(VOCABULARY[field.name])  # type: ignore[arg-type]
        word = draw(st.sampled_from(vocabulary))
        bad = draw(st.sampled_from([word.upper(), word + " ", " " + word, word.title(), word.replace("_", "-"), "",
                                    word[:-1], "微信"]))  # fmt: skip
        return enc(bad), ("any" if bad in vocabulary else "malformed"), how
    if how == "huge_list":
        return enc([f"R-{i}" for i in range(draw(st.sampled_from([10_001, 50_000])))]), "malformed", how
    if how == "list_of_bad":
        item = draw(st.sampled_from([1, None, [], {}, "", "x" * 10_000, True]))
        return enc(["R-1", item]), "malformed", how
    if how == "json_value":
        return enc(draw(json_values)), "recorded", how
    if how == "huge_number":
        return draw(st.sampled_from([b"1e400", b"-1e400", b"1" + b"0" * 5000, b"123456789012345678901234567890"])), "recorded", how
    raise AssertionError(how)


def _pairs(base: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    return [(enc(k), enc(v)) for k, v in base.items()]


def assemble(pairs: list[tuple[bytes, bytes]]) -> bytes:
    return b"{" + b",".join(k + b":" + v for k, v in pairs) + b"}"


def _base(subject: str, msg_id: str) -> dict[str, Any]:
    if subject == QUERY:
        return dict(QUERY_BASE)
    return {**BASES[subject], "msg_id": msg_id}


@st.composite
def field_case(draw: Any, subject: str) -> Case:
    """The valid message with one field (or one field the contract does not know) mutated."""
    field = draw(st.sampled_from(FIELDS[subject]))
    msg_id = f"fuzz-{draw(st.integers(0, 10**9))}"
    pairs = _pairs(_base(subject, msg_id))
    key = enc(field.name)
    mode = draw(st.sampled_from(["replace", "replace", "replace", "missing", "duplicate_key", "bad_key"]))
    if mode == "missing":
        rest = [p for p in pairs if p[0] != key]
        expect = "malformed" if field.required else "recorded" if field.kind == "unknown" else "any"
        return Case(subject, assemble(rest), expect, f"missing:{field.kind}")
    value, expect, label = draw(field_value(field, subject))
    if mode == "bad_key":  # the field's name itself is not UTF-8 (nor valid JSON text)
        bad = draw(st.sampled_from(INVALID_UTF8))
        return Case(subject, assemble([*pairs, (b'"' + bad + b'"', enc(1))]), "malformed", "key:invalid_utf8")
    if mode == "duplicate_key":  # RFC 8259 §4: names SHOULD be unique; what a parser does is its own
        original = [v for k, v in pairs if k == key]
        twice = [(key, value), (key, original[0])] if original and draw(st.booleans()) else [(key, value)]
        others = [p for p in pairs if p[0] != key]
        keep = "malformed" if expect == "malformed" and label in ("invalid_utf8", "not_json_number") else "any"
        if len(twice) == 1:
            twice = [*twice, twice[0]]
        return Case(subject, assemble([*others, *twice]), keep, f"duplicate_key:{label}")
    replaced = [(k, value if k == key else v) for k, v in pairs]
    if field.kind == "unknown":
        replaced.append((key, value))
    return Case(subject, assemble(replaced), expect, f"{field.kind}:{label}")


@st.composite
def body_case(draw: Any, subject: str) -> Case:
    """The whole body mangled."""
    good = assemble(_pairs(_base(subject, f"fuzz-{draw(st.integers(0, 10**9))}")))
    how = draw(st.sampled_from(["empty", "not_object", "truncated", "trailing", "bom", "random_bytes",
                                "control_char", "deep", "invalid_utf8"]))  # fmt: skip
    if how == "empty":
        return Case(subject, draw(st.sampled_from([b"", b" ", b"\n\t ", b"\x00"])), "malformed", how)
    if how == "not_object":
        body = draw(st.sampled_from([b"null", b"true", b"0", b"-1", b'"x"', b"[]", b"[" + good + b"]", b"1e400",
                                     enc(draw(st.text(max_size=50))), b'"' + good.replace(b'"', b'\\"') + b'"']))  # fmt: skip
        return Case(subject, body, "malformed", how)
    if how == "truncated":
        return Case(subject, good[: draw(st.integers(0, len(good) - 1))], "malformed", how)
    if how == "trailing":
        tail = draw(st.sampled_from([b"x", b",", b"}", good, b" 1", b"\x00"]))
        return Case(subject, good + tail, "malformed", how)
    if how == "bom":  # RFC 8259 §8.1: a parser MAY ignore it
        return Case(subject, b"\xef\xbb\xbf" + good, "any", how)
    if how == "random_bytes":
        return Case(subject, draw(st.binary(max_size=300)), "malformed", how)
    if how == "control_char":  # unescaped inside a string (RFC 8259 §7)
        at = good.index(b'"', good.index(b":")) + 1
        return Case(subject, good[:at] + draw(st.sampled_from([b"\x00", b"\x01", b"\n", b"\x1f"])) + good[at:], "malformed", how)
    if how == "deep":
        return Case(subject, draw(deep_json), "malformed", how)
    if how == "invalid_utf8":
        at = draw(st.integers(0, len(good)))
        return Case(subject, good[:at] + draw(st.sampled_from(INVALID_UTF8)) + good[at:], "malformed", how)
    raise AssertionError(how)


extreme_ints = st.integers(0, 2**63 - 1) | st.sampled_from([0, 1, 1200, 2000, 2100, 10**9, 10**12, 2**63 - 1])


@st.composite
def extreme_case(draw: Any, subject: str) -> Case:
    """Every date, time and number of the valid message at once, each maybe replaced by an
    extreme but real value (year 1 or 9999, any offset, the largest amounts): the ledger's own
    date and money arithmetic must refuse or record, never fail."""
    values = _base(subject, f"fuzz-{draw(st.integers(0, 10**9))}")
    for field in FIELDS[subject]:
        if field.kind not in ("date", "time", "int") or not draw(st.booleans()):
            continue
        if field.kind == "date":
            day = draw(extreme_dates)
            values[field.name] = f"{day.year:04d}-{day.month:02d}-{day.day:02d}"
        elif field.kind == "time":
            values[field.name] = draw(extreme_time())
        else:
            values[field.name] = draw(extreme_ints)
    return Case(subject, enc(values), "any", "extreme_values")


def hostile(subject: str) -> st.SearchStrategy[Case]:
    return st.one_of(field_case(subject), field_case(subject), field_case(subject), body_case(subject),
                     extreme_case(subject))  # fmt: skip


# ---- the fast layer -------------------------------------------------------------------------


def fresh_ledger(subject: str) -> tuple[Ledger, Ingestor]:
    ledger = Ledger({}, policy=POLICY, keyer=KEYER)
    ingestor = Ingestor(ledger)
    setup = [Delivery(s, enc(body)) for s, body in SETUP.get(subject, [])]
    if setup:
        assert [v.kind for v in ingestor.process(setup)] == ["recorded"] * len(setup)
    return ledger, ingestor


def _seq(ledger: Ledger) -> int:
    return ledger.recorder.max_notification_id() or 0


def _strict_object(body: bytes) -> dict[str, Any] | None:
    """The body as an object by Python's strict JSON parser (UTF-8, no NaN), else None."""

    def no_constants(name: str) -> Any:
        raise ValueError(name)

    try:
        value = json.loads(body.decode("utf-8"), parse_constant=no_constants, parse_int=str)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def check_outcome(case: Case, verdict: Verdict, recorded: int) -> None:
    """What every hostile message must come to (see the module docstring)."""
    assert verdict.kind != "retry", f"an exception escaped the ledger: {verdict.detail}"
    assert verdict.final
    if verdict.kind == "rejected":
        assert verdict.reason in REASONS, f"not the contract's vocabulary: {verdict.reason} ({verdict.detail})"
        assert verdict.detail
        assert recorded == 0, "a rejected message recorded events"
    elif verdict.kind == "duplicate":
        assert recorded == 0
    else:
        assert recorded == verdict.events > 0
        document = _strict_object(case.body)
        assert document is not None, "recorded a body that is not a JSON object"
        required = [f.name for f in FIELDS[case.subject] if f.required]
        assert all(document.get(name) is not None for name in required), "recorded without a required field"
    if case.expect == "malformed":
        assert (verdict.kind, verdict.reason) == ("rejected", "malformed"), verdict
    elif case.expect == "refused":
        assert verdict.kind == "rejected", verdict
    elif case.expect == "recorded":
        assert verdict.kind == "recorded", verdict


FAST = settings(
    max_examples=FAST_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


@pytest.mark.parametrize("subject", list(SCHEMAS))
def test_the_unmutated_message_is_recorded(subject: str) -> None:
    """The bases are valid: a mutation that leaves them valid reaches the ledger's rules."""
    ledger, ingestor = fresh_ledger(subject)
    before = _seq(ledger)
    (verdict,) = ingestor.process([Delivery(subject, enc(BASES[subject]))])
    assert verdict.kind == "recorded" and _seq(ledger) - before == verdict.events > 0, verdict


@pytest.mark.parametrize("subject", list(SCHEMAS))
def test_hostile_upstream_messages_get_a_final_verdict_and_record_nothing_unless_valid(subject: str) -> None:
    @FAST
    @given(hostile(subject))
    def one(case: Case) -> None:
        FUZZ_CASES[subject] += 1
        FUZZ_KINDS[(subject, case.expect)] += 1
        ledger, ingestor = fresh_ledger(subject)
        before = _seq(ledger)
        verdicts = ingestor.process([Delivery(subject, case.body, stream_seq=1), Delivery(*_neighbour(), stream_seq=2)])
        after = _seq(ledger)
        verdict, neighbour = verdicts
        assert neighbour.kind == "recorded", f"the hostile message spoiled its batch: {neighbour}"
        check_outcome(case, verdict, after - before - neighbour.events)

    one()


def _neighbour() -> tuple[str, bytes]:
    return NEIGHBOUR[0], enc(NEIGHBOUR[1])


# ---- coverage.query, fast -------------------------------------------------------------------

_QUERY_LEDGER: list[Ledger] = []


def query_ledger() -> Ledger:
    """An in-memory ledger where ``ID`` is enrolled and paid for 2022."""
    if not _QUERY_LEDGER:
        ledger = Ledger({}, policy=POLICY, keyer=KEYER)
        september = datetime(2021, 9, 2, 10, tzinfo=CST)
        wechat = Actor("payment", "wechat")
        ledger.request_enrollment(RequestEnrollment(msg_id="e", occurred_at=september, id_number=ID, coverage_year=2022,
                                  category="resident", channel="wechat", district="340104"), wechat)  # fmt: skip
        ledger.receive_payment(ReceivePayment(msg_id="p", occurred_at=september, id_number=ID, coverage_year=2022,
                               amount_fen=32000, channel="wechat", paid_at=september), wechat)  # fmt: skip
        _QUERY_LEDGER.append(ledger)
    return _QUERY_LEDGER[0]


REPLY_KEYS = {"person_key", "date", "covered", "in_waiting_period", "coverage_year", "coverage_start",
              "coverage_end", "benefit_start", "status", "subsidy_category", "ledger_seq", "as_of"}  # fmt: skip
QUERY_ERRORS = {"malformed", "invalid_id_number"}


def check_reply(case: Case, raw: bytes) -> dict[str, Any]:
    reply = json.loads(raw)
    assert isinstance(reply, dict)
    if "error" in reply:
        assert reply["error"] in QUERY_ERRORS, reply
        assert case.expect in ("malformed", "refused", "any"), (case, reply)
        if case.expect == "malformed":
            assert reply["error"] == "malformed", reply
    else:
        assert reply.keys() >= REPLY_KEYS, reply
        assert case.expect in ("recorded", "any"), (case, reply)
        assert reply["status"] in ("not_enrolled", "awaiting_payment", "enrolled", "ended")
        assert _strict_object(case.body) is not None
    return reply


def test_hostile_coverage_queries_get_an_error_reply_never_an_exception() -> None:
    answerer = CoverageAnswerer(query_ledger())

    @FAST
    @given(hostile(QUERY))
    def one(case: Case) -> None:
        FUZZ_CASES[QUERY] += 1
        FUZZ_KINDS[(QUERY, case.expect)] += 1
        check_reply(case, answerer.reply(case.body))

    one()
    valid = json.loads(answerer.reply(enc({"id_number": ID, "date": "2022-03-01"})))
    assert valid["covered"] is True and valid["status"] == "enrolled"


# ---- the real layer -------------------------------------------------------------------------


def sample(strategy: st.SearchStrategy[Case], n: int) -> list[Case]:
    """``n`` draws of ``strategy`` (derandomised: the same every run)."""
    found: list[Case] = []

    @settings(max_examples=n, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(strategy)
    def collect(case: Case) -> None:
        found.append(case)

    collect()
    return found


def certain(subject: str, n: int) -> list[Case]:
    """``n`` distinct bodies for ``subject`` that must be refused."""
    found: dict[bytes, Case] = {}
    for case in sample(hostile(subject), 5 * n):
        if case.expect in ("malformed", "refused"):
            found.setdefault(case.body, case)
    assert len(found) >= n, f"only {len(found)} certainly refused bodies for {subject}"
    return list(found.values())[:n]


def real_cases(max_payload: int) -> list[Case]:
    """Certainly refused bodies for every subject, and the hand-picked worst ones."""
    cases = [c for subject in SCHEMAS for c in certain(subject, REAL_PER_SUBJECT)]
    enrollment = "upstream.enrollment.requested"
    good = assemble(_pairs(_base(enrollment, "worst")))
    huge_msg_id = b'"' + b"x" * (max_payload - 8192) + b'"'
    cases += [
        Case(enrollment, b"\xff\xfe\xfd", "malformed", "invalid_utf8:body"),
        Case(enrollment, good[:-1] + b',"zz":"\xff"}', "malformed", "invalid_utf8:ignored_field"),
        Case(enrollment, good.replace(b'"worst"', b'"wor\xc0\xafst"'), "malformed", "invalid_utf8:msg_id"),
        Case(enrollment, deep(10_000, "array"), "malformed", "deep:body"),
        Case(enrollment, good.replace(b'"worst"', deep(10_000, "object")), "malformed", "deep:msg_id"),
        Case(enrollment, good[:-1] + b',"zz":' + deep(1_000_000, "array") + b"}", "malformed", "deep:ignored_field"),
        Case(enrollment, good.replace(b'"worst"', huge_msg_id), "malformed", "near_max_payload"),
        Case(enrollment, good.replace(b"2022,", b"NaN,"), "malformed", "nan"),
        Case(enrollment, b"", "malformed", "empty"),
        # a sender that labels its (broken) bodies JSON: FastStream's own decoder would raise
        Case(enrollment, good[:-1], "malformed", "content_type:truncated", {"content-type": "application/json"}),
        Case(enrollment, b"\xff", "malformed", "content_type:not_utf8", {"content-type": "text/plain"}),
    ]
    return cases


@dataclass
class Running:
    url: str
    ledger: Ledger
    broker: NatsBroker
    ingest: IngestService
    queries: CoverageQueryService
    nc: Any


FUZZ_INTAKE = IntakeLimits(max_msg_size=8 * 1024 * 1024)


async def running(url: str, body: Callable[[Running], Any]) -> Any:
    """The ingestion and the coverage.query responder, in this process, on a real server."""
    ledger = await asyncio.to_thread(
        Ledger, {"PERSISTENCE_MODULE": "ledger.jetstream", "NATS_URL": url}, policy=POLICY, keyer=KEYER
    )
    try:
        async with (
            connected_broker(url) as (broker, _),
            answering(ledger, broker) as queries,
            # Intakes that take what the server takes (8 MB): the cases near the server's limit
            # are there to try the ledger's rejections, not the intakes' size limit (1 MiB by
            # default, tests/integration/test_intake_streams.py).
            ingesting(ledger, broker, IngestSettings(batch_size=100, ack_wait=2.0, intake_limits=FUZZ_INTAKE)) as ingest,
        ):
            nc = await nats.connect(url)
            try:
                return await body(Running(url, ledger, broker, ingest, queries, nc))
            finally:
                await nc.close()
    finally:
        await asyncio.to_thread(ledger.close)


async def _events(js: Any) -> int:
    """How many events LEDGER holds (it also holds rejections and tracking records)."""
    info = await js.stream_info("LEDGER", subjects_filter="ledger.evt.>")
    return sum((info.state.subjects or {}).values())


async def _ingested(run: Running, last_seq: int, timeout: float = 60) -> None:
    """Until the consumer's ack floor reaches ``last_seq`` with nothing pending."""
    js = run.nc.jetstream()
    deadline = time.monotonic() + timeout
    while True:
        info = await js.consumer_info("UPSTREAM", run.ingest.settings.durable)
        if info.ack_floor.stream_seq >= last_seq and info.num_pending == 0 and info.num_ack_pending == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"ingestion stuck at {info.ack_floor.stream_seq} of {last_seq}: {run.ingest.stats}")
        await asyncio.sleep(0.05)


async def _ask(run: Running, data: bytes) -> dict[str, Any]:
    reply = await run.nc.request(QUERY, data, timeout=5)  # a timeout fails the test
    return json.loads(reply.data)


def test_a_real_service_rejects_every_hostile_message_once_records_nothing_and_lives_on(
    server: EmbeddedNatsServer,
) -> None:
    cases = real_cases(server.max_payload)

    async def scenario(run: Running) -> None:
        js = run.nc.jetstream()
        for i, case in enumerate(cases):
            headers = {**case.headers, "Nats-Msg-Id": f"fuzz-{i}"}
            # on a server without accounts: the unattributed intake, copied into UPSTREAM in order
            ack = await js.publish(case.subject, case.body, headers=headers, stream="UPSTREAM_UNATTRIBUTED")
            assert ack.seq == i + 1 and not ack.duplicate
            REAL_CASES[case.subject] += 1
        await _ingested(run, len(cases))

        stored = await rejections(run.url)
        by_seq = Counter(r.upstream_seq for r in stored)
        assert by_seq == Counter(range(1, len(cases) + 1)), "each message exactly one rejection"
        for rejection in stored:
            case = cases[rejection.upstream_seq - 1]
            assert rejection.subject == case.subject
            assert rejection.reason in REASONS and rejection.detail, rejection.reason
            if case.expect == "malformed":
                assert rejection.reason == "malformed", (case, rejection.reason, rejection.detail)
            kept = base64.b64decode(rejection.payload)
            assert kept == case.body or (len(case.body) > len(kept) > 0 and case.body.startswith(kept)), case.label
        assert await _events(js) == 0, "nothing recorded (only the rejections and the position)"
        stats = run.ingest.stats
        assert (stats.rejected, stats.recorded, stats.retried) == (len(cases), 0, 0), stats

        # still alive: a valid message is recorded, a coverage.query answered. This one carries a
        # field the contract does not know (ignored) holding a 5,000-digit number, which Python's
        # json.loads (FastStream's default decoder) refuses with a ValueError
        valid = enc({**BASES["upstream.enrollment.requested"], "msg_id": "valid-after"})[:-1] + b',"zz":1' + b"0" * 5000 + b"}"
        await js.publish("upstream.enrollment.requested", valid, headers={"Nats-Msg-Id": "valid-after"})
        await _ingested(run, len(cases) + 1)
        assert run.ingest.stats.recorded == 1
        assert await _events(js) > 0
        answer = await _ask(run, enc({"id_number": ID, "date": "2022-03-01"}))
        assert answer["status"] == "awaiting_payment" and "error" not in answer, answer

    asyncio.run(running(server.url, scenario))


def test_a_real_coverage_query_responder_answers_every_hostile_request_with_an_error(
    server: EmbeddedNatsServer,
) -> None:
    drawn = certain(QUERY, 60)
    valid = enc({"id_number": ID, "date": "2022-03-01"})
    explicit = [
        Case(QUERY, b"\xffnot json", "malformed", "not_json"),
        Case(QUERY, b'{"id_number":"' + ID.encode() + b'","date":"2022-03-01","zz":"\xc0\xaf"}', "malformed", "invalid_utf8"),
        Case(QUERY, b'{"id_number":"\xed\xa0\x80","date":"2022-03-01"}', "malformed", "invalid_utf8:id"),
        Case(QUERY, deep(10_000, "array"), "malformed", "deep:body"),
        Case(QUERY, valid[:-1] + b',"zz":' + deep(1_000_000, "object") + b"}", "malformed", "deep:ignored_field"),
        Case(QUERY, enc({"id_number": "1" * 1_000_000, "date": "2022-03-01"}), "malformed", "huge_id"),
        Case(QUERY, b'{"id_number":"' + ID.encode() + b'","date":"' + b"9" * (server.max_payload - 8192) + b'"}',
             "malformed", "near_max_payload"),  # fmt: skip
        Case(QUERY, enc({"id_number": ID, "date": "0000-01-01"}), "malformed", "date:year_0"),
        Case(QUERY, enc({"id_number": ID, "date": "9999-12-31"}), "malformed", "date:out_of_range"),
        Case(QUERY, enc({"id_number": ID, "date": "2022-03-01", "as_of": "0001-01-01T00:00:00+14:00"}), "malformed",
             "as_of:out_of_range"),  # fmt: skip
        Case(QUERY, enc({"id_number": ID, "date": "2021-02-30"}), "malformed", "date:feb_30"),
        Case(QUERY, enc({"id_number": ID, "date": "2022-03-01", "as_of": "2022-01-01T00:00:00"}), "malformed", "no_offset"),
        Case(QUERY, enc({"id_number": 340104, "date": "2022-03-01"}), "malformed", "wrong_type"),
        Case(QUERY, enc({"id_number": ID, "date": 20220301}), "malformed", "wrong_type"),
        Case(QUERY, enc([ID, "2022-03-01"]), "malformed", "not_object"),
        Case(QUERY, b"", "malformed", "empty"),
        Case(QUERY, enc({"id_number": ID[:17], "date": "2022-03-01"}), "refused", "short_id"),
    ]
    extremes = [enc({"id_number": ID, "date": d, "as_of": t}) for d, t in
                [("2199-12-31", "1900-01-01T00:00:00+08:00"), ("1900-01-01", "2199-12-31T23:59:59+08:00")]]  # fmt: skip

    async def scenario(run: Running) -> None:
        await asyncio.to_thread(_enrol_and_pay, run.ledger)
        for case in [*drawn, *explicit]:
            check_reply(case, enc(await _ask(run, case.body)))
            REAL_CASES[QUERY] += 1
        for data in extremes:  # the first and last days a request may name: a reply
            assert "error" not in await _ask(run, data)
        answer = await _ask(run, valid)
        assert answer["covered"] is True and answer["status"] == "enrolled", answer
        assert run.queries.answered == len(drawn) + len(explicit) + len(extremes) + 1

    asyncio.run(running(server.url, scenario))


def _enrol_and_pay(ledger: Ledger) -> None:
    september = datetime(2021, 9, 2, 10, tzinfo=CST)
    wechat = Actor("payment", "wechat")
    ledger.request_enrollment(RequestEnrollment(msg_id="e", occurred_at=september, id_number=ID, coverage_year=2022,
                              category="resident", channel="wechat", district="340104"), wechat)  # fmt: skip
    ledger.receive_payment(ReceivePayment(msg_id="p", occurred_at=september, id_number=ID, coverage_year=2022, amount_fen=32000,
                           channel="wechat", paid_at=september), wechat)  # fmt: skip


# ---- the figure ------------------------------------------------------------------------------


def test_fuzz_cases_tried_per_schema(request: pytest.FixtureRequest) -> None:
    """The figure: cases tried per schema, as counted while the tests above ran."""
    if not FUZZ_CASES:
        pytest.skip("run with the fuzz tests of this module: it reports what they counted")
    lines = ["fuzz cases tried per schema (fast layer; expectations malformed/refused/recorded/any):"]
    for schema in [*SCHEMAS, QUERY]:
        kinds = " ".join(f"{k}={FUZZ_KINDS[(schema, k)]}" for k in ("malformed", "refused", "recorded", "any"))
        lines.append(f"  {schema:40} {FUZZ_CASES[schema]:5}   {kinds}")
    lines.append(f"  {'total':40} {sum(FUZZ_CASES.values()):5}")
    if REAL_CASES:
        lines.append("sent to a real nats-server (real layer), per subject:")
        lines += [f"  {subject:40} {count:5}" for subject, count in sorted(REAL_CASES.items())]
    print("\n".join(lines))
    if not request.session.testsfailed:  # a failure stops (and a shrink repeats) a property's examples
        assert all(FUZZ_CASES[s] == FAST_EXAMPLES for s in FUZZ_CASES), FUZZ_CASES
