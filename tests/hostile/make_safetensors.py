"""Hostile safetensors files, one per validation rule, each breaking that rule alone.

Every case starts from the same small valid file (one F32 tensor "a" of shape [2]) and
changes exactly one thing, so the error the scanner reports can only come from that rule.
Run it to write the files into a directory (default: tests/hostile/safetensors):

    python tests/hostile/make_safetensors.py [OUT_DIR]

The tests import CASES instead and write into a temporary directory; nothing binary is
kept in the repository.

Each case names:
  status     the core's ss_status name for it (csrc/shardscan.h; numbers are stable)
  message    a fragment of the core's message that only that failure site writes
  reference  what safetensors 0.8 does with the file: "rejects", or "accepts" where it is
             more lenient than shardscan (explained in `note`)
"""

from __future__ import annotations

import json
import struct
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    status: str
    message: str
    reference: str = "rejects"
    note: str = ""
    said: str = ""  # what scan says instead of the core's message: the file is recognisably something else


def tensor(dtype: str = "F32", shape: object = (2,), offsets: object = (0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape,
            "data_offsets": list(offsets) if isinstance(offsets, tuple) else offsets}


def file_of(header: dict | bytes, data: bytes = b"\x00" * 8, length: int | None = None) -> bytes:
    """8-byte little-endian header length, the header, the data. `length` overrides N."""
    text = header if isinstance(header, bytes) else json.dumps(header, ensure_ascii=False).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


# The one valid header every case departs from, written out as text so that cases that
# need to break JSON syntax can edit it by hand.
A = b'"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}'
VALID = file_of(b"{" + A + b"}")


def _cases() -> list[Case]:
    cases = [
        # --- the 8-byte prefix and the header's bounds -------------------------------------
        Case("empty_file", b"", "SS_E_ST_TOO_SMALL", "too small for a safetensors header",
             said="an empty file (0 bytes)"),
        Case("seven_bytes", VALID[:7], "SS_E_ST_TOO_SMALL", "too small for a safetensors header"),
        Case("header_len_limit_plus_one", file_of(b"{" + A + b"}", length=100_000_001),
             "SS_E_ST_HEADER_TOO_LARGE", "exceeds the 100000000-byte limit"),
        # 2^64 - 1: 8 + N wraps around in unchecked arithmetic.
        Case("header_len_u64_max", file_of(b"{" + A + b"}", length=2**64 - 1),
             "SS_E_ST_HEADER_TOO_LARGE", "exceeds the 100000000-byte limit"),
        Case("header_past_eof", file_of(b"{" + A + b"}", data=b"", length=1000),
             "SS_E_ST_HEADER_PAST_EOF", "runs past the end of a"),
        # --- the header text -----------------------------------------------------------------
        Case("invalid_utf8", file_of(b'{"a\xff":' + A[4:] + b"}"), "SS_E_ST_UTF8", "not valid UTF-8"),
        # An encoded surrogate (ED A0 80) is invalid UTF-8 even though it looks well formed.
        Case("utf8_encoded_surrogate", file_of(b'{"a\xed\xa0\x80":' + A[4:] + b"}"), "SS_E_ST_UTF8", "not valid UTF-8"),
        Case("overlong_utf8", file_of(b'{"a\xc0\xaf":' + A[4:] + b"}"), "SS_E_ST_UTF8", "not valid UTF-8"),
        Case("not_object_array", file_of(b"[" + A[4:] + b"]"), "SS_E_ST_NOT_OBJECT", "does not start with '{'"),
        Case("not_object_string", file_of(b'"abc"', data=b""), "SS_E_ST_NOT_OBJECT", "does not start with '{'"),
        # Several ways of being not-JSON, each inside otherwise valid structure.
        Case("json_trailing_comma", file_of(b"{" + A + b",}"), "SS_E_ST_JSON", "header is not valid JSON"),
        Case("json_missing_colon", file_of(b'{"a"' + A[4:] + b"}"), "SS_E_ST_JSON", "header is not valid JSON"),
        Case("json_unterminated", file_of(b"{" + A), "SS_E_ST_JSON", "header is not valid JSON"),
        Case("json_trailing_garbage", file_of(b"{" + A + b"} x"), "SS_E_ST_JSON", "header is not valid JSON"),
        Case("json_single_quotes", file_of(b"{'a'" + A[3:] + b"}"), "SS_E_ST_JSON", "header is not valid JSON"),
        Case("json_control_char_in_key", file_of(b'{"a\n":' + A[4:] + b"}"), "SS_E_ST_JSON", "header is not valid JSON"),
        Case("json_bad_escape", file_of(b'{"a\\q":' + A[4:] + b"}"), "SS_E_ST_JSON", "header is not valid JSON"),
        Case("json_lone_surrogate_escape", file_of(b'{"\\ud800":' + A[4:] + b"}"), "SS_E_ST_JSON", "header is not valid JSON"),
        Case("json_leading_zero", file_of(b'{"a":{"dtype":"F32","shape":[02],"data_offsets":[0,8]}}'),
             "SS_E_ST_JSON", "header is not valid JSON"),
        # --- __metadata__ ------------------------------------------------------------------------
        Case("metadata_int_value", file_of({"__metadata__": {"k": 1}, "a": tensor()}),
             "SS_E_ST_METADATA", "__metadata__ value is not a string"),
        Case("metadata_list", file_of({"__metadata__": ["k", "v"], "a": tensor()}),
             "SS_E_ST_METADATA", "__metadata__ is not an object of strings"),
        Case("metadata_twice", file_of(b'{"__metadata__":{},"__metadata__":{},' + A + b"}"),
             "SS_E_ST_DUPLICATE", "__metadata__ appears twice"),
        # --- tensor entries ------------------------------------------------------------------------
        Case("entry_not_object", file_of({"a": 5}, data=b""), "SS_E_ST_TENSOR_ENTRY", "entry is not an object"),
        Case("missing_dtype", file_of({"a": {"shape": [2], "data_offsets": [0, 8]}}),
             "SS_E_ST_TENSOR_ENTRY", "missing dtype"),
        Case("missing_shape", file_of({"a": {"dtype": "F32", "data_offsets": [0, 8]}}),
             "SS_E_ST_TENSOR_ENTRY", "missing shape"),
        Case("missing_data_offsets", file_of({"a": {"dtype": "F32", "shape": [2]}}),
             "SS_E_ST_TENSOR_ENTRY", "missing data_offsets"),
        Case("field_twice", file_of(b'{"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}'),
             "SS_E_ST_TENSOR_ENTRY", "field given twice"),
        Case("unknown_dtype", file_of({"a": tensor(dtype="F128")}), "SS_E_ST_DTYPE", "unknown dtype 'F128'"),
        Case("lowercase_dtype", file_of({"a": tensor(dtype="f32")}), "SS_E_ST_DTYPE", "unknown dtype 'f32'"),
        Case("dtype_not_string", file_of({"a": tensor(dtype=4)}), "SS_E_ST_DTYPE", "dtype is not a string"),
        Case("shape_negative", file_of({"a": tensor(shape=[-2])}), "SS_E_ST_SHAPE", "shape is not a list"),
        Case("shape_float", file_of({"a": tensor(shape=[2.0])}), "SS_E_ST_SHAPE", "shape is not a list"),
        Case("shape_exponent", file_of(b'{"a":{"dtype":"F32","shape":[2e0],"data_offsets":[0,8]}}'),
             "SS_E_ST_SHAPE", "shape is not a list"),
        Case("shape_above_u64", file_of({"a": tensor(shape=[2**64])}), "SS_E_ST_SHAPE", "shape is not a list"),
        Case("shape_not_list", file_of({"a": tensor(shape=2)}), "SS_E_ST_SHAPE", "shape is not a list"),
        Case("offsets_one_int", file_of({"a": tensor(offsets=[0])}), "SS_E_ST_OFFSETS", "data_offsets is not a list of two"),
        Case("offsets_three_ints", file_of({"a": tensor(offsets=[0, 8, 8])}), "SS_E_ST_OFFSETS", "data_offsets is not a list of two"),
        Case("offsets_string", file_of({"a": tensor(offsets=[0, "8"])}), "SS_E_ST_OFFSETS", "data_offsets is not a list of two"),
        Case("offsets_negative", file_of({"a": tensor(offsets=[-8, 0])}), "SS_E_ST_OFFSETS", "data_offsets is not a list of two"),
        # b starts where a ends (so no gap) but ends before it begins.
        Case("offsets_end_before_begin", file_of({"a": tensor(), "b": tensor(shape=[0], offsets=[8, 0])}),
             "SS_E_ST_OFFSETS", "is before begin"),
        # --- sizes ---------------------------------------------------------------------------------
        Case("numel_overflow", file_of({"a": tensor(shape=[2**32, 2**32, 2])}),
             "SS_E_ST_NUMEL_OVERFLOW", "number of elements overflows"),
        # numel fits in 64 bits, numel * 32 bits does not.
        Case("nbits_overflow", file_of({"a": tensor(shape=[2**62])}), "SS_E_ST_NUMEL_OVERFLOW", "size in bits overflows"),
        Case("nbytes_mismatch", file_of({"a": tensor(offsets=[0, 12])}, data=b"\x00" * 12),
             "SS_E_ST_NBYTES", "span 12 bytes, but shape and F32 need 8"),
        Case("partial_byte_f4", file_of({"a": tensor(dtype="F4", shape=[3], offsets=[0, 2])}, data=b"\x00" * 2),
             "SS_E_ST_PARTIAL_BYTE", "not whole bytes"),
        Case("partial_byte_f6", file_of({"a": tensor(dtype="F6_E2M3", shape=[1], offsets=[0, 1])}, data=b"\x00"),
             "SS_E_ST_PARTIAL_BYTE", "not whole bytes"),
        # --- layout of the data ----------------------------------------------------------------------
        Case("gap", file_of({"a": tensor(), "b": tensor(offsets=[12, 20])}, data=b"\x00" * 20),
             "SS_E_ST_GAP", "(gap)"),
        Case("overlap", file_of({"a": tensor(), "b": tensor(offsets=[4, 12])}, data=b"\x00" * 12),
             "SS_E_ST_GAP", "(overlap)"),
        Case("offsets_not_from_zero", file_of({"a": tensor(offsets=[4, 12])}, data=b"\x00" * 12),
             "SS_E_ST_GAP", "starts at data byte 4"),
        Case("truncated", VALID[:-3], "SS_E_ST_TRUNCATED", "tensor 'a' is cut short"),
        Case("trailing_bytes", VALID + b"\x00\x00", "SS_E_ST_TRAILING", "2 trailing bytes"),
        # Two entries named "a" with the same offsets: serde keeps the last one, so the
        # reference opens the file; shardscan refuses to pick one silently.
        Case("duplicate_key", file_of(b"{" + A + b"," + A + b"}"), "SS_E_ST_DUPLICATE", "appears twice",
             reference="accepts", note="serde_json keeps the last of two equal keys; shardscan reports them"),
        # Two "a" with different offsets: the reference rejects it too (for the offsets of
        # the survivor); shardscan names the real problem.
        Case("duplicate_key_distinct_offsets",
             file_of(b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                     b'"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}', data=b"\x00" * 16),
             "SS_E_ST_DUPLICATE", "appears twice"),
        # 200 nested lists in an ignored field: past serde_json's 128 limit (and ours).
        Case("deep_nesting", file_of(b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":'
                                     + b"[" * 200 + b"]" * 200 + b"}}"),
             "SS_E_ST_TOO_DEEP", "nests deeper than"),
        # A deep nest that never closes: must not recurse without bound either.
        Case("deep_nesting_unclosed", file_of(b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":'
                                              + b"[" * 100_000), "SS_E_ST_TOO_DEEP", "nests deeper than"),
    ]
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


CASES: list[Case] = _cases()


def write_all(directory: Path) -> list[Path]:
    """Writes every case as <name>.safetensors into `directory`; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for case in CASES:
        path = directory / f"{case.name}.safetensors"
        path.write_bytes(case.data)
        paths.append(path)
    return paths


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("safetensors")
    for p in write_all(out):
        print(p)
