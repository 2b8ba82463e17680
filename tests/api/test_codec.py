"""edgebox.api.codec.encode_message writes exactly the bytes of betterproto2's own `bytes(message)`, for every
message type of both protos, with every field set (nested messages, maps, repeated and packed fields, enums),
with none set, and with unknown fields kept from a parse.
"""

from __future__ import annotations

import enum
import inspect
from typing import Any

import betterproto2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgebox import __version__
from edgebox.api.codec import encode_message
from edgebox.api.convert import HealthReplies
from edgebox.node import HealthFacts
from edgebox.proto_gen import infer, manager

MESSAGE_TYPES = sorted(
    {cls for module in (infer, manager) for _, cls in inspect.getmembers(module, inspect.isclass)
     if issubclass(cls, betterproto2.Message) and cls is not betterproto2.Message},
    key=lambda c: f"{c.__module__}.{c.__name__}")

SCALARS = {"string": "caméra-1", "bytes": b"\x00\xffjpeg", "bool": True, "int32": -7, "int64": 1 << 40,
           "uint32": 7, "uint64": 1 << 40, "sint32": -3, "sint64": -(1 << 35), "float": 1.5, "double": -2.25,
           "fixed32": 9, "fixed64": 1 << 33, "sfixed32": -9, "sfixed64": -(1 << 33)}


def sample(cls: type, depth: int = 0) -> Any:
    """An instance of cls with every field set to a non-default value (nested messages to depth 2)."""
    values = {}
    for name, field in cls._betterproto.meta_by_field_name.items():  # type: ignore[attr-defined]
        value = one_value(cls, name, field, depth)
        if value is None:
            continue
        if field.map_meta:
            values[name] = {one_key(field.map_meta[0].proto_type, i): value for i in range(2)}
        elif field.repeated:
            values[name] = [value, value]
        else:
            values[name] = value
    return cls(**values)


def one_key(proto_type: str, i: int) -> Any:
    return f"k{i}" if proto_type == "string" else i + 1


def one_value(cls: type, name: str, field: Any, depth: int) -> Any:
    proto_type = field.map_meta[1].proto_type if field.map_meta else field.proto_type
    if proto_type in SCALARS:
        return SCALARS[proto_type]
    hint = cls._type_hints()[name]  # type: ignore[attr-defined]
    args = getattr(hint, "__args__", None) or (hint,)
    target = next(a for a in reversed(args) if isinstance(a, type) and a is not type(None))  # list[X], dict[K, X], X | None
    if proto_type == "enum":
        assert issubclass(target, enum.Enum)
        return list(target)[-1]
    if proto_type == "message":
        return sample(target, depth + 1) if depth < 2 else target()
    raise AssertionError(f"{cls.__name__}.{name}: unexpected proto type {proto_type}")


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
def test_encode_message_matches_betterproto2_bytes(cls: type) -> None:
    full = sample(cls)
    assert encode_message(full) == bytes(full)
    assert type(full).FromString(encode_message(full)) == full
    empty = cls()
    assert encode_message(empty) == bytes(empty) == b""


def test_encode_message_keeps_unknown_fields() -> None:
    unknown = b"\xf8\x07\x2a"  # field 127, varint 42: no message here has it
    parsed = infer.HealthCheckResponse.FromString(bytes(infer.HealthCheckResponse(version="1.2")) + unknown)
    assert encode_message(parsed) == bytes(parsed)
    assert encode_message(parsed).endswith(unknown)


# Values across each scalar type's whole range: encode_message writes the common types itself (varints, strings,
# floats), so their edges (0, 127/128, negatives, 64-bit extremes, NaN, non-ASCII) must match the library's bytes.
SCALAR_STRATEGIES = {
    "string": st.text(max_size=40), "bytes": st.binary(max_size=40), "bool": st.booleans(),
    "int32": st.integers(-(1 << 31), (1 << 31) - 1), "int64": st.integers(-(1 << 63), (1 << 63) - 1),
    "uint32": st.integers(0, (1 << 32) - 1), "uint64": st.integers(0, (1 << 64) - 1),
    "sint32": st.integers(-(1 << 31), (1 << 31) - 1), "sint64": st.integers(-(1 << 63), (1 << 63) - 1),
    "float": st.floats(width=32), "double": st.floats(),
    "fixed32": st.integers(0, (1 << 32) - 1), "fixed64": st.integers(0, (1 << 64) - 1),
    "sfixed32": st.integers(-(1 << 31), (1 << 31) - 1), "sfixed64": st.integers(-(1 << 63), (1 << 63) - 1),
}
SCALAR_MESSAGES = [cls for cls in MESSAGE_TYPES
                   if any(f.proto_type in SCALAR_STRATEGIES or f.proto_type == "enum"
                          for f in cls._betterproto.meta_by_field_name.values())]  # type: ignore[attr-defined]


@st.composite
def scalar_message(draw: st.DrawFn) -> Any:
    cls = draw(st.sampled_from(SCALAR_MESSAGES))
    values = {}
    for name, field in cls._betterproto.meta_by_field_name.items():  # type: ignore[attr-defined]
        if field.map_meta or field.proto_type not in SCALAR_STRATEGIES:
            continue
        strategy = SCALAR_STRATEGIES[field.proto_type]
        values[name] = draw(st.lists(strategy, max_size=3) if field.repeated else strategy)
    return cls(**values)


@settings(max_examples=300, deadline=None)
@given(scalar_message())
def test_encode_message_matches_betterproto2_bytes_for_any_scalar_values(message: Any) -> None:
    assert encode_message(message) == bytes(message)


@pytest.mark.parametrize("missed", [0, 1, 127, 128, 300, 2**40])
def test_missed_suffix_appended_to_encoded_result_sets_missed_before(missed: int) -> None:
    from edgebox.api.convert import missed_suffix

    shared = encode_message(infer.InferResult(camera_id="cam", frame_seq=7))
    parsed = infer.InferResult.FromString(shared + missed_suffix(missed))
    assert (parsed.camera_id, parsed.frame_seq, parsed.missed_before) == ("cam", 7, missed)


health_facts = st.builds(
    HealthFacts,
    status=st.sampled_from(["SERVING", "NOT_SERVING", "STOPPING"]),
    gpu_available=st.booleans(),
    plugins=st.lists(st.text(max_size=12), max_size=4).map(tuple),
    plugin_errors=st.lists(st.text(max_size=30), max_size=2).map(tuple),
    backends=st.lists(st.sampled_from(["openvino-cpu", "onnxruntime-cpu", "onnxruntime-cuda"]), max_size=3).map(tuple),
    models=st.lists(st.text(max_size=40), max_size=3).map(tuple),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(health_facts, st.integers(0, 2**62), st.floats(0, 1e9)), min_size=1, max_size=4))
def test_health_replies_are_the_bytes_of_the_whole_message_whatever_the_facts_and_clock(calls) -> None:
    replies = HealthReplies()  # one encoder across calls, as the service keeps one: facts change between them
    for facts, timestamp_ms, uptime_s in calls:
        whole = infer.HealthCheckResponse(
            status=infer.HealthStatus[facts.status], timestamp=timestamp_ms, gpu_available=facts.gpu_available,
            plugin_count=len(facts.plugins), version=__version__, uptime_s=uptime_s, plugins=list(facts.plugins),
            backends=list(facts.backends), plugin_errors=list(facts.plugin_errors), models=list(facts.models))
        assert replies.encode(facts, timestamp_ms, uptime_s) == bytes(whole)
