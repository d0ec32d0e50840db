"""Resident ID numbers (居民身份证号码, GB 11643-1999) and the keyed person key (the policy §2).

An ID number has 18 characters: a 6-digit administrative division code (GB/T 2260), the 8-digit
birth date (YYYYMMDD), a 3-digit sequence (odd for men, even for women) and an ISO 7064
MOD 11-2 check character (0-9 or X). The raw number never appears in subjects, keys or logs
(architecture decision 5): the ledger keys a person by ``person_key``, and refusals and reprs
show the number masked.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import re
from datetime import date
from typing import Literal

import msgspec

from ledger.domain.refusals import InvalidIdNumber

Sex = Literal["male", "female"]

PROVINCES: dict[str, str] = {
    "11": "北京", "12": "天津", "13": "河北", "14": "山西", "15": "内蒙古",
    "21": "辽宁", "22": "吉林", "23": "黑龙江",
    "31": "上海", "32": "江苏", "33": "浙江", "34": "安徽",
    "35": "福建", "36": "江西", "37": "山东",
    "41": "河南", "42": "湖北", "43": "湖南", "44": "广东", "45": "广西", "46": "海南",
    "50": "重庆", "51": "四川", "52": "贵州", "53": "云南", "54": "西藏",
    "61": "陕西", "62": "甘肃", "63": "青海", "64": "宁夏", "65": "新疆",
    "71": "台湾", "81": "香港", "82": "澳门",
    # 83 is no province: it prefixes the numbers of residence permits for Taiwan residents
    # (台湾居民居住证, 830000), as 81/82 do for Hong Kong and Macao residents.
    "83": "台湾居民居住证",
}  # fmt: skip
"""Province-level codes (the first two digits of a division code) an ID number may start with."""

EARLIEST_BIRTH_DATE = date(1900, 1, 1)

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_CHARACTERS = "10X98765432"  # indexed by the weighted sum modulo 11
_FORM = re.compile(r"[0-9]{17}[0-9Xx]")
_MIN_SECRET_BYTES = 16


def check_character(first17: str) -> str:
    """The ISO 7064 MOD 11-2 check character ("0"-"9" or "X") for the first 17 digits."""
    if not (len(first17) == 17 and first17.isascii() and first17.isdigit()):
        raise ValueError("the check character is computed over exactly 17 ASCII digits")
    total = sum(int(digit) * weight for digit, weight in zip(first17, _WEIGHTS, strict=True))
    return _CHECK_CHARACTERS[total % 11]


def _masked(number: str) -> str:
    return number[:6] + "*" * 8 + number[14:]


class ResidentId(msgspec.Struct, frozen=True):
    """A valid resident ID number and what it says about its holder; make one with ``parse``."""

    number: str
    division_code: str
    birth_date: date
    sequence: int
    sex: Sex

    @classmethod
    def parse(cls, text: str, *, today: date | None = None) -> ResidentId:
        """Read an ID number, ignoring surrounding whitespace and the case of a final ``x``.

        ``today`` is the date of the message carrying the number (rules judge by message times,
        never the wall clock): a birth date after it is refused. Without it, that check is skipped.

        Raises ``InvalidIdNumber`` when the number breaks GB 11643; its detail shows the number
        masked, never whole.
        """
        stripped = text.strip()
        if len(stripped) != 18:
            raise InvalidIdNumber(f"an ID number has 18 characters, not {len(stripped)}")
        if not _FORM.fullmatch(stripped):
            raise InvalidIdNumber(
                f"{_masked(stripped)}: the first 17 characters must be digits"
                " and the last a digit or X"
            )
        number = stripped.upper()
        masked = _masked(number)
        if check_character(number[:17]) != number[17]:
            raise InvalidIdNumber(f"{masked}: the check character does not match (MOD 11-2)")
        division_code = number[:6]
        if division_code[:2] not in PROVINCES:
            raise InvalidIdNumber(
                f"{masked}: division code {division_code} is in no province-level division"
            )
        try:
            birth_date = date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
        except ValueError:
            raise InvalidIdNumber(f"{masked}: the birth date is not a calendar date") from None
        if birth_date < EARLIEST_BIRTH_DATE:
            raise InvalidIdNumber(f"{masked}: the birth date is before {EARLIEST_BIRTH_DATE}")
        if today is not None and birth_date > today:
            raise InvalidIdNumber(f"{masked}: the birth date is after the message date {today}")
        sequence = int(number[14:17])
        return cls(
            number=number,
            division_code=division_code,
            birth_date=birth_date,
            sequence=sequence,
            sex="male" if sequence % 2 else "female",
        )

    @property
    def masked(self) -> str:
        """The number with the 8 birth-date characters hidden: ``340102********123X``."""
        return _masked(self.number)

    def age_on(self, day: date) -> int:
        """Age in whole years on ``day``; someone born on Feb 29 turns older on Mar 1 in
        non-leap years."""
        if day < self.birth_date:
            raise ValueError("there is no age before the birth date")
        birthday_not_yet = (day.month, day.day) < (self.birth_date.month, self.birth_date.day)
        return day.year - self.birth_date.year - birthday_not_yet

    def __repr__(self) -> str:
        return f"ResidentId({self.masked!r})"


def generate_id_number(
    rng: random.Random,
    *,
    division_code: str = "340104",
    birth_date: date,
    sex: Sex | None = None,
) -> str:
    """A synthetic, valid ID number for test data (the policy §2: never real ones).

    The sequence is drawn from ``rng`` (001-999, odd for men, even for women); without ``sex``,
    the sex is drawn too. Raises ``InvalidIdNumber`` when the division code or birth date cannot
    make a valid number.
    """
    if sex is None:
        sex = rng.choice(("male", "female"))
    elif sex not in ("male", "female"):
        raise ValueError(f"sex is 'male' or 'female', not {sex!r}")
    sequence = rng.randrange(1 if sex == "male" else 2, 1000, 2)
    first17 = f"{division_code}{birth_date:%Y%m%d}{sequence:03d}"
    return ResidentId.parse(first17 + check_character(first17)).number


class PersonKeyer:
    """Turns ID numbers into person keys with one secret (configuration, never logged)."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < _MIN_SECRET_BYTES:
            raise ValueError(f"the person-key secret must have at least {_MIN_SECRET_BYTES} bytes")
        self._secret = secret

    def __call__(self, number: str) -> str:
        """The person key of ``number``; raises ``InvalidIdNumber`` if it is not a valid one."""
        return self.key_of(ResidentId.parse(number))

    def key_of(self, resident: ResidentId) -> str:
        """The person key of an ID number already parsed (and so valid)."""
        return hmac.new(self._secret, resident.number.encode("ascii"), hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return "PersonKeyer(secret=<hidden>)"


def person_key(number: str, secret: bytes) -> str:
    """The key of a person in subjects and aggregate ids: HMAC-SHA256 of the normalised
    18-character ID number under ``secret``, as 64 lower-case hex characters.

    The raw ID number never appears in subjects, keys or logs (architecture decision 5); the
    secret is configuration, at least 16 bytes. Raises ``InvalidIdNumber`` for an invalid number.
    """
    return PersonKeyer(secret)(number)
