"""A msgspec-based transcoder, the default for the JetStream persistence module.

Why: speed. The library's ``JSONTranscoder`` runs the stdlib ``json`` module with a Python
callback for every custom object on the way out and for every JSON object on the way in;
``MsgspecTranscoder`` lets msgspec do the (de)serialising and walks the data only once, cheaply,
to apply the registered transcodings.

The wire format equals ``JSONTranscoder``'s (compact JSON, UTF-8 rather than ASCII escapes,
custom types as ``{"_type_": name, "_data_": ...}``), so each can read what the other wrote
for the types ``JSONTranscoder`` supports. Two differences, both things ``JSONTranscoder``
cannot do: tuples are written as ``{"_type_": "tuple_as_list", ...}`` and read back as tuples
(``JSONTranscoder`` writes them as plain lists, and reads ours once ``TupleAsList`` is
registered with it), and subclasses of dict, list, str, int etc. go through the transcoding
registered for their exact type instead of silently becoming the base type.
"""

from __future__ import annotations

import json
from datetime import date
from math import isfinite
from typing import Any, Final

import msgspec
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Transcoder,
    Transcoding,
    TranscodingNotRegisteredError,
    UUIDAsHex,
)

# Types msgspec writes as the json module does, so they pass through untouched. Floats need a
# look first: msgspec would silently write NaN and the infinities as null.
_PLAIN: Final = frozenset({str, int, bool, type(None)})
_CONTAINERS: Final = frozenset({dict, list})


class TupleAsList(Transcoding):
    """Represents tuples as lists. Built into ``MsgspecTranscoder``.

    Register it with a ``JSONTranscoder`` to let that read tuples written by
    ``MsgspecTranscoder``.
    """

    type = tuple
    name = "tuple_as_list"

    def encode(self, obj: tuple[Any, ...]) -> list[Any]:
        return list(obj)

    def decode(self, data: list[Any]) -> tuple[Any, ...]:
        return tuple(data)


class DateAsISO(Transcoding):
    """Represents :class:`datetime.date` objects as ISO 8601 strings (``YYYY-MM-DD``)."""

    type = date
    name = "date_iso"

    def encode(self, obj: date) -> str:
        return obj.isoformat()

    def decode(self, data: str) -> date:
        return date.fromisoformat(data)


class MsgspecTranscoder(Transcoder):
    """Extensible JSON transcoder built on msgspec, wire-compatible with ``JSONTranscoder``.

    Exact dicts, lists, strings, ints, floats, bools and None are written natively; every other
    object, tuples included, through the transcoding registered for its exact type.
    """

    def __init__(self) -> None:
        self.types: dict[type, Transcoding] = {}
        self.names: dict[str, Transcoding] = {}
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder()
        self.register(TupleAsList())

    def register(self, transcoding: Transcoding) -> None:
        """Registers given transcoding with the transcoder."""
        self.types[transcoding.type] = transcoding
        self.names[transcoding.name] = transcoding

    def encode(self, obj: Any) -> bytes:
        """Encodes given object as JSON bytes."""
        return self._encoder.encode(_prepare(obj, self.types))

    def decode(self, data: bytes) -> Any:
        """Decodes JSON bytes as previously encoded object."""
        obj = self._decoder.decode(data)
        # Only a JSON object with a "_type_" key needs a transcoding, and that key appears in
        # the bytes either literally or, if someone escaped it, with a \u escape.
        if type(obj) in _CONTAINERS and (b'"_type_"' in data or b"\\u" in data):
            return _restore(obj, self.names)
        return obj


def register_default_transcodings(transcoder: MsgspecTranscoder | JSONTranscoder) -> None:
    """Registers the transcodings domain events need: UUID, Decimal, datetime and date."""
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO(), DateAsISO()):
        transcoder.register(transcoding)


def _prepare(obj: Any, types: dict[type, Transcoding]) -> Any:
    """Returns a copy of obj holding only plain JSON types, custom objects transcoded."""
    cls = type(obj)
    if cls is dict:
        prepared = {}
        for key, value in obj.items():
            if type(key) is not str:
                key = _prepare_key(key)
            prepared[key] = value if type(value) in _PLAIN else _prepare(value, types)
        return prepared
    if cls is list:
        return [value if type(value) in _PLAIN else _prepare(value, types) for value in obj]
    if cls is float:
        if not isfinite(obj):
            msg = f"Out of range float values are not JSON compliant: {obj!r}"
            raise ValueError(msg)
        return obj
    if cls in _PLAIN:
        return obj
    try:
        transcoding = types[cls]
    except KeyError:
        msg = (
            f"Object of type {cls} is not serializable. "
            "Please define and register a custom transcoding for this type."
        )
        raise TranscodingNotRegisteredError(msg) from None
    return {"_type_": transcoding.name, "_data_": _prepare(transcoding.encode(obj), types)}


def _prepare_key(key: Any) -> str:
    """Returns a non-str dict key as the json module would write it, or raises like it."""
    if isinstance(key, str):
        return key
    if isinstance(key, int | float) or key is None:  # bool is an int
        return json.dumps(key)
    msg = f"keys must be str, int, float, bool or None, not {type(key).__name__}"
    raise TypeError(msg)


def _restore(obj: dict[str, Any] | list[Any], names: dict[str, Transcoding]) -> Any:
    """Decodes ``{"_type_", "_data_"}`` objects in freshly decoded obj, innermost first.

    Mutates obj in place: it was just made by the decoder and nothing else refers to it.
    """
    if type(obj) is list:
        for index, value in enumerate(obj):
            if type(value) in _CONTAINERS:
                obj[index] = _restore(value, names)
        return obj
    for key, value in obj.items():
        if type(value) in _CONTAINERS:
            obj[key] = _restore(value, names)
    if len(obj) == 2 and "_type_" in obj and "_data_" in obj:
        name = obj["_type_"]
        try:
            transcoding = names[name]
        except KeyError:
            msg = (
                f"Data serialized with name '{name}' is not deserializable. "
                "Please register a custom transcoding for this type."
            )
            raise TranscodingNotRegisteredError(msg) from None
        return transcoding.decode(obj["_data_"])
    return obj
