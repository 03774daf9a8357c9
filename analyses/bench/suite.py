"""Load every benchmark entry and run the chosen ones."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from tqdm.auto import tqdm

from analyses.bench.harness import BENCHMARKS, BenchContext, BenchResult, run_case
from probes.errors import VestigeError
from probes.results import write_json


def load_entries() -> None:
    """Import every module of ``analyses.bench.entries`` (each registers its benchmarks)."""
    package = importlib.import_module("analyses.bench.entries")
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        importlib.import_module(f"{package.__name__}.{info.name}")


def names() -> list[str]:
    """The names of all registered benchmarks."""
    load_entries()
    return list(BENCHMARKS)


def run_benchmarks(
    out: str | Path | None = None,
    names: list[str] | None = None,
    *,
    ctx: BenchContext | None = None,
    repeats: int = 5,
    progress: bool = True,
) -> list[BenchResult]:
    """Run the registered benchmarks (all, or ``names``), write ``bench.json`` into ``out``."""
    load_entries()
    ctx = ctx or BenchContext()
    chosen = names or list(BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        raise VestigeError(
            f"unknown benchmarks {unknown}",
            None,
            f"choose among {', '.join(BENCHMARKS)}",
        )
    results = [
        run_case(BENCHMARKS[n], ctx, repeats=repeats)
        for n in tqdm(chosen, desc="bench", disable=not progress)
    ]
    if out is not None:
        write_json(Path(out) / "bench.json", [r.to_dict() for r in results])
    return results
