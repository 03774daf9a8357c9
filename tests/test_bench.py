"""The bench harness: ratios against a same-run baseline, bench.json schema."""

from __future__ import annotations

import json
import time

import pytest

from analyses.bench.harness import BENCHMARKS, BenchContext, Case, benchmark
from analyses.bench.suite import run_benchmarks


def test_harness_ratio_and_schema(tmp_path):
    @benchmark("_test_sleep_ratio", target=1.5)
    def _sleepy(ctx):
        return Case(lambda: time.sleep(0.01), lambda: time.sleep(0.02), "sleep 10 ms vs 20 ms")

    try:
        ctx = BenchContext("gpt2-seeded", "cpu")  # the case needs no model: none is loaded
        res = run_benchmarks(tmp_path, ["_test_sleep_ratio"], ctx=ctx, repeats=3, progress=False)
    finally:
        BENCHMARKS.pop("_test_sleep_ratio")
    assert "model" not in ctx.__dict__
    assert 1.6 < res[0].ratio < 2.6
    assert not res[0].passed
    rows = json.loads((tmp_path / "bench.json").read_text())
    assert set(rows[0]) >= {"name", "ratio", "target", "baseline_s", "candidate_s", "device"}


@pytest.mark.slow
def test_hook_overhead_bench_runs_on_smollm2(tmp_path, smol):
    ctx = BenchContext("smollm2-135m", "cpu")
    ctx.__dict__["model"] = smol
    res = run_benchmarks(tmp_path, ["hook_overhead_resid_cache"], ctx=ctx, repeats=3, progress=False)
    assert res[0].baseline_s > 0 and res[0].candidate_s > 0
    # Not a timed assertion: a sanity bound so that a pathological slowdown (e.g. caching every hook) shows.
    assert res[0].ratio < 3.0


@pytest.mark.slow
def test_lean_relearning_bench_runs_and_reports_memory(tmp_path, smol):
    """The lean-vs-full fact relearning entry on SmolLM2 (quick: 3 steps): both sides run, the model comes
    back bitwise, and the detail carries both peak-memory multiples (host RSS: in this long-lived test
    process freed heap can hide growth, so they are only read, not compared) and the numbers each
    trains: the rank-8 LoRA under 2% of the model's."""
    import re

    from probes.edits import weights_checksum

    before = weights_checksum(smol)
    ctx = BenchContext("smollm2-135m", "cpu", quick=True)
    ctx.__dict__["model"] = smol
    res = run_benchmarks(tmp_path, ["lean_vs_full_fact_relearning"], ctx=ctx, repeats=1, progress=False)
    assert weights_checksum(smol) == before
    full, lean = (float(x) for x in re.findall(r"(\d+\.\d+)x", res[0].detail))
    assert full >= 0 and lean >= 0 and res[0].baseline_s > 0 and res[0].candidate_s > 0
    n_all, n_lora = (int(x) for x in re.search(r"full (\d+), lean (\d+)", res[0].detail).groups())
    assert n_all == 134515008 and 0 < n_lora < 0.02 * n_all


def test_bench_and_demo_take_the_model_loading_options(tmp_path, monkeypatch):
    """``vestige bench`` loads its model through the CLI's loader (``--device-map``, ``--dtype``, ...), as
    ``vestige demo`` does: the map reaches ``load_model``."""
    from types import SimpleNamespace

    import probes.model as M
    from analyses.cli import main

    loaded = {}
    fake = SimpleNamespace(device="cpu")

    def fake_load(spec, **kw):
        loaded.update(spec=spec, **kw)
        return fake

    monkeypatch.setattr(M, "load_model", fake_load)
    ctx = BenchContext("gpt2-seeded", None, load=lambda: M.load_model("gpt2-seeded", device_map={"": "cpu"}))
    assert ctx.model is fake and loaded == {"spec": "gpt2-seeded", "device_map": {"": "cpu"}}

    @benchmark("_test_reads_the_model", target=1.0)
    def _reads(ctx):
        assert ctx.model is fake
        return Case(lambda: None, lambda: None, "reads the model")

    try:
        argv = ["bench", "--model", "gpt2-seeded", "--device-map", '{"": "cpu"}', "--dtype", "float32"]
        argv += ["--only", "_test_reads_the_model", "--repeats", "1", "--out", str(tmp_path / "b")]
        assert main(argv) == 0
    finally:
        BENCHMARKS.pop("_test_reads_the_model")
    assert loaded["spec"] == "gpt2-seeded" and loaded["device_map"] == {"": "cpu"}
    assert loaded["dtype"] == "float32"
    assert (tmp_path / "b" / "bench.json").exists()
