"""The soft-prompt attack (analyses/soft_prompt.py): the placement against an inputs_embeds forward, a
planted fact raised on the gpt2-small architecture, weights untouched, and (slow) transfer on SmolLM2."""

from __future__ import annotations

import pytest
import torch

from analyses.soft_prompt import (
    SoftPromptConfig,
    SoftPromptError,
    _first_run,
    find_marker,
    fit_soft_prompt,
    soft_prompt_scores,
    soft_prompted,
)
from probes.data import QA
from probes.qa import answer_ids, answer_logprobs

PLANTED = QA("The secret password of the vault is", "Zanzibar", "word")


def test_first_run_finds_the_first_run_of_n_per_row():
    ids = torch.tensor(
        [
            [5, 7, 7, 7, 1, 7, 7, 7],  # run at 1 (the second run is left alone)
            [7, 7, 1, 7, 7, 7, 2, 3],  # a run of 2 is too short; the run of 3 at 3
            [1, 2, 3, 4, 5, 6, 7, 7],  # none
        ]
    )
    assert _first_run(ids, 7, 3).tolist() == [1, 3, -1]
    assert _first_run(ids[:, :2], 7, 3).tolist() == [-1, -1, -1]  # shorter than the run


def test_config_refuses_bad_settings():
    for bad in ({"n_tokens": 0}, {"steps": -1}, {"lr": 0.0}, {"batch_size": 0}, {"init_text": " "}):
        with pytest.raises(ValueError, match="SoftPromptConfig"):
            SoftPromptConfig(**bad)


def test_the_placement_equals_an_inputs_embeds_forward(any_model):
    """The hooked forward through score_qa's path (token ids, left padding, a batch) equals HF's forward
    on hand-built input embeddings where the marker rows are the vectors; greedy decoding through the KV
    cache leaves the one-token steps alone (a completion equals a step-by-step argmax on embeddings)."""
    model = any_model
    assert (
        model.bridge is not None
    )  # the bridge wraps modules in place: the hook must still reach the embedding
    marker, t = find_marker(model, 4, [PLANTED.prompt])
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(4, model.cfg.d_model, generator=g) * 0.05
    prefix = marker * 4 + "\n"
    items = [PLANTED, QA("Paris is the capital of", "France", "country")]
    with soft_prompted(model, vectors, t):
        hooked = answer_logprobs(model, [prefix + q.prompt for q in items], [q.answer for q in items])
    emb = model.hf.get_input_embeddings()
    for k, q in enumerate(items):
        p, a = answer_ids(model, prefix + q.prompt, q.answer)
        ids = torch.tensor([p + a])
        assert ids[0].tolist().count(t) == 4
        with torch.no_grad():
            x = emb(ids).clone()
            start = p.index(t)
            x[0, start : start + 4] = vectors.to(x.dtype)
            logits = model.hf(inputs_embeds=x).logits.float()
            logp = torch.log_softmax(logits[0], -1)
            want = sum(float(logp[len(p) - 1 + j, a[j]]) for j in range(len(a)))
        assert float(hooked[k]) == pytest.approx(want, abs=2e-3)
        with torch.no_grad():  # without the hook the markers are plain tokens: a different value
            plain = answer_logprobs(model, [prefix + q.prompt], [q.answer])
        assert abs(float(plain[0]) - want) > 1e-3
    # greedy decoding through the KV cache equals a step-by-step argmax on the embedded prompt
    p, _ = answer_ids(model, prefix + items[1].prompt, items[1].answer)
    with torch.no_grad():
        x = emb(torch.tensor([p])).clone()
        x[0, p.index(t) : p.index(t) + 4] = vectors.to(x.dtype)
        new = []
        for _ in range(3):
            nxt = int(model.hf(inputs_embeds=x).logits[0, -1].argmax())
            new.append(nxt)
            x = torch.cat([x, emb(torch.tensor([[nxt]]))], dim=1)
    with soft_prompted(model, vectors, t):
        out = model.generate([prefix + items[1].prompt], max_new_tokens=3)[0]
    assert out == model.tokenizer.decode(new, skip_special_tokens=True)
    assert model.hf.get_input_embeddings()._forward_hooks == {}  # removed


def test_a_fitted_soft_prompt_raises_a_planted_fact_and_leaves_the_weights(gpt2):
    """On the gpt2-small architecture (seeded weights, no knowledge): 30 Adam steps on one fact raise its
    answer's log-probability by far more than the prompt moves an untouched fact, every weight is bitwise
    as before, no gradient is left on it, and its requires_grad flags are restored."""
    before = {k: v.clone() for k, v in gpt2.hf.state_dict().items()}
    flags = [p.requires_grad for p in gpt2.hf.parameters()]
    cfg = SoftPromptConfig(n_tokens=4, steps=30, lr=0.05, batch_size=1)
    prompt = fit_soft_prompt(gpt2, [PLANTED], cfg)
    assert len(prompt.losses) == 30 and prompt.losses[-1] < 0.3 * prompt.losses[0]
    plain = soft_prompt_scores(gpt2, prompt, [PLANTED])
    assert plain.correct == (True,)  # greedy now says the planted answer
    start = float(answer_logprobs(gpt2, [prompt.prefix + PLANTED.prompt], [PLANTED.answer])[0])
    assert plain.logprobs[0] > start + 10
    after = gpt2.hf.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in gpt2.hf.parameters())
    assert [p.requires_grad for p in gpt2.hf.parameters()] == flags
    # seeded: the same fit again gives the same vectors
    again = fit_soft_prompt(gpt2, [PLANTED], cfg)
    assert torch.equal(prompt.vectors, again.vectors)
    d = prompt.to_dict()
    assert d["n_tokens"] == 4 and len(d["vector_norms"]) == 4 and d["config"]["steps"] == 30


def test_no_facts_and_no_marker_are_refused(gpt2, monkeypatch):
    with pytest.raises(SoftPromptError, match="no facts"):
        fit_soft_prompt(gpt2, [])
    import analyses.soft_prompt as sp

    monkeypatch.setattr(sp, "MARKERS", ("ab cd",))  # two tokens: not a placeholder

    class NoUnknown:  # the tokenizer without an unknown token to fall back on
        unk_token = None
        pad_token_id = gpt2.tokenizer.pad_token_id

        def __call__(self, *a, **k):
            return gpt2.tokenizer(*a, **k)

    class Stub:
        name = "stub"
        tokenizer = NoUnknown()

    with pytest.raises(SoftPromptError, match="no placeholder"):
        find_marker(Stub(), 4)


def test_the_world_tokenizer_gets_a_marker():
    """The synthetic world's word-level tokenizer has no '§' word: its unknown token carries the vectors."""
    from analyses.world import WorldConfig, build_world, world_tokenizer

    world = build_world(WorldConfig())
    tok = world_tokenizer(world)

    class Stub:
        name = "world"
        tokenizer = tok

    marker, t = find_marker(Stub(), 6, [world.forget_concept().qa[0].prompt])
    assert t != tok.pad_token_id
    ids = tok(marker * 6 + "\n" + world.forget_concept().qa[0].prompt)["input_ids"]
    assert ids.count(t) == 6


@pytest.mark.slow
def test_soft_prompt_transfer_on_ga_mozart(smol, ga_mozart):
    """GA on Mozart (the shared checkpoint): a soft prompt fitted on the 11 trained facts answers them all,
    and lifts the 10 held-out ones it never saw (0.50 greedy); fitted on as many floor facts, it lifts
    none of the other floor facts; the base's weights and the unlearned model's are untouched."""
    from analyses.audit.traces import item_sets, soft_prompt_values
    from probes.data import Concept, load_floor
    from probes.qa import score_qa

    run, trained, held = ga_mozart
    model = run.model
    concept = Concept("Wolfgang Amadeus Mozart", tuple(held))
    sets = item_sets(smol, concept, [], load_floor(), limit=0, floor_limit=24, seed=0)
    before = {k: v.clone() for k, v in model.hf.state_dict().items()}
    cfg = SoftPromptConfig(steps=40, lr=1e-2)
    values = soft_prompt_values(model, sets, trained, config=cfg)
    plain = score_qa(model, held).accuracy
    held_acc = sum(values["forget"]) / len(values["forget"])
    print("plain", plain, "soft prompt", held_acc, "floor", values["floor"], values["losses"][::10])
    assert values["trained_on"] == len(trained) == 11
    assert plain == pytest.approx(0.5)
    assert held_acc >= plain + 0.1
    assert sum(values["floor"]) == 0 and values["floor_trained_on"] == 11
    assert values["losses"][-1] < 0.1 * values["losses"][0]
    assert all(torch.equal(before[k], v) for k, v in model.hf.state_dict().items())
