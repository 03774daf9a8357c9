"""Logit lens and behaviour (attacks) checked against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analyses.behaviour import (
    REPHRASINGS,
    answer_free_text,
    attack_scores,
    measure_behaviour,
    rephrased_scores,
)
from probes.data import QA, Concept
from probes.lens import logit_lens
from probes.qa import answer_ids, score_qa

HP = Concept(
    "Harry Potter",
    qa=(QA("Harry Potter's best friend is Ron", "Weasley"), QA("The capital of France is", "Paris")),
    text=("Harry Potter is a wizard. His friend Ron Weasley is loyal. The school is called Hogwarts.",),
    unrelated_qa=(QA("The largest planet in our solar system is", "Jupiter"),),
)


def test_lens_last_layer_is_the_model_output(any_model):
    prompts, answers = ["The capital of France is", "Water is made of hydrogen and"], ["Paris", "oxygen"]
    lens = logit_lens(any_model, prompts, answers)
    assert lens.logprob.shape == (2, any_model.cfg.n_layers)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        pid, aid = answer_ids(any_model, p, a)
        with torch.no_grad():
            out = torch.log_softmax(any_model.hf(torch.tensor([pid])).logits[0, -1].float(), -1)
        assert abs(out[aid[0]].item() - lens.logprob[i, -1]) < 1e-4
        assert lens.rank[i, -1] == int((out > out[aid[0]]).sum())


def test_lens_middle_layer_matches_manual(gpt2):
    lens = logit_lens(gpt2, ["Hello there my"], ["friend"])
    pid, aid = answer_ids(gpt2, "Hello there my", "friend")
    with torch.no_grad():
        hs = gpt2.hf(torch.tensor([pid]), output_hidden_states=True).hidden_states
        # hidden_states[l + 1] is the output of block l (GPT-2 applies ln_f only to the last entry)
        manual = torch.log_softmax(gpt2.hf.lm_head(gpt2.hf.transformer.ln_f(hs[4][0, -1])), -1)[aid[0]]
    assert abs(manual.item() - lens.logprob[0, 3]) < 1e-4


def test_answer_free_text_drops_answer_sentences():
    text = answer_free_text(HP)
    assert "Weasley" not in text and "Hogwarts" in text and "wizard" in text


def test_rephrased_is_best_of_variants(smol):
    r = rephrased_scores(smol, HP.qa)
    for i, q in enumerate(HP.qa):
        each = [score_qa(smol, [QA(t.format(prompt=q.prompt), q.answer)]) for t in REPHRASINGS]
        assert r.correct[i] == any(s.correct[0] for s in each)
        assert np.isclose(r.logprobs[i], max(s.logprobs[0] for s in each), atol=1e-4)


def test_behaviour_on_smollm2(smol):
    res = measure_behaviour(smol, HP)
    assert res.forget.accuracy == 1.0 and res.unrelated.accuracy == 1.0
    assert set(res.attacks) == {"prefix", "in_context", "rephrased"}
    assert res.attacks["rephrased"].accuracy == 1.0
    ctx = attack_scores(smol, HP, "in_context")
    assert all("Weasley" not in p for p in ctx.prompts)
    frame = res.to_frame()
    assert list(frame["condition"])[:2] == ["forget", "unrelated"]


def test_lens_decoys_rank_like_a_separate_run(gpt2):
    """Decoys are ranked in the same pass exactly as if they were the answers of a second run."""
    prompts = ["The capital of France is", "The Eiffel Tower is in", "Water is made of"]
    answers, decoys = ["Paris", "Paris", "hydrogen"], ["Rome", "Berlin", "oxygen"]
    r = logit_lens(gpt2, prompts, answers, decoys=decoys, batch_size=2)
    other = logit_lens(gpt2, prompts, decoys, batch_size=2)
    np.testing.assert_array_equal(r.rank, logit_lens(gpt2, prompts, answers).rank)
    np.testing.assert_array_equal(r.decoy_rank, other.rank)
    np.testing.assert_allclose(r.decoy_top10_share, other.top10_share)


def test_lens_trace_counts_the_top_k_at_an_inner_layer(gpt2):
    """The audit's lens trace (``traces.lens_values``) against the ranks of ``logit_lens`` read by hand: an
    item is 1 when its answer ranks below k at some layer but the last; a larger k never counts fewer."""
    import pytest

    from analyses.audit.config import AuditConfig
    from analyses.audit.traces import ItemSets, lens_values

    qa = (
        QA("The capital of France is", "Paris"),
        QA("Water is made of hydrogen and", "oxygen"),
        QA("Hello there my", "friend"),
    )
    sets = ItemSets(Concept("c", qa), Concept("c", qa[:2]), Concept("c", qa[1:]))
    rank = logit_lens(gpt2, [q.prompt for q in qa], [q.answer for q in qa]).rank[:, :-1].min(axis=1)
    counts = []
    for k in (1, 10, 1000, 50000):
        v = lens_values(gpt2, sets, top_k=k, batch_size=2)
        assert v["forget"] == [float(r < k) for r in rank]
        assert v["control"] == v["forget"][:2] and v["floor"] == v["forget"][1:]
        counts.append(sum(v["forget"]))
    assert counts == sorted(counts) and counts[-1] == 3  # seeded gpt2: every answer under rank 50000
    with pytest.raises(ValueError, match="at least 1"):
        AuditConfig(lens_top_k=0)


@pytest.mark.parametrize("name", ["gpt2", "smol"])
def test_lens_in_chunks_of_layers_equals_all_layers_at_once(name, request, monkeypatch):
    """``logit_lens`` unembeds a few layers at a time (``LENS_FLOATS``): the same log-probabilities and
    ranks, decoys included, as every layer in one tensor."""
    import probes.lens as lens

    model = request.getfixturevalue(name)
    prompts = ["The capital of France is", "The Eiffel Tower is in", "Water is made of"]
    answers, decoys = ["Paris", "Paris", "hydrogen"], ["Rome", "Berlin", "oxygen"]
    monkeypatch.setattr(lens, "LENS_FLOATS", 1 << 40)
    whole = lens.logit_lens(model, prompts, answers, decoys=decoys)
    monkeypatch.setattr(lens, "LENS_FLOATS", 1)  # one layer at a time
    chunked = lens.logit_lens(model, prompts, answers, decoys=decoys)
    np.testing.assert_array_equal(chunked.rank, whole.rank)
    np.testing.assert_array_equal(chunked.decoy_rank, whole.decoy_rank)
    np.testing.assert_allclose(chunked.logprob, whole.logprob, atol=1e-5)
