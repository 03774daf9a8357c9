"""Peak memory (probes/memory.py) and the audit's timings.json: each stage's seconds and peak memory, the
models' parameter bytes, and a stage read from the stage cache recorded as cached (issue #21)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from probes.memory import parameter_bytes, peak_memory

ROOT = Path(__file__).resolve().parent.parent

MB = 2**20
N_200MB = 50_000_000  # float32 numbers: 200 MB (torch.ones touches every page, so RSS holds all of it)

# RSS is measured in a fresh process: in a long-lived one (a test session that has loaded models) the C
# heap keeps memory freed earlier, and a new 200 MB tensor can be carved out of it without the RSS moving.
_SCENARIOS = """
import json, sys, time
import torch
import probes.memory as memory
from probes.memory import peak_memory

def hold(seconds=0.0):
    x = torch.ones(N)
    if seconds:
        time.sleep(seconds)
    assert float(x[-1]) == 1.0
    del x

def row(peak):
    return {"bytes": peak.bytes, "start": peak.start_bytes, "method": peak.method, "kind": peak.kind,
            "seconds": peak.seconds}

out = {}
with peak_memory("cpu") as peak:
    hold()
out["spike"], out["rss_after"] = row(peak), memory.rss_bytes()
with peak_memory("cpu") as peak:
    torch.ones(1000).sum()
out["after_spike"] = row(peak)
with peak_memory("cpu") as outer:
    with peak_memory("cpu") as inner:
        hold()
    torch.ones(1000).sum()
out["outer"], out["inner"] = row(outer), row(inner)
memory._CLEAR_REFS = "/no/such/folder/clear_refs"
with peak_memory("cpu") as peak:
    hold(seconds=0.2)
out["sampled"] = row(peak)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def measured() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    run = subprocess.run(
        [sys.executable, "-c", f"N = {N_200MB}\n" + _SCENARIOS], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_peak_memory_sees_a_200mb_tensor_that_is_gone_by_the_end(measured):
    spike = measured["spike"]
    assert spike["kind"] == "rss" and spike["method"] in ("vmhwm", "sampled") and spike["seconds"] > 0
    assert spike["bytes"] - spike["start"] >= 190 * MB, spike
    # the tensor was freed inside the block: what is resident now is well under the peak
    assert measured["rss_after"] < spike["bytes"] - 150 * MB


def test_a_block_after_a_spike_does_not_report_the_spike(measured):
    """The peak is the block's own, not the process lifetime's (what ru_maxrss would give)."""
    assert measured["after_spike"]["bytes"] < measured["spike"]["bytes"] - 150 * MB, measured


def test_the_sampling_fallback_sees_the_tensor_where_the_peak_cannot_be_reset(measured):
    sampled = measured["sampled"]
    assert sampled["method"] == "sampled" and sampled["bytes"] - sampled["start"] >= 190 * MB, sampled


def test_an_enclosing_block_keeps_the_peak_of_the_block_inside_it(measured):
    inner, outer = measured["inner"], measured["outer"]
    assert inner["bytes"] - inner["start"] >= 190 * MB, inner
    assert outer["bytes"] >= inner["bytes"] and outer["bytes"] - outer["start"] >= 190 * MB, outer


def test_peak_memory_in_this_process_is_a_result():
    with peak_memory("cpu") as peak:
        torch.ones(1000).sum()
    d = peak.to_dict()
    assert d["kind"] == "rss" and d["bytes"] == peak.bytes >= peak.start_bytes > 0 and "_devices" not in d


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peak_is_the_allocators_peak_of_the_block():
    with peak_memory("cuda") as peak:
        x = torch.ones(N_200MB, device="cuda")
        del x
    assert peak.kind == "cuda_allocated"
    assert peak.bytes - peak.start_bytes >= 200_000_000
    with peak_memory("cuda") as after:
        torch.ones(10, device="cuda").sum()
    assert after.bytes < peak.bytes - 150 * MB


def test_parameter_bytes_count_a_tied_weight_once():
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    tied = torch.nn.ModuleDict({"emb": emb, "head": head})
    assert parameter_bytes(tied) == 10 * 4 * 4
    assert parameter_bytes(tied.to(torch.bfloat16)) == 10 * 4 * 2


_MKL = """
import ctypes, json, os, sys
import probes  # first, as the CLI and a script do: vestige's process settings precede torch
import torch
from probes.memory import release_free_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
mkl = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
in_use = lambda: libc.mallinfo2().uordblks
release_free_memory()
before = in_use()
torch.manual_seed(0)
for n in (57, 200, 513, 1000, 2048):  # products of several shapes: MKL's cache keeps a buffer for each
    a, w = torch.randn(n, 576), torch.randn(1536, 576, requires_grad=True)
    (a @ w.T).sum().backward()
del a, w
import gc; gc.collect(); libc.malloc_trim(0)
print(json.dumps({"cache_off": mkl.mkl_serv_get_fast_mm_status(), "kept": in_use() - before}))
"""


def _mkl_run(keep_cache: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_DISABLE_FAST_MM", "VESTIGE_MKL_CACHE")}
    if keep_cache:
        env["VESTIGE_MKL_CACHE"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", _MKL], capture_output=True, text=True, env=env, cwd=ROOT, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    not (sys.platform == "linux" and torch.backends.mkl.is_available()), reason="needs glibc and torch's MKL"
)
def test_mkl_keeps_no_buffer_cache_unless_the_user_asks():
    """Importing vestige before torch turns MKL's buffer cache off (probes/environment.py): matrix products
    of five shapes leave the heap in use where it was. With ``VESTIGE_MKL_CACHE=1`` the cache stays on: the
    same products then leave MKL's buffers on the heap (9 MiB on a 2-core CPU)."""
    off = _mkl_run(keep_cache=False)
    assert off["cache_off"] == 1
    assert off["kept"] < 1 * MB
    on = _mkl_run(keep_cache=True)
    assert on["cache_off"] == 0
    assert on["kept"] > 2 * MB  # MKL's cache holds its buffers


def test_audit_writes_each_stages_seconds_and_peak_memory_and_marks_cached_stages(tmp_path):
    """A cheap audit of a tiny seeded Llama (3 layers, width 64): timings.json has every stage with its
    seconds and peak RSS (at least the two models' weights, which are resident), the parameter bytes of
    both models, and equals ``AuditResult.timings``; a second run over the same folder reads every stage
    from the cache and records each as cached, with no peak."""
    from test_architectures import CONCEPT, TINY_AUDIT, tiny_model

    from analyses.audit import AuditConfig, audit

    base = tiny_model("llama3")
    unlearned = base.copy()
    with torch.no_grad():
        unlearned.W_out(1)[3].zero_()
    # a seeded model knows nothing: attack_when_nothing_to_forget runs every stage all the same
    cfg = AuditConfig.quick(
        **TINY_AUDIT, probe_dataset="", quantize_bits=0, attack_when_nothing_to_forget=True
    )
    result = audit(base, unlearned, CONCEPT, config=cfg, out=tmp_path, progress=False)
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert timings == json.loads(json.dumps(result.timings))
    n_bytes = sum(p.numel() * 4 for p in base.hf.parameters())
    assert timings["parameter_bytes"] == {"base": n_bytes, "unlearned": n_bytes}
    assert timings["memory_kind"] == "rss" and timings["device"] == "cpu" and timings["dtype"] == "float32"
    stages = timings["stages"]
    assert list(stages)[:3] == ["behaviour", "relearn", "fact_relearn"] and "traces" in stages
    assert "probes" not in stages  # off (probe_dataset="")
    for name, row in stages.items():
        assert row["cached"] is False, name
        assert row["seconds"] >= 0 and row["peak_bytes"] >= 2 * n_bytes, (name, row)
        assert row["peak_mb"] == pytest.approx(row["peak_bytes"] / MB, abs=0.06)
        # what the stage added: its peak over what was resident when it began (both models at least)
        assert row["start_mb"] >= 2 * n_bytes / MB and row["working_mb"] >= 0, (name, row)
        assert row["working_mb"] == pytest.approx(row["peak_mb"] - row["start_mb"], abs=0.11)
    assert stages["relearn"]["seconds"] > 0
    assert timings["total_seconds"] >= sum(r["seconds"] for r in stages.values()) - 0.05
    assert set(timings["attacks"]) == set(result.attacks_frame()["attack"])
    frame = result.timings_frame()
    assert list(frame["stage"]) == list(stages) and set(frame["memory_kind"]) == {"rss"}

    again = audit(base, unlearned, CONCEPT, config=cfg, out=tmp_path, progress=False)
    cached = json.loads((tmp_path / "timings.json").read_text())["stages"]
    assert set(cached) == set(stages)
    assert all(r["cached"] is True and r["peak_bytes"] is None for r in cached.values()), cached
    assert all(r["working_mb"] is None for r in cached.values()), cached
    assert again.verdict == result.verdict
    # nothing to forget on a seeded model, yet every stage ran as asked (attack_when_nothing_to_forget)
    assert any("nothing to forget" in r for r in result.reasons)
    assert result.extra["config"]["relearn_steps"] == 1
    assert {c.family: c.call for c in result.traces}["relearning"] != "not measured"
    assert not any("nothing to forget, so the attacks" in n for n in result.notes)
