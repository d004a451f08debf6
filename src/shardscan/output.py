"""Writing tables to disk, atomically: a temporary file in the destination's directory,
fsync'd, then renamed over the destination. An existing file is replaced only by a complete
new one; on any failure it is left as it was and the temporary file is removed."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Callable

import pyarrow as pa

#: File suffix -> writer name, for help texts and errors.
FORMATS = {".parquet": "Parquet", ".arrow": "Arrow IPC file", ".feather": "Arrow IPC file", ".csv": "CSV"}


def _writer(suffix: str) -> Callable[[pa.Table, str], None]:
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return lambda table, path: pq.write_table(table, path)
    if suffix in (".arrow", ".feather"):
        import pyarrow.feather as feather

        return lambda table, path: feather.write_feather(table, path, compression="uncompressed")
    if suffix == ".csv":
        import pyarrow.csv as csv

        def write_csv(table: pa.Table, path) -> None:
            # CSV has no lists: shapes become their JSON text, e.g. [4096, 1024].
            for i, field in enumerate(table.schema):
                if pa.types.is_list(field.type):
                    text = ["[" + ", ".join(map(str, v)) + "]" if v is not None else None for v in table.column(i).to_pylist()]
                    table = table.set_column(i, field.name, pa.array(text, pa.string()))
            csv.write_csv(table, path)

        return write_csv
    raise ValueError(f"unknown output format {suffix!r}; use one of {', '.join(FORMATS)}")


def _umask() -> int:
    try:  # Linux reports it without changing it
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(target: Path) -> int:
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def write_stdout(table: pa.Table) -> None:
    """Writes `table` as CSV on stdout (`-o -`): the one format that reads in a terminal and
    pipes into other tools."""
    import sys

    _writer(".csv")(table, sys.stdout.buffer)
    sys.stdout.buffer.flush()


def write_atomic(table: pa.Table, path: str | os.PathLike[str]) -> None:
    """Writes `table` to `path` in the format its suffix names. Raises ValueError for an
    unknown suffix and OSError (naming the path) when the directory is not writable or full."""
    write = _writer(Path(path).suffix.lower())
    replace_atomically(path, lambda temp: write(table, temp))


def replace_atomically(path: str | os.PathLike[str], write: Callable[[str], None]) -> None:
    """Calls write(temporary path) in the destination's directory, then fsyncs the file and
    renames it over `path`; on any failure the temporary file is removed and an old `path`
    is left as it was. OSError names `path`, not the temporary name."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:  # name the output the user asked for, not our temporary name
        raise OSError(exc.errno, exc.strerror, os.fspath(target)) from exc
    try:
        os.close(fd)
        write(temp)
        # mkstemp makes the file 0600; the output gets the mode a plain open() would give it
        # (0644 under umask 022), or keeps the mode of the file it replaces.
        os.chmod(temp, _mode_for(target))
        with open(temp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temp, target)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
