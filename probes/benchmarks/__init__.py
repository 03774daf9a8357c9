"""Loaders that turn published unlearning benchmarks into vestige ``Concept``s, one file per benchmark.

Each keeps every field the benchmark defines in ``QA.record`` (so nothing is lost: ``to_records`` gives the
rows back as they were read) and reads local files only (JSON, JSON lines or parquet); nothing is
downloaded.
"""

from probes.benchmarks.files import read_records, to_records
from probes.benchmarks.muse import load_muse_knowmem, load_muse_privleak, load_muse_verbmem
from probes.benchmarks.registry import BENCHMARKS, load_benchmark
from probes.benchmarks.tofu import TOFU_SPLITS, load_tofu

__all__ = [
    "BENCHMARKS",
    "TOFU_SPLITS",
    "load_benchmark",
    "load_muse_knowmem",
    "load_muse_privleak",
    "load_muse_verbmem",
    "load_tofu",
    "read_records",
    "to_records",
]
