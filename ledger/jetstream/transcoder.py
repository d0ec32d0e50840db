"""A msgspec-based transcoder, the default for the JetStream persistence module.

Why: speed. The library's ``JSONTranscoder`` is built on the stdlib ``json`` module and calls
back into Python for every custom object written and every JSON object read; here msgspec does
the JSON work and one cheap walk over the data applies the registered transcodings.

The wire format equals ``JSONTranscoder``'s: compact JSON, UTF-8 rather than ASCII escapes, and
custom types as ``{"_type_": name, "_data_": ...}``. Each reads what the other wrote, tuples
aside (see ``MsgspecTranscoder``).
"""

from __future__ import annotations

import json
from math import isfinite
from typing import Any, Final

import msgspec
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Transcoding,
    TranscodingNotRegisteredError,
    UUIDAsHex,
)

from ledger.transcodings import DateAsISO, TupleAsList

# Types msgspec writes as the json module does, so they pass through untouched. Floats need a
# look first: msgspec would silently write NaN and the infinities as null.
_PLAIN: Final = frozenset({str, int, bool, type(None)})
_CONTAINERS: Final = frozenset({dict, list})


class MsgspecTranscoder(JSONTranscoder):
    """Extensible JSON transcoder built on msgspec, wire-compatible with ``JSONTranscoder``.

    It subclasses ``JSONTranscoder`` (reusing its registry) so that an ``Application`` registers
    its transcodings with it exactly as with the library's own.

    Exact dicts, lists, strings, ints, floats, bools and None are written natively; every other
    object goes through the transcoding registered for its exact type. Where ``JSONTranscoder``
    differs, it is the one losing information:

    - tuples are written as ``{"_type_": "tuple_as_list", ...}`` and read back as tuples
      (``JSONTranscoder`` writes plain lists; register ``TupleAsList`` with it to read ours);
    - subclasses of dict, list, str, int, float need a registered transcoding, rather than
      silently being written as their base type;
    - NaN and the infinities raise ``ValueError`` rather than being written as non-standard
      ``NaN``/``Infinity`` tokens, which msgspec (and most JSON parsers) cannot read.
    """

    def __init__(self) -> None:
        super().__init__()
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder()
        self.register(TupleAsList())

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


def register_default_transcodings(transcoder: JSONTranscoder) -> None:
    """Registers the transcodings domain events need: UUID, Decimal, datetime and date."""
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO(), DateAsISO()):
        transcoder.register(transcoding)


def _prepare(obj: Any, types: dict[type, Transcoding]) -> Any:
    """Returns obj as plain JSON types, custom objects transcoded; copies, never mutates."""
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
    data = transcoding.encode(obj)
    if type(data) not in _PLAIN:
        data = _prepare(data, types)
    return {"_type_": transcoding.name, "_data_": data}


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
    if isinstance(obj, list):  # exactly a list or a dict: made by the decoder
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
