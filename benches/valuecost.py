"""What the value checks cost: shardscan's hashing pass over files, with and without NaN/Inf counting.

    python benches/valuecost.py counted|plain --json FILE...

`scan` always counts NaN and Inf of floating tensors in its hashing pass, and offers no switch to
leave them out (nobody needs one). The engine does: a job without a value kind only hashes (and
notes whether every byte is zero, which stops at the first nonzero byte). This runs the same jobs
scan builds for the files, through the same call, either as scan does ("counted") or with every
value kind removed ("plain"), and prints the hashing call's own elapsed time as JSON, so the
harness compares the two passes without start-up or header parsing.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

from shardscan._core import hash_jobs
from shardscan.scanner import _rebase, discover, read_listing


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] not in ("counted", "plain") or argv[1] != "--json":
        print(__doc__, file=sys.stderr)
        return 2
    counted = argv[0] == "counted"
    listings = [read_listing(t) for t in discover(argv[2:])]
    # One batch over every file's rows, file indices rebased, as scan's own pass builds it.
    files, jobs = [], []
    for listing in listings:
        jobs += [_rebase(job, len(files)) for job in listing.row_jobs()]
        files += listing.files
    if not counted:
        jobs = [dataclasses.replace(job, value_kind=None) for job in jobs]
    started = time.perf_counter()
    results = hash_jobs(files, jobs)
    elapsed = time.perf_counter() - started
    if any(r.checksum is None for r in results):
        print(f"hashing failed: {next(r.message for r in results if r.checksum is None)}", file=sys.stderr)
        return 1
    nan = sum(r.nan_count or 0 for r in results)
    nbytes = sum(job.nbytes for job in jobs)
    print(json.dumps({"elapsed": round(elapsed, 6), "bytes": nbytes, "nan_count": nan}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
