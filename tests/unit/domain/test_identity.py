"""Resident ID numbers (GB 11643) and person keys: domain.md §2, architecture decision 5."""

from __future__ import annotations

import random
import re
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.domain.identity import (
    PersonKeyer,
    ResidentId,
    Sex,
    check_character,
    generate_id_number,
    person_key,
)
from ledger.domain.refusals import InvalidIdNumber

SEED = 20210901
SECRET = b"a test secret, 32 bytes long...."
MESSAGE_DATE = date(2021, 9, 1)
HEFEI_DIVISIONS = ["340102", "340103", "340104", "340111", "340121", "340122", "340123", "340124", "340181"]


def number_of(first17: str) -> str:
    return first17 + check_character(first17)


def a_number(
    *, birth_date: date = date(1990, 3, 7), sex: Sex | None = None, seed: int = SEED
) -> str:
    return generate_id_number(random.Random(seed), birth_date=birth_date, sex=sex)


def a_number_ending_in_x() -> str:
    return next(n for seed in range(SEED, SEED + 100) if (n := a_number(seed=seed))[-1] == "X")


def is_valid(number: str) -> bool:
    try:
        ResidentId.parse(number)
    except InvalidIdNumber:
        return False
    return True


def test_a_valid_number_gives_its_division_birth_date_sequence_and_sex() -> None:
    resident = ResidentId.parse(number_of("34010419900307123"))

    assert resident.division_code == "340104"
    assert resident.birth_date == date(1990, 3, 7)
    assert resident.sequence == 123
    assert resident.sex == "male"


def test_the_sequence_parity_gives_the_sex() -> None:
    assert ResidentId.parse(number_of("34010419900307001")).sex == "male"
    assert ResidentId.parse(number_of("34010419900307002")).sex == "female"
    assert ResidentId.parse(number_of("34010419900307000")).sex == "female"


def test_the_check_character_makes_the_mod_11_2_sum_one() -> None:
    """ISO 7064 MOD 11-2 stated independently: the digit at position i from the right (check
    character at i = 1, X = 10) weighs 2^(i-1), and the weighted sum is 1 modulo 11."""
    rng = random.Random(SEED)
    for _ in range(1000):
        first17 = "".join(rng.choice("0123456789") for _ in range(17))
        check = check_character(first17)
        values = [*map(int, first17), 10 if check == "X" else int(check)]
        total = sum(value * pow(2, 17 - position, 11) for position, value in enumerate(values))
        assert total % 11 == 1, f"seed {SEED}: {first17}"


def test_exactly_one_check_character_is_valid() -> None:
    first17 = "34011119851120246"
    valid = [c for c in "0123456789X" if is_valid(first17 + c)]

    assert valid == [check_character(first17)]


def test_an_id_number_with_a_wrong_check_character_is_invalid() -> None:
    number = a_number()
    wrong = "0" if number[-1] != "0" else "1"

    with pytest.raises(InvalidIdNumber, match="check character"):
        ResidentId.parse(number[:-1] + wrong)


def test_lower_case_x_is_the_same_number() -> None:
    number = a_number_ending_in_x()

    assert ResidentId.parse(number.lower()) == ResidentId.parse(number)
    assert ResidentId.parse(number.lower()).number == number


def test_surrounding_whitespace_is_not_part_of_the_number() -> None:
    number = a_number()

    assert ResidentId.parse(f" \t{number}\n").number == number


@pytest.mark.parametrize(
    "text", ["", "34010419900307123", "3401041990030712345", "340104900307123"]
)
def test_a_number_without_18_characters_is_invalid(text: str) -> None:
    with pytest.raises(InvalidIdNumber, match="18 characters"):
        ResidentId.parse(text)


@pytest.mark.parametrize(
    "text",
    [
        "3401041990030712Y4",
        "34010419900307123Y",
        "X40104199003071234",
        "340104199003071\N{FULLWIDTH DIGIT TWO}34",
        "340104 1990030712X",
    ],
)
def test_a_number_with_other_characters_than_digits_and_a_final_x_is_invalid(text: str) -> None:
    with pytest.raises(InvalidIdNumber, match="must be digits"):
        ResidentId.parse(text)


@pytest.mark.parametrize(
    "division_code", ["040104", "000000", "100101", "240101", "720101", "910101"]
)
def test_a_division_code_outside_every_province_is_invalid(division_code: str) -> None:
    with pytest.raises(InvalidIdNumber, match="province"):
        ResidentId.parse(number_of(f"{division_code}19900307123"))


@pytest.mark.parametrize("division_code", ["110105", "650102", "810000", "820000", "830000"])
def test_hong_kong_macao_and_taiwan_residence_permits_are_valid_like_any_province(
    division_code: str,
) -> None:
    assert ResidentId.parse(number_of(f"{division_code}19900307123")).division_code == division_code


@pytest.mark.parametrize("birth", ["19900230", "20210229", "19901301", "19900001", "19900100"])
def test_an_impossible_birth_date_is_invalid(birth: str) -> None:
    with pytest.raises(InvalidIdNumber, match="not a calendar date"):
        ResidentId.parse(number_of(f"340104{birth}123"))


def test_a_birth_date_before_1900_is_invalid() -> None:
    with pytest.raises(InvalidIdNumber, match="before 1900"):
        ResidentId.parse(number_of("34010418991231123"))


def test_a_birth_date_after_the_message_date_is_invalid() -> None:
    number = a_number(birth_date=date(2021, 9, 2))

    with pytest.raises(InvalidIdNumber, match="after the message date"):
        ResidentId.parse(number, today=MESSAGE_DATE)


def test_a_newborn_born_on_the_message_date_is_valid() -> None:
    newborn = ResidentId.parse(a_number(birth_date=MESSAGE_DATE), today=MESSAGE_DATE)

    assert newborn.birth_date == MESSAGE_DATE


def test_without_a_message_date_the_birth_date_is_not_judged_against_one() -> None:
    assert ResidentId.parse(a_number(birth_date=date(2099, 1, 1))).birth_date == date(2099, 1, 1)


def test_the_age_is_in_whole_years_and_grows_on_the_birthday() -> None:
    resident = ResidentId.parse(a_number(birth_date=date(1990, 3, 7)))

    assert resident.age_on(date(2021, 3, 6)) == 30
    assert resident.age_on(date(2021, 3, 7)) == 31
    assert resident.age_on(date(1990, 3, 7)) == 0


def test_someone_born_on_29_february_turns_older_on_1_march_in_non_leap_years() -> None:
    resident = ResidentId.parse(a_number(birth_date=date(2004, 2, 29)))

    assert resident.age_on(date(2021, 2, 28)) == 16
    assert resident.age_on(date(2021, 3, 1)) == 17
    assert resident.age_on(date(2024, 2, 29)) == 20


def test_there_is_no_age_before_the_birth_date() -> None:
    with pytest.raises(ValueError, match="before the birth date"):
        ResidentId.parse(a_number(birth_date=date(2021, 9, 2))).age_on(MESSAGE_DATE)


def test_the_masked_number_hides_the_birth_date() -> None:
    number = number_of("34010219900307123")
    resident = ResidentId.parse(number)

    assert resident.masked == f"340102********123{number[-1]}"
    assert number not in repr(resident)
    assert resident.masked in repr(resident)


@pytest.mark.parametrize(
    "first17, today",
    [
        ("34010419900230123", None),  # impossible birth date
        ("34010418991231123", None),  # born before 1900
        ("34010420300101123", MESSAGE_DATE),  # born after the message date
        ("04010419900307123", None),  # no such province
    ],
)
def test_refusal_details_never_show_the_whole_number(first17: str, today: date | None) -> None:
    number = number_of(first17)
    wrong_check = number[:-1] + ("0" if number[-1] != "0" else "1")
    wrong_character = number[:9] + "A" + number[10:]

    for text in (number, wrong_check, wrong_character):
        with pytest.raises(InvalidIdNumber) as refusal:
            ResidentId.parse(text, today=today)
        shown = f"{refusal.value} {refusal.value.detail!r}"
        assert text not in shown
        assert text[6:14] not in shown, "the birth date with the masked number is the number"
        assert "********" in shown


def test_a_generated_number_has_the_requested_sex_division_and_birth_date() -> None:
    rng = random.Random(SEED)
    for sex in ("male", "female") * 50:
        resident = ResidentId.parse(
            generate_id_number(rng, division_code="340181", birth_date=date(1955, 12, 31), sex=sex)
        )
        assert (resident.division_code, resident.birth_date, resident.sex) == (
            "340181",
            date(1955, 12, 31),
            sex,
        ), f"seed {SEED}"
        assert resident.sequence != 0, f"seed {SEED}"


def test_a_number_is_generated_only_for_a_male_or_a_female() -> None:
    with pytest.raises(ValueError, match="male"):
        generate_id_number(random.Random(SEED), birth_date=date(1990, 1, 1), sex="M")  # type: ignore[arg-type]


def test_a_number_cannot_be_generated_for_a_division_outside_every_province() -> None:
    with pytest.raises(InvalidIdNumber):
        generate_id_number(random.Random(SEED), division_code="000000", birth_date=date(1990, 1, 1))


@given(
    seed=st.integers(0, 2**32),
    division_code=st.sampled_from(HEFEI_DIVISIONS),
    birth_date=st.dates(date(1900, 1, 1), MESSAGE_DATE),
    sex=st.sampled_from(["male", "female"]),
)
def test_every_generated_number_parses_back_to_its_division_birth_date_and_sex(
    seed: int, division_code: str, birth_date: date, sex: Sex
) -> None:
    number = generate_id_number(
        random.Random(seed), division_code=division_code, birth_date=birth_date, sex=sex
    )
    resident = ResidentId.parse(number, today=MESSAGE_DATE)

    assert (resident.number, resident.division_code, resident.birth_date, resident.sex) == (
        number,
        division_code,
        birth_date,
        sex,
    )


@given(
    seed=st.integers(0, 2**32),
    birth_date=st.dates(date(1900, 1, 1), MESSAGE_DATE),
    position=st.integers(0, 17),
    digit=st.sampled_from("0123456789"),
)
def test_changing_any_one_character_to_another_digit_is_always_detected(
    seed: int, birth_date: date, position: int, digit: str
) -> None:
    """Every MOD 11-2 weight is non-zero modulo the prime 11, and so is the change of one digit:
    the weighted sum always moves, and so does the check character."""
    number = a_number(birth_date=birth_date, seed=seed)
    if number[position] == digit:
        digit = str((int(digit) + 1) % 10)
    changed = number[:position] + digit + number[position + 1 :]

    assert check_character(changed[:17]) != changed[17]
    with pytest.raises(InvalidIdNumber):
        ResidentId.parse(changed)


def test_a_person_key_is_64_lower_case_hex_characters() -> None:
    assert re.fullmatch(r"[0-9a-f]{64}", person_key(a_number(), SECRET))


def test_person_keys_differ_by_secret_and_never_contain_the_number() -> None:
    number = a_number()
    key = person_key(number, SECRET)

    assert key != person_key(number, b"another secret of 32 bytes......")
    assert key != person_key(a_number(seed=SEED + 1), SECRET)
    assert number not in key and number[:17] not in key


def test_one_person_has_one_key_however_the_number_is_written() -> None:
    number = a_number_ending_in_x()

    assert person_key(f" {number.lower()} ", SECRET) == person_key(number, SECRET)
    assert PersonKeyer(SECRET)(number) == person_key(number, SECRET)


def test_an_invalid_number_has_no_person_key() -> None:
    with pytest.raises(InvalidIdNumber):
        person_key(number_of("34010419900307123")[:-1] + "Z", SECRET)


@pytest.mark.parametrize("secret", [b"", b"fifteen bytes!!"])
def test_a_person_key_secret_shorter_than_16_bytes_is_refused(secret: bytes) -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        PersonKeyer(secret)


def test_a_person_keyer_never_shows_its_secret() -> None:
    keyer = PersonKeyer(SECRET)

    assert SECRET.decode() not in repr(keyer) and SECRET.decode() not in str(keyer)
