"""The columns of a scan: one row per tensor. Columns may be added, never removed.

file      string        the tensor file as it was given, or relative to a directory given;
                        for DCP, the .distcp file holding the first chunk
key       string        the tensor's name; in torch files, the path through nested
                        containers joined with "." (state_dict.model.layers.0.weight)
dtype     string        torch's name without "torch." (float32, bfloat16, float8_e4m3fn, ...).
                        safetensors types torch lacks: float4_e2m1 (F4), float6_e2m3 (F6_E2M3),
                        float6_e3m2 (F6_E3M2); F8_E8M0 is float8_e8m0fnu as in torch
shape     list<int64>   [] for a 0-dim tensor
offset    uint64        absolute byte offset of the first element in `file`
nbytes    uint64        bytes of the logical tensor (numel * element size)
checksum  string        XXH3-128 of the tensor's bytes in row-major order, little-endian, as 32
                        lowercase hex digits: equal to xxhash.xxh3_128_hexdigest(bytes) whatever
                        format or layout (view, transpose, big-endian) the tensor is stored in.
                        Null when hashing is off or the bytes could not be read
storage   string        the storage the bytes live in (torch: the zip record, e.g. "data/3");
                        rows sharing a storage are tied. Null for safetensors
format    string        the reader's name: "safetensors", "torch" or "dcp"

The columns are declared once, in COLUMNS, as (name, Arrow type, nullable). Building the
pyarrow schema costs the pyarrow import, so SCHEMA is made on first use; code that only
moves rows around uses NAMES.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("file", "string", False),
    ("key", "string", False),
    ("dtype", "string", False),
    ("shape", "list<int64>", False),
    ("offset", "uint64", False),
    ("nbytes", "uint64", False),
    ("checksum", "string", True),
    ("storage", "string", True),
    ("format", "string", False),
)
NAMES: tuple[str, ...] = tuple(name for name, _, _ in COLUMNS)

_schema: "pa.Schema | None" = None


def _arrow_type(name: str) -> "pa.DataType":
    import pyarrow as pa

    if name.startswith("list<") and name.endswith(">"):
        return pa.list_(_arrow_type(name[5:-1]))
    return getattr(pa, name)()


def __getattr__(name: str) -> Any:
    if name != "SCHEMA":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    global _schema
    if _schema is None:
        import pyarrow as pa

        _schema = pa.schema([pa.field(n, _arrow_type(t), nullable=nullable) for n, t, nullable in COLUMNS])
    return _schema
