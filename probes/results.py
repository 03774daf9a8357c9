"""Result plumbing shared by every probe: dict/frame/HTML views and atomic writes."""

from __future__ import annotations

import dataclasses
import html
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch


def to_jsonable(value: Any) -> Any:
    """Convert tensors, arrays, dataclasses and frames into plain JSON types (numbers stay numbers)."""
    if isinstance(value, Result):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, pd.DataFrame):
        return to_jsonable(value.to_dict(orient="records"))
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    if isinstance(value, Path):
        return str(value)
    return value


class Result:
    """Mixin for frozen result dataclasses: ``to_dict()``, ``to_frame()``, ``_repr_html_``."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: to_jsonable(getattr(self, f.name)) for f in dataclasses.fields(self) if f.repr}

    def to_frame(self) -> pd.DataFrame:
        flat = {k: v for k, v in self.to_dict().items() if not isinstance(v, (list, dict))}
        return pd.DataFrame([flat])

    def _repr_html_(self) -> str:
        title = html.escape(type(self).__name__)
        return f"<h4>{title}</h4>" + self.to_frame().to_html(escape=True, max_rows=40)


@contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive lock on the file ``path`` (POSIX ``flock``; a no-op where there is none), held for the
    ``with`` block: two processes that fill the same cache entry (two test workers, two notebooks) fill it
    once, and the second waits, then reads it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Fill a folder that replaces ``path`` only when the block ends without an exception.

    ``with atomic_dir(out) as tmp: ...`` yields a temporary folder beside ``path``; on a clean exit the
    old ``path`` (if any) is removed and the temporary folder renamed to it, so a reader never sees a
    half-written folder and a failed write leaves the old one in place. The temporary folder is always
    cleaned up.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as JSON (tensors and arrays converted, keys stable)."""
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n")
