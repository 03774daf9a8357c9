"""Chunked loops that bound peak memory and retry with smaller chunks after an out-of-memory error."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

OutOfMemoryError = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def run_chunked(fn: Callable[[int, int], None], n: int, chunk: int, *, min_chunk: int = 1) -> int:
    """Call ``fn(start, stop)`` over ``[0, n)`` in slices of at most ``chunk`` items. When a slice raises
    ``torch.OutOfMemoryError`` (CUDA or another accelerator), the chunk is halved and the same slice is
    tried again (``fn`` must write its results for a slice idempotently, e.g. into preallocated tensors),
    down to ``min_chunk``, below which the error propagates. Returns the chunk size in use at the end, so a
    caller with several loops (one per layer) keeps the size that fits."""
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    start = 0
    while start < n:
        stop = min(start + chunk, n)
        try:
            fn(start, stop)
        except OutOfMemoryError:
            if chunk <= min_chunk:
                raise
            chunk = max(min_chunk, chunk // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            warnings.warn(f"out of memory: retrying with chunks of {chunk}", RuntimeWarning, stacklevel=2)
            continue
        start = stop
    return chunk
