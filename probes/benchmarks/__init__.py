"""Loaders that turn published unlearning benchmarks into vestige ``Concept``s, one file per benchmark.

Each keeps every field the benchmark defines in ``QA.record`` (so nothing is lost: ``to_records`` gives the
rows back as they were read) and reads local files only (JSON, JSON lines, parquet, Arrow, a ``datasets``
``save_to_disk`` folder, or a HuggingFace hub-cache snapshot); nothing is downloaded.
"""

from probes.benchmarks.conceptvectors import (
    concept_vector,
    conceptvectors_model,
    load_conceptvectors,
    load_conceptvectors_all,
)
from probes.benchmarks.files import local_root, read_records, to_records
from probes.benchmarks.muse import load_muse_knowmem, load_muse_privleak, load_muse_verbmem
from probes.benchmarks.registry import BENCHMARKS, DEFAULT_SPLITS, load_benchmark
from probes.benchmarks.rwku import RWKU_SPLITS, load_rwku, rwku_targets
from probes.benchmarks.tofu import TOFU_SPLITS, load_tofu, tofu_metrics
from probes.benchmarks.wmdp import WMDP_CORPORA, WMDP_SPLITS, load_wmdp, load_wmdp_corpus

__all__ = [
    "BENCHMARKS",
    "DEFAULT_SPLITS",
    "RWKU_SPLITS",
    "TOFU_SPLITS",
    "WMDP_CORPORA",
    "WMDP_SPLITS",
    "concept_vector",
    "conceptvectors_model",
    "load_benchmark",
    "load_conceptvectors",
    "load_conceptvectors_all",
    "load_muse_knowmem",
    "load_muse_privleak",
    "load_muse_verbmem",
    "load_rwku",
    "load_tofu",
    "load_wmdp",
    "load_wmdp_corpus",
    "local_root",
    "tofu_metrics",
    "read_records",
    "rwku_targets",
    "to_records",
]
