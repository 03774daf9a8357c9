"""``vestige bench``: speed as ratios against a baseline measured in the same process and run.

Each benchmark returns a baseline and a candidate callable; both get a warm-up and then the median of
``repeats`` timings. ``ratio`` is candidate/baseline for overheads (lower is better, e.g. hook caching vs
a plain forward, target <= 1.15) and baseline/candidate for speed-ups (higher is better, e.g. batched vs
naive, target >= 3). Entries register with ``@benchmark``, one module per topic in
``analyses/bench/entries/``; ``analyses.bench.suite`` imports them and runs them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import pandas as pd
import torch

from probes.results import Result


@dataclass(frozen=True)
class BenchResult(Result):
    name: str
    ratio: float
    target: float
    baseline_s: float
    candidate_s: float
    device: str
    higher_is_better: bool
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["passed"] = self.passed
        return d


@dataclass(frozen=True)
class Case:
    """What a benchmark hands the harness: two callables to time, and what they measure."""

    baseline: Callable[[], object]
    candidate: Callable[[], object]
    detail: str = ""
    # The baseline's time is multiplied by this: a baseline timed on a sample, extrapolated to the whole.
    baseline_scale: float = 1.0


class BenchContext:
    """Shared state for benchmarks (the model is loaded once for all of them)."""

    def __init__(
        self,
        model_spec: str = "smollm2-135m",
        device: str | None = None,
        quick: bool = False,
        load: Callable[[], Any] | None = None,
    ):
        """``load``: how to load the model (e.g. the CLI's, with its device map and dtype); by default
        ``load_model(model_spec, device=device)``."""
        self.model_spec, self._device, self.quick, self._load = model_spec, device, quick, load

    @cached_property
    def model(self):
        from probes.model import load_model

        return self._load() if self._load is not None else load_model(self.model_spec, device=self._device)

    @property
    def device(self) -> str:
        return str(self._device) if self._device is not None else str(self.model.device)

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()


@dataclass(frozen=True)
class Benchmark:
    name: str
    target: float
    higher_is_better: bool
    setup: Callable[[BenchContext], Case]


BENCHMARKS: dict[str, Benchmark] = {}


def benchmark(name: str, target: float, higher_is_better: bool = False):
    """Register ``setup(ctx) -> Case`` as a benchmark."""

    def deco(setup: Callable[[BenchContext], Case]) -> Callable[[BenchContext], Case]:
        BENCHMARKS[name] = Benchmark(name, target, higher_is_better, setup)
        return setup

    return deco


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int, sync: Callable[[], None]) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run_case(bench: Benchmark, ctx: BenchContext, repeats: int = 5, warmup: int = 1) -> BenchResult:
    case = bench.setup(ctx)
    # Interleave: baseline, candidate, baseline, candidate ... so that drift hits both alike.
    base_t, cand_t = [], []
    for fn in (case.baseline, case.candidate):
        for _ in range(warmup):
            fn()
    for _ in range(repeats):
        base_t.append(median_seconds(case.baseline, 1, 0, ctx.sync))
        cand_t.append(median_seconds(case.candidate, 1, 0, ctx.sync))
    b, c = statistics.median(base_t) * case.baseline_scale, statistics.median(cand_t)
    ratio = b / c if bench.higher_is_better else c / b
    return BenchResult(bench.name, ratio, bench.target, b, c, ctx.device, bench.higher_is_better, case.detail)


def table(results: list[BenchResult]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "benchmark": r.name,
                "ratio": round(r.ratio, 3),
                "target": ("<= " if not r.higher_is_better else ">= ") + str(r.target),
                "baseline_s": round(r.baseline_s, 4),
                "candidate_s": round(r.candidate_s, 4),
                "device": r.device,
                "passed": r.passed,
            }
            for r in results
        ]
    )
