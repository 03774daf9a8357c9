"""Reading a benchmark's rows from local files: JSON, JSON lines, parquet, Arrow, a dataset saved with
``datasets``' ``save_to_disk``, and the HuggingFace hub cache's snapshot folders. Nothing is downloaded."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from probes.data import QA
from probes.errors import ConceptFileError

SUFFIXES = (".json", ".jsonl", ".parquet")


def local_root(path: str | Path) -> Path:
    """``path``, or, for a repository folder of the HuggingFace hub cache
    (``~/.cache/huggingface/hub/datasets--ORG--NAME``), the snapshot that its ``refs/main`` names (or its
    only snapshot): the folder that holds the dataset's files as the hub lays them out."""
    path = Path(path).expanduser()
    snapshots = path / "snapshots"
    if not (path.name.startswith("datasets--") and snapshots.is_dir()):
        return path
    ref = path / "refs" / "main"
    if ref.is_file() and (snapshots / ref.read_text().strip()).is_dir():
        return snapshots / ref.read_text().strip()
    found = sorted(p.name for p in snapshots.iterdir() if p.is_dir())
    if len(found) == 1:
        return snapshots / found[0]
    raise ConceptFileError(
        f"cannot tell which snapshot of the hub cache folder {str(path)!r} to read",
        f"it has no refs/main and holds {len(found)} snapshots {found[:6]}",
        "pass the snapshot folder itself (snapshots/<hash>), or the dataset's own folder",
    )


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``Dataset.save_to_disk`` (``state.json`` beside Arrow files)
    or ``DatasetDict.save_to_disk`` (``dataset_dict.json`` and one such folder per split)."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def find_split(folder: Path, name: str, split: str | None = None) -> list[Path]:
    """The sources that hold the data set ``name`` under ``folder`` (empty when none does): ``{name}.json``,
    ``.jsonl`` or ``.parquet``; a ``save_to_disk`` folder ``{name}/``; or the hub's parquet shards,
    ``{name}/{split}-*.parquet`` or ``{name}/{split}/*.parquet``. Where the shards come in several splits,
    ``split`` picks one (a clear error lists them otherwise)."""
    for s in SUFFIXES:
        if (folder / f"{name}{s}").is_file():
            return [folder / f"{name}{s}"]
    sub = folder / name
    if is_saved_dataset(sub):
        return [sub]
    if not sub.is_dir():
        return []
    groups: dict[str, list[Path]] = {}
    for f in sorted(sub.glob("*.parquet")):
        groups.setdefault(f.stem.split("-")[0], []).append(f)
    for d in sorted(p for p in sub.iterdir() if p.is_dir()):
        shards = sorted(d.glob("*.parquet"))
        if shards:
            groups.setdefault(d.name, []).extend(shards)
    if len(groups) > 1 and split not in groups:
        raise ConceptFileError(
            f"{str(sub)!r} holds the splits {sorted(groups)}",
            f"the split {split!r} is not one of them" if split else "no split was named",
            f"name one of {sorted(groups)} or point at its files",
        )
    return groups.get(split, []) if len(groups) > 1 else next(iter(groups.values()), [])


def read_sources(sources: Sequence[Path], split: str | None = None) -> list[dict[str, Any]]:
    """The rows of every source in order (the shards of one split read as one table)."""
    return [row for s in sources for row in read_records(s, split)]


def read_records(path: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """The rows of ``path``: a JSON array of objects, JSON lines (one object per line, what TOFU ships as
    ``.json``), a parquet file (through pandas), an Arrow file (the ``datasets`` cache), or a folder written
    by ``save_to_disk`` (a ``DatasetDict``'s ``split``, or its only split)."""
    path = Path(path).expanduser()
    if is_saved_dataset(path):
        return _saved_rows(path, split)
    if not path.is_file():
        raise ConceptFileError(
            f"benchmark file {str(path)!r} does not exist"
            if not path.exists()
            else f"{str(path)!r} is a folder, not a benchmark file",
            None if not path.exists() else "it holds neither a split file nor a save_to_disk dataset",
            "check the path",
        )
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
    if path.suffix == ".arrow":
        return _arrow_rows(path)
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


def _arrow_rows(path: Path) -> list[dict[str, Any]]:
    """An Arrow file as ``datasets`` writes it (the IPC stream format; the file format also reads)."""
    try:
        import pyarrow as pa
    except ImportError as e:
        raise ConceptFileError(
            f"cannot read the Arrow file {str(path)!r}", "pyarrow is not installed", "pip install pyarrow"
        ) from e
    try:
        with pa.memory_map(str(path)) as source:
            try:
                table = pa.ipc.open_stream(source).read_all()
            except pa.ArrowInvalid:
                source.seek(0)
                table = pa.ipc.open_file(source).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        raise ConceptFileError(
            f"cannot read the Arrow file {str(path)!r}",
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            "pass a file written by the datasets library (data-*.arrow), or a JSON / parquet export",
        ) from e
    return table.to_pylist()


def _saved_rows(path: Path, split: str | None) -> list[dict[str, Any]]:
    """The rows of a ``save_to_disk`` folder: its Arrow shards in the order ``state.json`` lists them."""
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
        if split not in splits and len(splits) != 1:
            raise ConceptFileError(
                f"the saved dataset {str(path)!r} holds the splits {splits}",
                f"the split {split!r} is not one of them" if split else "no split was named",
                f"name one of {splits}",
            )
        return _saved_rows(path / (split if split in splits else splits[0]), None)
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    files = [path / f["filename"] for f in state.get("_data_files", [])]
    if not files:
        raise ConceptFileError(f"the saved dataset {str(path)!r} lists no data files", None, "save it again")
    return [row for f in files for row in _arrow_rows(f)]


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
