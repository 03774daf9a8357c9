"""Benchmark entries; each module registers its cases with ``analyses.bench.harness.benchmark``. Every
module here is imported by ``analyses.bench.suite``, so adding a benchmark is adding a file."""
