"""The benchmarks ``vestige audit --benchmark`` reads: each name's forget split and the retain items that
join the audit's control pool.

Split strings (``--split``): TOFU and MUSE name a split file (``forget10``, ``forget_qa``); RWKU names a
probe set, optionally after its target (``"forget_level2"``, ``"Stephen King/forget"``, or just ``"Stephen
King"`` for its forget probes; ``probes.benchmarks.rwku.parse_rwku_split``); WMDP names a configuration
(``wmdp-bio``); ConceptVectors names a concept, optionally after the release file
(``"llama2-7b_concepts_dev/Poland"``, or ``"Poland"`` when ``--data`` is the file)."""

from __future__ import annotations

from pathlib import Path

from probes.benchmarks.conceptvectors import load_conceptvectors
from probes.benchmarks.files import local_root
from probes.benchmarks.muse import load_muse_knowmem, load_muse_verbmem
from probes.benchmarks.rwku import RWKU_GROUPS, load_rwku, parse_rwku_split
from probes.benchmarks.tofu import load_tofu, tofu_file
from probes.benchmarks.wmdp import load_wmdp
from probes.data import QA, Concept
from probes.errors import ConceptFileError

BENCHMARKS = ("tofu", "muse-knowmem", "muse-verbmem", "rwku", "wmdp", "conceptvectors")
# conceptvectors has no default: its split names the concept (a file with one concept needs none)
DEFAULT_SPLITS: dict[str, str | None] = {
    "tofu": "forget10",
    "muse-knowmem": "forget_qa",
    "muse-verbmem": "forget",
    "rwku": "forget",
    "wmdp": "wmdp-bio",
    "conceptvectors": None,
}
TOFU_RETAIN = ("retain_perturbed", "retain90", "retain95", "retain99")


def load_benchmark(name: str, path: str | Path, split: str | None = None) -> tuple[Concept, list[QA]]:
    """The forget ``split`` of benchmark ``name`` (``BENCHMARKS``) read from ``path`` (a hub-cache
    repository folder reads its snapshot), and the benchmark's retain items found beside it (TOFU: the
    first of ``TOFU_RETAIN`` in the folder; MUSE knowmem: ``retain_qa``; RWKU: the same target's neighbour
    probes, both levels; none for a single file, verbmem, WMDP and ConceptVectors)."""
    if name not in BENCHMARKS:
        raise ConceptFileError(
            f"unknown benchmark {name!r}",
            f"the benchmarks vestige reads are {BENCHMARKS}",
            "pick one of them",
        )
    given, split = split, split or DEFAULT_SPLITS[name]
    folder = local_root(path)
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
    elif name == "muse-verbmem":
        concept = load_muse_verbmem(folder, split)
    elif name == "rwku":
        target, level = parse_rwku_split(split)
        concept = load_rwku(folder, level, target)
        if folder.is_dir() and level in RWKU_GROUPS["forget"] + ("forget",):
            try:
                retain = list(load_rwku(folder, "neighbor", target).qa)
            except ConceptFileError:
                retain = []
    elif name == "wmdp":
        concept = load_wmdp(folder, given)  # a file's name says its configuration; a folder's default: bio
    else:
        file, _, concept_name = (split or "").rpartition("/")
        concept = load_conceptvectors(folder, concept_name or None, file=file or None)
    return concept, retain
