"""CHES (Razin et al. 2024): batched = one pair at a time = a naive per-position loop over HF hidden states."""

from __future__ import annotations

import math

import pytest
import torch

from probes import hooks
from probes.ches import (
    CHESInputError,
    ches,
    ches_matrix,
    ches_pairs,
    final_hidden,
    pair_ids,
    response_embeddings,
)

PROMPTS = [
    "The capital of France is",
    "Harry Potter's best friend is Ron",
    "Q: What is the largest planet in the solar system?\nA:",
    "Water boils at",
]
PREFERRED = [
    "Paris, a city on the Seine.",
    "Weasley",
    "Jupiter, the gas giant",
    "100 degrees Celsius at sea level",
]
DISPREFERRED = ["I don't know.", "Malfoy, of course, who lives in", "Saturn and its rings", "I don't know."]
_NAIVE: dict[tuple, tuple[torch.Tensor, int]] = {}


def naive_sum(model, prompt: str, response: str, eos: bool = True) -> tuple[torch.Tensor, int]:
    """Sum of HF hidden_states[-1] over the positions predicting each response token, one at a time;
    with ``eos`` (the default) also the one predicting the EOS appended after the response."""
    key = (id(model), prompt, response, eos)
    if key not in _NAIVE:
        p, r = pair_ids(model, prompt, response)
        r = r + [model.tokenizer.eos_token_id] if eos else r
        ids = torch.tensor([p + r])
        with torch.no_grad():
            h = model.hf(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].double()
        total = torch.zeros(h.shape[-1], dtype=torch.float64)
        for k in range(len(r)):  # token k of the response is predicted at position len(p) - 1 + k
            total += h[len(p) - 1 + k]
        _NAIVE[key] = (total, len(r))
    return _NAIVE[key]


def naive_ches(model, prompt, pos, neg, normalized=False, eos=True) -> float:
    sp, lp = naive_sum(model, prompt, pos, eos)
    sn, ln = naive_sum(model, prompt, neg, eos)
    if normalized:
        return float(sp @ sn / (lp * ln) - sp @ sp / lp**2)
    return float(sp @ sn - sp @ sp)


@pytest.mark.parametrize("eos", [True, False])
def test_batched_equals_unbatched_equals_naive(any_model, eos):
    naive = [naive_ches(any_model, *t, eos=eos) for t in zip(PROMPTS, PREFERRED, DISPREFERRED)]
    single = [ches(any_model, *t, eos=eos) for t in zip(PROMPTS, PREFERRED, DISPREFERRED)]
    batched = ches_pairs(any_model, PROMPTS, PREFERRED, DISPREFERRED, batch_size=8, eos=eos)
    assert batched.dtype == torch.float64
    for a, b, c in zip(naive, single, batched.tolist()):
        assert a != 0.0
        assert b == pytest.approx(a, rel=1e-4)
        assert c == pytest.approx(a, rel=1e-4)


@pytest.mark.parametrize("eos", [True, False])
def test_left_and_right_padding_agree(any_model, eos):
    kw = dict(batch_size=8, eos=eos)
    left = ches_pairs(any_model, PROMPTS, PREFERRED, DISPREFERRED, padding_side="left", **kw)
    right = ches_pairs(any_model, PROMPTS, PREFERRED, DISPREFERRED, padding_side="right", **kw)
    torch.testing.assert_close(left, right, rtol=1e-4, atol=1e-6)
    # and the summed embeddings themselves, right-padded in uneven batches, against the naive loop
    s_r, n_r = response_embeddings(any_model, PROMPTS, PREFERRED, batch_size=3, padding_side="right", eos=eos)
    naive = [naive_sum(any_model, p, r, eos) for p, r in zip(PROMPTS, PREFERRED)]
    torch.testing.assert_close(s_r, torch.stack([s for s, _ in naive]), rtol=1e-4, atol=1e-3)
    assert n_r.tolist() == [n for _, n in naive]


def test_identical_responses_give_zero(gpt2):
    values = ches_pairs(gpt2, PROMPTS, PREFERRED, PREFERRED)
    assert values.tolist() == [0.0] * len(PROMPTS)
    assert ches(gpt2, "The capital of France is", "Paris", "Paris") == 0.0


def test_length_normalized_matches_formula(gpt2):
    got = ches_pairs(gpt2, PROMPTS, PREFERRED, DISPREFERRED, length_normalized=True)
    for value, triple in zip(got.tolist(), zip(PROMPTS, PREFERRED, DISPREFERRED)):
        assert value == pytest.approx(naive_ches(gpt2, *triple, normalized=True), rel=1e-4)
    one = ches(gpt2, PROMPTS[0], PREFERRED[0], DISPREFERRED[0], length_normalized=True)
    assert one == pytest.approx(got[0].item(), rel=1e-5)  # batch of 2 vs 8: fp32 rounding


def test_final_hidden_is_the_ln_final_hook(gpt2):
    ids, mask = gpt2.tokenize(PROMPTS, padding_side="left")
    _, cache = hooks.run_with_cache(gpt2, ids, [hooks.LN_FINAL], mask=mask)
    h = final_hidden(gpt2, ids, mask)
    real = mask.bool()
    torch.testing.assert_close(h[real], cache[hooks.LN_FINAL][real], rtol=1e-5, atol=1e-5)


def test_matrix_reuses_sums_and_matches_pairs(gpt2):
    prompt = "The capital of France is"
    forget = [(prompt, "Paris"), (prompt, "the city of Paris"), (prompt, "I don't know")]
    retain = [(prompt, "Rome"), (prompt, "Paris"), (prompt, "a large city")]
    for eos in (True, False):
        m = ches_matrix(gpt2, forget, retain, eos=eos)
        assert m.raw.shape == (3, 3)
        for i, (_, f) in enumerate(forget):
            for j, (_, r) in enumerate(retain):
                # retain = preferred (kept), forget = dispreferred (pushed down)
                assert m.raw[i, j].item() == pytest.approx(
                    ches(gpt2, prompt, r, f, eos=eos), rel=1e-6, abs=1e-6
                )
                assert m.normalized[i, j].item() == pytest.approx(  # batch of 6 vs 2: fp32 rounding
                    ches(gpt2, prompt, r, f, length_normalized=True, eos=eos), rel=1e-5, abs=1e-9
                )
    # without the EOS position, one-token responses under one prompt share their only predicting
    # position: CHES is 0 (up to float64 rounding of the two equal sums: -2.3e-13 was measured once in CI)
    assert m.raw[0, 0].item() == pytest.approx(0.0, abs=1e-9)
    assert m.raw[0, 1].item() == pytest.approx(0.0, abs=1e-9)
    # across prompts: each item under its own prompt
    cross = ches_matrix(gpt2, list(zip(PROMPTS, DISPREFERRED)), list(zip(PROMPTS, PREFERRED)))
    s_f, _ = naive_sum(gpt2, PROMPTS[2], DISPREFERRED[2])
    s_r, _ = naive_sum(gpt2, PROMPTS[1], PREFERRED[1])
    assert cross.raw[2, 1].item() == pytest.approx(float(s_f @ s_r - s_r @ s_r), rel=1e-4)
    frame = cross.to_frame()
    assert len(frame) == 16 and {"ches", "ches_normalized"} <= set(frame.columns)
    assert cross.figure().data[0].z.shape == (4, 4)


def test_bf16_long_responses_are_finite(smol):
    model = smol.copy()
    model.hf.to(torch.bfloat16)
    words = "the quick brown fox jumps over the lazy dog and runs into the forest while it rains " * 30
    ids = model.tokenizer(words, add_special_tokens=False)["input_ids"]
    long_a = model.tokenizer.decode(ids[:300])
    long_b = model.tokenizer.decode(ids[7:307])
    n_a = len(pair_ids(model, "Tell me a story.", long_a)[1])
    assert n_a >= 295
    raw = ches_pairs(model, ["Tell me a story."] * 2, [long_a, long_b], [long_b, long_a], batch_size=4)
    norm = ches_pairs(
        model, ["Tell me a story."] * 2, [long_a, long_b], [long_b, long_a], length_normalized=True
    )
    assert all(math.isfinite(v) for v in raw.tolist() + norm.tolist())
    # raw CHES of 300-token responses exceeds what fp16 can hold; fp64 accumulation keeps it
    s, _ = response_embeddings(model, ["Tell me a story."], [long_a])
    assert (s @ s.T).item() > 65504.0
    assert torch.isfinite(s).all()


def test_empty_response_is_an_error(gpt2):
    with pytest.raises(CHESInputError, match="no tokens"):
        ches(gpt2, "The capital of France is", "", "Paris")
