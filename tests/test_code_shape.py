"""The shape the code keeps: short functions, and file formats known only to formats/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "shardscan"
LIMIT = 120
#: The pickle VM's opcode dispatch reads best as one table-like function.
EXEMPT = {("pickle_reader.py", "_Machine.run")}


def python_functions() -> list[tuple[str, str, int]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for owner in [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef))]:
            prefix = f"{owner.name}." if isinstance(owner, ast.ClassDef) else ""
            for node in owner.body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    out.append((path.name, prefix + node.name, node.end_lineno - node.lineno + 1))
    return out


def c_functions() -> list[tuple[str, str, int]]:
    out = []
    for path in sorted((ROOT / "csrc").glob("*.c")):
        start = name = None
        for i, line in enumerate(path.read_text().splitlines()):
            # A definition starts at column 0 with its return type and name; its body ends at
            # the first "}" at column 0 (the code is formatted that way throughout).
            match = re.match(r"^(?!typedef|struct|static const|enum)[A-Za-z_][\w\s\*]*?\b(\w+)\(", line)
            if match and start is None and not line.rstrip().endswith(";"):
                start, name = i, match.group(1)
            elif line.startswith("}") and start is not None:
                out.append((path.name, name, i - start + 1))
                start = None
    return out


def test_the_scanners_see_the_functions():
    assert any(name == "check" for _, name, _ in python_functions())
    assert any(name == "ss_hash_batch" for _, name, _ in c_functions())


def test_no_function_is_longer_than_the_limit():
    long = [f"{file}:{name} ({n} lines)" for file, name, n in python_functions() + c_functions()
            if n > LIMIT and (file, name) not in EXEMPT]
    assert not long, long


SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".distcp", ".metadata")


def test_only_formats_names_file_formats():
    """Suffixes and magic numbers of checkpoint formats appear only in formats/ (docstrings
    and messages may mention them; code may not test for them)."""
    found = []
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) or (isinstance(node, ast.Call) and getattr(node.func, "attr", "") in
                                                  ("endswith", "startswith", "removesuffix")):
                for const in ast.walk(node):
                    if isinstance(const, ast.Constant) and isinstance(const.value, (str, bytes)):
                        text = const.value if isinstance(const.value, str) else const.value.decode("latin-1")
                        if text in SUFFIXES or text.endswith(SUFFIXES) or text.startswith("PK"):
                            found.append(f"{path.name}:{const.lineno}: {text!r}")
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):  # path / ".metadata"
                if isinstance(node.right, ast.Constant) and node.right.value in SUFFIXES:
                    found.append(f"{path.name}:{node.lineno}: {node.right.value!r}")
    assert not found, found
