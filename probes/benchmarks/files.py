"""Reading a benchmark's rows from local JSON, JSON-lines or parquet files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from probes.data import QA
from probes.errors import ConceptFileError

SUFFIXES = (".json", ".jsonl", ".parquet")


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The rows of ``path``: a JSON array of objects, JSON lines (one object per line, what TOFU ships as
    ``.json``), or a parquet file (through pandas)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConceptFileError(f"benchmark file {str(path)!r} does not exist", None, "check the path")
    if path.suffix == ".parquet":
        import pandas as pd

        try:
            frame = pd.read_parquet(path)
        except (ImportError, ValueError, OSError) as e:
            raise ConceptFileError(
                f"cannot read the parquet file {str(path)!r}",
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                "install pyarrow (pip install pyarrow), or convert the file to JSON lines",
            ) from e
        return [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
        rows = data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ConceptFileError(
                    f"{path}: line {n} is not JSON",
                    f"{e.msg} at column {e.colno}",
                    "the file must be a JSON array of objects or one JSON object per line",
                ) from e
    bad = [i for i, r in enumerate(rows) if not isinstance(r, dict)]
    if bad:
        raise ConceptFileError(
            f"{path}: row {bad[0]} is not a JSON object",
            f"found {type(rows[bad[0]]).__name__}",
            "each row is an object of the benchmark's fields",
        )
    return rows


def _plain(value: Any) -> Any:
    """numpy values from parquet as plain Python (arrays of strings become lists)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def require(rows: Sequence[dict], keys: Sequence[str], where: str, benchmark: str) -> None:
    """Every row has ``keys`` as non-empty strings; otherwise a clear error naming the first row."""
    for i, row in enumerate(rows):
        missing = [k for k in keys if not isinstance(row.get(k), str) or not row[k].strip()]
        if missing:
            raise ConceptFileError(
                f"{where}: row {i} has no {missing}",
                f"a {benchmark} row holds {list(keys)}; this one has {sorted(row)}"[:300],
                f"point at a {benchmark} file (or pass the benchmark whose format it is)",
            )


def to_records(items: Sequence[QA]) -> list[dict[str, Any]]:
    """The benchmark rows the items were read from, every field as read."""
    missing = [i for i, q in enumerate(items) if q.record is None]
    if missing:
        raise ConceptFileError(
            f"item {missing[0]} was not read from a benchmark file",
            "only items from probes.benchmarks carry their benchmark row",
            "load the items with a benchmark loader (e.g. load_tofu)",
        )
    return [dict(q.record) for q in items]
