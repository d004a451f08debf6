"""Hostile pickles, generated (not committed as blobs). Each entry: name -> (bytes, what it tries).

Most would create the file `canary` (the path given) if anything executed them; the tests
assert they are refused and that the canary never appears. `python tests/hostile_pickles.py DIR`
writes them out as DIR/<name>.pkl for inspection with pickletools.
"""

from __future__ import annotations

import pickle
import struct
import sys
from pathlib import Path


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _call(module: str, name: str, *args: str) -> bytes:
    # GLOBAL module.name, MARK, args..., TUPLE, REDUCE
    return _global(module, name) + b"(" + b"".join(_str(a) for a in args) + b"tR"


def hostile(canary: str) -> dict[str, tuple[bytes, str]]:
    touch = f"touch {canary}"
    pycode = f"open({canary!r}, 'w').write('pwned')"
    out: dict[str, tuple[bytes, str]] = {}
    P2 = b"\x80\x02"

    out["os_system"] = (P2 + _call("os", "system", touch) + b".", "os.system")
    out["posix_system"] = (P2 + _call("posix", "system", touch) + b".", "posix.system")
    out["builtins_exec"] = (P2 + _call("builtins", "exec", pycode) + b".", "builtins.exec")
    out["builtins_eval"] = (P2 + _call("builtins", "eval", pycode) + b".", "builtins.eval")
    out["py2_builtin_eval"] = (P2 + _call("__builtin__", "eval", pycode) + b".", "builtins.eval")
    out["subprocess"] = (
        P2 + _global("subprocess", "check_call") + b"((" + _str("touch") + _str(canary) + b"ltR.",
        "subprocess.check_call",
    )
    # getattr(builtins, "exec") via allowed-looking pieces: getattr itself is refused.
    out["getattr_chain"] = (
        P2 + _global("builtins", "getattr") + b"(" + _global("builtins", "__import__") + b"(" + _str("os")
        + b"tR" + _str("system") + b"tR(" + _str(touch) + b"tR.",
        "builtins.getattr",
    )

    class Reduce:
        def __reduce__(self):
            import os

            return (os.system, (touch,))

    out["reduce_trick_p2"] = (pickle.dumps({"weight": Reduce()}, protocol=2), "posix.system")
    out["reduce_trick_p4"] = (pickle.dumps({"weight": Reduce()}, protocol=4), "posix.system")
    # STACK_GLOBAL spelling of the same.
    out["stack_global"] = (
        b"\x80\x04" + b"\x8c\x02os\x8c\x06system\x93" + b"(" + _str(touch) + b"tR.", "os.system"
    )
    # torch.load's own helpers are not on the list either.
    out["torch_load"] = (P2 + _call("torch", "load", canary) + b".", "torch.load")
    out["torch_hub"] = (P2 + _call("torch.hub", "load", "x", "y") + b".", "torch.hub.load")
    out["copyreg_reconstructor"] = (
        P2 + _global("copyreg", "_reconstructor") + b"(" + _global("os", "system") + b"N" + _str(touch) + b"tR.",
        "copyreg._reconstructor",
    )
    return out


def malformed() -> dict[str, tuple[bytes, str]]:
    """Pickles that name nothing dangerous but must be refused for their shape (FormatError)."""
    P2 = b"\x80\x02"
    out: dict[str, tuple[bytes, str]] = {}
    out["inst_opcode"] = (b"(ios\nsystem\nX\x01\x00\x00\x00x\x85.", "INST imports")
    out["obj_opcode"] = (P2 + b"(" + _global("collections", "OrderedDict") + b"o.", "OBJ calls")
    out["ext1"] = (P2 + b"\x82\x01.", "EXT1 looks up the extension registry")
    out["huge_memo_get"] = (P2 + b"j\xff\xff\xff\xff.", "LONG_BINGET of a never-stored index")
    out["memo_flood"] = (P2 + b"N" + b"".join(b"r" + struct.pack("<I", i) for i in range(5000)) + b".", "memo over limit")
    out["deep_tuple_key"] = (P2 + b"}N" + b"\x85" * 200_000 + b"Ns.", "a 200,000-deep tuple as a dict key")
    out["unbalanced_marks"] = (P2 + b"](" * 5000 + b".", "MARKs never closed")
    out["deep_nesting"] = (P2 + b"](" * 5000 + b"]" + b"e" * 5000 + b".", "lists nested 5001 deep")
    out["non_storage_persid"] = (P2 + b"(" + _str("module") + _str("os") + b"tQ.", "persistent id of kind 'module'")
    out["persid_int"] = (P2 + b"K\x05Q.", "persistent id that is an int")
    out["truncated"] = (P2 + b"}q\x00(X\x05\x00\x00\x00ab", "cut inside a string")
    out["no_stop"] = (P2 + b"N", "no STOP")
    out["huge_string"] = (P2 + b"X\xff\xff\xff\xff" + b"a" * 10 + b".", "string length past the data")
    out["long4_huge"] = (P2 + b"\x8b\xff\xff\xff\x7f.", "LONG4 of 2 GiB")
    out["protocol_0"] = (b"\x80\x00N.", "protocol 0")
    out["next_buffer"] = (b"\x80\x05\x97.", "out-of-band buffer")
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "hostile_pickles")
    target.mkdir(parents=True, exist_ok=True)
    for name, (data, _) in {**hostile(str(target / "canary")), **malformed()}.items():
        (target / f"{name}.pkl").write_bytes(data)
    print(f"wrote {len(list(target.glob('*.pkl')))} pickles to {target}")
