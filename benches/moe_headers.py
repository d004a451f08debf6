"""Headers at MoE scale: `shardscan check --no-hash` of a DeepSeek-V3-shaped checkpoint against the
stdlib-json read of the same 163 headers a user would write, both timed as whole processes; and,
against the same json read, the floor under any shardscan command on that input (CORE_FLOOR).

    python benches/moe_headers.py [--workdir /tmp/shardscan-bench] [--reps 7] [--million]

Times come from farm-bench (pairs run in turn, the ratio taken pair by pair) when it is on PATH, else
from this script's own alternation of fresh processes. `--million` adds one file of 1M tensors.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_checkpoint import make_many  # noqa: E402
from make_moe import make_deepseek_v3  # noqa: E402
from run import shardscan_cmd  # noqa: E402

#: What a user writes instead: read each shard's 8-byte length, then json.load the header.
STDLIB_READER = """
import json, struct, sys
from pathlib import Path
n = 0
for p in sorted(Path(sys.argv[1]).glob('*.safetensors')):
    with open(p, 'rb') as f:
        (size,) = struct.unpack('<Q', f.read(8))
        n += len(json.loads(f.read(size))) - 1
print(n)
"""


#: The floor under any shardscan command on this input: the interpreter, typer (every command
#: parses its arguments with it) and the C core imported, then the index and every header
#: parsed in C, one file after another, with nothing made of what they hold. check is this
#: plus its own work; the gap between the two is all that tuning check itself can remove.
CORE_FLOOR = """
import sys
from pathlib import Path
import typer
from shardscan._native import ffi, lib
err = ffi.new('ss_error *')
index = ffi.new('ss_index_listing *')
data = (Path(sys.argv[1]) / 'model.safetensors.index.json').read_bytes()
assert lib.ss_index_parse(ffi.from_buffer(data), len(data), index, err) == lib.SS_OK
n = index.count
lib.ss_index_listing_free(index)
for p in sorted(Path(sys.argv[1]).glob('*.safetensors')):
    opened, listing = ffi.new('ss_file **'), ffi.new('ss_st_listing *')
    assert lib.ss_file_open(bytes(p), opened, err) == lib.SS_OK
    assert lib.ss_st_parse(opened[0], listing, err) == lib.SS_OK
    n -= listing.count
    lib.ss_st_listing_free(listing)
    lib.ss_file_close(opened[0])
assert n == 0, n
"""


def shardscan_argv(shardscan: list[str], target: Path) -> list[str]:
    return [*shardscan, "check", "--no-hash", str(target)]


def stdlib_argv(target: Path) -> list[str]:
    return [sys.executable, "-c", STDLIB_READER, str(target)]


def farm_bench(a: list[str], b: list[str], reps: int) -> dict[str, tuple[float, float, float]]:
    """{"wall": (median A s, median B s, median A/B), "cpu": the same in user + system seconds},
    from farm-bench's report. CPU time is shown too: on a shared machine it drifts less than wall."""
    cmd = ["farm-bench", "-n", str(reps), "--timeout", "900", "--vs", shlex.join(b), "--", *a]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    medians = {(m[0], m[1]): float(m[2]) for m in re.findall(r"^(A|B|A/B) (wall|cpu) s?\s+\S+\s+(\S+)", out, re.M)}
    if len(medians) < 6:
        raise RuntimeError("unexpected farm-bench output:\n" + out)
    return {clock: (medians["A", clock], medians["B", clock], medians["A/B", clock]) for clock in ("wall", "cpu")}


def alternate(a: list[str], b: list[str], reps: int) -> tuple[float, float, float]:
    """The fallback clock: fresh processes A B A B ..., medians and the median pairwise ratio."""
    ta, tb = [], []
    for _ in range(reps + 1):  # the first pair warms the caches and is dropped
        for argv, out in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
            out.append(time.perf_counter() - t0)
    ta, tb = ta[1:], tb[1:]
    return {"wall": (statistics.median(ta), statistics.median(tb), statistics.median(x / y for x, y in zip(ta, tb)))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/shardscan-bench"))
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--million", action="store_true", help="also time one file of 1M tensors")
    ap.add_argument("--no-farm-bench", action="store_true", help="use this script's own clock")
    a = ap.parse_args(argv)
    clock = alternate if a.no_farm_bench or not shutil.which("farm-bench") else farm_bench
    ss = shardscan_cmd()  # byte-compiles the package once, before any timed run
    ds = a.workdir / "deepseek-v3"
    man = make_deepseek_v3(ds)
    moe = f"DeepSeek-V3-shaped, {man['tensors']:,} tensors in {man['shards']} shards + index + config"
    rows = [(moe, ds, clock(shardscan_argv(ss, ds), stdlib_argv(ds), a.reps))]
    floor = clock([sys.executable, "-c", CORE_FLOOR, str(ds)], stdlib_argv(ds), a.reps)
    if a.million:
        one = a.workdir / "many" / "n1000000.safetensors"
        make_many(one, 1_000_000)
        reader = [sys.executable, "-c", STDLIB_READER.replace("glob('*.safetensors')", "parent.glob(" + repr(one.name) + ")"), str(one)]
        rows.append(("1,000,000 tensors in one file", one, clock(shardscan_argv(ss, one), reader, a.reps)))
    print("| input | clock | `shardscan check --no-hash` | stdlib `json.load` of the headers | ratio (lower is faster) |")
    print("|---|---|---|---|---|")
    for label, _, clocks in rows:
        for clock, (ta, tb, r) in clocks.items():
            print(f"| {label} | {clock} | {ta:.3f} s | {tb:.3f} s | {r:.2f}x |")
    print()
    print("| input | clock | floor: typer + the C core imported, index and headers parsed in C | stdlib `json.load` of the headers | ratio (lower is faster) |")
    print("|---|---|---|---|---|")
    for clock, (ta, tb, r) in floor.items():
        print(f"| {moe} | {clock} | {ta:.3f} s | {tb:.3f} s | {r:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
