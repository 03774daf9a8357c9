"""Neuron bases: permuting MLP neurons changes nothing the model computes, the audit re-aligns a permuted
copy (so its verdict cannot be gamed that way), and another training run is "not comparable"."""

from __future__ import annotations

import pytest
import torch

from analyses.audit import AuditConfig, audit, verdict
from probes.alignment import (
    aligned_to,
    basis_agreement,
    neuron_alignment,
    permute_mlp_neurons,
    random_permutations,
)
from probes.data import QA, Concept
from probes.edits import weights_checksum
from probes.model import load_model


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


def _verdict_inputs(cosine: float, basis: dict) -> tuple:
    behaviour = {"base": {"forget": {"accuracy": 1.0}}, "unlearned": {"forget": {"accuracy": 0.0}}}
    vectors = {"mean_cosine": cosine, "basis": basis}
    lens = {"unlearned_max_inner_top10_share": 0.0, "best_inner_layer": 3, "present_layers": []}
    recovery = {"unlearned": {"none": 0.0, "prefix": 0.25}}
    interventions = {"patch_vectors_from_base": {"forget_accuracy": 0.0}}
    return behaviour, vectors, lens, recovery, interventions


def test_the_vector_cosine_votes_only_between_models_that_share_a_basis():
    shared = {"agreement": 1.0, "realigned": False, "agreement_after": 1.0, "comparable": True}
    other_run = {"agreement": 0.02, "realigned": False, "agreement_after": 0.02, "comparable": False}
    v, _ = verdict(*_verdict_inputs(1.0, shared))
    assert v == "suppressed"
    v, reasons = verdict(*_verdict_inputs(1.0, other_run))  # a high cosine from no shared basis means nothing
    assert v == "removed" and any("not comparable" in r for r in reasons)
    v, _ = verdict(*_verdict_inputs(0.0, other_run))
    assert v == "removed"


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


@pytest.mark.slow
def test_audit_verdict_survives_a_neuron_permutation_smollm2(smol):
    """GA-style suppression stand-in (the located vectors' first-token logits pushed down by zeroing
    them in a copy) audited as it is and with every MLP layer permuted: the same verdict, the same vector
    cosine (the audit re-aligns), and the base audited against itself is not 'removed'."""
    from probes import concepts as cv

    unlearned = smol.copy()
    with torch.no_grad():
        for layer, neuron in cv.locate(smol, TOY, n=40).refs():
            unlearned.W_out(layer)[neuron].zero_()
    permuted = unlearned.copy()
    permute_mlp_neurons(permuted, random_permutations(permuted, seed=11))
    cfg = AuditConfig.quick(probe_dataset="")
    plain = audit(smol, unlearned, TOY, config=cfg, progress=False)
    moved = audit(smol, permuted, TOY, config=cfg, progress=False)
    assert moved.verdict == plain.verdict
    assert moved.concept_vectors["basis"]["realigned"] and not plain.concept_vectors["basis"]["realigned"]
    assert moved.concept_vectors["mean_cosine"] == pytest.approx(
        plain.concept_vectors["mean_cosine"], abs=1e-5
    )
    for key in ("forget_accuracy", "unrelated_accuracy"):
        assert moved.behaviour[key] == plain.behaviour[key]
    assert moved.logit_lens["unlearned_max_inner_top10_share"] == pytest.approx(
        plain.logit_lens["unlearned_max_inner_top10_share"], abs=1e-6
    )
    itself = audit(smol, smol.copy(), TOY, config=cfg, progress=False)
    assert itself.verdict == "inconclusive"
