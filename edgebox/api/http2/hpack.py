"""HPACK (RFC 7541) for the server connection: a decoder with the dynamic table, and an encoder that never indexes.

The Huffman code and the static table are the `hpack` package's (h2's own HPACK library); what is ours is the
loop over a header block, written for the shape of gRPC requests (mostly one-byte indexed fields), and an encoder
whose output depends only on its input, so that grpclib's few distinct reply headers are encoded once and cached.
"""

from __future__ import annotations

from hpack.exceptions import HPACKDecodingError
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

STATIC_TABLE: tuple[tuple[bytes, bytes], ...] = HeaderTable.STATIC_TABLE
STATIC_LENGTH = len(STATIC_TABLE)  # 61
ENTRY_OVERHEAD = 32  # RFC 7541 4.1: an entry's size is its name and value lengths plus 32
DEFAULT_TABLE_SIZE = 4096
ENCODED_CACHE_LIMIT = 512  # distinct header lists whose encoding is kept (grpclib sends a handful)
ENCODED_CACHE_MAX_BLOCK = 1024  # longer blocks (large error details) are encoded each time, not kept

_huffman = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


class CompressionError(Exception):
    """A header block that cannot be decoded: a connection error of type COMPRESSION_ERROR (RFC 9113 4.3)."""


def _integer(block: bytes, at: int, prefix_bits: int) -> tuple[int, int]:
    """Decode an HPACK integer whose prefix is the low `prefix_bits` of block[at]; returns (value, next offset)."""
    mask = (1 << prefix_bits) - 1
    value = block[at] & mask
    at += 1
    if value < mask:
        return value, at
    shift = 0
    end = len(block)
    while True:
        if at >= end:
            raise CompressionError("the header block ends inside an integer")
        byte = block[at]
        at += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
        if shift > 28:  # no length or index in HTTP/2 needs more than 2**28
            raise CompressionError("an integer in the header block is too large")


def _string(block: bytes, at: int) -> tuple[bytes, int]:
    """Decode an HPACK string literal at block[at]; returns (bytes, next offset)."""
    if at >= len(block):
        raise CompressionError("the header block ends before a string")
    huffman = block[at] & 0x80
    length, at = _integer(block, at, 7)
    end = at + length
    if end > len(block):
        raise CompressionError("a string runs past the end of the header block")
    raw = block[at:end]
    if huffman:
        try:
            raw = decode_huffman(raw)
        except HPACKDecodingError as exc:
            raise CompressionError(f"a Huffman-coded string is invalid: {exc}") from None
    return raw, end


class Decoder:
    """Decodes header blocks in arrival order, keeping the dynamic table in step with the peer's encoder."""

    __slots__ = ("_entries", "_max_size", "_size", "settings_max_size")

    def __init__(self, settings_max_size: int = DEFAULT_TABLE_SIZE) -> None:
        self._entries: list[tuple[bytes, bytes]] = []  # newest first: dynamic index 62 is _entries[0]
        self._size = 0
        self._max_size = settings_max_size
        self.settings_max_size = settings_max_size  # what our SETTINGS_HEADER_TABLE_SIZE allows the peer

    def _field(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= STATIC_LENGTH:
            return STATIC_TABLE[index - 1]
        dynamic = index - STATIC_LENGTH - 1
        if 0 <= dynamic < len(self._entries):
            return self._entries[dynamic]
        raise CompressionError(f"header table index {index} does not exist")

    def _add(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + ENTRY_OVERHEAD
        entries = self._entries
        if size > self._max_size:  # RFC 7541 4.4: an entry larger than the table empties it and is not added
            entries.clear()
            self._size = 0
            return
        entries.insert(0, (name, value))
        self._size += size
        while self._size > self._max_size:
            old_name, old_value = entries.pop()
            self._size -= len(old_name) + len(old_value) + ENTRY_OVERHEAD

    def _resize(self, new_size: int) -> None:
        if new_size > self.settings_max_size:
            raise CompressionError(f"a table size update to {new_size} exceeds the {self.settings_max_size} allowed")
        self._max_size = new_size
        entries = self._entries
        while self._size > new_size:
            old_name, old_value = entries.pop()
            self._size -= len(old_name) + len(old_value) + ENTRY_OVERHEAD

    def decode(self, block: bytes, max_list_size: int) -> tuple[list[tuple[bytes, bytes]], bool]:
        """Decode one whole header block; returns (fields, oversized).

        The block is always decoded to its end, so the table stays in step; fields past `max_list_size`
        (RFC 7541 4.1 sizes) are dropped and `oversized` is True.
        """
        fields: list[tuple[bytes, bytes]] = []
        list_size = 0
        oversized = False
        at, end = 0, len(block)
        field_seen = False
        while at < end:
            byte = block[at]
            if byte & 0x80:  # indexed field (6.1): the common case in a steady gRPC connection
                if byte != 0xFF:
                    index = byte & 0x7F
                    at += 1
                else:
                    index, at = _integer(block, at, 7)
                if index == 0:
                    raise CompressionError("header table index 0 is not valid")
                name, value = self._field(index)
            elif byte & 0x40:  # literal with incremental indexing (6.2.1)
                index, at = _integer(block, at, 6)
                name, at = _string(block, at) if index == 0 else (self._field(index)[0], at)
                value, at = _string(block, at)
                self._add(name, value)
            elif byte & 0x20:  # dynamic table size update (6.3): only before the first field
                if field_seen:
                    raise CompressionError("a table size update after a header field")
                new_size, at = _integer(block, at, 5)
                self._resize(new_size)
                continue
            else:  # literal without indexing (0000) or never indexed (0001) (6.2.2, 6.2.3)
                index, at = _integer(block, at, 4)
                name, at = _string(block, at) if index == 0 else (self._field(index)[0], at)
                value, at = _string(block, at)
            field_seen = True
            if not oversized:
                list_size += len(name) + len(value) + ENTRY_OVERHEAD
                if list_size > max_list_size:
                    oversized = True
                    fields.clear()
                else:
                    fields.append((name, value))
        return fields, oversized


def _encode_integer(value: int, prefix_bits: int, first_byte_flags: int) -> bytes:
    mask = (1 << prefix_bits) - 1
    if value < mask:
        return bytes((first_byte_flags | value,))
    out = bytearray((first_byte_flags | mask,))
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _encode_string(raw: bytes) -> bytes:
    coded = _huffman.encode(raw)
    if len(coded) < len(raw):
        return _encode_integer(len(coded), 7, 0x80) + coded
    return _encode_integer(len(raw), 7, 0) + raw


_STATIC_FIELDS: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAMES: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(STATIC_TABLE, start=1):
    _STATIC_FIELDS.setdefault((_name, _value), _index)
    _STATIC_NAMES.setdefault(_name, _index)


def encode_field(name: bytes, value: bytes) -> bytes:
    """One field: indexed if the static table has it whole, else a literal never added to any table."""
    index = _STATIC_FIELDS.get((name, value))
    if index is not None:
        return _encode_integer(index, 7, 0x80)
    name_index = _STATIC_NAMES.get(name)
    if name_index is not None:
        return _encode_integer(name_index, 4, 0x00) + _encode_string(value)
    return b"\x00" + _encode_string(name) + _encode_string(value)


_ENCODED: dict[tuple[tuple[str, str], ...], bytes] = {}  # shared by all connections: the output is stateless


class Encoder:
    """Encodes header lists without the dynamic table, so an encoding depends only on the list and is cached.

    The peer's decoder is told once, at the start of the first block, that our table size is 0: it then holds no
    state for us whatever SETTINGS_HEADER_TABLE_SIZE it later advertises (RFC 7541 4.2).
    """

    __slots__ = ("_started",)

    def __init__(self) -> None:
        self._started = False

    def encode(self, headers: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> bytes:
        key = tuple(headers)
        cache = _ENCODED
        block = cache.get(key)
        if block is None:
            block = b"".join(encode_field(name.encode(), value.encode()) for name, value in key)
            if len(block) <= ENCODED_CACHE_MAX_BLOCK:
                if len(cache) >= ENCODED_CACHE_LIMIT:
                    cache.clear()
                cache[key] = block
        if not self._started:
            self._started = True
            return b"\x20" + block  # dynamic table size update to 0
        return block
