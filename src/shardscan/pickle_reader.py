"""A restricted pickle reader that describes what a checkpoint's pickle would build, without
building it.

`pickle.load` imports any module a pickle names and calls any callable it names: loading a
checkpoint is running it. This reader is a small pickle virtual machine of our own, for
protocols 2 to 5, that never imports, never calls and never looks anything up by name. A global
is a `Global(module, name)` value checked against an allowlist, and applying it (REDUCE, NEWOBJ)
runs a handler written here that returns a lightweight description: `TensorRef` for a tensor,
`StorageRef` for a storage, `Instance` for a permitted class, plain `dict`/`list`/`tuple` for
containers, and Python scalars, strings and bytes for leaves.

Two allowlists are provided:

* `TORCH_POLICY`: exactly the globals torch's `weights_only=True` unpickler permits by default
  (`torch/_weights_only_unpickler.py`), and `('storage', type, key, location, numel)`
  persistent ids;
* `DCP_POLICY`: the classes of a torch.distributed.checkpoint `.metadata` file.

Anything else raises `UnsafePickleError` naming the global, before anything is built from it.
Every resource is bounded (input length, stack and memo size, container nesting, objects
created, string lengths), so a hostile pickle fails fast with `FormatError` rather than
exhausting memory or time.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .errors import FormatError, UnsafePickleError

__all__ = [
    "Global",
    "StorageRef",
    "TensorRef",
    "Instance",
    "Policy",
    "TORCH_POLICY",
    "DCP_POLICY",
    "Limits",
    "load",
]

# ---------------------------------------------------------------------------------------------
# Descriptions


@dataclass(frozen=True)
class Global:
    """A global the pickle named and the policy permits. Never resolved to a Python object."""

    module: str
    name: str

    @property
    def full(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True, eq=False)
class StorageRef:
    """A storage named by a persistent id: its bytes are the zip record `data/<key>`.

    `storage_type` is the pickled class name ("FloatStorage", "UntypedStorage"); `dtype` the
    element type it implies (None for UntypedStorage, whose numel counts bytes)."""

    key: str
    storage_type: str
    dtype: str | None
    location: str
    numel: int


@dataclass(frozen=True, eq=False)
class TensorRef:
    """A dense tensor: `shape` elements of `dtype`, element i at storage element
    storage_offset + sum(i_k * stride_k). `storage` is None for a meta tensor (no data)."""

    storage: StorageRef | None
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str
    requires_grad: bool = False
    parameter: bool = False


@dataclass(eq=False)
class Instance:
    """An object of a permitted class (DCP metadata dataclasses, torch.device, layouts):
    constructor arguments and the state BUILD gave it. Attribute access via `get`."""

    cls: Global
    args: tuple[Any, ...] = ()
    state: dict[Any, Any] = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        return self.state.get(name, default)


class _Mark:
    """The MARK sentinel on the stack."""


_MARK = _Mark()


@dataclass(frozen=True)
class Limits:
    """Resource bounds. Defaults fit any real checkpoint pickle with a wide margin (a 70B
    model's optimizer state pickles to a few megabytes)."""

    max_input: int = 1 << 30
    max_depth: int = 200  # container nesting, checked while flattening and while building
    max_memo: int = 1 << 22
    max_objects: int = 1 << 24  # values pushed in total
    max_stack: int = 1 << 20
    max_string: int = 1 << 28


# ---------------------------------------------------------------------------------------------
# Policies: which globals exist, and what applying one produces.

Handler = Callable[[tuple[Any, ...]], Any]


@dataclass(frozen=True)
class Policy:
    """`reduce` maps a global's full name to what REDUCE with it builds; `newobj` names the
    classes NEWOBJ may instantiate (as `Instance`); `values` the globals that are plain
    values (dtypes, schemes); `persistent_id` decodes BINPERSID or is None to refuse it."""

    name: str
    values: dict[str, Any]
    reduce: dict[str, Handler]
    newobj: frozenset[str]
    persistent_id: Callable[[Any], Any] | None

    def permits(self, full: str) -> bool:
        return full in self.values or full in self.reduce or full in self.newobj


def _fail(msg: str) -> FormatError:
    return FormatError(f"pickle: {msg}")


def _expect(cond: bool, msg: str) -> None:
    if not cond:
        raise _fail(msg)


def _is_int(x: Any) -> bool:
    return type(x) is int


def _int_tuple(x: Any, what: str) -> tuple[int, ...]:
    _expect(type(x) in (tuple, list) and all(_is_int(v) for v in x), f"{what} is not a tuple of integers")
    return tuple(x)


# Element types, as torch names them (`str(torch.float32)` without "torch.").
_DTYPES = (
    "float32 float64 float16 bfloat16 int64 int32 int16 int8 uint8 bool complex32 complex64 complex128 "
    "float8_e4m3fn float8_e4m3fnuz float8_e5m2 float8_e5m2fnuz float8_e8m0fnu float4_e2m1fn_x2 "
    "uint16 uint32 uint64 uint1 uint2 uint3 uint4 uint5 uint6 uint7 int1 int2 int3 int4 int5 int6 int7 "
    "bits8 bits16 bits1x8 bits2x4 bits4x2 qint8 quint8 qint32 quint4x2 quint2x4"
).split()

# Legacy typed storage classes and the element type each holds.
_STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
    "QInt8Storage": "qint8",
    "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32",
    "QUInt4x2Storage": "quint4x2",
    "QUInt2x4Storage": "quint2x4",
}
_CUDA_STORAGES = [s for s in _STORAGE_DTYPES if not s.startswith("Q")]
_TENSOR_CLASSES = "Float Double Half BFloat16 Long Int Short Char Byte Bool".split()
_SPARSE_CLASSES = [c for c in _TENSOR_CLASSES if c != "Bool"]
_QSCHEMES = (
    "per_tensor_affine per_tensor_symmetric per_channel_affine per_channel_symmetric per_channel_affine_float_qparams"
).split()


@dataclass(frozen=True)
class DType:
    """A `torch.<dtype>` global."""

    name: str


@dataclass(frozen=True)
class StorageClass:
    """A storage class global (`torch.FloatStorage`, `torch.storage.UntypedStorage`)."""

    name: str
    dtype: str | None


def _tensor_from(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, dtype: str | None) -> TensorRef:
    _expect(isinstance(storage, StorageRef), "tensor storage is not a persistent storage reference")
    _expect(_is_int(offset) and offset >= 0, "tensor storage offset is not a non-negative integer")
    shape = _int_tuple(size, "tensor size")
    strides = _int_tuple(stride, "tensor stride")
    _expect(len(shape) == len(strides), "tensor size and stride differ in length")
    _expect(all(d >= 0 for d in shape), "tensor size has a negative dimension")
    _expect(all(s >= 0 for s in strides), "tensor stride is negative")
    if dtype is None:
        dtype = storage.dtype
    _expect(dtype is not None, "untyped storage without a dtype argument")
    return TensorRef(storage, offset, shape, strides, dtype, requires_grad is True)


def _rebuild_tensor(args: tuple[Any, ...]) -> TensorRef:
    _expect(len(args) == 4, "_rebuild_tensor takes 4 arguments")
    return _tensor_from(args[0], args[1], args[2], args[3], False, None)


def _rebuild_tensor_v2(args: tuple[Any, ...]) -> TensorRef:
    # (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
    _expect(len(args) in (6, 7), "_rebuild_tensor_v2 takes 6 or 7 arguments")
    return _tensor_from(args[0], args[1], args[2], args[3], args[4], None)


def _rebuild_tensor_v3(args: tuple[Any, ...]) -> TensorRef:
    # (storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype[, metadata])
    _expect(len(args) in (7, 8), "_rebuild_tensor_v3 takes 7 or 8 arguments")
    _expect(isinstance(args[6], DType), "_rebuild_tensor_v3 dtype argument is not a torch dtype")
    return _tensor_from(args[0], args[1], args[2], args[3], args[4], args[6].name)


def _rebuild_parameter(args: tuple[Any, ...]) -> TensorRef:
    # (data, requires_grad, backward_hooks) or (..., state): a Parameter wraps a tensor.
    _expect(len(args) in (3, 4), "_rebuild_parameter takes 3 or 4 arguments")
    t = args[0]
    _expect(isinstance(t, TensorRef), "parameter data is not a tensor")
    return TensorRef(t.storage, t.storage_offset, t.shape, t.stride, t.dtype, args[1] is True, True)


def _rebuild_from_type_v2(args: tuple[Any, ...]) -> Any:
    # (func, new_type, args, state): applies func (itself on the allowlist) to args; the type
    # is only torch.Tensor or Parameter here, since any subclass would be an unknown global.
    _expect(len(args) == 4, "_rebuild_from_type_v2 takes 4 arguments")
    func, new_type, inner, _state = args
    _expect(isinstance(func, Global) and isinstance(new_type, Global), "_rebuild_from_type_v2 needs globals")
    _expect(type(inner) is tuple, "_rebuild_from_type_v2 arguments are not a tuple")
    handler = TORCH_POLICY.reduce.get(func.full)
    _expect(handler is not None, f"_rebuild_from_type_v2 cannot apply {func.full}")
    result = handler(inner)
    if isinstance(result, TensorRef) and new_type.full == "torch.nn.parameter.Parameter":
        result = TensorRef(result.storage, result.storage_offset, result.shape, result.stride, result.dtype,
                           result.requires_grad, True)
    return result


def _meta_tensor(args: tuple[Any, ...]) -> TensorRef:
    # (dtype, size, stride, requires_grad): a tensor on the meta device has no bytes.
    _expect(len(args) == 4 and isinstance(args[0], DType), "_rebuild_meta_tensor_no_storage arguments")
    shape, stride = _int_tuple(args[1], "tensor size"), _int_tuple(args[2], "tensor stride")
    return TensorRef(None, 0, shape, stride, args[0].name, args[3] is True)


def _device_from_cpu(args: tuple[Any, ...]) -> Any:
    # (data, dtype, device, requires_grad): the CPU tensor holds the bytes.
    _expect(len(args) == 4 and isinstance(args[0], TensorRef), "_rebuild_device_tensor_from_cpu_tensor arguments")
    return args[0]


def _unsupported(what: str) -> Handler:
    def handler(args: tuple[Any, ...]) -> Any:
        raise FormatError(f"{what} are not supported")

    return handler


def _ordered_dict(args: tuple[Any, ...]) -> dict[Any, Any]:
    # OrderedDict() or OrderedDict([(k, v), ...]); Counter({...}) maps the same way.
    _expect(len(args) <= 1, "OrderedDict takes at most one argument")
    out: dict[Any, Any] = {}
    if args:
        src = args[0]
        if type(src) is dict:
            out.update(src)
        else:
            _expect(type(src) in (list, tuple), "OrderedDict argument is not a list of pairs")
            for pair in src:
                _expect(type(pair) in (list, tuple) and len(pair) == 2, "OrderedDict item is not a pair")
                _setitem(out, pair[0], pair[1])
    return out


def _size(args: tuple[Any, ...]) -> tuple[int, ...]:
    _expect(len(args) <= 1, "torch.Size takes at most one argument")
    return _int_tuple(args[0], "torch.Size") if args else ()


def _device(args: tuple[Any, ...]) -> Instance:
    _expect(1 <= len(args) <= 2 and type(args[0]) is str, "torch.device arguments")
    return Instance(Global("torch", "device"), args)


def _get_layout(args: tuple[Any, ...]) -> Instance:
    _expect(len(args) == 1 and type(args[0]) is str, "_get_layout argument")
    return Instance(Global("torch.serialization", "_get_layout"), args)


def _codecs_encode(args: tuple[Any, ...]) -> bytes:
    # Protocol 2 pickles bytes as _codecs.encode(text, "latin1"); only that form is accepted.
    _expect(len(args) == 2 and type(args[0]) is str and args[1] in ("latin1", "latin-1"), "_codecs.encode arguments")
    try:
        return args[0].encode("latin-1")
    except UnicodeEncodeError:
        raise _fail("_codecs.encode text is not latin-1") from None


def _set(args: tuple[Any, ...]) -> frozenset[Any]:
    _expect(len(args) <= 1, "set takes at most one argument")
    if not args:
        return frozenset()
    _expect(type(args[0]) in (list, tuple, frozenset), "set argument is not a sequence")
    for member in args[0]:
        _check_key(member)
    return frozenset(args[0])


def _bytearray(args: tuple[Any, ...]) -> bytes:
    _expect(len(args) <= 1 and all(type(a) is bytes for a in args), "bytearray arguments")
    return bytes(args[0]) if args else b""


def _complex(args: tuple[Any, ...]) -> complex:
    _expect(len(args) <= 2 and all(type(a) in (int, float) for a in args), "complex arguments")
    re = float(args[0]) if args else 0.0
    im = float(args[1]) if len(args) > 1 else 0.0
    return complex(re, im)


def _torch_persistent_id(pid: Any) -> StorageRef:
    # torch.save writes ('storage', storage_type, key, location, numel) for every storage.
    _expect(type(pid) is tuple and len(pid) >= 1, f"persistent id of type {type(pid).__name__} is not a storage")
    kind = pid[0].decode("ascii", "replace") if type(pid[0]) is bytes else pid[0]
    _expect(kind == "storage", f"persistent id of kind {kind!r:.40} is not a storage" if type(kind) is str
            else f"persistent id of type {type(kind).__name__} is not a storage")
    _expect(len(pid) == 5, "storage persistent id is not a 5-tuple")
    _, stype, key, location, numel = pid
    _expect(isinstance(stype, StorageClass), "persistent id storage type is not a storage class")
    _expect(type(key) is str and 0 < len(key) <= 256, "persistent id storage key is not a short string")
    _expect(type(location) is str and len(location) <= 256, "persistent id location is not a string")
    _expect(_is_int(numel) and numel >= 0, "persistent id numel is not a non-negative integer")
    return StorageRef(key, stype.name, stype.dtype, location, numel)


def _torch_policy() -> Policy:
    values: dict[str, Any] = {}
    for d in _DTYPES:
        values[f"torch.{d}"] = DType(d)
    for s, d in _STORAGE_DTYPES.items():
        values[f"torch.{s}"] = StorageClass(s, d)
    for s in _CUDA_STORAGES:
        values[f"torch.cuda.{s}"] = StorageClass(s, _STORAGE_DTYPES[s])
    values["torch.storage.UntypedStorage"] = StorageClass("UntypedStorage", None)
    values["torch.storage.TypedStorage"] = StorageClass("TypedStorage", None)
    for q in _QSCHEMES:
        values[f"torch.{q}"] = Global("torch", q)
    legacy_tensor = _unsupported("legacy tensor classes (torch.FloatTensor, ...)")
    reduce: dict[str, Handler] = {
        "torch._utils._rebuild_tensor": _rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
        "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
        "torch._utils._rebuild_meta_tensor_no_storage": _meta_tensor,
        "torch._utils._rebuild_device_tensor_from_cpu_tensor": _device_from_cpu,
        "torch._utils._rebuild_qtensor": _unsupported("quantized tensors"),
        "torch._utils._rebuild_sparse_tensor": _unsupported("sparse tensors"),
        "torch._utils._rebuild_nested_tensor": _unsupported("nested tensors"),
        "torch._utils._rebuild_wrapper_subclass": _unsupported("tensor wrapper subclasses"),
        "torch._utils._rebuild_device_tensor_from_numpy": _unsupported("tensors rebuilt from numpy arrays"),
        "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
        "collections.OrderedDict": _ordered_dict,
        "collections.Counter": _ordered_dict,
        "torch.Size": _size,
        "torch.device": _device,
        "torch.serialization._get_layout": _get_layout,
        "_codecs.encode": _codecs_encode,
        "builtins.set": _set,
        "builtins.bytearray": _bytearray,
        "builtins.complex": _complex,
        "torch.nn.parameter.Parameter": _unsupported("Parameter objects built without _rebuild_parameter"),
        "torch.Tensor": legacy_tensor,
    }
    for c in _TENSOR_CLASSES:
        reduce[f"torch.{c}Tensor"] = legacy_tensor
        reduce[f"torch.cuda.{c}Tensor"] = legacy_tensor
    for c in _SPARSE_CLASSES:
        reduce[f"torch.sparse.{c}Tensor"] = legacy_tensor
        reduce[f"torch.cuda.sparse.{c}Tensor"] = legacy_tensor
    return Policy("torch", values, reduce, frozenset(), _torch_persistent_id)


# DCP `.metadata`: dataclasses pickled by the default protocol (NEWOBJ + BUILD), plus the few
# torch values their fields hold. The module moved between torch releases; both spellings count.
_DCP_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed._shard.checkpoint.metadata")
_DCP_CLASSES = (
    "Metadata",
    "TensorStorageMetadata",
    "BytesStorageMetadata",
    "ChunkStorageMetadata",
    "TensorProperties",
    "MetadataIndex",
    "StorageMeta",
    "_MEM_FORMAT_ENCODING",
)
_DCP_OTHER = (
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.distributed._shard.checkpoint.filesystem", "_StorageInfo"),
    ("torch.distributed.checkpoint._extension", "StreamTransformExtension"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"),
)


def _dcp_instance(full: str) -> Handler:
    module, _, name = full.rpartition(".")

    def handler(args: tuple[Any, ...]) -> Instance:
        return Instance(Global(module, name), args)

    return handler


def _dcp_policy() -> Policy:
    base = _torch_policy()
    classes = [f"{m}.{c}" for m in _DCP_MODULES for c in _DCP_CLASSES] + [f"{m}.{c}" for m, c in _DCP_OTHER]
    reduce = {k: base.reduce[k] for k in ("torch.Size", "torch.device", "torch.serialization._get_layout",
                                          "collections.OrderedDict", "builtins.set", "_codecs.encode")}
    for full in classes:
        # Enums (_MEM_FORMAT_ENCODING) and paths are pickled as Class(value): a description.
        reduce[full] = _dcp_instance(full)
    values = {k: v for k, v in base.values.items() if isinstance(v, DType)}
    return Policy("dcp", values, reduce, frozenset(classes), None)


TORCH_POLICY = _torch_policy()
DCP_POLICY = _dcp_policy()

# Python 2 names (protocol 2 pickles from old writers), mapped the way pickle itself does.
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg", "_abcoll": "collections.abc"}


# ---------------------------------------------------------------------------------------------
# The virtual machine


_SCALAR_KEYS = (str, int, float, bool, bytes, type(None), complex)
_OBJECT_KEYS = (Global, DType, StorageClass, StorageRef, TensorRef, Instance)


def _check_key(key: Any, depth: int = 0) -> None:
    # Hashing a tuple recurses in C without a depth guard, and TUPLE1 builds a level per byte:
    # only scalars, our own descriptions and shallow tuples of those may be hashed.
    if type(key) in _SCALAR_KEYS or isinstance(key, _OBJECT_KEYS):
        return
    if type(key) is tuple and depth < 8:
        for k in key:
            _check_key(k, depth + 1)
        return
    if type(key) is frozenset:
        return  # its hash was computed (and bounded) when it was built
    raise _fail(f"dict key or set member of type {type(key).__name__} is not allowed")


def _setitem(target: dict[Any, Any], key: Any, value: Any) -> None:
    _check_key(key)
    target[key] = value


class _Machine:
    def __init__(self, data: bytes, policy: Policy, limits: Limits) -> None:
        if len(data) > limits.max_input:
            raise _fail(f"{len(data)} bytes exceeds the {limits.max_input}-byte limit")
        self.data = memoryview(data)
        self.pos = 0
        self.policy = policy
        self.limits = limits
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.objects = 0

    # -- input --------------------------------------------------------------------------------
    def read(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise _fail("truncated: ran past the end of the data")
        out = self.data[self.pos : end].tobytes()
        self.pos = end
        return out

    def readline(self) -> bytes:
        # GLOBAL arguments are newline-terminated; cap them so a missing newline cannot scan far.
        end = bytes(self.data[self.pos : self.pos + 1024]).find(b"\n")
        if end < 0:
            raise _fail("unterminated GLOBAL name")
        out = self.data[self.pos : self.pos + end].tobytes()
        self.pos += end + 1
        return out

    def sized(self, fmt: str) -> int:
        n = struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]
        if n > self.limits.max_string:
            raise _fail(f"a {n}-byte string exceeds the {self.limits.max_string}-byte limit")
        return n

    # -- stack --------------------------------------------------------------------------------
    def push(self, value: Any) -> None:
        self.objects += 1
        if self.objects > self.limits.max_objects:
            raise _fail(f"more than {self.limits.max_objects} objects")
        if len(self.stack) >= self.limits.max_stack:
            raise _fail("stack too deep")
        self.stack.append(value)

    def pop(self) -> Any:
        if not self.stack:
            raise _fail("stack underflow")
        v = self.stack.pop()
        if v is _MARK:
            raise _fail("unexpected MARK")
        return v

    def top(self) -> Any:
        if not self.stack or self.stack[-1] is _MARK:
            raise _fail("stack underflow")
        return self.stack[-1]

    def pop_mark(self) -> list[Any]:
        if not self.metastack:
            raise _fail("no MARK to pop to")
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def memo_put(self, idx: int) -> None:
        if idx not in self.memo and len(self.memo) >= self.limits.max_memo:
            raise _fail(f"memo holds more than {self.limits.max_memo} entries")
        self.memo[idx] = self.top()

    def memo_get(self, idx: int) -> None:
        if idx not in self.memo:
            raise _fail(f"memo index {idx} was never stored")
        self.push(self.memo[idx])

    # -- globals and application ----------------------------------------------------------------
    def find_global(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)
        full = f"{module}.{name}"
        if not self.policy.permits(full):
            raise UnsafePickleError(f"unsafe pickle global {full}", global_name=full)
        if full in self.policy.values:
            return self.policy.values[full]
        return Global(module, name)

    def callable_name(self, obj: Any) -> str:
        if isinstance(obj, Global):
            return obj.full
        if isinstance(obj, StorageClass):
            return f"torch.{obj.name}"
        raise _fail(f"cannot call a {type(obj).__name__}")

    def reduce(self, func: Any, args: Any) -> Any:
        _expect(type(args) is tuple, "REDUCE arguments are not a tuple")
        handler = self.policy.reduce.get(self.callable_name(func))
        _expect(handler is not None, f"{self.callable_name(func)} cannot be called")
        return handler(args)

    def newobj(self, cls: Any, args: Any) -> Any:
        _expect(type(args) is tuple, "NEWOBJ arguments are not a tuple")
        name = self.callable_name(cls)
        if name in self.policy.newobj:
            return Instance(cls, args)
        raise _fail(f"cannot instantiate {name}")

    def build(self, obj: Any, state: Any) -> None:
        if isinstance(obj, Instance):
            # Dataclass-style dict state, (dict state, slot state) as pickle's default BUILD
            # takes it, or anything else a class's own __setstate__ would take (TensorProperties
            # pickles a 5-tuple): kept under "__setstate__" for the reader to interpret.
            if (type(state) is tuple and len(state) == 2 and all(x is None or type(x) is dict for x in state)):
                for part in state:
                    if part:
                        for k, v in part.items():
                            _setitem(obj.state, k, v)
            elif type(state) is dict:
                for k, v in state.items():
                    _setitem(obj.state, k, v)
            elif state is not None:
                obj.state["__setstate__"] = state
            return
        if type(obj) is dict:
            # An OrderedDict's attributes (state_dict()'s `_metadata`): not part of the mapping.
            return
        if isinstance(obj, TensorRef):
            # _rebuild_parameter_with_state / subclass state: attributes, never bytes.
            return
        raise _fail(f"cannot BUILD a {type(obj).__name__}")

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> Any:
        data = self.data
        n = len(data)
        push, pop = self.push, self.pop
        while True:
            if self.pos >= n:
                raise _fail("truncated: no STOP opcode")
            op = data[self.pos]
            self.pos += 1
            if op == 0x80:  # PROTO
                proto = self.read(1)[0]
                _expect(2 <= proto <= 5, f"unsupported protocol {proto}")
            elif op == 0x95:  # FRAME: a length hint only
                self.read(8)
            elif op == 0x2E:  # STOP
                result = pop()
                _expect(not self.stack and not self.metastack, "data left on the stack at STOP")
                return result
            elif op == 0x28:  # MARK
                self.metastack.append(self.stack)
                _expect(len(self.metastack) <= self.limits.max_stack, "too many MARKs")
                self.stack = []
            elif op == 0x30:  # POP
                if self.stack and self.stack[-1] is _MARK:
                    self.stack.pop()
                else:
                    pop()
            elif op == 0x31:  # POP_MARK
                self.pop_mark()
            elif op == 0x32:  # DUP
                push(self.top())
            elif op == 0x4E:  # NONE
                push(None)
            elif op == 0x88:  # NEWTRUE
                push(True)
            elif op == 0x89:  # NEWFALSE
                push(False)
            elif op == 0x4A:  # BININT
                push(struct.unpack("<i", self.read(4))[0])
            elif op == 0x4B:  # BININT1
                push(self.read(1)[0])
            elif op == 0x4D:  # BININT2
                push(struct.unpack("<H", self.read(2))[0])
            elif op == 0x8A:  # LONG1
                push(int.from_bytes(self.read(self.read(1)[0]), "little", signed=True))
            elif op == 0x8B:  # LONG4: bounded so int conversion stays cheap
                size = struct.unpack("<i", self.read(4))[0]
                _expect(0 <= size <= 1024, "LONG4 longer than 1024 bytes")
                push(int.from_bytes(self.read(size), "little", signed=True))
            elif op == 0x47:  # BINFLOAT
                push(struct.unpack(">d", self.read(8))[0])
            elif op == 0x58:  # BINUNICODE
                push(self.text(self.read(self.sized("<I"))))
            elif op == 0x8C:  # SHORT_BINUNICODE
                push(self.text(self.read(self.read(1)[0])))
            elif op == 0x8D:  # BINUNICODE8
                push(self.text(self.read(self.sized("<Q"))))
            elif op == 0x55:  # SHORT_BINSTRING: Python 2 str, read as bytes
                push(self.read(self.read(1)[0]))
            elif op == 0x54:  # BINSTRING
                size = struct.unpack("<i", self.read(4))[0]
                _expect(0 <= size <= self.limits.max_string, "BINSTRING length out of range")
                push(self.read(size))
            elif op == 0x43:  # SHORT_BINBYTES
                push(self.read(self.read(1)[0]))
            elif op == 0x42:  # BINBYTES
                push(self.read(self.sized("<I")))
            elif op == 0x8E:  # BINBYTES8
                push(self.read(self.sized("<Q")))
            elif op == 0x96:  # BYTEARRAY8
                push(self.read(self.sized("<Q")))
            elif op == 0x29:  # EMPTY_TUPLE
                push(())
            elif op == 0x74:  # TUPLE
                push(tuple(self.checked_items(self.pop_mark())))
            elif op == 0x85:  # TUPLE1
                push((pop(),))
            elif op == 0x86:  # TUPLE2
                b, a = pop(), pop()
                push((a, b))
            elif op == 0x87:  # TUPLE3
                c, b, a = pop(), pop(), pop()
                push((a, b, c))
            elif op == 0x5D:  # EMPTY_LIST
                push([])
            elif op == 0x6C:  # LIST
                push(list(self.checked_items(self.pop_mark())))
            elif op == 0x61:  # APPEND
                item = pop()
                target = self.top()
                _expect(type(target) is list, "APPEND to a non-list")
                target.append(item)
            elif op == 0x65:  # APPENDS
                items = self.checked_items(self.pop_mark())
                target = self.top()
                _expect(type(target) is list, "APPENDS to a non-list")
                target.extend(items)
            elif op == 0x7D:  # EMPTY_DICT
                push({})
            elif op == 0x64:  # DICT
                items = self.checked_items(self.pop_mark())
                _expect(len(items) % 2 == 0, "DICT with an odd number of items")
                d: dict[Any, Any] = {}
                for i in range(0, len(items), 2):
                    _setitem(d, items[i], items[i + 1])
                push(d)
            elif op == 0x73:  # SETITEM
                value, key = pop(), pop()
                target = self.top()
                _expect(type(target) is dict, "SETITEM on a non-dict")
                _setitem(target, key, value)
            elif op == 0x75:  # SETITEMS
                items = self.checked_items(self.pop_mark())
                _expect(len(items) % 2 == 0, "SETITEMS with an odd number of items")
                target = self.top()
                _expect(type(target) is dict, "SETITEMS on a non-dict")
                for i in range(0, len(items), 2):
                    _setitem(target, items[i], items[i + 1])
            elif op == 0x8F:  # EMPTY_SET: described as a leaf holding its members
                push(SetValue())
            elif op == 0x90:  # ADDITEMS
                items = self.checked_items(self.pop_mark())
                target = self.top()
                _expect(isinstance(target, SetValue), "ADDITEMS on a non-set")
                target.items.extend(items)
            elif op == 0x91:  # FROZENSET
                push(_set((self.checked_items(self.pop_mark()),)))
            elif op == 0x68:  # BINGET
                self.memo_get(self.read(1)[0])
            elif op == 0x6A:  # LONG_BINGET
                self.memo_get(struct.unpack("<I", self.read(4))[0])
            elif op == 0x71:  # BINPUT
                self.memo_put(self.read(1)[0])
            elif op == 0x72:  # LONG_BINPUT
                self.memo_put(struct.unpack("<I", self.read(4))[0])
            elif op == 0x94:  # MEMOIZE
                self.memo_put(len(self.memo))
            elif op == 0x63:  # GLOBAL
                module = self.text(self.readline())
                name = self.text(self.readline())
                push(self.find_global(module, name))
            elif op == 0x93:  # STACK_GLOBAL
                name, module = pop(), pop()
                _expect(type(module) is str and type(name) is str, "STACK_GLOBAL names are not strings")
                push(self.find_global(module, name))
            elif op == 0x52:  # REDUCE
                args = pop()
                func = pop()
                push(self.reduce(func, args))
            elif op == 0x81:  # NEWOBJ
                args = pop()
                cls = pop()
                push(self.newobj(cls, args))
            elif op == 0x92:  # NEWOBJ_EX
                kwargs, args, cls = pop(), pop(), pop()
                _expect(kwargs == {}, "NEWOBJ_EX with keyword arguments")
                push(self.newobj(cls, args))
            elif op == 0x62:  # BUILD
                state = pop()
                self.build(self.top(), state)
            elif op == 0x51:  # BINPERSID
                pid = pop()
                decode = self.policy.persistent_id
                _expect(decode is not None, "persistent ids are not allowed here")
                assert decode is not None
                push(decode(pid))
            else:
                # INST, OBJ, EXT1/2/4, PERSID and the text opcodes of protocol 0/1, NEXT_BUFFER /
                # READONLY_BUFFER (out-of-band data): nothing torch or DCP writes, and INST/OBJ/EXT
                # would import or call.
                raise _fail(f"unsupported opcode 0x{op:02x} at byte {self.pos - 1}")

    def text(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise _fail("string is not valid UTF-8") from None

    def checked_items(self, items: list[Any]) -> list[Any]:
        if any(x is _MARK for x in items):
            raise _fail("unexpected MARK")
        return items


class SetValue:
    """A set built by EMPTY_SET + ADDITEMS: a leaf; its members are kept, never hashed."""

    def __init__(self) -> None:
        self.items: list[Any] = []


def load(data: bytes, policy: Policy = TORCH_POLICY, limits: Limits = Limits()) -> Any:
    """Describes the object `data` pickles. Raises UnsafePickleError for a global outside the
    policy and FormatError for anything malformed or over a limit; never imports or calls."""
    try:
        return _Machine(data, policy, limits).run()
    except RecursionError:
        raise _fail("nesting too deep") from None
    except (struct.error, IndexError, ValueError, TypeError, OverflowError, MemoryError) as e:
        if isinstance(e, FormatError):
            raise
        raise _fail(f"malformed ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------------------------------
# Walking a description


def iter_leaves(obj: Any, limits: Limits = Limits()) -> Iterable[tuple[tuple[str, ...], Any]]:
    """Yields (path, leaf) for every leaf under nested dicts, lists and tuples, depth first in
    insertion order; path elements are dict keys (as str) and sequence indices. A container
    reached again through the memo (aliasing) is walked again, which is what key paths mean;
    a container inside itself, or more than `limits.max_objects` visits, raises FormatError."""
    budget = [limits.max_objects]
    active: set[int] = set()

    def walk(value: Any, path: tuple[str, ...]) -> Iterable[tuple[tuple[str, ...], Any]]:
        budget[0] -= 1
        if budget[0] < 0:
            raise _fail(f"more than {limits.max_objects} values when flattened (shared containers?)")
        if type(value) is dict:
            items: Iterable[tuple[Any, Any]] = value.items()
        elif type(value) in (list, tuple):
            items = enumerate(value)
        else:
            yield path, value
            return
        if len(path) >= limits.max_depth:
            raise _fail(f"containers nest deeper than {limits.max_depth}")
        if id(value) in active:
            raise _fail("a container contains itself")
        active.add(id(value))
        for k, v in items:
            yield from walk(v, path + (_key_text(k),))
        active.discard(id(value))

    yield from walk(obj, ())


def _key_text(key: Any) -> str:
    if type(key) is str:
        return key
    if type(key) is bytes:
        return key.decode("utf-8", "replace")
    return str(key)
