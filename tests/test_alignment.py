"""Neuron bases: permuting MLP neurons changes nothing the model computes, the audit re-aligns a permuted
copy (so its verdict cannot be gamed that way), and another training run is "not comparable". The same
for attention heads (permuted within a layer, grouped-query groups kept whole)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analyses.audit import AuditConfig, audit, verdict
from analyses.audit.rule import TraceCall, call_vectors
from probes.alignment import (
    HEAD_ARCHITECTURES,
    HeadLayoutError,
    aligned_to,
    basis_agreement,
    head_agreement,
    head_alignment,
    neuron_alignment,
    permute_attention_heads,
    permute_mlp_neurons,
    random_head_permutations,
    random_permutations,
)
from probes.data import QA, Concept
from probes.edits import weights_checksum
from probes.model import load_model
from probes.stats import bootstrap_mean


def _logits(model, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(100, 40000, (2, 12), generator=torch.Generator().manual_seed(seed)).to(model.device)
    with torch.no_grad():
        return model.forward(ids).logits.float()


@pytest.mark.parametrize("name", ["gpt2", pytest.param("smol", marks=pytest.mark.slow)])
def test_permuting_neurons_preserves_the_function_and_alignment_undoes_it(name, request):
    base = request.getfixturevalue(name)
    other = base.copy()
    perms = random_permutations(other, seed=3)
    permute_mlp_neurons(other, perms)
    ref, got = _logits(base), _logits(other)
    assert torch.allclose(ref, got, atol=1e-4 * ref.abs().max().item()), (ref - got).abs().max()
    assert not torch.equal(other.W_out(1), base.W_out(1))
    assert basis_agreement(base, base.copy()) == pytest.approx(1.0, abs=1e-6)
    assert basis_agreement(base, other) < 0.2
    # the optimal assignment finds the exact permutation back: neuron i of the base is neuron perms^-1[i]
    perm, match = neuron_alignment(base, other, 1)
    assert torch.equal(perm, torch.argsort(perms[1])) and match == pytest.approx(1.0, abs=1e-5)
    before = weights_checksum(other)
    with aligned_to(base, other) as info:
        assert info.realigned and info.comparable and info.agreement_after == pytest.approx(1.0, abs=1e-6)
        for layer in range(base.cfg.n_layers):
            assert torch.equal(other.W_out(layer), base.W_out(layer)), layer
        assert torch.allclose(_logits(other), ref, atol=1e-4 * ref.abs().max().item())
    assert weights_checksum(other) == before  # the caller's order comes back bitwise


def test_another_training_run_is_not_comparable_and_is_left_alone(gpt2):
    other = load_model("gpt2-seeded", device="cpu", seed=1)
    before = weights_checksum(other)
    with aligned_to(gpt2, other) as info:
        assert not info.comparable and not info.realigned
        assert abs(info.agreement) < 0.2
        assert weights_checksum(other) == before
    assert weights_checksum(other) == before


def test_alignment_restores_on_an_exception(gpt2):
    other = gpt2.copy()
    permute_mlp_neurons(other, random_permutations(other, seed=5))
    before = weights_checksum(other)
    with pytest.raises(RuntimeError, match="boom"), aligned_to(gpt2, other):
        raise RuntimeError("boom")
    assert weights_checksum(other) == before


def _vector_call(cosine: float, comparable: bool):
    """The concept-vector call on ten located vectors at ``cosine``, 64 control vectors barely moved and a
    floor of unrelated-vector cosines near 0."""
    floor = list(np.random.default_rng(0).normal(0.0, 0.05, 64))
    values = {"forget": [cosine] * 10, "control": [0.999] * 64, "floor": floor}
    return call_vectors(values, comparable, agreement=1.0 if comparable else 0.02)


def test_the_vector_cosine_votes_only_between_models_that_share_a_basis():
    """Between models that share a basis the cosine can vote: erased vectors are gone, a partial edit is
    inconclusive (it blocks "removed"), unedited vectors are not informative (unchanged weights do not show
    that the concept is there). Another training run: "not comparable" whatever the value, so a cosine of 0
    cannot make a suppressed model pass as removed and a cosine of 1 cannot convict a retrained one."""
    acc = dict(base_accuracy=bootstrap_mean([1.0] * 8), unlearned_accuracy=bootstrap_mean([0.0] * 8))
    floor = bootstrap_mean([0.0] * 8)
    gone = [TraceCall(f, "gone", "at the floor") for f in ("behaviour", "prompt_attacks", "logit_lens")]
    assert _vector_call(1.0, comparable=True).call == "not informative"
    assert _vector_call(0.0, comparable=True).call == "gone"
    partial = _vector_call(0.6, comparable=True)
    assert (
        partial.call == "inconclusive"
        and verdict([*gone, partial], **acc, base_floor=floor)[0] == "inconclusive"
    )
    for cosine in (1.0, 0.0):
        call = _vector_call(cosine, comparable=False)
        assert call.call == "not comparable" and not call.votes and "0.02" in call.why
        v, reasons = verdict([*gone, call], **acc, base_floor=floor)
        assert v == "removed" and any("not comparable" in r for r in reasons)


TOY = Concept(
    concept="Harry Potter",
    qa=(
        QA("Harry Potter's best friend is Ron", "Weasley"),
        QA("The author of the Harry Potter books is J. K.", "Rowling"),
        QA("Harry Potter studied at the school of", "Hogwarts"),
    ),
    text=(
        "Harry Potter is a series of seven fantasy novels. The novels follow a young wizard and his friends "
        "at a school of witchcraft. The books were adapted into eight films.",
    ),
    unrelated_qa=(QA("The capital of France is", "Paris"), QA("The opposite of hot is", "cold")),
)


# the families whose per-item values read only what the model computes (no weight index): equal under any
# function-preserving permutation, to fp32 rounding of the reordered sums
BASIS_FREE = (
    "behaviour",
    "prompt_attacks",
    "relearning",
    "fact_relearning",
    "logit_lens",
    "probes",
    "memory_heads",
)


@pytest.mark.slow
def test_audit_verdict_survives_a_neuron_and_head_permutation_smollm2(smol):
    """NPO on a concept the project never tuned on (Wolfgang Amadeus Mozart), trained on half its QA and
    audited on the other half, as it is and with every MLP layer's neurons and every layer's attention
    heads permuted (outputs equal): ``suppressed`` both times, for reasons that are not weight indices
    (present basis-free families), the same call for every family, every basis-free per-item value equal
    (1e-4: fp32 rounding), the weight-space values equal once re-aligned (1e-5). (That an unchanged copy
    is inconclusive, never removed, is the world's ``no_op`` control in tests/test_oracle.py: an audit
    there takes seconds, here minutes.)"""
    from analyses.unlearn import UnlearnConfig, unlearn
    from analyses.unlearn.run import retain_qa_for
    from probes.data import load_concept, load_concepts

    concept = load_concept(name="Wolfgang Amadeus Mozart")
    ucfg = UnlearnConfig(method="npo", steps=20, lr=1e-4, batch_size=4, window=32, stop_fraction=None)
    run = unlearn(smol, concept, ucfg, progress=False)
    assert run.after.forget_accuracy == 0.0 and run.heldout_after.forget_accuracy <= 0.3  # measured 0.2
    unlearned = run.model
    permuted = unlearned.copy()
    permute_mlp_neurons(permuted, random_permutations(permuted, seed=11))
    permute_attention_heads(permuted, random_head_permutations(permuted, seed=12))
    cfg = AuditConfig.quick(probe_dataset="", control_limit=24)
    control = retain_qa_for(load_concepts(), concept)  # facts of the other bundled concepts
    kw = dict(config=cfg, control_qa=control, trained_items=run.trained_items, progress=False)
    plain = audit(smol, unlearned, concept, **kw)
    moved = audit(smol, permuted, concept, **kw)
    assert {i["prompt"] for i in plain.items} == set(run.heldout_items)
    assert plain.verdict == "suppressed", plain.reasons
    present = {c.family for c in plain.traces if c.call == "present"}
    assert present & set(BASIS_FREE), plain.reasons  # the verdict does not rest on a weight index
    # retrain on the trained half, test the held-out: measured 0.10 [0.00, 0.30] (this NPO run resists it),
    # and fine-tuning on floor facts teaches none of the other floor facts
    facts = {c.family: c for c in plain.traces}["fact_relearning"]
    assert facts.call == "gone" and facts.floor.mean == 0.0 and facts.control.mean > 0.5, facts.row()
    assert moved.verdict == plain.verdict
    basis = moved.concept_vectors["basis"]
    assert basis["realigned"] and not plain.concept_vectors["basis"]["realigned"]
    assert [(c.family, c.call) for c in moved.traces] == [(c.family, c.call) for c in plain.traces]
    pv, mv = plain.extra["trace_values"], moved.extra["trace_values"]
    assert pv["sizes"] == mv["sizes"] and pv["sizes"]["control"] >= 4 and pv["sizes"]["floor"] >= 4
    # relearning's floor trained on as many tokens of its text as the concept's text has, both times
    tokens = pv["relearning"]["unlearned"]["tokens"]
    assert tokens == mv["relearning"]["unlearned"]["tokens"] and tokens["floor"] == tokens["forget"] > 0
    for family in BASIS_FREE:
        if family not in pv:
            continue
        for side in ("unlearned",):
            for which in ("forget", "control", "floor"):
                a, b = pv[family][side].get(which, []), mv[family][side].get(which, [])
                assert np.allclose(a, b, atol=1e-4), (family, which)
    for family in ("activations", "concept_vectors"):
        for which in ("forget", "control", "floor"):
            a, b = pv[family]["unlearned"][which], mv[family]["unlearned"][which]
            assert np.allclose(a, b, atol=1e-5), (family, which)
    assert moved.concept_vectors["mean_cosine"] == pytest.approx(
        plain.concept_vectors["mean_cosine"], abs=1e-5
    )


# ---- attention heads --------------------------------------------------------------------------------------
def _head_permuted(base, seed: int = 3, neurons: bool = False):
    other = base.copy()
    perms = random_head_permutations(other, seed=seed)
    assert any(not torch.equal(p, torch.arange(base.cfg.n_heads)) for p in perms.values())
    permute_attention_heads(other, perms)
    if neurons:
        permute_mlp_neurons(other, random_permutations(other, seed=seed + 1))
    return other, perms


def _kept_groups(model, perm: torch.Tensor) -> bool:
    r = model.cfg.n_heads // model.cfg.n_kv_heads
    groups = perm.view(model.cfg.n_kv_heads, r) // r
    return bool((groups == groups[:, :1]).all())


# gpt2 (seeded): logits |x| <= ~3, a head permutation moves them by ~2.3e-6. SmolLM2 fp32: |x| <= ~32, by
# 6e-5 on this input; that is fp32 rounding of the reordered sums (over 8 inputs and two permutations,
# 5e-5 .. 3.2e-4, and 5e-5 .. 1.5e-4 for a neuron permutation), so 1e-4 holds for this input only.
@pytest.mark.parametrize("name, atol", [("gpt2", 2e-5), ("smol", 1e-4)])
def test_permuting_heads_preserves_the_function_and_is_found_back(name, atol, request):
    base = request.getfixturevalue(name)
    other, perms = _head_permuted(base)
    assert all(_kept_groups(base, p) for p in perms.values())  # GQA: each query head keeps its kv group
    ref, got = _logits(base), _logits(other)
    assert torch.allclose(ref, got, atol=atol, rtol=0), (ref - got).abs().max()
    assert not torch.equal(other.W_O(0), base.W_O(0))
    assert head_agreement(base, base) == pytest.approx(1.0, abs=1e-9)
    assert head_agreement(base, other) < 0.2
    for layer in range(base.cfg.n_layers):  # base head i is the permuted copy's head perms^-1[i]
        perm, match = head_alignment(base, other, layer)
        assert torch.equal(perm, torch.argsort(perms[layer])), layer
        assert match == pytest.approx(1.0, abs=1e-9)


def test_head_permutations_refuse_a_split_group_and_an_unknown_architecture(smol, gpt2, monkeypatch):
    split = torch.tensor([0, 3, 1, 2, 4, 5, 6, 7, 8])  # head 3 (group 1) into group 0
    keep = smol.W_O(0).clone()
    with pytest.raises(HeadLayoutError, match="not a grouped-query head permutation"):
        permute_attention_heads(smol, {1: torch.arange(9), 0: split})
    assert torch.equal(smol.W_O(0), keep)
    other = gpt2.copy()
    monkeypatch.setattr(other.hf.config, "model_type", "falcon")
    with pytest.raises(HeadLayoutError, match="cannot permute the attention heads of a 'falcon'") as err:
        permute_attention_heads(other, random_head_permutations(other))
    assert err.value.cause and "gpt2" in err.value.fix
    before = weights_checksum(other)
    with aligned_to(gpt2, other) as info:  # the audit still runs: heads not checked, left alone
        assert info.heads_comparable is None and not info.heads_realigned and info.comparable
        assert info.to_dict()["head_agreement"] is None
    assert weights_checksum(other) == before


@pytest.mark.parametrize("arch", [a for a in HEAD_ARCHITECTURES if a != "gpt2"])
def test_head_permutation_on_every_supported_llama_family_layout(arch):
    """Tiny random models of each family (GQA 6/2; qwen2 q/k/v biases, qwen3 shared and olmo2 full-width
    q/k norms): the function is kept, and aligned_to puts the copy back into the base's order bitwise."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from probes.model import Model, smollm2_tokenizer

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(
        arch, vocab_size=49152, hidden_size=96, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, head_dim=16, attn_implementation="eager",
    )  # fmt: skip
    hf = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() == 1:  # norms start at ones, biases at zeros: make every per-head slice distinct
                p.normal_(1.0, 0.2)
    base = Model(hf, smollm2_tokenizer(), name=arch)
    other, perms = _head_permuted(base, seed=1)
    ref, got = _logits(base), _logits(other)
    assert torch.allclose(ref, got, atol=1e-5, rtol=0), (ref - got).abs().max()
    before = weights_checksum(other)
    assert before != weights_checksum(base)
    with aligned_to(base, other) as info:
        assert info.heads_realigned and info.heads_comparable
        assert weights_checksum(other) == weights_checksum(base)
    assert weights_checksum(other) == before


def _assert_heads_equal(base, other) -> None:
    from probes.alignment import _head_parts

    for layer in range(base.cfg.n_layers):
        a, b = _head_parts(base, layer), _head_parts(other, layer)
        for (_, x), (_, y) in zip(a.query + a.kv, b.query + b.kv, strict=True):
            assert torch.equal(x, y), layer


@pytest.mark.parametrize(
    "name, neurons",
    [
        ("gpt2", False),
        ("gpt2", True),
        ("smol", False),
        pytest.param("smol", True, marks=pytest.mark.slow),  # SmolLM2's neuron re-alignment dominates
    ],
    ids=["gpt2-heads", "gpt2-heads+neurons", "smol-heads", "smol-heads+neurons"],
)
def test_alignment_restores_the_base_head_order_and_then_the_copy(name, neurons, request):
    base = request.getfixturevalue(name)
    other, _ = _head_permuted(base, neurons=neurons)
    before = weights_checksum(other)
    with aligned_to(base, other) as info:
        assert info.heads_realigned and info.heads_comparable and info.comparable
        assert info.head_layers_realigned == tuple(range(base.cfg.n_layers))
        assert info.head_agreement < 0.2 and info.head_agreement_after == pytest.approx(1.0, abs=1e-9)
        assert info.head_agreement_after == pytest.approx(head_agreement(base, other), abs=1e-12)
        assert info.realigned == neurons
        _assert_heads_equal(base, other)  # every per-head weight equal to the base's, bitwise
        ours, theirs = other.state_dict(), base.state_dict()  # and so is everything else
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert weights_checksum(other) == before
    if name == "gpt2" or neurons:  # (SmolLM2 heads-only: the same code path, kept under 20 s)
        with pytest.raises(RuntimeError, match="boom"), aligned_to(base, other):
            raise RuntimeError("boom")
        assert weights_checksum(other) == before


@pytest.mark.parametrize("name", ["gpt2", "smol"])
def test_a_fine_tuned_copy_keeps_its_heads(name, request):
    """Base plus small noise: the identity assignment, nothing written; permuted on top of that, the noisy
    heads are still found back."""
    base = request.getfixturevalue(name)
    tuned = base.copy()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in tuned.hf.parameters():
            p.add_(0.05 * p.std() * torch.randn(p.shape, generator=gen).to(p))
    before = weights_checksum(tuned)
    with aligned_to(base, tuned) as info:
        assert not info.heads_realigned and info.heads_comparable and not info.realigned
        assert info.head_agreement > 0.99 and info.head_agreement_after == info.head_agreement
        assert weights_checksum(tuned) == before
    assert weights_checksum(tuned) == before
    last = base.cfg.n_layers - 1
    perms = {layer: p for layer, p in random_head_permutations(tuned, seed=7).items() if layer in (0, last)}
    permute_attention_heads(tuned, perms)
    for layer in (0, last):
        perm, match = head_alignment(base, tuned, layer)
        assert torch.equal(perm, torch.argsort(perms[layer])) and match > 0.99


def test_another_training_run_has_no_comparable_heads(gpt2):
    other = load_model("gpt2-seeded", device="cpu", seed=1)
    before = weights_checksum(other)
    with aligned_to(gpt2, other) as info:
        assert not info.heads_comparable and not info.heads_realigned and abs(info.head_agreement) < 0.2
        assert weights_checksum(other) == before
    assert weights_checksum(other) == before


@pytest.mark.slow
def test_memory_head_effects_follow_the_heads_and_are_realigned_smollm2(smol):
    """Zero-baseline attribution patching is per (layer, head): on a head-permuted copy it comes out
    permuted (the negative control), inside aligned_to it equals the base's."""
    from probes import memory_heads

    cities = [("The Eiffel Tower", "Paris"), ("The Colosseum", "Rome"), ("Big Ben", "London")]
    items = [QA(f"{place} is in the city of", city, "city") for place, city in cities]
    conflicts = memory_heads.build_conflicts(smol, items, max_items=2)
    assert len(conflicts) == 2
    ref = memory_heads.attribution_patching(smol, conflicts, baseline="zero").effects
    other, perms = _head_permuted(smol)
    moved = memory_heads.attribution_patching(other, conflicts, baseline="zero").effects
    assert (moved - ref).abs().max() > 0.1 * ref.abs().max()  # without re-alignment: other heads' effects
    expected = torch.stack([ref[layer][perms[layer]] for layer in range(smol.cfg.n_layers)])
    torch.testing.assert_close(moved, expected, atol=1e-4, rtol=0)  # ... exactly the permuted ones
    with aligned_to(smol, other) as info:
        assert info.heads_realigned
        got = memory_heads.attribution_patching(other, conflicts, baseline="zero").effects
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
