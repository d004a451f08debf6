"""The restricted-pickle policy of torch.save files: exactly the globals torch's
`weights_only=True` unpickler permits by default (torch/_weights_only_unpickler.py), what
applying each one describes, and `('storage', type, key, location, numel)` persistent ids.
Nothing here imports torch: every handler builds a description (shardscan.pickle_reader)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..errors import FormatError
from .base import BUDGET
from ..pickle_reader import (DType, Global, Handler, Instance, Policy, StorageClass, StorageRef, TensorRef,
                             expect, fail, frozen_set, int_tuple, is_int, setitem)

#: Bytes per element of every dtype torch can save, by torch's name (`str(torch.float32)`
#: without "torch."); sub-byte types occupy one byte each.
ITEMSIZE = {
    "float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
    "int8": 1, "uint8": 1, "bool": 1, "complex32": 4, "complex64": 8, "complex128": 16,
    "float8_e4m3fn": 1, "float8_e4m3fnuz": 1, "float8_e5m2": 1, "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1, "float4_e2m1fn_x2": 1, "uint16": 2, "uint32": 4, "uint64": 8,
    "uint1": 1, "uint2": 1, "uint3": 1, "uint4": 1, "uint5": 1, "uint6": 1, "uint7": 1,
    "int1": 1, "int2": 1, "int3": 1, "int4": 1, "int5": 1, "int6": 1, "int7": 1,
    "bits8": 1, "bits16": 2, "bits1x8": 1, "bits2x4": 1, "bits4x2": 1,
    "qint8": 1, "quint8": 1, "qint32": 4, "quint4x2": 1, "quint2x4": 1,
}
COMPLEX = frozenset({"complex32", "complex64", "complex128"})


def dims(x: Any, what: str) -> tuple[int, ...]:
    """A size or stride: a tuple of at most BUDGET.max_dims int64 values, checked before any
    arithmetic (a shape of a thousand 2000-bit integers is refused, never multiplied)."""
    return int_tuple(x, what, BUDGET.max_dims, BUDGET.max_int_bits)

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



def _tensor_from(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, dtype: str | None) -> TensorRef:
    expect(isinstance(storage, StorageRef), "tensor storage is not a persistent storage reference")
    expect(is_int(offset) and offset >= 0, "tensor storage offset is not a non-negative integer")
    expect(offset.bit_length() <= BUDGET.max_int_bits, "tensor storage offset does not fit int64")
    shape = dims(size, "tensor size")
    strides = dims(stride, "tensor stride")
    expect(len(shape) == len(strides), "tensor size and stride differ in length")
    expect(all(d >= 0 for d in shape), "tensor size has a negative dimension")
    expect(all(s >= 0 for s in strides), "tensor stride is negative")
    if dtype is None:
        dtype = storage.dtype
    expect(dtype is not None, "untyped storage without a dtype argument")
    return TensorRef(storage, offset, shape, strides, dtype, requires_grad is True)


def _rebuild_tensor(args: tuple[Any, ...]) -> TensorRef:
    expect(len(args) == 4, "_rebuild_tensor takes 4 arguments")
    return _tensor_from(args[0], args[1], args[2], args[3], False, None)


def _rebuild_tensor_v2(args: tuple[Any, ...]) -> TensorRef:
    # (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
    expect(len(args) in (6, 7), "_rebuild_tensor_v2 takes 6 or 7 arguments")
    return _tensor_from(args[0], args[1], args[2], args[3], args[4], None)


def _rebuild_tensor_v3(args: tuple[Any, ...]) -> TensorRef:
    # (storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype[, metadata])
    expect(len(args) in (7, 8), "_rebuild_tensor_v3 takes 7 or 8 arguments")
    expect(isinstance(args[6], DType), "_rebuild_tensor_v3 dtype argument is not a torch dtype")
    return _tensor_from(args[0], args[1], args[2], args[3], args[4], args[6].name)


def _rebuild_parameter(args: tuple[Any, ...]) -> TensorRef:
    # (data, requires_grad, backward_hooks) or (..., state): a Parameter wraps a tensor.
    expect(len(args) in (3, 4), "_rebuild_parameter takes 3 or 4 arguments")
    t = args[0]
    expect(isinstance(t, TensorRef), "parameter data is not a tensor")
    return TensorRef(t.storage, t.storage_offset, t.shape, t.stride, t.dtype, args[1] is True, True)


def _rebuild_from_type_v2(args: tuple[Any, ...]) -> Any:
    # (func, new_type, args, state): applies func (itself on the allowlist) to args; the type
    # is only torch.Tensor or Parameter here, since any subclass would be an unknown global.
    expect(len(args) == 4, "_rebuild_from_type_v2 takes 4 arguments")
    func, new_type, inner, _state = args
    expect(isinstance(func, Global) and isinstance(new_type, Global), "_rebuild_from_type_v2 needs globals")
    expect(type(inner) is tuple, "_rebuild_from_type_v2 arguments are not a tuple")
    handler = TORCH_POLICY.reduce.get(func.full)
    expect(handler is not None, f"_rebuild_from_type_v2 cannot apply {func.full}")
    result = handler(inner)
    if isinstance(result, TensorRef) and new_type.full == "torch.nn.parameter.Parameter":
        result = TensorRef(result.storage, result.storage_offset, result.shape, result.stride, result.dtype,
                           result.requires_grad, True)
    return result


def _meta_tensor(args: tuple[Any, ...]) -> TensorRef:
    # (dtype, size, stride, requires_grad): a tensor on the meta device has no bytes.
    expect(len(args) == 4 and isinstance(args[0], DType), "_rebuild_meta_tensor_no_storage arguments")
    shape, stride = dims(args[1], "tensor size"), dims(args[2], "tensor stride")
    return TensorRef(None, 0, shape, stride, args[0].name, args[3] is True)


def _device_from_cpu(args: tuple[Any, ...]) -> Any:
    # (data, dtype, device, requires_grad): the CPU tensor holds the bytes.
    expect(len(args) == 4 and isinstance(args[0], TensorRef), "_rebuild_device_tensor_from_cpu_tensor arguments")
    return args[0]


def _unsupported(what: str) -> Handler:
    def handler(args: tuple[Any, ...]) -> Any:
        raise FormatError(f"{what} are not supported")

    return handler


def _ordered_dict(args: tuple[Any, ...]) -> dict[Any, Any]:
    # OrderedDict() or OrderedDict([(k, v), ...]); Counter({...}) maps the same way.
    expect(len(args) <= 1, "OrderedDict takes at most one argument")
    out: dict[Any, Any] = {}
    if args:
        src = args[0]
        if type(src) is dict:
            out.update(src)
        else:
            expect(type(src) in (list, tuple), "OrderedDict argument is not a list of pairs")
            for pair in src:
                expect(type(pair) in (list, tuple) and len(pair) == 2, "OrderedDict item is not a pair")
                setitem(out, pair[0], pair[1])
    return out


def _size(args: tuple[Any, ...]) -> tuple[int, ...]:
    expect(len(args) <= 1, "torch.Size takes at most one argument")
    return dims(args[0], "torch.Size") if args else ()


def _device(args: tuple[Any, ...]) -> Instance:
    expect(1 <= len(args) <= 2 and type(args[0]) is str, "torch.device arguments")
    return Instance(Global("torch", "device"), args)


def _get_layout(args: tuple[Any, ...]) -> Instance:
    expect(len(args) == 1 and type(args[0]) is str, "_get_layout argument")
    return Instance(Global("torch.serialization", "_get_layout"), args)


def _codecs_encode(args: tuple[Any, ...]) -> bytes:
    # Protocol 2 pickles bytes as _codecs.encode(text, "latin1"); only that form is accepted.
    expect(len(args) == 2 and type(args[0]) is str and args[1] in ("latin1", "latin-1"), "_codecs.encode arguments")
    try:
        return args[0].encode("latin-1")
    except UnicodeEncodeError:
        raise fail("_codecs.encode text is not latin-1") from None


def _set(args: tuple[Any, ...]) -> frozenset[Any]:
    expect(len(args) <= 1, "set takes at most one argument")
    if not args:
        return frozenset()
    expect(type(args[0]) in (list, tuple, frozenset), "set argument is not a sequence")
    return frozen_set(args[0])


def _bytearray(args: tuple[Any, ...]) -> bytes:
    expect(len(args) <= 1 and all(type(a) is bytes for a in args), "bytearray arguments")
    return bytes(args[0]) if args else b""


def _complex(args: tuple[Any, ...]) -> complex:
    expect(len(args) <= 2 and all(type(a) in (int, float) for a in args), "complex arguments")
    re = float(args[0]) if args else 0.0
    im = float(args[1]) if len(args) > 1 else 0.0
    return complex(re, im)


def _torch_persistent_id(pid: Any) -> StorageRef:
    # torch.save writes ('storage', storage_type, key, location, numel) for every storage.
    expect(type(pid) is tuple and len(pid) >= 1, f"persistent id of type {type(pid).__name__} is not a storage")
    kind = pid[0].decode("ascii", "replace") if type(pid[0]) is bytes else pid[0]
    expect(kind == "storage", f"persistent id of kind {kind!r:.40} is not a storage" if type(kind) is str
            else f"persistent id of type {type(kind).__name__} is not a storage")
    expect(len(pid) == 5, "storage persistent id is not a 5-tuple")
    _, stype, key, location, numel = pid
    expect(isinstance(stype, StorageClass), "persistent id storage type is not a storage class")
    expect(type(key) is str and 0 < len(key) <= 256, "persistent id storage key is not a short string")
    expect(type(location) is str and len(location) <= 256, "persistent id location is not a string")
    expect(is_int(numel) and numel >= 0, "persistent id numel is not a non-negative integer")
    expect(numel.bit_length() <= BUDGET.max_int_bits, "persistent id numel does not fit int64")
    return StorageRef(key, stype.name, stype.dtype, location, numel)


def _torch_policy() -> Policy:
    values: dict[str, Any] = {}
    for d in ITEMSIZE:
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



TORCH_POLICY = _torch_policy()
#: For files the framework unpickles in full (RNG states with numpy arrays, pickled training
#: arguments): torch's storages and tensors as above, every other global described.
OBJECTS_POLICY = replace(TORCH_POLICY, name="objects", describe_others=True)
