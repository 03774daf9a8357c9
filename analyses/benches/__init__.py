"""Benchmark entries; each module registers its cases with ``analyses.bench.benchmark``."""

from analyses.benches import (
    ches_probes,  # noqa: F401
    concepts,  # noqa: F401
    heads,  # noqa: F401
    hooks,  # noqa: F401
)
