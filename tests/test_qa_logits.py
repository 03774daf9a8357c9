"""``probes.qa.answer_logprobs`` unembeds only each answer's positions (``Model.unembed`` of the final hidden
states) and ``last_logits`` only the last positions (``logits_to_keep``): both must equal what the full
logits of a plain HF forward give, one sequence at a time (no padding)."""

from __future__ import annotations

import pytest
import torch

from probes.data import QA
from probes.qa import answer_ids, answer_logprobs, last_logits

ITEMS = [
    QA("The capital of France is", "Paris"),
    QA("Harry Potter's best friend is", "Ron Weasley"),
    QA("A composer born in Salzburg in 1756 was Wolfgang Amadeus", "Mozart"),
]


def _reference(model, q: QA) -> float:
    p, a = answer_ids(model, q.prompt, q.answer)
    ids = torch.tensor([p + a])
    with torch.no_grad():
        logp = torch.log_softmax(model.hf(input_ids=ids).logits.float(), dim=-1)[0]
    return float(sum(logp[len(p) - 1 + j, t] for j, t in enumerate(a)))


@pytest.mark.parametrize("name", ["gpt2", "smol"])
def test_answer_logprobs_equal_the_full_logits(name, request):
    model = request.getfixturevalue(name)
    assert model.takes_logits_to_keep
    got = answer_logprobs(model, [q.prompt for q in ITEMS], [q.answer for q in ITEMS]).tolist()
    want = [_reference(model, q) for q in ITEMS]
    assert got == pytest.approx(want, abs=2e-3)
    ids, mask = model.pad([answer_ids(model, q.prompt, q.answer)[0] for q in ITEMS], padding_side="left")
    with torch.no_grad():
        full = model.forward(ids, mask).logits
        assert torch.allclose(last_logits(model, ids, mask, 3), full[:, -3:], atol=1e-4)


@pytest.mark.parametrize("name", ["gpt2", "smol"])
def test_hooked_runs_keep_the_last_logits_of_the_full_pass(name, request):
    """``run_with_hooks(..., logits_to_keep=1)`` with a head-zeroing hook gives the last position's logits
    of the same pass unembedded in full (the memory-head metrics read only that position)."""
    from probes import hooks
    from probes.memory_heads import mask_hooks

    model = request.getfixturevalue(name)
    ids, mask = model.tokenize(
        ["The capital of France is", "Harry Potter's best friend is Ron"], padding_side="left"
    )
    prune = mask_hooks([(1, 0), (2, 3)], "zero")
    full = hooks.run_with_hooks(model, ids, prune, mask)
    kept = hooks.run_with_hooks(model, ids, prune, mask, logits_to_keep=1)
    assert kept.shape[1] == (1 if model.takes_logits_to_keep else ids.shape[1])
    torch.testing.assert_close(kept[:, -1], full[:, -1], atol=2e-3, rtol=0)
