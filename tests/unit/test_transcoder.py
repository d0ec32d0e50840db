"""MsgspecTranscoder: the library's TranscoderTestCase, and interoperability with JSONTranscoder."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import JSONTranscoder, Transcoder, Transcoding, UUIDAsHex
from eventsourcing.tests.persistence import (
    CustomType1AsDict,
    CustomType2AsDict,
    Mydict,
    MyInt,
    MyList,
    MyStr,
    TranscoderTestCase,
)

from ledger.jetstream.transcoder import (
    MsgspecTranscoder,
    TupleAsList,
    register_default_transcodings,
)


class MydictAsDict(Transcoding):
    type = Mydict
    name = "mydict"

    def encode(self, obj: Mydict[Any, Any]) -> dict[Any, Any]:
        return dict(obj)

    def decode(self, data: dict[Any, Any]) -> Mydict[Any, Any]:
        return Mydict(data)


class MyListAsList(Transcoding):
    type = MyList
    name = "mylist"

    def encode(self, obj: MyList[Any]) -> list[Any]:
        return list(obj)

    def decode(self, data: list[Any]) -> MyList[Any]:
        return MyList(data)


class MyStrAsStr(Transcoding):
    type = MyStr
    name = "mystr"

    def encode(self, obj: MyStr) -> str:
        return str.__str__(obj)

    def decode(self, data: str) -> MyStr:
        return MyStr(data)


class MyIntAsInt(Transcoding):
    type = MyInt
    name = "myint"

    def encode(self, obj: MyInt) -> int:
        return int(obj)

    def decode(self, data: int) -> MyInt:
        return MyInt(data)


class TestMsgspecTranscoder(TranscoderTestCase):
    def construct_transcoder(self) -> Transcoder:
        transcoder = MsgspecTranscoder()
        for transcoding in (
            CustomType1AsDict(),
            CustomType2AsDict(),
            UUIDAsHex(),
            MydictAsDict(),
            MyListAsList(),
            MyStrAsStr(),
            MyIntAsInt(),
        ):
            transcoder.register(transcoding)
        return transcoder


del TranscoderTestCase  # the abstract base, not to be collected itself

CHINA = timezone(timedelta(hours=8))

EVENT_STATE = {
    "originator_id": UUID("b2723fe2c01a40d2875ea3aac6a09ff5"),
    "originator_version": 3,
    "timestamp": datetime(2025, 11, 3, 9, 30, 15, 123456, tzinfo=CHINA),
    "scheme": "城乡居民基本医疗保险",
    "birth_date": date(1958, 2, 28),
    "premium": Decimal("380.00"),
    "subsidised": True,
    "note": None,
    "household": {
        "members": [
            {"id": UUID("0b1f4ea8a3f34c6fa0c4b7d1f8a2a7e1"), "relation": "配偶"},
            {"id": UUID("5d3c1a0e9f7b4e2a8c6d4b2a0e8f6d4c"), "relation": "子女"},
        ],
        "registered_at": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    },
}


def both_transcoders() -> tuple[MsgspecTranscoder, JSONTranscoder]:
    ours, theirs = MsgspecTranscoder(), JSONTranscoder()
    register_default_transcodings(ours)
    register_default_transcodings(theirs)
    return ours, theirs


def test_writes_the_same_bytes_as_json_transcoder() -> None:
    ours, theirs = both_transcoders()
    assert ours.encode(EVENT_STATE) == theirs.encode(EVENT_STATE)


def test_reads_what_json_transcoder_wrote_and_vice_versa() -> None:
    ours, theirs = both_transcoders()
    assert ours.decode(theirs.encode(EVENT_STATE)) == EVENT_STATE
    assert theirs.decode(ours.encode(EVENT_STATE)) == EVENT_STATE


def test_json_transcoder_reads_tuples_once_tuple_as_list_is_registered() -> None:
    ours, theirs = both_transcoders()
    theirs.register(TupleAsList())
    obj = {"codes": ("A01", "B02"), "pairs": [(1, 2)]}
    assert theirs.decode(ours.encode(obj)) == obj


def test_date_round_trips_as_iso_string() -> None:
    transcoder = MsgspecTranscoder()
    register_default_transcodings(transcoder)
    data = transcoder.encode(date(2025, 12, 31))
    assert data == b'{"_type_":"date_iso","_data_":"2025-12-31"}'
    decoded = transcoder.decode(data)
    assert decoded == date(2025, 12, 31)
    assert type(decoded) is date


def test_datetime_is_not_mistaken_for_date() -> None:
    transcoder = MsgspecTranscoder()
    register_default_transcodings(transcoder)
    moment = datetime(2025, 12, 31, 23, 59, tzinfo=CHINA)
    data = transcoder.encode(moment)
    assert data == b'{"_type_":"datetime_iso","_data_":"2025-12-31T23:59:00+08:00"}'
    assert transcoder.decode(data) == moment


def test_chinese_text_is_written_as_utf8_not_ascii_escapes() -> None:
    transcoder = MsgspecTranscoder()
    text = "城乡居民基本医疗保险"
    data = transcoder.encode({"scheme": text})
    assert data == '{"scheme":"城乡居民基本医疗保险"}'.encode()
    assert transcoder.decode(data) == {"scheme": text}


def test_reads_escaped_type_keys_like_json_transcoder() -> None:
    ours, theirs = both_transcoders()
    data = b'{"\\u005ftype_":"uuid_hex","_data_":"b2723fe2c01a40d2875ea3aac6a09ff5"}'
    assert ours.decode(data) == theirs.decode(data) == UUID("b2723fe2c01a40d2875ea3aac6a09ff5")


def test_non_str_keys_are_written_like_json_transcoder() -> None:
    ours, theirs = both_transcoders()
    obj = {1: "a", 2.5: "b", 1e20: "c", False: "d", None: "e"}
    assert ours.encode(obj) == theirs.encode(obj)
    with pytest.raises(TypeError, match="keys must be str, int, float, bool or None, not UUID"):
        ours.encode({UUID("b2723fe2c01a40d2875ea3aac6a09ff5"): 1})


def test_refuses_nan_rather_than_writing_null() -> None:
    with pytest.raises(ValueError, match="Out of range float"):
        MsgspecTranscoder().encode({"ratio": float("nan")})
