"""The sampling attack (``analyses.sampling``): the pass@k estimator against enumeration, seeded and
reproducible draws that leave the global RNG alone, near-zero temperature equal to greedy decoding, and
best-of-N on a real unlearned model against its floor."""

from __future__ import annotations

from itertools import combinations

import pytest
import torch

from analyses.audit import AuditConfig
from analyses.behaviour import attack_scores
from analyses.sampling import SamplingConfig, best_of_n, pass_at_k, sampled_scores
from probes.data import QA, Concept
from probes.qa import score_qa

ITEMS = (
    QA("The capital of France is", "Paris"),
    QA("Harry Potter's best friend is Ron", "Weasley"),
    QA("The Eiffel Tower is in the city of", "Paris"),
)


@pytest.mark.parametrize("n, c", [(5, 0), (5, 2), (6, 6), (4, 1)])
def test_pass_at_k_is_the_share_of_k_subsets_holding_a_correct_sample(n, c):
    samples = [True] * c + [False] * (n - c)
    for k in range(1, n + 1):
        subsets = list(combinations(range(n), k))
        want = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
        assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError, match="between 1 and n"):
        pass_at_k(n, c, n + 1)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="at least one sample"):
        SamplingConfig(n=0)
    with pytest.raises(ValueError, match="positive temperature"):
        SamplingConfig(temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="attacks holds"):
        AuditConfig(attacks=("jailbreak",))
    with pytest.raises(ValueError, match="at least one sample"):
        AuditConfig(attacks=("sampled",), sample_n=0)


def test_draws_are_seeded_and_leave_the_global_rng_alone(smol):
    cfg = SamplingConfig(n=4, seed=3)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = sampled_scores(smol, ITEMS, cfg, batch_size=2)
    assert torch.equal(torch.get_rng_state(), state)
    b = sampled_scores(smol, ITEMS, cfg, batch_size=2)
    other = sampled_scores(smol, ITEMS, SamplingConfig(n=4, seed=4), batch_size=2)
    assert a == b and a.samples != other.samples
    assert all(len(s) == 4 for s in a.samples) and len(a.samples) == len(ITEMS)
    assert a.pass_at(1) <= a.pass_at(4) <= 1.0


def test_near_zero_temperature_is_greedy(smol):
    greedy = score_qa(smol, ITEMS)
    cold = sampled_scores(smol, ITEMS, SamplingConfig(n=2, temperature=1e-4, top_p=1.0))
    assert [s[0] for s in cold.samples] == list(greedy.completions)
    assert [s[1] for s in cold.samples] == list(greedy.completions)
    attacked = attack_scores(
        smol, Concept("x", ITEMS), "sampled", sampling=SamplingConfig(n=2, temperature=1e-4)
    )
    assert attacked.correct == greedy.correct
    assert attacked.logprobs == pytest.approx(greedy.logprobs, abs=1e-5)
    assert best_of_n(smol, ITEMS, SamplingConfig(n=1)).prompts == greedy.prompts


@pytest.mark.slow
def test_best_of_8_finds_answers_greedy_decoding_hides_after_ga(smol, ga_mozart):
    """GA on Mozart (held-out greedy accuracy 0.50): 8 samples at temperature 1 answer more of the held-out
    items than greedy decoding (measured 0.70; trained items 0.18 -> 0.27), while the same attack finds none
    of the floor's fictional facts on the unlearned model or the base (0.00 of 58): what sampling brings
    back is not guessing."""
    from probes.data import load_floor

    run, trained, held = ga_mozart
    cfg = SamplingConfig(n=8)
    greedy = score_qa(run.model, held).accuracy
    s = sampled_scores(run.model, held, cfg)
    assert s.pass_at(8) > greedy and s.pass_at(1) <= s.pass_at(8)
    floor = list(load_floor().qa)[:24]
    assert sampled_scores(run.model, floor, cfg).pass_at(8) <= 0.05
    assert sampled_scores(smol, floor, cfg).pass_at(8) <= 0.05
