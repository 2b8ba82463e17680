"""A protobuf codec for grpclib that also sends pre-encoded bytes as they are, and types decode failures.

Results are encoded once and fanned out as bytes (see results.ResultHub). betterproto2 messages are encoded by
`encode_message`, which writes the same bytes as `bytes(message)` without its per-field cost; Google protobuf
messages encode themselves.
"""

from __future__ import annotations

import struct
import warnings
from typing import Any

import betterproto2
from betterproto2 import PACKED_TYPES, TYPE_BYTES, TYPE_MESSAGE, _preprocess_single, _serialize_single
from grpclib.encoding.proto import ProtoCodec

from edgebox.errors import InvalidRequest

# The wire type each proto type must arrive with. betterproto2's parser does not check it (a message field sent
# as a varint decodes to an int, a length past the end is cut short), so requests are checked here first.
WIRE_VARINT, WIRE_FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5
_WIRE_TYPE = {
    **dict.fromkeys(("string", "bytes", "message", "map"), _LEN),
    **dict.fromkeys(("float", "fixed32", "sfixed32"), _FIXED32),
    **dict.fromkeys(("double", "fixed64", "sfixed64"), WIRE_FIXED64),
}
_MAX_DEPTH = 32
DOUBLE, _FLOAT = struct.Struct("<d"), struct.Struct("<f")


class MalformedMessage(InvalidRequest):
    """The request bytes are not a valid message of the method's request type."""


class PreEncodedProtoCodec(ProtoCodec):
    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, (bytes, bytearray, memoryview)):
            return bytes(message)
        if isinstance(message, betterproto2.Message) and type(message) is message_type:
            return encode_message(message)
        return super().encode(message, message_type)

    def decode(self, data: bytes, message_type: Any) -> Any:
        try:
            if hasattr(message_type, "_betterproto"):
                check_wire_format(memoryview(data), message_type)
            return message_type.FromString(data)
        except Exception as exc:  # noqa: BLE001 - the library raises many types for bad bytes; all are the client's
            raise MalformedMessage(f"the request is not a valid {message_type.__name__} message: {exc}") from None


# -- encoding -------------------------------------------------------------------------------------------------------
# betterproto2's __bytes__ builds every field's default inside warnings.catch_warnings() to compare the value with
# it, on every encode and for every nested message: most of the encode time of a small reply (docs/benchmarks.md,
# gRPC). The defaults are built once per class here; the wire bytes are the library's own (_serialize_single), and
# tests/api/test_codec.py checks byte equality with bytes(message) on every message type.
_PLANS: dict[type, tuple[tuple[str, Any, Any], ...]] = {}


def _plan(cls: type) -> tuple[tuple[str, Any, Any], ...]:
    meta = cls._betterproto  # type: ignore[attr-defined]
    with warnings.catch_warnings():  # as betterproto2 does: deprecated fields warn when their default is built
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        plan = tuple((name, field, meta.default_gen[name]()) for name, field in meta.meta_by_field_name.items())
    _PLANS[cls] = plan
    return plan


# The scalar types most replies are made of, written here directly: betterproto2's _serialize_single goes through
# a BytesIO per varint and rebuilds the key every time (6.4 ms to encode ListCameras with 50 cameras, 3.4 ms with
# the plans above, ~1 ms with these). Anything else (sint, fixed, wrappers, negative ints) is still the library's.
_PLAIN_VARINT_TYPES = frozenset({"enum", "bool", "int32", "int64", "uint32", "uint64"})
_ONE_BYTE = tuple(bytes((i,)) for i in range(128))
_KEYS: dict[tuple[int, int], bytes] = {}


def encode_varint(value: int) -> bytes:
    """A non-negative int as a protobuf varint."""
    if value < 128:
        return _ONE_BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def field_key(number: int, wire: int) -> bytes:
    """The tag bytes of field `number` with wire type `wire` (cached)."""
    key = _KEYS.get((number, wire))
    if key is None:
        key = _KEYS[(number, wire)] = encode_varint((number << 3) | wire)
    return key


def _payload(proto_type: str, value: Any) -> bytes | None:
    """The value's bytes without key (and length), for the common types; None for betterproto2 to do."""
    if proto_type in _PLAIN_VARINT_TYPES:
        number = int(value)
        return encode_varint(number) if number >= 0 else None
    if proto_type == "double":
        return DOUBLE.pack(value)
    if proto_type == "float":
        return _FLOAT.pack(value)
    return None


def _single(field: Any, value: Any) -> bytes:
    proto_type = field.proto_type
    if field.unwrap is None:
        if proto_type == "string":
            data = value.encode("utf-8")
            return field_key(field.number, _LEN) + encode_varint(len(data)) + data
        if proto_type == TYPE_MESSAGE and isinstance(value, betterproto2.Message):
            data = encode_message(value)
            return field_key(field.number, _LEN) + encode_varint(len(data)) + data
        if proto_type == TYPE_BYTES:
            return field_key(field.number, _LEN) + encode_varint(len(value)) + bytes(value)
        payload = _payload(proto_type, value)
        if payload is not None:
            return field_key(field.number, _WIRE_TYPE.get(proto_type, WIRE_VARINT)) + payload
    return _serialize_single(field.number, proto_type, value, unwrap=field.unwrap)


def encode_message(message: betterproto2.Message) -> bytes:
    """The same bytes as `bytes(message)`, with each class's field defaults built once instead of per encode."""
    if message._is_pydantic():
        return bytes(message)
    cls = type(message)
    plan = _PLANS.get(cls) or _plan(cls)
    out = bytearray()
    for name, field, default in plan:
        value = getattr(message, name)
        if value is None or value == default:  # unset optional fields and zero values are not sent
            continue
        if field.repeated:
            if field.proto_type in PACKED_TYPES:
                packed = bytearray()
                for item in value:
                    payload = _payload(field.proto_type, item)
                    packed += payload if payload is not None else _preprocess_single(field.proto_type, None, item)
                out += field_key(field.number, _LEN) + encode_varint(len(packed)) + packed
            else:
                for item in value:
                    out += _single(field, item)
        elif field.map_meta:
            key_meta, value_meta = field.map_meta
            for k, v in value.items():
                entry = _single(key_meta, k) + _single(value_meta, v)
                out += field_key(field.number, _LEN) + encode_varint(len(entry)) + entry
        else:
            out += _single(field, value)
    out += message._unknown_fields
    return bytes(out)

def _varint(data: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("a varint is truncated or longer than 10 bytes")
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return value, i
        shift += 7


def check_wire_format(data: memoryview, message_type: Any, depth: int = 0) -> None:
    """Raise ValueError unless `data` is well-formed protobuf whose known fields have their declared wire types."""
    if depth > _MAX_DEPTH:
        raise ValueError(f"messages are nested deeper than {_MAX_DEPTH} levels")
    meta = message_type._betterproto
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0 is not allowed")
        start = i
        if wire == WIRE_VARINT:
            _, i = _varint(data, i)
        elif wire in (WIRE_FIXED64, _FIXED32):
            i += 8 if wire == WIRE_FIXED64 else 4
        elif wire == _LEN:
            length, start = _varint(data, i)
            i = start + length
        else:
            raise ValueError(f"field {number} has wire type {wire}, which proto3 does not use")
        if i > len(data):
            raise ValueError(f"field {number} runs past the end of the message")
        name = meta.field_name_by_number.get(number)
        if name is None:
            continue  # an unknown field is kept, as protobuf does
        field = meta.meta_by_field_name[name]
        expected = _WIRE_TYPE.get(field.proto_type, WIRE_VARINT)
        if wire == expected:
            if field.proto_type in ("message", "map"):
                check_wire_format(data[start:i], meta.cls_by_field[name], depth + 1)
        elif not (wire == _LEN and field.repeated and field.proto_type in betterproto2.PACKED_TYPES):
            raise ValueError(f"field {number} ({name}) has wire type {wire}, expected {expected}")
