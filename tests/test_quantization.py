"""The quantization attack (``analyses.quantization``): round-to-nearest against a hand computation, the
weights restored bitwise, the embedded model's own Q4_1 grid, and the attack on a real GA run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from analyses.audit import AuditConfig
from analyses.quantization import QuantizationConfig, quantizable, quantize_rtn, quantized
from probes.edits import weights_checksum


def _hand_rtn(w: np.ndarray, bits: int, group: int, symmetric: bool) -> np.ndarray:
    """Round-to-nearest, one group at a time, in plain Python floats (ties to even, as numpy rounds)."""
    out = np.empty_like(w, dtype=np.float64)
    for r in range(w.shape[0]):
        for start in range(0, w.shape[1], group):
            xs = [float(v) for v in w[r, start : start + group]]
            if symmetric:
                top = 2 ** (bits - 1) - 1
                d = max(abs(v) for v in xs) / top
                qs = [d * min(max(round(v / d), -top - 1), top) if d > 0 else v for v in xs]
            else:
                lo, hi = min(xs), max(xs)
                d = (hi - lo) / (2**bits - 1)
                qs = [lo + d * min(max(round((v - lo) / d), 0), 2**bits - 1) if d > 0 else v for v in xs]
            out[r, start : start + group] = qs
    return out


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits, group", [(4, 8), (4, 5), (3, 16), (8, 4)])
def test_rtn_equals_a_hand_computation(bits, group, symmetric):
    g = torch.Generator().manual_seed(bits * 100 + group)
    w = torch.randn(6, 22, generator=g)  # 22 is no multiple of 8, 5 or 16: a shorter last group
    w[2, :8] = 0.25  # a constant group is kept as it is
    got = quantize_rtn(w, bits, group, symmetric=symmetric)
    want = _hand_rtn(w.numpy(), bits, group, symmetric)
    assert got.shape == w.shape and got.dtype == w.dtype
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)
    for r in range(w.shape[0]):  # at most 2^bits values per group
        for s in range(0, 22, group):
            assert len(torch.unique(got[r, s : s + group])) <= 2**bits
    if not symmetric:  # the grid keeps each group's minimum and maximum: quantizing twice changes nothing
        np.testing.assert_allclose(quantize_rtn(got, bits, group).numpy(), got.numpy(), atol=1e-6)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="2 to 8 bits"):
        QuantizationConfig(bits=1)
    with pytest.raises(ValueError, match="at least one weight"):
        quantize_rtn(torch.zeros(2, 4), 4, 0)
    with pytest.raises(ValueError, match="quantize_bits is 9"):
        AuditConfig(quantize_bits=9)
    with pytest.raises(ValueError, match="quantize_keep"):
        AuditConfig(quantize_keep=0.0)
    assert AuditConfig(quantize_bits=0).quantize_bits == 0  # off


@pytest.mark.parametrize("name", ["gpt2", "smol"])
def test_quantized_rounds_every_block_matrix_and_restores_bitwise(name, request):
    model = request.getfixturevalue(name)
    _ = model.bridge  # the bridge's own submodules (GPT-2's split q / k / v views) are no weights to round
    before = weights_checksum(model)
    views = quantizable(model)
    # GPT-2: c_attn, c_proj, c_fc, mlp c_proj per block; Llama: q, k, v, o, gate, up, down per block
    assert len(views) == model.cfg.n_layers * (4 if name == "gpt2" else 7)
    assert all(v.shape[-1] in (model.cfg.d_model, model.cfg.d_mlp) for _, v in views)
    ids, mask = model.tokenize(["The capital of France is"])
    clean = model.forward(ids, mask).logits
    with pytest.raises(RuntimeError, match="inside"):
        with quantized(model, QuantizationConfig(4, 64)) as info:
            assert info.n_tensors == len(views) and 0 < info.relative_error < 0.5
            _, w = views[0]
            assert len(torch.unique(w[0, :64])) <= 16
            assert not torch.equal(model.forward(ids, mask).logits, clean)
            raise RuntimeError("inside")
    assert weights_checksum(model) == before
    assert torch.equal(model.forward(ids, mask).logits, clean)


def test_the_embedded_smollm2_is_a_fixed_point_of_q4_1_in_groups_of_32(smol):
    """The GGUF stores every block matrix as Q4_1 (32 weights per block): rounding the dequantized weights
    to 4 bits in groups of 32 gives them back (relative error under 1e-6), while groups of 64 move them by
    about 8%. So an unlearned copy of it is rounded back towards the base at 32."""
    with quantized(smol, QuantizationConfig(4, 32)) as at32:
        pass
    with quantized(smol, QuantizationConfig(4, 64)) as at64:
        pass
    assert at32.relative_error < 1e-6 and at64.relative_error > 0.05


@pytest.mark.slow
def test_quantization_brings_back_what_ga_unlearned_on_smollm2(smol, ga_mozart):
    """GA on a concept the project never tuned on (Mozart), trained on half its QA: 4-bit round-to-nearest
    in groups of 32 brings the concept's answers back, trained and held-out items alike (measured: trained
    0.18 -> 0.91, held-out 0.50 -> 1.00), while the base keeps its own; the audit's quantization stage
    picks 32 on the base (64 and 128 cost the base over 10% of its accuracy) and the attack leaves the
    unlearned weights as they were."""
    from analyses.audit.traces import item_sets, quantized_base, quantized_values
    from probes.data import load_concept, load_floor
    from probes.qa import score_qa

    concept = load_concept(name="Wolfgang Amadeus Mozart")
    run, trained, held = ga_mozart
    model = run.model
    full = score_qa(model, trained).accuracy, score_qa(model, held).accuracy
    assert full[0] <= 0.3 and full[1] <= 0.6
    before = weights_checksum(model)
    with quantized(model, QuantizationConfig(4, 32)):
        q = score_qa(model, trained).accuracy, score_qa(model, held).accuracy
    assert weights_checksum(model) == before
    assert q[0] >= full[0] + 0.5 and q[1] >= 0.9, (full, q)

    _, heldout = concept.split(0.5)
    sets = item_sets(smol, heldout, list(concept.unrelated_qa), load_floor(), limit=8, floor_limit=16)
    base_side = quantized_base(smol, sets, bits=4, groups=(128, 64, 32), keep=0.9)
    assert [s["group_size"] for s in base_side["search"]] == [128, 64, 32]
    assert base_side["group_size"] == 32 and base_side["search"][0]["accuracy"] < 0.9
    got = quantized_values(model, sets, bits=4, group_size=32)
    assert np.mean(got["forget"]) >= 0.9 and len(got["forget_completions"]) == len(heldout.qa)
    assert weights_checksum(model) == before
    json.dumps(got)  # JSON-ready for the stage cache
