"""The Arrow schema of a scan: one row per tensor. Columns may be added, never removed.

file      string        the tensor file, relative to the scanned directory (as given for a
                        single file); for DCP, the .distcp file holding the first chunk
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
format    string        "safetensors", "torch" or "dcp"
"""

import pyarrow as pa

SCHEMA = pa.schema(
    [
        pa.field("file", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("dtype", pa.string(), nullable=False),
        pa.field("shape", pa.list_(pa.int64()), nullable=False),
        pa.field("offset", pa.uint64(), nullable=False),
        pa.field("nbytes", pa.uint64(), nullable=False),
        pa.field("checksum", pa.string()),
        pa.field("storage", pa.string()),
        pa.field("format", pa.string(), nullable=False),
    ]
)
