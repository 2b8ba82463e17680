"""HPACK decoding against RFC 7541's own examples and against the hpack library's encoder, and the never-indexing
encoder against the hpack library's decoder."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgebox.api.http2.hpack import CompressionError, Decoder, Encoder, encode_field

NO_LIMIT = 1 << 30

# RFC 7541 Appendix C.3 (requests without Huffman coding) and C.4 (the same requests with it): one connection each.
REQUESTS = [
    ([(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")], 57),
    ([(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com"),
      ("cache-control", "no-cache")], 110),
    ([(":method", "GET"), (":scheme", "https"), (":path", "/index.html"), (":authority", "www.example.com"),
      ("custom-key", "custom-value")], 164),
]
C3 = ["828684410f7777772e6578616d706c652e636f6d",
      "828684be58086e6f2d6361636865",
      "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565"]
C4 = ["828684418cf1e3c2e5f23a6ba0ab90f4ff",
      "828684be5886a8eb10649cbf",
      "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf"]

# C.5 (responses without Huffman, a 256-byte table, so entries are evicted) and C.6 (the same with Huffman).
RESPONSES = [
    ([(":status", "302"), ("cache-control", "private"), ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
      ("location", "https://www.example.com")], 222),
    ([(":status", "307"), ("cache-control", "private"), ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
      ("location", "https://www.example.com")], 222),
    ([(":status", "200"), ("cache-control", "private"), ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
      ("location", "https://www.example.com"), ("content-encoding", "gzip"),
      ("set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1")], 215),
]
C5 = [("4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a323120474d54"
      "6e1768747470733a2f2f7777772e6578616d706c652e636f6d"),
      "4803333037c1c0bf",
      ("88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a69707738666f6f3d"
      "4153444a4b48514b425a584f5157454f50495541585157454f49553b206d61782d6167653d333630303b20766572"
      "73696f6e3d31")]
C6 = [("488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b"
      "97c8e9ae82ae43d3"),
      "4883640effc1c0bf",
      ("88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335dfdf"
      "cd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007")]


def as_bytes(fields: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(n.encode(), v.encode()) for n, v in fields]


@pytest.mark.parametrize("blocks, expected, table_size", [(C3, REQUESTS, 4096), (C4, REQUESTS, 4096),
                                                           (C5, RESPONSES, 256), (C6, RESPONSES, 256)],
                         ids=["C.3", "C.4", "C.5", "C.6"])
def test_decodes_rfc7541_examples_with_the_dynamic_table_in_step(blocks, expected, table_size):
    decoder = Decoder(table_size)
    for block, (fields, size_after) in zip(blocks, expected, strict=True):
        decoded, oversized = decoder.decode(bytes.fromhex(block), NO_LIMIT)
        assert not oversized
        assert decoded == as_bytes(fields)
        assert decoder._size == size_after  # the RFC gives the table's size after each block


def test_a_list_over_the_limit_is_dropped_but_the_table_still_learns_from_it():
    decoder = Decoder()
    block = bytes.fromhex(C3[0])
    fields, oversized = decoder.decode(block, max_list_size=100)  # the four fields take 4 * 32 + their lengths
    assert oversized and fields == []
    fields, oversized = decoder.decode(bytes.fromhex("be"), NO_LIMIT)  # index 62: the entry the big list added
    assert fields == [(b":authority", b"www.example.com")] and not oversized


@pytest.mark.parametrize("block, problem", [
    ("80", "index 0"),
    ("ff00", "index 127 (empty table)"),
    ("bf", "index 63 (empty table)"),
    ("7f", "an integer cut short"),
    ("7fffffffffffff01", "an integer over 2**28"),
    ("410f7777", "a string past the end"),
    ("4187ffffffffffffffff", "a Huffman string with the EOS code in it"),
    ("418100", "Huffman padding that is not all ones"),
    ("82203f", "a table size update after a field"),
    ("3fe21f", "a table size update above SETTINGS_HEADER_TABLE_SIZE"),
    ("00", "a literal whose name is cut short"),
])
def test_malformed_blocks_are_compression_errors(block, problem):
    with pytest.raises(CompressionError):
        Decoder().decode(bytes.fromhex(block), NO_LIMIT)


def test_table_size_updates_at_the_start_of_a_block_evict_and_then_allow_new_entries():
    decoder = Decoder()
    decoder.decode(bytes.fromhex(C3[0]), NO_LIMIT)
    fields, _ = decoder.decode(bytes.fromhex("2020" + "82"), NO_LIMIT)  # size 0, then back to 0: both allowed
    assert fields == [(b":method", b"GET")] and decoder._entries == []
    with pytest.raises(CompressionError):
        decoder.decode(bytes.fromhex("be"), NO_LIMIT)  # the evicted entry is gone


header_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=20)
header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
header_lists = st.lists(st.tuples(st.sampled_from([":method", ":path", "content-type", "te", "grpc-timeout",
                                                   "user-agent", "date"]) | header_names, header_values),
                        max_size=12)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(header_lists, st.sampled_from([None, 0, 64, 256, 4096])), min_size=1, max_size=8))
def test_decodes_whatever_the_hpack_library_encodes_with_indexing_huffman_and_size_updates(sequence):
    encoder, decoder = hpack.Encoder(), Decoder()
    for fields, table_size in sequence:
        if table_size is not None:
            encoder.header_table_size = table_size  # the next block starts with a size update
        decoded, oversized = decoder.decode(encoder.encode(fields), NO_LIMIT)
        assert decoded == as_bytes(fields) and not oversized


@settings(max_examples=200, deadline=None)
@given(st.lists(header_lists, min_size=1, max_size=6))
def test_the_encoder_output_decodes_with_the_hpack_library(sequence):
    encoder, decoder = Encoder(), hpack.Decoder()
    for fields in sequence:
        assert decoder.decode(encoder.encode(fields)) == fields
    assert decoder.header_table.maxsize == 0  # told once that we keep no table for it


def test_the_first_block_says_our_table_is_empty_and_later_ones_are_the_cached_encoding():
    encoder = Encoder()
    headers = [(":status", "200"), ("content-type", "application/grpc+proto")]
    first, second = encoder.encode(headers), encoder.encode(headers)
    assert first == b"\x20" + second
    assert encoder.encode(list(headers)) is second  # the same bytes object: encoded once, then looked up
    assert encode_field(b":status", b"200") == b"\x88"  # static index 8, RFC 7541 Appendix A
