"""View arithmetic shared by the torch readers: how a tensor's elements (a shape and byte
strides over a storage) become the fewest segments the C engine streams in row-major order."""

from __future__ import annotations

from .._core import MAX_DIMS, Segment
from ..errors import FormatError


def numel(shape: tuple[int, ...] | list[int]) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def merged_dims(shape: tuple[int, ...] | list[int], byte_strides: tuple[int, ...] | list[int]) -> list[tuple[int, int]]:
    """(size, byte stride) per dimension with unit dimensions dropped and every dimension that
    is contiguous with the next merged into it: a plain tensor becomes one dimension, a column
    slice (rows, row bytes)."""
    merged: list[tuple[int, int]] = []
    for d, s in reversed([(d, s) for d, s in zip(shape, byte_strides) if d != 1]):
        if merged and s == merged[-1][0] * merged[-1][1]:
            merged[-1] = (merged[-1][0] * d, merged[-1][1])
        else:
            merged.append((d, s))
    merged.reverse()
    return merged


def is_contiguous(dims: list[tuple[int, int]], itemsize: int) -> bool:
    return not dims or (len(dims) == 1 and dims[0][1] == itemsize)


def segment(file: int, offset: int, shape: tuple[int, ...] | list[int], byte_strides: tuple[int, ...] | list[int],
            itemsize: int, complex_unit: int | None = None) -> Segment:
    """The segment streaming the view at `offset` in row-major order: a plain run when it is
    contiguous, else a strided walk over its merged dimensions. `complex_unit`: the size of one
    part of a complex element, when the parts are byte-swapped on their own; a strided walk then
    gains an inner dimension over the two halves (a run is swapped per part by the job's
    itemsize). Raises FormatError beyond MAX_DIMS dimensions."""
    dims = merged_dims(shape, byte_strides)
    if is_contiguous(dims, itemsize):
        return Segment(file=file, offset=offset, nbytes=numel(shape) * itemsize)
    if complex_unit is not None and complex_unit != itemsize:
        dims.append((itemsize // complex_unit, complex_unit))
    if len(dims) > MAX_DIMS:
        raise FormatError(f"view has {len(dims)} non-mergeable dimensions; at most {MAX_DIMS} are supported")
    return Segment(file=file, offset=offset, shape=tuple(d for d, _ in dims), strides=tuple(s for _, s in dims))
