"""Wrong files: what a file that no reader accepts (or whose named format refuses it at the
header) is instead, in one line that says what to do.

Downloads go wrong in a few recognisable ways: Git LFS pointers fetched instead of the
content, an HTML, JSON or XML error page saved under the model's name, an empty file, space
preallocated and never written, or a different kind of file altogether (an archive, GGUF,
ONNX, numpy, TorchScript). Each recogniser looks at the first bytes (and the size) only,
except the all-zero test (see `_all_zero`). Nothing here parses more than a few KiB, and
nothing from the file is ever executed or imported.

`refusal(file)` is asked by formats.read_file when no reader claims a file and by the
safetensors and torch readers when their validator refuses one at the header; the kinds
are the words of shardscan.errors.KINDS.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Collection

from ..errors import NotACheckpointError

if TYPE_CHECKING:
    from .._core import NativeFile

#: How many leading bytes the recognisers read.
HEAD = 4096
#: The all-zero test reads a file whole up to this size; beyond it, SAMPLES blocks of SAMPLE
#: bytes spread evenly from the first to the last byte.
ZERO_SCAN_LIMIT = 64 << 20
SAMPLE = 64 << 10
SAMPLES = 64
_CHUNK = 16 << 20

# The spec's version line; pointers from before git-lfs 1.0 name hawser. A checkout with
# core.autocrlf may have turned the line ends into CRLF.
_LFS = (b"version https://git-lfs.github.com/spec/v1", b"version https://hawser.github.com/spec/v1")
_LFS_MAX = 1024  # git-lfs never writes a pointer file of 1024 bytes or more
_GZIP = b"\x1f\x8b"
_ZSTD = b"\x28\xb5\x2f\xfd"
_GGUF = b"GGUF"
_NPY = b"\x93NUMPY"
_TAR_MAGIC_AT = 257  # "ustar" in the first header block (POSIX and GNU tar)
_REDOWNLOAD = "download it again"


def _human(size: int) -> str:
    """A byte count as people read download sizes: 4.9 GB, 812 MB, 134 bytes (powers of 1000)."""
    if size < 1000:
        return f"{size} bytes"
    value = float(size)
    for unit in ("kB", "MB", "GB", "TB", "PB"):
        value /= 1000
        if value < 999.95 or unit == "PB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def _lfs_pointer(head: bytes, size: int) -> tuple[str, str] | None:
    if size >= _LFS_MAX or not head.startswith(_LFS) or head.partition(b"v1")[2][:1] not in (b"\n", b"\r"):
        return None
    fields = dict(line.partition(b" ")[::2] for line in head.splitlines())
    target = fields.get(b"size", b"")
    to = f" to a {_human(int(target))} file" if target.isdigit() and len(target) < 20 else ""
    return "lfs-pointer", f"a Git LFS pointer{to}, not the file itself: run git lfs pull"


def _text(head: bytes, size: int) -> str | None:
    """The head as text, or None when it is not UTF-8 or holds bytes text never does (NUL,
    other controls). A head cut from a longer file may end inside a character."""
    body = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as bad:
        if size <= len(head) or bad.start < len(body) - 3:
            return None
        text = body[:bad.start].decode("utf-8")
    if any(ord(c) < 32 and c not in "\t\n\r\f" for c in text):
        return None
    return text.lstrip()


_TITLE = re.compile(r"<title[^>]*>([^<]{1,200})", re.IGNORECASE)
_HTML = re.compile(r"<(?:!doctype\s+html|html|head|body|title)\b", re.IGNORECASE)


def _markup_or_json(head: bytes, size: int) -> tuple[str, str] | None:
    text = _text(head, size)
    if not text:
        return None
    if text.startswith("<") and _HTML.search(text):
        title = _TITLE.search(text)
        named = " titled " + repr(" ".join(title.group(1).split())[:80]) if title else ""
        return "html", (f"an HTML page{named}, not a checkpoint (an error or login page from a proxy or the hub, "
                        f"saved under this name): {_REDOWNLOAD}")
    if text.startswith("<?xml") or re.match(r"<[A-Za-z]", text):
        return "xml", f"XML text, not a checkpoint (an error response from object storage or a proxy?): {_REDOWNLOAD}"
    if text[:1] in "{[":
        return "json", f"JSON text, not a checkpoint (an error response from the hub or an API?): {_REDOWNLOAD}"
    return None


def _magic(head: bytes) -> tuple[str, str] | None:
    if head.startswith(_GZIP):
        return "gzip", "a gzip-compressed file, not a checkpoint: decompress it (gunzip) and check what it holds"
    if head.startswith(_ZSTD):
        return "zstd", "a zstd-compressed file, not a checkpoint: decompress it (zstd -d) and check what it holds"
    if head[_TAR_MAGIC_AT:_TAR_MAGIC_AT + 5] == b"ustar":
        return "tar", "a tar archive, not a checkpoint: extract it (tar -xf) and check what it holds"
    if head.startswith(_GGUF) and len(head) >= 8:
        version = int.from_bytes(head[4:8], "little")
        return "gguf", (f"a GGUF v{version} model (llama.cpp), not a safetensors or torch checkpoint: "
                        "shardscan does not read GGUF; fetch the safetensors files instead")
    if head.startswith(_NPY):
        return "npy", "a numpy .npy array (numpy.save), not a checkpoint: shardscan does not read numpy files"
    if _looks_like_onnx(head):
        return "onnx", ("an ONNX model (protobuf ModelProto), not a safetensors or torch checkpoint: "
                        "shardscan does not read ONNX; fetch the checkpoint files instead")
    return None


def _looks_like_onnx(head: bytes) -> bool:
    """An ONNX ModelProto as exporters write it: field 1 (ir_version, a small varint) first,
    then another field of the message (producer_name, graph, opset_import, ...)."""
    return (len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] <= 15
            and head[2] in (0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72))


def _all_zero(file: "NativeFile") -> bool:
    """Whether every byte is zero. Up to ZERO_SCAN_LIMIT the whole file is read (bytes.count
    runs at memory speed; this only happens to a file a reader already refused); beyond, the
    first and last SAMPLE bytes and SAMPLES - 2 blocks between, which tells a preallocated
    file from any real one (every format's header and data vary within a few KiB)."""
    size = file.size
    if size <= ZERO_SCAN_LIMIT:
        spans = [(at, min(_CHUNK, size - at)) for at in range(0, size, _CHUNK)]
    else:
        step = (size - SAMPLE) // (SAMPLES - 1)
        spans = [(i * step, SAMPLE) for i in range(SAMPLES - 1)] + [(size - SAMPLE, SAMPLE)]
    return all(file.read(at, n).count(0) == n for at, n in spans)


def _zeros(file: "NativeFile") -> tuple[str, str] | None:
    if file.size == 0:
        return "empty", "an empty file (0 bytes): the download or save never wrote it; fetch or save it again"
    if not _all_zero(file):
        return None
    how = "every byte" if file.size <= ZERO_SCAN_LIMIT else f"every byte of {SAMPLES} blocks spread over it"
    return "zeros", (f"{how} is zero ({_human(file.size)}): space preallocated by a download or save that "
                     "never wrote it; fetch or save it again")


def recognise(file: "NativeFile") -> tuple[str, str] | None:
    """(kind, message) for a file that is recognisably something other than a checkpoint,
    or None. Zip archives are the torch reader's to judge (see `zip_refusal`)."""
    if file.size == 0 or file.read(0, min(file.size, 8)).count(0) == min(file.size, 8):
        found = _zeros(file)
        if found is not None:
            return found
    head = file.read(0, min(file.size, HEAD))
    return _lfs_pointer(head, file.size) or _magic(head) or _markup_or_json(head, file.size)


def refusal(file: "NativeFile") -> NotACheckpointError | None:
    """The error naming what the file is instead, or None when it is nothing recognisable."""
    found = recognise(file)
    if found is None:
        return None
    kind, message = found
    return NotACheckpointError(message, path=file.path, kind=kind)


def zip_refusal(record_names: Collection[str], path: str) -> NotACheckpointError | None:
    """Why a zip archive holding these records is no torch.save checkpoint (a TorchScript
    archive, a numpy .npz, any other zip), or None when it may be one."""
    if "constants.pkl" in record_names or any(n.startswith("code/") for n in record_names):
        return NotACheckpointError("a TorchScript archive (torch.jit.save), not a torch.save checkpoint: shardscan "
                                   "does not read TorchScript; save the model's state_dict() instead",
                                   path=path, kind="torchscript")
    if "data.pkl" in record_names:
        return None
    if record_names and all(n.endswith(".npy") for n in record_names):
        return NotACheckpointError("a numpy .npz archive (numpy.savez), not a checkpoint: shardscan does not read "
                                   "numpy files", path=path, kind="npz")
    return NotACheckpointError("a zip archive without data.pkl, not a torch.save checkpoint: extract it (unzip) and "
                               "check what it holds", path=path, kind="zip")
