"""Benchmark entries; each module registers its cases with ``analyses.bench.benchmark``."""

from analyses.benches import hooks  # noqa: F401
from analyses.benches import concepts  # noqa: F401
from analyses.benches import heads  # noqa: F401
from analyses.benches import ches_probes  # noqa: F401
