"""Why the ledger refuses a fact: one reason each, named in the contract's vocabulary.

Every refusal is a ``Refusal`` subclass carrying exactly one ``reason`` (the string published on
``ledger.rejected.<reason>``) and a human-readable ``detail``. Raising one records nothing.
"""

from __future__ import annotations

from typing import ClassVar


class Refusal(Exception):
    """Raised when a fact cannot be applied; ``reason`` is machine-readable, ``detail`` is not."""

    reason: ClassVar[str] = "refused"

    def __init__(self, detail: str) -> None:
        super().__init__(f"{self.reason}: {detail}")
        self.detail = detail


class MsgIdConflict(Refusal):
    """Raised when a sender repeats a ``msg_id`` it used before with a different message: the
    first message stands, the repeat is refused (an identical repeat is a harmless duplicate)."""

    reason = "msg_id_conflict"


class Malformed(Refusal):
    """Raised when a message lacks a required field or has a value of the wrong form."""

    reason = "malformed"


class InvalidIdNumber(Refusal):
    """Raised when a resident ID number fails GB 11643 (length, division, birth date, checksum)."""

    reason = "invalid_id_number"


class UnknownDistrict(Refusal):
    """Raised when a division code is not a district of the region's policy."""

    reason = "unknown_district"


class OutsideEnrollmentPeriod(Refusal):
    """Raised when an enrollment or payment falls outside the concentrated period and the person
    is not one of those who may enroll outside it (the policy §4)."""

    reason = "outside_enrollment_period"


class NotEligible(Refusal):
    """Raised when the person does not belong to the category they enroll under (the policy §2)."""

    reason = "not_eligible"


class AlreadyEnrolled(Refusal):
    """Raised when the person already has an active enrollment for that coverage year."""

    reason = "already_enrolled"


class InEmployeeInsurance(Refusal):
    """Raised when the person is in employee insurance (职工医保) for that coverage year."""

    reason = "in_employee_insurance"


class Deceased(Refusal):
    """Raised when the fact concerns a time after the person's registered death."""

    reason = "deceased"


class AmountMismatch(Refusal):
    """Raised when a payment is not the amount the person owes for that year."""

    reason = "amount_mismatch"


class NoEnrollment(Refusal):
    """Raised when a payment or change concerns an enrollment the ledger does not have."""

    reason = "no_enrollment"


class DuplicateReceipt(Refusal):
    """Raised when a cash receipt number (专用票据) was already used."""

    reason = "duplicate_receipt"


class NoPolicyForYear(Refusal):
    """Raised when no policy table covers the funding year a fact needs: never guessed."""

    reason = "no_policy_for_year"


class NotAuthorised(Refusal):
    """Raised when the sender (known by its NATS account) may not send this fact, through this
    channel, or for this roster category."""

    reason = "not_authorised"


REASONS: tuple[str, ...] = tuple(
    cls.reason
    for cls in (
        Malformed,
        InvalidIdNumber,
        UnknownDistrict,
        OutsideEnrollmentPeriod,
        NotEligible,
        AlreadyEnrolled,
        InEmployeeInsurance,
        Deceased,
        AmountMismatch,
        NoEnrollment,
        DuplicateReceipt,
        NoPolicyForYear,
        NotAuthorised,
    )
)
"""Every reason the ledger can give, in the contract's order (plus ``no_policy_for_year``)."""
