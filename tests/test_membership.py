"""Membership inference (``probes.membership``): every score against a hand computation from one unbatched
forward pass, the AUC against sklearn, and the world's known answer (the full model trained on the forget
people's biographies, the retrain oracle never saw them)."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from probes.membership import (
    MIA_SCORES,
    MembershipConfig,
    auc,
    bootstrap_auc,
    membership_inference,
    membership_scores,
    priv_leak,
)

TEXTS = [
    "The capital of France is Paris, and the Seine runs through it.",
    "Harry Potter's best friend is Ron Weasley.",
    "A cat",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen in the leaves of plants.",
    "Mozart was born in Salzburg in 1756.",
]


def _hand_scores(model, text: str, k: float) -> dict[str, float]:
    """One text alone, position by position in Python floats over the vocabulary."""
    ids = model.tokenizer(text, add_special_tokens=True)["input_ids"]
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model.forward(x, torch.ones_like(x)).logits[0].double()
    lp, z = [], []
    for i in range(1, len(ids)):
        logq = torch.log_softmax(logits[i - 1], dim=-1)
        p = logq.exp()
        mu = float((p * logq).sum())
        sigma = math.sqrt(max(float((p * logq * logq).sum()) - mu * mu, 0.0))
        lp.append(float(logq[ids[i]]))
        z.append((lp[-1] - mu) / sigma)
    n = max(1, int(len(lp) * k))
    return {
        "loss": sum(lp) / len(lp),
        "zlib": sum(lp) / len(zlib.compress(text.encode())),
        "min_k": sum(sorted(lp)[:n]) / n,
        "min_k_plus_plus": sum(sorted(z)[:n]) / n,
    }


@pytest.mark.parametrize("name", ["gpt2", "smol"])
def test_scores_equal_a_hand_computation_and_batching_changes_nothing(name, request, monkeypatch):
    model = request.getfixturevalue(name)
    batched = membership_scores(model, TEXTS, MembershipConfig(batch_size=3, k=0.3))
    # the unembedding and log-softmax in slices of positions (one position at a time here) give the same
    # numbers, to float32 rounding (a matmul over fewer rows rounds differently: 7e-6 in min-k++, which
    # divides by sigma)
    monkeypatch.setattr("probes.membership.STATS_FLOATS", 1)
    one_position = membership_scores(model, TEXTS, MembershipConfig(batch_size=3, k=0.3))
    monkeypatch.undo()
    np.testing.assert_allclose(one_position.to_numpy(), batched.to_numpy(), atol=2e-5)
    alone = membership_scores(model, TEXTS, MembershipConfig(batch_size=1, k=0.3))
    np.testing.assert_allclose(batched.to_numpy(), alone.to_numpy(), atol=1e-4)  # right padding leaks nothing
    for i, text in enumerate(TEXTS):
        want = _hand_scores(model, text, 0.3)
        for s in MIA_SCORES:
            assert batched.at[i, s] == pytest.approx(want[s], abs=2e-4), (text, s)


def test_auc_equals_sklearn_with_ties_and_the_interval_covers_it():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    a = np.round(rng.normal(0.5, 1, 30), 1)  # rounding makes ties
    b = np.round(rng.normal(0.0, 1, 40), 1)
    want = roc_auc_score(np.r_[np.ones(30), np.zeros(40)], np.r_[a, b])
    assert auc(a, b) == pytest.approx(want, abs=1e-12)
    iv = bootstrap_auc(a, b, n_boot=500, seed=1)
    assert iv.mean == pytest.approx(want) and iv.lo <= iv.mean <= iv.hi and iv.hi - iv.lo < 0.4
    assert auc([1.0], [1.0]) == 0.5
    assert priv_leak(0.9, 0.6) == pytest.approx(0.5) and priv_leak(0.6, 0.6) == 0.0


def test_bad_input_is_named(gpt2):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        MembershipConfig(k=0.0)
    with pytest.raises(ValueError, match="needs both"):
        membership_inference(gpt2, TEXTS, [])
    with pytest.raises(ValueError, match="fewer than 2 tokens"):
        membership_scores(gpt2, ["Hello world", ""])
    with pytest.raises(ValueError, match="PrivLeak"):
        priv_leak(0.5, 0.0)


@pytest.mark.slow
def test_the_world_full_model_knows_its_training_biographies_and_the_oracle_does_not():
    """The world (trained or read from the cache): the full model tells the forget people's biographies
    from the floor people's perfectly (measured AUC 1.00 for every score), the oracle, which never saw
    them, does not (LOSS 0.40: the forget people's names hold words only they have, which the oracle never
    read, so their biographies look *less* familiar than the floor's recombined names; that is why PrivLeak
    is measured against the oracle rather than against 0.5)."""
    from analyses.world import world_models

    wm = world_models(progress=False)
    members, nonmembers = wm.world.membership_texts()
    assert len(members) == len(nonmembers) == 120 and not set(members) & set(nonmembers)
    assert not set(members) & set(wm.world.forget_concept().text)  # not what unlearning trains on
    full = membership_inference(wm.full, members, nonmembers)
    oracle = membership_inference(wm.oracle, members, nonmembers)
    for s in MIA_SCORES:
        assert full.auc[s].lo >= 0.95, s
        assert oracle.auc[s].hi <= 0.6, s
        assert priv_leak(full.auc[s].mean, oracle.auc[s].mean) > 0.5
    assert list(full.to_frame()["score"]) == list(MIA_SCORES)
    assert full.scores is not None and full.scores["member"].sum() == 120


def test_text_units_are_runs_of_whole_sentences():
    from analyses.audit.stages import text_units

    text = "One two three. Four five six seven. Eight nine ten eleven twelve. Thirteen."
    assert text_units([text], min_words=5) == [
        "One two three. Four five six seven.",
        "Eight nine ten eleven twelve. Thirteen.",  # the short tail joins the run before it
    ]
    assert text_units(["Short one."], min_words=5) == ["Short one."]
    # each text apart: a short text is its own unit, never glued to another text's
    assert text_units(["Short one.", "Short two."], min_words=5) == ["Short one.", "Short two."]
