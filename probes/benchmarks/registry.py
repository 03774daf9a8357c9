"""The benchmarks ``vestige audit --benchmark`` reads: each name's forget split and the retain items that
join the audit's control pool."""

from __future__ import annotations

from pathlib import Path

from probes.benchmarks.muse import load_muse_knowmem, load_muse_verbmem
from probes.benchmarks.tofu import load_tofu, tofu_file
from probes.data import QA, Concept
from probes.errors import ConceptFileError

BENCHMARKS = ("tofu", "muse-knowmem", "muse-verbmem")
DEFAULT_SPLITS = {"tofu": "forget10", "muse-knowmem": "forget_qa", "muse-verbmem": "forget"}
TOFU_RETAIN = ("retain_perturbed", "retain90", "retain95", "retain99")


def load_benchmark(name: str, path: str | Path, split: str | None = None) -> tuple[Concept, list[QA]]:
    """The forget ``split`` of benchmark ``name`` (``BENCHMARKS``) read from ``path``, and the benchmark's
    retain items found beside it (TOFU: the first of ``TOFU_RETAIN`` in the folder; MUSE knowmem:
    ``retain_qa``; none for a single file or for verbmem)."""
    if name not in BENCHMARKS:
        raise ConceptFileError(
            f"unknown benchmark {name!r}",
            f"the benchmarks vestige reads are {BENCHMARKS}",
            "pick one of them",
        )
    split = split or DEFAULT_SPLITS[name]
    folder = Path(path).expanduser()
    retain: list[QA] = []
    if name == "tofu":
        concept = load_tofu(folder, split)
        if folder.is_dir():
            for r in TOFU_RETAIN:
                try:
                    tofu_file(folder, r)
                except ConceptFileError:
                    continue
                retain = list(load_tofu(folder, r).qa)
                break
    elif name == "muse-knowmem":
        concept = load_muse_knowmem(folder, split)
        if folder.is_dir() and split.startswith("forget"):
            try:
                retain = list(load_muse_knowmem(folder, split.replace("forget", "retain", 1)).qa)
            except ConceptFileError:
                retain = []
    else:
        concept = load_muse_verbmem(folder, split)
    return concept, retain
