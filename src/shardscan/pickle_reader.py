"""A restricted pickle reader that describes what a checkpoint's pickle would build, without
building it.

`pickle.load` imports any module a pickle names and calls any callable it names: loading a
checkpoint is running it. This reader is a small pickle virtual machine of our own, for
protocols 2 to 5, that never imports, never calls and never looks anything up by name. A global
is a `Global(module, name)` value checked against a `Policy`, and applying it (REDUCE, NEWOBJ)
runs a handler of that policy that returns a lightweight description: `TensorRef` for a tensor,
`StorageRef` for a storage, `Instance` for a permitted class, plain `dict`/`list`/`tuple` for
containers, and Python scalars, strings and bytes for leaves.

The policies live with the readers that need them: torch.save's (exactly the globals torch's
`weights_only=True` unpickler permits) in shardscan.formats.torch_pickle, the DCP `.metadata`
classes in shardscan.formats.dcp.

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
    "DType",
    "StorageClass",
    "Policy",
    "Limits",
    "PickleTruncated",
    "load",
    "load_prefix",
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
    max_leaves: int = 1 << 24  # values visited when flattened (iter_leaves)
    max_key_bytes: int = 1 << 32  # characters of every key path iter_leaves visits


# ---------------------------------------------------------------------------------------------
# Policies: which globals exist, and what applying one produces.

Handler = Callable[[tuple[Any, ...]], Any]


@dataclass(frozen=True)
class Policy:
    """`reduce` maps a global's full name to what REDUCE with it builds; `newobj` names the
    classes NEWOBJ may instantiate (as `Instance`); `values` the globals that are plain
    values (dtypes, schemes); `persistent_id` decodes BINPERSID or is None to refuse it.
    `describe_others`: any other global is described too (REDUCE and NEWOBJ with it give an
    `Instance`) instead of refused: for files the framework unpickles in full, where the
    question is whether the pickle is intact, not whether a weights-only loader takes it.
    Nothing is imported or called either way."""

    name: str
    values: dict[str, Any]
    reduce: dict[str, Handler]
    newobj: frozenset[str]
    persistent_id: Callable[[Any], Any] | None
    describe_others: bool = False

    def permits(self, full: str) -> bool:
        return self.describe_others or full in self.values or full in self.reduce or full in self.newobj


def fail(msg: str, kind: str = "format") -> FormatError:
    return FormatError(f"pickle: {msg}", kind=kind)


class PickleTruncated(FormatError):
    """The data ended before the pickle's STOP: a cut file, or a window too short to hold it
    (load_prefix callers read a longer one)."""

    kind = "truncated"


def expect(cond: bool, msg: str) -> None:
    if not cond:
        raise fail(msg)


def is_int(x: Any) -> bool:
    return type(x) is int


def int_tuple(x: Any, what: str, max_len: int | None = None, max_bits: int | None = None) -> tuple[int, ...]:
    """`x` as a tuple of ints. With `max_len`/`max_bits`, a longer tuple or a value of more
    bits (sign apart) is refused before anything is computed from it."""
    expect(type(x) in (tuple, list), f"{what} is not a tuple of integers")
    if max_len is not None and len(x) > max_len:
        raise fail(f"{what} has {len(x)} dimensions (budget {max_len})", "budget")
    expect(all(is_int(v) for v in x), f"{what} is not a tuple of integers")
    if max_bits is not None:
        big = next((v for v in x if v.bit_length() > max_bits), None)
        if big is not None:
            raise fail(f"{what} holds a {big.bit_length()}-bit integer (budget: int64, as torch requires)", "budget")
    return tuple(x)



@dataclass(frozen=True)
class DType:
    """A `torch.<dtype>` global."""

    name: str


@dataclass(frozen=True)
class StorageClass:
    """A storage class global (`torch.FloatStorage`, `torch.storage.UntypedStorage`)."""

    name: str
    dtype: str | None




# Python 2 names (protocol 2 pickles from old writers), mapped the way pickle itself does.
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg", "_abcoll": "collections.abc"}


# ---------------------------------------------------------------------------------------------
# The virtual machine


_SCALAR_KEYS = (str, int, float, bool, bytes, type(None), complex)
_OBJECT_KEYS = (Global, DType, StorageClass, StorageRef, TensorRef, Instance)


def check_key(key: Any, depth: int = 0) -> None:
    # Hashing a tuple recurses in C without a depth guard, and TUPLE1 builds a level per byte:
    # only scalars, our own descriptions and shallow tuples of those may be hashed.
    if type(key) in _SCALAR_KEYS or isinstance(key, _OBJECT_KEYS):
        return
    if type(key) is tuple and depth < 8:
        for k in key:
            check_key(k, depth + 1)
        return
    if type(key) is frozenset:
        return  # its hash was computed (and bounded) when it was built
    raise fail(f"dict key or set member of type {type(key).__name__} is not allowed")


def setitem(target: dict[Any, Any], key: Any, value: Any) -> None:
    check_key(key)
    target[key] = value


def frozen_set(members: Iterable[Any]) -> frozenset[Any]:
    """The frozenset of `members`, each checked to be safely hashable first."""
    members = list(members)
    for member in members:
        check_key(member)
    return frozenset(members)


class _Machine:
    def __init__(self, data: bytes, policy: Policy, limits: Limits) -> None:
        if len(data) > limits.max_input:
            raise fail(f"{len(data)} bytes exceeds the {limits.max_input}-byte limit")
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
        if n < 0:
            raise fail("negative length")
        if end > len(self.data):
            raise PickleTruncated("pickle: truncated: ran past the end of the data")
        out = self.data[self.pos : end].tobytes()
        self.pos = end
        return out

    def readline(self) -> bytes:
        # GLOBAL arguments are newline-terminated; cap them so a missing newline cannot scan far.
        end = bytes(self.data[self.pos : self.pos + 1024]).find(b"\n")
        if end < 0 and self.pos + 1024 > len(self.data):
            raise PickleTruncated("pickle: truncated inside a GLOBAL name")
        if end < 0:
            raise fail("unterminated GLOBAL name")
        out = self.data[self.pos : self.pos + end].tobytes()
        self.pos += end + 1
        return out

    def sized(self, fmt: str) -> int:
        n = struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]
        if n > self.limits.max_string:
            raise fail(f"a {n}-byte string exceeds the {self.limits.max_string}-byte limit")
        return n

    # -- stack --------------------------------------------------------------------------------
    def push(self, value: Any) -> None:
        self.objects += 1
        if self.objects > self.limits.max_objects:
            raise fail(f"more than {self.limits.max_objects} objects")
        if len(self.stack) >= self.limits.max_stack:
            raise fail("stack too deep")
        self.stack.append(value)

    def pop(self) -> Any:
        if not self.stack:
            raise fail("stack underflow")
        v = self.stack.pop()
        if v is _MARK:
            raise fail("unexpected MARK")
        return v

    def top(self) -> Any:
        if not self.stack or self.stack[-1] is _MARK:
            raise fail("stack underflow")
        return self.stack[-1]

    def pop_mark(self) -> list[Any]:
        if not self.metastack:
            raise fail("no MARK to pop to")
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def memo_put(self, idx: int) -> None:
        if idx not in self.memo and len(self.memo) >= self.limits.max_memo:
            raise fail(f"memo holds more than {self.limits.max_memo} entries")
        self.memo[idx] = self.top()

    def memo_get(self, idx: int) -> None:
        if idx not in self.memo:
            raise fail(f"memo index {idx} was never stored")
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
        raise fail(f"cannot call a {type(obj).__name__}")

    def reduce(self, func: Any, args: Any) -> Any:
        expect(type(args) is tuple, "REDUCE arguments are not a tuple")
        handler = self.policy.reduce.get(self.callable_name(func))
        if handler is None and self.policy.describe_others and isinstance(func, Global):
            return Instance(func, args)
        expect(handler is not None, f"{self.callable_name(func)} cannot be called")
        return handler(args)

    def newobj(self, cls: Any, args: Any) -> Any:
        expect(type(args) is tuple, "NEWOBJ arguments are not a tuple")
        name = self.callable_name(cls)
        if name in self.policy.newobj or (self.policy.describe_others and isinstance(cls, Global)):
            return Instance(cls, args)
        raise fail(f"cannot instantiate {name}")

    def build(self, obj: Any, state: Any) -> None:
        if isinstance(obj, Instance):
            # Dataclass-style dict state, (dict state, slot state) as pickle's default BUILD
            # takes it, or anything else a class's own __setstate__ would take (TensorProperties
            # pickles a 5-tuple): kept under "__setstate__" for the reader to interpret.
            if (type(state) is tuple and len(state) == 2 and all(x is None or type(x) is dict for x in state)):
                for part in state:
                    if part:
                        for k, v in part.items():
                            setitem(obj.state, k, v)
            elif type(state) is dict:
                for k, v in state.items():
                    setitem(obj.state, k, v)
            elif state is not None:
                obj.state["__setstate__"] = state
            return
        if type(obj) is dict:
            # An OrderedDict's attributes (state_dict()'s `_metadata`): not part of the mapping.
            return
        if isinstance(obj, TensorRef):
            # _rebuild_parameter_with_state / subclass state: attributes, never bytes.
            return
        raise fail(f"cannot BUILD a {type(obj).__name__}")

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> Any:
        data = self.data
        n = len(data)
        push, pop = self.push, self.pop
        while True:
            if self.pos >= n:
                raise PickleTruncated("pickle: truncated: no STOP opcode")
            op = data[self.pos]
            self.pos += 1
            if op == 0x80:  # PROTO
                proto = self.read(1)[0]
                expect(2 <= proto <= 5, f"unsupported protocol {proto}")
            elif op == 0x95:  # FRAME: a length hint only
                self.read(8)
            elif op == 0x2E:  # STOP
                result = pop()
                expect(not self.stack and not self.metastack, "data left on the stack at STOP")
                return result
            elif op == 0x28:  # MARK
                self.metastack.append(self.stack)
                expect(len(self.metastack) <= self.limits.max_stack, "too many MARKs")
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
                expect(0 <= size <= 1024, "LONG4 longer than 1024 bytes")
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
                expect(0 <= size <= self.limits.max_string, "BINSTRING length out of range")
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
                expect(type(target) is list, "APPEND to a non-list")
                target.append(item)
            elif op == 0x65:  # APPENDS
                items = self.checked_items(self.pop_mark())
                target = self.top()
                expect(type(target) is list, "APPENDS to a non-list")
                target.extend(items)
            elif op == 0x7D:  # EMPTY_DICT
                push({})
            elif op == 0x64:  # DICT
                items = self.checked_items(self.pop_mark())
                expect(len(items) % 2 == 0, "DICT with an odd number of items")
                d: dict[Any, Any] = {}
                for i in range(0, len(items), 2):
                    setitem(d, items[i], items[i + 1])
                push(d)
            elif op == 0x73:  # SETITEM
                value, key = pop(), pop()
                target = self.top()
                expect(type(target) is dict, "SETITEM on a non-dict")
                setitem(target, key, value)
            elif op == 0x75:  # SETITEMS
                items = self.checked_items(self.pop_mark())
                expect(len(items) % 2 == 0, "SETITEMS with an odd number of items")
                target = self.top()
                expect(type(target) is dict, "SETITEMS on a non-dict")
                for i in range(0, len(items), 2):
                    setitem(target, items[i], items[i + 1])
            elif op == 0x8F:  # EMPTY_SET: described as a leaf holding its members
                push(SetValue())
            elif op == 0x90:  # ADDITEMS
                items = self.checked_items(self.pop_mark())
                target = self.top()
                expect(isinstance(target, SetValue), "ADDITEMS on a non-set")
                target.items.extend(items)
            elif op == 0x91:  # FROZENSET
                push(frozen_set(self.checked_items(self.pop_mark())))
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
                expect(type(module) is str and type(name) is str, "STACK_GLOBAL names are not strings")
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
                expect(kwargs == {}, "NEWOBJ_EX with keyword arguments")
                push(self.newobj(cls, args))
            elif op == 0x62:  # BUILD
                state = pop()
                self.build(self.top(), state)
            elif op == 0x51:  # BINPERSID
                pid = pop()
                decode = self.policy.persistent_id
                expect(decode is not None, "persistent ids are not allowed here")
                assert decode is not None
                push(decode(pid))
            else:
                # INST, OBJ, EXT1/2/4, PERSID and the text opcodes of protocol 0/1, NEXT_BUFFER /
                # READONLY_BUFFER (out-of-band data): nothing torch or DCP writes, and INST/OBJ/EXT
                # would import or call.
                raise fail(f"unsupported opcode 0x{op:02x} at byte {self.pos - 1}")

    def text(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise fail("string is not valid UTF-8") from None

    def checked_items(self, items: list[Any]) -> list[Any]:
        if any(x is _MARK for x in items):
            raise fail("unexpected MARK")
        return items


class SetValue:
    """A set built by EMPTY_SET + ADDITEMS: a leaf; its members are kept, never hashed."""

    def __init__(self) -> None:
        self.items: list[Any] = []


def load(data: bytes, policy: Policy, limits: Limits = Limits()) -> Any:
    """Describes the object `data` pickles. Raises UnsafePickleError for a global outside the
    policy and FormatError for anything malformed or over a limit; never imports or calls."""
    return load_prefix(data, policy, limits)[0]


def load_prefix(data: bytes, policy: Policy, limits: Limits = Limits()) -> tuple[Any, int]:
    """Describes the pickle that starts `data`, which may go on with other bytes (a legacy
    torch.save file is five pickles, then raw storages): the description and the offset just
    past its STOP. Raises as load does; PickleTruncated when `data` ends before the STOP."""
    machine = _Machine(data, policy, limits)
    try:
        return machine.run(), machine.pos
    except RecursionError:
        raise fail("nesting too deep") from None
    except (struct.error, IndexError, ValueError, TypeError, OverflowError, MemoryError) as e:
        if isinstance(e, FormatError):
            raise
        raise fail(f"malformed ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------------------------------
# Walking a description


def iter_leaves(obj: Any, limits: Limits = Limits()) -> Iterable[tuple[tuple[str, ...], Any]]:
    """Yields (path, leaf) for every leaf under nested dicts, lists and tuples, depth first in
    insertion order; path elements are dict keys (as str) and sequence indices. A container
    reached again through the memo (aliasing) is walked again, which is what key paths mean;
    a container inside itself, more than `limits.max_leaves` values visited, or key paths
    longer than `limits.max_key_bytes` characters in total (a long key reused at every level)
    raise FormatError before the paths are built."""
    budget = [limits.max_leaves, limits.max_key_bytes]
    active: set[int] = set()

    def walk(value: Any, path: tuple[str, ...], path_len: int) -> Iterable[tuple[tuple[str, ...], Any]]:
        budget[0] -= 1
        budget[1] -= path_len
        if budget[0] < 0:
            raise fail(f"more than {limits.max_leaves} values when flattened (budget of the file's size; shared containers?)", "budget")
        if budget[1] < 0:
            raise fail(f"key paths longer than {limits.max_key_bytes} characters in all (budget of the file's size)", "budget")
        if type(value) is dict:
            items: Iterable[tuple[Any, Any]] = value.items()
        elif type(value) in (list, tuple):
            items = enumerate(value)
        else:
            yield path, value
            return
        if len(path) >= limits.max_depth:
            raise fail(f"containers nest deeper than {limits.max_depth}")
        if id(value) in active:
            raise fail("a container contains itself")
        active.add(id(value))
        for k, v in items:
            text = _key_text(k)
            yield from walk(v, path + (text,), path_len + len(text) + 1)
        active.discard(id(value))

    yield from walk(obj, (), 0)


def _key_text(key: Any) -> str:
    if type(key) is str:
        return key
    if type(key) is bytes:
        return key.decode("utf-8", "replace")
    return str(key)
