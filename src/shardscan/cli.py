"""The command line: a thin shell over the library. Each command calls one library function
and presents its result; main() is the one place errors become messages and exit codes.

Exit codes: 0 clean, 1 problems found, 2 usage error or unreadable input.
Start-up stays light: pyarrow and the native core load inside the commands, never torch.
"""

from __future__ import annotations

import sys
import time as _time

# When the command began, before its imports: a sweep's --max-rate holds over the whole run.
STARTED = _time.monotonic()
EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _interrupted() -> None:
    sys.stderr.write("shardscan: interrupted\n")
    raise SystemExit(EXIT_INTERRUPTED)


try:  # Ctrl-C while Python is still loading (typer is most of the start-up) is no crash either
    import json
    import os
    import signal
    import time
    from dataclasses import replace
    from pathlib import Path
    from typing import TYPE_CHECKING, Annotated, Callable, Optional

    import typer
except KeyboardInterrupt:
    _interrupted()

if TYPE_CHECKING:
    from .scanner import ScanResult

_SETTINGS: dict = dict(
    name="shardscan",
    help="Check model checkpoints for missing, truncated and corrupt tensors, without loading them.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app = typer.Typer(**_SETTINGS)



def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"shardscan {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Check model checkpoints for missing, truncated and corrupt tensors, without loading them.

    Exit codes: 0 clean, 1 problems found, 2 usage error or unreadable input.
    """


# Options shared by several commands, defined once.
NoHash = Annotated[bool, typer.Option("--no-hash", help="Read headers only; do not hash tensor bytes.")]
Threads = Annotated[
    Optional[int], typer.Option("--threads", "-j", min=1, help="Hashing threads (default: online CPUs).")
]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout and nothing else.")]
ShardRay = Annotated[bool, typer.Option("--ray", help="Run one Ray task per shard (pip install 'shardscan[ray]').")]
ShardRayAddress = Annotated[
    Optional[str], typer.Option("--ray-address", metavar="ADDRESS", help="The Ray cluster for --ray (default: RAY_ADDRESS, else a local cluster).")
]
Sha256 = Annotated[
    Optional[bool],
    typer.Option("--sha256/--no-sha256",
                 help="Verify every file against the SHA-256 its download published (huggingface_hub cache or "
                      "local_dir, SHA256SUMS, *.sha256, model.sig): by default whenever one exists; --sha256 "
                      "digests every file even without one."),
]


def _progress_reporter() -> Callable[[int, int], None] | None:
    """A progress bar on stderr for scans longer than about a second, only on a terminal."""
    if not sys.stderr.isatty():
        return None
    started = time.monotonic()
    state: dict = {}

    def report(done: int, total: int) -> None:
        if "bar" not in state:
            if time.monotonic() - started < 1.0 or done >= total:
                return
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

            state["bar"] = Progress(
                BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                console=Console(stderr=True), transient=True,
            )
            state["bar"].start()
            state["task"] = state["bar"].add_task("hashing", total=total)
        state["bar"].update(state["task"], completed=done)
        if done >= total:
            state["bar"].stop()

    return report


#: Below this, a scan's time is mostly start-up and page faults: a rate would mean nothing.
MIN_SECONDS_FOR_A_RATE = 0.1


def _summary(result: ScanResult) -> str:
    from .report import human_bytes, plural

    nbytes = result.nbytes
    rate = f", {nbytes / result.elapsed / 1e9:.2f} GB/s" if result.elapsed >= MIN_SECONDS_FOR_A_RATE and nbytes else ""
    summary = (
        f"{plural(len(result.files), 'file')}, {plural(len(result.columns), 'tensor')}, {human_bytes(nbytes)} "
        f"in {result.elapsed:.2f} s{rate}"
    )
    return summary + ("" if result.ok else f"; {plural(len(result.problems), 'file')} with problems")


def _table_on_stdout(output: Path | None, *others_on_stdout: bool) -> bool:
    """Whether `-o -` asks for the table on stdout; a usage error when --json or --list
    would print there too."""
    if output is None or os.fspath(output) != "-":
        return False
    if any(others_on_stdout):
        raise typer.BadParameter("`-o -` writes the table on stdout, so it cannot go with --json or --list", param_hint="'-o'")
    return True


def _write_table(make_table, output: Path | None) -> None:
    """Writes the table `make_table()` builds to `output`, when there is one: pyarrow costs
    more to import than a header-only scan takes, so without -o it is never imported."""
    if output is None:
        return
    from .output import write_atomic, write_stdout

    table = make_table()

    if os.fspath(output) == "-":
        write_stdout(table)
    else:
        write_atomic(table, output)


@app.command()
def scan(
    paths: Annotated[list[Path], typer.Argument(metavar="PATH...", help="Tensor files or checkpoint directories.", show_default=False)],
    output: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", help="Write the table: .parquet, .arrow/.feather or .csv (atomically); "
                                            "`-` writes CSV on stdout."),
    ] = None,
    no_hash: NoHash = False,
    threads: Threads = None,
    list_tensors: Annotated[bool, typer.Option("--list", help="Print one line per tensor (the count goes to stderr).")] = False,
    json_output: Json = False,
    ray: ShardRay = False,
    ray_address: ShardRayAddress = None,
    files_out: Annotated[
        Optional[Path],
        typer.Option("--files-out", metavar="FILE",
                     help="Also digest every file whole and write one row per file (file, size, sha256, xxh3_128): "
                          ".parquet, .arrow/.feather, .csv, or sha256sum text for a name SHA256SUMS or *.sha256."),
    ] = None,
) -> None:
    """List every tensor (key, dtype, shape, offset, size, XXH3-128 checksum) of the given files."""
    from .scanner import scan_paths

    table_on_stdout = _table_on_stdout(output, json_output, list_tensors)
    if output is not None and not table_on_stdout:
        _refuse_output_among_inputs(output, paths)
    if files_out is not None:
        if os.fspath(files_out) == "-":
            raise typer.BadParameter("the per-file table is written to a file, not stdout", param_hint="'--files-out'")
        _refuse_output_among_inputs(files_out, paths)
    if ray or ray_address is not None:
        from .ray_scan import AUTO, scan_paths_ray

        result = scan_paths_ray(paths, address=ray_address or AUTO, hash=not no_hash, threads=threads)
    else:
        result = scan_paths(paths, hash=not no_hash, threads=threads, progress=None if json_output else _progress_reporter())
    _write_table(lambda: result.table, output)
    unreadable = _write_file_table(paths, files_out, threads) if files_out is not None else []
    if unreadable:
        from .errors import IntegrityError
        from .formats import FileProblem

        result = replace(result, problems=result.problems + tuple(
            FileProblem(name, IntegrityError(f"SHA-256 not computed: {error}", path=name)) for name, error in unreadable))
    if json_output:
        payload = {
            "ok": result.ok,
            "files": len(result.files),
            "tensors": len(result.columns),
            "bytes": result.nbytes,
            "elapsed": round(result.elapsed, 6),
            "errors": [{"file": p.file, "kind": p.kind, "error": p.error} for p in result.problems],
        }
        _echo_json(payload, _rows(result) if list_tensors else None)
    else:
        from .report import printable

        for row in _rows(result) if list_tensors else ():
            shape = "[" + ",".join(map(str, row["shape"])) + "]"
            typer.echo(printable(f"{row['checksum'] or '-':32}  {row['dtype']:<14} {shape:<20} {row['file']}:{row['key']}"))
        for problem in result.problems:
            typer.echo(printable(f"{problem.file}: FAILED {problem.error}"), err=table_on_stdout)
        # With rows or a table on stdout, the count is not data: it goes to stderr.
        typer.echo(_summary(result), err=table_on_stdout or list_tensors)
    raise typer.Exit(EXIT_OK if result.ok else EXIT_PROBLEMS)


def _write_file_table(paths: list[Path], files_out: Path, threads: int | None) -> list[tuple[str, str]]:
    """Writes the per-file digest table (shardscan.digests) and returns (file, error) of the
    files that could not be digested."""
    from .digests import file_digests, is_sum_file_name, write_sums

    table = file_digests(paths, threads=threads)
    if is_sum_file_name(files_out):
        write_sums(table, files_out)
    else:
        _write_table(lambda: table, files_out)
    return [(name, error) for name, error in zip(table.column("file").to_pylist(), table.column("error").to_pylist())
            if error is not None]


def _rows(result: ScanResult):
    """The scan's rows as dicts, one at a time (a list of a million dicts costs gigabytes)."""
    columns = result.columns.as_dict()
    names = list(columns)
    for values in zip(*columns.values()):
        yield dict(zip(names, values))


def _echo_json(payload: dict, rows) -> None:
    """`payload` as one JSON object on stdout, with `rows` (an iterable) streamed as its last
    member "rows", so the text of every row is never held at once."""
    if rows is None:
        typer.echo(json.dumps(payload))
        return
    out = sys.stdout
    out.write(json.dumps(payload)[:-1] + ', "rows": [')  # payload is never empty
    for n, row in enumerate(rows):
        out.write((", " if n else "") + json.dumps(row))
    out.write("]}\n")
    out.flush()


def _refuse_output_among_inputs(output: Path, paths: list[Path]) -> None:
    """Exit 2 before anything is read or written when `output` is one of the files the scan
    reads (by samefile: the same name, a hard link, a symlink or another spelling of it)."""
    if not output.exists():
        return
    from .report import printable
    from .scanner import discover

    for candidate in list(paths) + [target.path for target in discover(paths)]:
        try:
            same = os.path.samefile(output, candidate)
        except OSError:
            continue
        if same:
            sys.stderr.write(printable(f"shardscan: {output}: is one of the inputs; refusing to overwrite it") + "\n")
            raise typer.Exit(EXIT_USAGE)


def _refuse_output_inside_checkpoints(output: Path, root: Path) -> None:
    """Exit 2 before anything is read or written when `output` is, or would land inside, one
    of the checkpoints under `root`: audit reads every file of each, and a table written into
    one changes it (named like a manifest, it would even become that checkpoint's layout)."""
    from .discover import find_checkpoints
    from .report import printable

    try:
        checkpoints = find_checkpoints(root).checkpoints
    except OSError:
        return  # audit itself names the unreadable root
    target = output.resolve()
    for checkpoint in checkpoints:
        place = checkpoint.path.resolve()
        if target == place or (place.is_dir() and target.is_relative_to(place)):
            message = f"shardscan: {output}: lies in checkpoint {checkpoint.path}, which audit reads; write it elsewhere"
            sys.stderr.write(printable(message) + "\n")
            raise typer.Exit(EXIT_USAGE)
    _refuse_output_among_inputs(output, [root])


StripPrefix = Annotated[
    Optional[list[str]],
    typer.Option("--strip-prefix", metavar="P", help="Remove prefix P (module., _orig_mod., ...) from every key on both sides; repeatable."),
]


def _colour() -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set (no-color.org)."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


@app.command()
def check(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="A checkpoint directory or tensor file.", show_default=False)],
    against: Annotated[
        Optional[Path],
        typer.Option("--against", "-a", metavar="SOURCE",
                     help="Expected layout: a shard index, a manifest from `scan -o`, a reference checkpoint, "
                          "or a config.json (default: what the checkpoint declares: its index, "
                          "shardscan.manifest.parquet, config.json)."),
    ] = None,
    model: Annotated[
        Optional[str], typer.Option("--model", metavar="MODULE:FACTORY", help="Expect the state_dict of this torch.nn.Module factory, built on the meta device.")
    ] = None,
    strip_prefix: StripPrefix = None,
    checksums: Annotated[bool, typer.Option("--checksums", help="Also compare checksums with a reference checkpoint.")] = False,
    hf: Annotated[
        Optional[bool],
        typer.Option("--hf/--no-hf", help="Build the full layout from config.json with transformers on the meta device "
                                          "(default: only for a config named by --against)."),
    ] = None,
    no_hash: NoHash = False,
    threads: Threads = None,
    json_output: Json = False,
    strict: Annotated[bool, typer.Option("--strict", help="All-zero tensors of rank >= 2 are problems, not warnings.")] = False,
    ray: ShardRay = False,
    ray_address: ShardRayAddress = None,
    sha256: Sha256 = None,
) -> None:
    """Find what is missing, unexpected, changed, unreadable or non-finite against the expected layout."""
    from .checker import check as run_check
    from .report import render_report

    if ray or ray_address is not None:
        from .ray_scan import AUTO, check_ray

        report = check_ray(path, against, address=ray_address or AUTO, hash=not no_hash, threads=threads,
                           strip_prefix=strip_prefix, checksums=checksums, model=model, hf=hf, strict=strict, sha256=sha256)
    else:
        report = run_check(
            path, against, hash=not no_hash, threads=threads, strip_prefix=strip_prefix, checksums=checksums,
            model=model, hf=hf, progress=None if json_output else _progress_reporter(), strict=strict, sha256=sha256,
        )
    if json_output:
        typer.echo(json.dumps(report.to_dict()))
    else:
        typer.echo(render_report(report, colour=_colour()))
    raise typer.Exit(EXIT_OK if report.ok else EXIT_PROBLEMS)


@app.command()
def diff(
    a: Annotated[Path, typer.Argument(metavar="A", help="The first checkpoint (directory or file).", show_default=False)],
    b: Annotated[Path, typer.Argument(metavar="B", help="The second checkpoint (directory or file).", show_default=False)],
    strip_prefix: StripPrefix = None,
    strip_prefix_a: Annotated[
        Optional[list[str]], typer.Option("--strip-prefix-a", metavar="P", help="Remove prefix P from A's keys only; repeatable.")
    ] = None,
    strip_prefix_b: Annotated[
        Optional[list[str]], typer.Option("--strip-prefix-b", metavar="P", help="Remove prefix P from B's keys only; repeatable.")
    ] = None,
    no_hash: NoHash = False,
    threads: Threads = None,
    json_output: Json = False,
) -> None:
    """Keys only in A, only in B, and tensors whose shape, dtype or checksum changed."""
    from .checker import diff as run_diff
    from .report import render_diff

    result = run_diff(a, b, hash=not no_hash, threads=threads, strip_prefix=strip_prefix,
                      strip_prefix_a=strip_prefix_a, strip_prefix_b=strip_prefix_b)
    if json_output:
        typer.echo(json.dumps(result.to_dict()))
    else:
        typer.echo(render_diff(result, colour=_colour()))
    raise typer.Exit(EXIT_OK if result.ok else EXIT_PROBLEMS)


@app.command()
def audit(
    root: Annotated[Path, typer.Argument(metavar="ROOT", help="A training run's output directory (or one checkpoint).", show_default=False)],
    against: Annotated[
        Optional[Path],
        typer.Option("--against", "-a", metavar="SOURCE",
                     help="Also check every checkpoint against this layout (index, manifest, reference checkpoint, config.json)."),
    ] = None,
    output: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", help="Write every checkpoint's per-tensor table with a `checkpoint` column: "
                                            ".parquet, .arrow/.feather or .csv (atomically); `-` writes CSV on stdout."),
    ] = None,
    ray: Annotated[
        bool, typer.Option("--ray", help="Run one Ray task per checkpoint (pip install 'shardscan[ray]').")
    ] = False,
    ray_address: Annotated[
        Optional[str],
        typer.Option("--ray-address", metavar="ADDRESS",
                     help="The Ray cluster for --ray (default: RAY_ADDRESS, else a local cluster)."),
    ] = None,
    no_hash: NoHash = False,
    threads: Threads = None,
    json_output: Json = False,
    sha256: Sha256 = None,
    sample: Annotated[
        Optional[str], typer.Option("--sample", metavar="N/T", help="Sweep: hash only the N-th of T stable subsets of the files "
                                                                   "(headers of all are still checked).")
    ] = None,
    state: Annotated[
        Optional[Path], typer.Option("--state", metavar="FILE", help="Sweep: journal each file's verdict here; a rerun resumes.")
    ] = None,
    changed_only: Annotated[
        bool, typer.Option("--changed-only", help="Sweep: skip files whose size, mtime and inode match their last verified record.")
    ] = False,
    max_rate: Annotated[
        Optional[str], typer.Option("--max-rate", metavar="RATE", help="Sweep: cap reads at RATE bytes/s (500M, 2G).")
    ] = None,
    history: Annotated[
        Optional[Path], typer.Option("--history", metavar="FILE.parquet", help="Sweep: append the summary to this Parquet history.")
    ] = None,
) -> None:
    """Check every checkpoint under ROOT: one row each, frozen tensors, identical checkpoints,
    and the newest clean one. With --sample, --state, --max-rate or --history: an integrity
    sweep (docs/audit.md, "Sweeps")."""
    if sample is not None or state is not None or changed_only or max_rate is not None or history is not None:
        _sweep(root, sample, state, changed_only, max_rate, history, threads=threads, json_output=json_output,
               conflicts={"--against": against, "--output": output, "--ray": ray or ray_address, "--no-hash": no_hash,
                          "--sha256/--no-sha256": sha256 is not None})
    table_on_stdout = _table_on_stdout(output, json_output)
    if output is not None and not table_on_stdout:
        _refuse_output_inside_checkpoints(output, root)
    progress = None if json_output else _progress_reporter()
    if ray or ray_address is not None:
        from .ray_audit import AUTO, audit_ray

        result = audit_ray(root, against, address=ray_address or AUTO, hash=not no_hash, threads=threads, progress=progress)
    else:
        from .auditing import audit as run_audit

        result = run_audit(root, against, hash=not no_hash, threads=threads, progress=progress, sha256=sha256)
    _write_table(lambda: result.table, output)
    if json_output:
        typer.echo(json.dumps(result.to_dict()))
    else:
        from .auditing import render_audit

        typer.echo(render_audit(result, colour=_colour() and not table_on_stdout), err=table_on_stdout)
    raise typer.Exit(EXIT_OK if result.ok else EXIT_PROBLEMS)


def _sweep(root: Path, sample: Optional[str], state: Optional[Path], changed_only: bool, max_rate: Optional[str],
           history: Optional[Path], *, threads: Optional[int], json_output: bool, conflicts: dict) -> None:
    """`audit` as an integrity sweep; always ends the command."""
    from .sweep import append_history, parse_rate, parse_sample, render_sweep, sweep

    for name, value in conflicts.items():
        if value:
            raise typer.BadParameter(f"{name} does not combine with a sweep (--sample/--state/--max-rate/--history)")
    try:
        chosen = parse_sample(sample) if sample is not None else None
        rate = parse_rate(max_rate) if max_rate is not None else None
        if changed_only and state is None:
            raise ValueError("--changed-only needs --state")
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    summary = sweep(root, sample=chosen, state=state, changed_only=changed_only, max_rate=rate, threads=threads,
                    started=STARTED)
    if history is not None:
        append_history(summary, history)
    typer.echo(json.dumps(summary.to_dict()) if json_output else render_sweep(summary))
    raise typer.Exit(EXIT_OK if summary.ok else EXIT_PROBLEMS)


@app.command()
def latest(
    root: Annotated[Path, typer.Argument(metavar="ROOT", help="A training run's output directory.", show_default=False)],
    no_hash: NoHash = False,
    threads: Threads = None,
    json_output: Json = False,
    sha256: Sha256 = None,
) -> None:
    """Print the path of the newest checkpoint under ROOT that checks clean (for
    --resume_from_checkpoint "$(shardscan latest out/)"); exit 1 with the reason on stderr
    when there is none."""
    from .auditing import pick_latest

    pick = pick_latest(root, hash=not no_hash, threads=threads, sha256=sha256)
    if json_output:
        typer.echo(json.dumps({
            "ok": pick.path is not None,
            "root": os.fspath(root),
            "path": None if pick.path is None else os.fspath(pick.path),
            "reason": pick.reason,
            "rejected": [{"path": path, "problem": problem, "kinds": list(kinds)}
                         for (path, problem), kinds in zip(pick.rejected, pick.kinds)],
        }))
        raise typer.Exit(EXIT_OK if pick.path is not None else EXIT_PROBLEMS)
    if pick.path is None:
        from .report import printable

        typer.echo(printable(f"shardscan: {pick.reason}"), err=True)
        raise typer.Exit(EXIT_PROBLEMS)
    # The exact path, as bytes: a name that is not UTF-8 must still reach the resuming script.
    sys.stdout.flush()
    sys.stdout.buffer.write(os.fsencode(pick.path) + b"\n")
    sys.stdout.buffer.flush()
    raise typer.Exit(EXIT_OK)


class _Interrupt(BaseException):
    """Ctrl-C during a command; a BaseException so that no `except Exception` swallows it."""


def _raise_interrupt(signum: int, frame: object) -> None:
    raise _Interrupt()


def main() -> None:
    """Entry point: every failure becomes one line on stderr and an exit code; a traceback
    only with SHARDSCAN_DEBUG=1."""
    # Typer turns a KeyboardInterrupt into "Aborted!" and exit 1, which here means "problems
    # found"; Ctrl-C raises this instead, which only main() catches. Temporary files are still
    # removed on the way out (write_atomic cleans up on any BaseException).
    previous = signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        _app_for(sys.argv[1:])()
    except SystemExit:
        raise
    except (KeyboardInterrupt, _Interrupt):
        _interrupted()
    except Exception as exc:  # the one funnel: everything else is a one-line error
        if os.environ.get("SHARDSCAN_DEBUG") == "1":
            raise
        from .report import printable

        sys.stderr.write(printable(f"shardscan: {_describe(exc)}") + "\n")
        sys.exit(EXIT_USAGE)
    finally:
        signal.signal(signal.SIGINT, previous)


def _app_for(args: list[str]) -> typer.Typer:
    """The app with only the command `args` name, if they name one. Typer reads the signature
    of every registered command each time it builds the CLI (about 10 ms of every command's
    start-up); what one command prints and parses does not depend on the others."""
    name = next((arg for arg in args if not arg.startswith("-")), None)
    chosen = [command for command in app.registered_commands if _command_name(command) == name]
    if not chosen:
        return app  # no command, or an unknown one: its listing and suggestions need them all
    one = typer.Typer(**_SETTINGS)
    one.registered_callback = app.registered_callback
    one.registered_commands = chosen
    return one


def _command_name(command: typer.models.CommandInfo) -> str | None:
    """The name Typer gives a registered command: its own, else its function's, dashed."""
    return command.name or (command.callback.__name__.replace("_", "-") if command.callback else None)


def run() -> None:
    """The console script and `python -m shardscan`: main(), then out without the interpreter's
    teardown, which frees every object and module one by one (a tenth of a header-only check
    of a large checkpoint) for a process that is ending anyway. Teardown still runs when
    something may need it: Ray's clean-up, a thread still working, output that fails to flush."""
    try:
        main()
        code: object = EXIT_OK
    except SystemExit as done:
        code = EXIT_OK if done.code is None else done.code
    import threading

    if isinstance(code, int) and "ray" not in sys.modules and threading.active_count() == 1:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        else:
            os._exit(code)
    sys.exit(code)


def _describe(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
