"""``probes.batching.token_batches`` bounds each forward batch by count and by padded tokens; generation
and answer scoring batched that way give the answers and log-probabilities of one prompt at a time."""

from __future__ import annotations

import random

import pytest

import probes.batching
from probes.batching import token_batches
from probes.data import QA, load_concept
from probes.qa import answer_ids, answer_logprobs, option_logprobs, score_qa


def _check(lengths, batch_size, budget, batches):
    assert [i for b in batches for i in b] == list(range(len(lengths)))  # every index once, in order
    for b in batches:
        assert 1 <= len(b) <= batch_size
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= budget
    # greedy: the next item would have broken a limit (a batch is never cut early)
    for b, nxt in zip(batches, batches[1:]):
        grown = [*b, nxt[0]]
        assert len(grown) > batch_size or len(grown) * max(lengths[i] for i in grown) > budget


def test_batches_hold_the_count_and_the_token_budget():
    assert token_batches([15] * 40, 16, 2048) == [range(0, 16), range(16, 32), range(32, 40)]
    assert token_batches([200] * 10, 16, 1000) == [range(0, 5), range(5, 10)]
    # the longest row sets the padded size: a long prompt closes the batch it would widen too far
    assert token_batches([10, 10, 10, 600, 10], 16, 1000) == [range(0, 3), range(3, 4), range(4, 5)]
    assert token_batches([5000, 3, 3], 16, 1000) == [range(0, 1), range(1, 3)]  # over the budget: alone
    assert token_batches([], 16, 1000) == []
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 400) for _ in range(rng.randint(1, 60))]
        batch_size, budget = rng.randint(1, 20), rng.randint(1, 3000)
        _check(lengths, batch_size, budget, token_batches(lengths, batch_size, budget))


def test_default_budget_and_bad_arguments(monkeypatch):
    monkeypatch.setattr(probes.batching, "BATCH_TOKENS", 30)
    assert token_batches([10] * 5, 16) == [range(0, 3), range(3, 5)]
    with pytest.raises(ValueError, match="batch_size"):
        token_batches([1], 0)
    with pytest.raises(ValueError, match="max_tokens"):
        token_batches([1], 4, 0)


@pytest.mark.parametrize("name", ["gpt2", "smol"])
def test_token_budget_changes_no_answer_and_no_logprob(name, request, monkeypatch):
    """Mozart's questions behind a long context (the in-context attack's shape) and alone: one batch per
    call (a budget no batch reaches), then a budget that cuts them into batches of at most 3 long prompts:
    the same greedy completions and the same log-probabilities (to float noise), and a one-token-option
    scoring that takes the single-forward path."""
    model = request.getfixturevalue(name)
    concept = load_concept(name="Wolfgang Amadeus Mozart")
    context = " ".join(concept.text)[:400] + "\n"
    items = list(concept.qa)[:6]
    long_items = [QA(context + q.prompt, q.answer, q.scoring) for q in items]
    mixed = [*long_items[:3], *items[3:], *long_items[3:]]
    lengths = [sum(map(len, answer_ids(model, q.prompt, q.answer))) for q in mixed]
    assert max(lengths) > 100 > min(lengths)
    assert all(len(answer_ids(model, mixed[0].prompt, o)[1]) == 1 for o in "AB")  # the one-forward path

    def run():
        s = score_qa(model, mixed, batch_size=16)
        opts = option_logprobs(model, [q.prompt for q in mixed], [["A", "B"]] * len(mixed))
        return s, opts

    monkeypatch.setattr(probes.batching, "BATCH_TOKENS", 1 << 30)
    whole, whole_opts = run()
    budget = 3 * max(lengths)
    monkeypatch.setattr(probes.batching, "BATCH_TOKENS", budget)
    cut = token_batches(lengths, 16)
    assert len(cut) >= 3 and all(len(b) * max(lengths[i] for i in b) <= budget for b in cut)
    split, split_opts = run()
    assert split.completions == whole.completions
    assert split.logprobs == pytest.approx(whole.logprobs, abs=2e-3)
    assert sum(split_opts, []) == pytest.approx(sum(whole_opts, []), abs=2e-3)
    # and each equals the prompt scored alone
    alone = [float(answer_logprobs(model, [q.prompt], [q.answer])[0]) for q in mixed]
    assert split.logprobs == pytest.approx(alone, abs=2e-3)
