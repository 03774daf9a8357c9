"""Concept vectors: scan vs a naive projection, locate on a planted vector, exact restore of edits,
validation numbers vs a hand computation, compare, and the causal check on SmolLM2 (three concepts)."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from probes import concepts as C
from probes.data import QA, Concept
from probes.edits import edited_vectors
from probes.errors import VestigeError
from probes.qa import answer_ids, answer_logprobs

UNRELATED = (
    QA("The capital of France is", "Paris"),
    QA("The opposite of hot is", "cold"),
    QA("The largest animal in the world is the blue", "whale"),
    QA("Water freezes at zero degrees", "Celsius"),
    QA("The first day of the week is", "Monday"),
    QA("The color of the sky on a clear day is", "blue"),
)

# Three concepts for the SmolLM2 checks (short prompts SmolLM2-135M-Instruct completes correctly).
HARRY = Concept(
    "Harry Potter",
    (
        QA("Harry Potter's best friend is Ron", "Weasley"),
        QA("The author of Harry Potter is J. K.", "Rowling"),
        QA("Harry Potter's other best friend is Hermione", "Granger"),
        QA("The headmaster of Hogwarts is Albus", "Dumbledore"),
        QA("Harry Potter's greatest enemy is Lord", "Voldemort"),
    ),
    (
        "Harry Potter is a series of fantasy novels by J. K. Rowling about a young wizard, Harry Potter, "
        "and his friends Ron Weasley and Hermione Granger at Hogwarts School of Witchcraft and Wizardry.",
    ),
    UNRELATED,
)


def _planted_concept() -> Concept:
    return Concept(
        "Weasley family",
        (
            QA("Harry Potter's best friend is Ron", "Weasley"),
            QA("Ginny's surname is", "Weasley"),
            QA("The family of Ron is the", "Weasley"),
        ),
        ("The Weasley family lives in the Burrow.",),
        UNRELATED[:4],
    )


@contextlib.contextmanager
def _restored(tensors):
    saved = [t.detach().clone() for t in tensors]
    try:
        yield
    finally:
        with torch.no_grad():
            for t, s in zip(tensors, saved):
                t.copy_(s)


# ---- scan ----------------------------------------------------------------------------------------------
def test_scan_matches_naive_projection(gpt2):
    layer, k = 11, 20
    res = C.scan(gpt2, [layer], k=k, chunk=700)  # 700 does not divide 3072: the last chunk is partial
    assert res.token_ids.shape == (1, gpt2.cfg.d_mlp, k)
    W_U = gpt2.hf.lm_head.weight.detach()  # [vocab, d_model], independent of the W_U view
    w = gpt2.hf.transformer.h[layer].mlp.c_proj.weight.detach()  # Conv1D: rows are value vectors
    for neuron in list(range(0, gpt2.cfg.d_mlp, 97)) + [gpt2.cfg.d_mlp - 1]:
        top = torch.topk(W_U @ w[neuron], k)
        assert res.token_ids[0, neuron].tolist() == top.indices.tolist()
        assert torch.allclose(res.scores[0, neuron], top.values, atol=1e-5, rtol=0)


def test_scan_final_norm_weights_the_vector(smol):
    """Llama layout (columns of down_proj) and RMSNorm weighting."""
    res = C.scan(smol, [3, 29], k=10, final_norm=True, chunk=4096)
    W_U = smol.hf.lm_head.weight.detach()
    g = smol.hf.model.norm.weight.detach()
    for j, layer in enumerate((3, 29)):
        for neuron in (0, 42, 1535):
            v = smol.hf.model.layers[layer].mlp.down_proj.weight.detach()[:, neuron]
            top = torch.topk(W_U @ (v * g), 10)
            assert res.token_ids[j, neuron].tolist() == top.indices.tolist()
            assert torch.allclose(res.scores[j, neuron], top.values, atol=1e-5, rtol=0)


@pytest.mark.parametrize("final_norm", [False, True])
def test_projection_scores_are_the_z_scores_of_the_full_projection(any_model, final_norm, monkeypatch):
    """The closed form (column covariance of the unembedding, accumulated block by block) against the
    naive computation: every value vector's full vocabulary projection, z-scored over the vocabulary,
    averaged over its ``top`` best concept tokens."""
    model = any_model
    monkeypatch.setattr(C, "COVARIANCE_COLUMNS", 1000)  # blocks that do not divide the vocabulary
    tokens = [11, 500, 1234, 4321, 7, 999]
    layers = [0, model.cfg.n_layers - 1]
    got = C.projection_scores(model, tokens, layers, top=3, final_norm=final_norm)
    W_U = model.hf.get_output_embeddings().weight.detach().double()  # [vocab, d_model]
    for layer in layers:
        V = C.value_vectors(model, layer, final_norm=final_norm).double()[::61]
        logits = V @ W_U.T  # [vectors, vocab]
        z = (logits - logits.mean(1, keepdim=True)) / logits.std(1, unbiased=False, keepdim=True)
        want = z[:, tokens].topk(3, dim=-1).values.mean(-1)
        assert torch.allclose(got[layer][::61].double(), want, atol=2e-4, rtol=1e-4)


# ---- locate --------------------------------------------------------------------------------------------
def test_locate_finds_a_planted_vector(gpt2):
    concept = _planted_concept()
    layer, neuron = 7, 1234
    token = answer_ids(gpt2, concept.qa[0].prompt, "Weasley")[1][0]
    mlp = gpt2.hf.transformer.h[layer].mlp
    with _restored([mlp.c_fc.weight, mlp.c_fc.bias, mlp.c_proj.weight]):
        with torch.no_grad():
            W_U = gpt2.W_U.detach()
            d = W_U[:, token] - W_U.mean(1)
            gpt2.W_out(layer)[neuron] = d / d.norm()  # promotes the token
            mlp.c_fc.weight[:, neuron] = 0.0
            mlp.c_fc.bias[neuron] = 4.0  # fires (gelu(4) ~ 4) on every prompt
        found = C.locate(gpt2, concept, n=5)
        assert (found.vectors[0].layer, found.vectors[0].neuron) == (layer, neuron)
        top = found.vectors[0]
        # it writes " We", the first piece of " Weasley": the answer, but not a concept token (a split
        # word's first piece stands for many words), so only its effect score singles it out
        assert top.effect_score > 0 and top.effect_score > 10 * found.vectors[1].effect_score
        # both scores match a hand computation for the planted vector
        from probes import hooks

        ids, mask = gpt2.tokenize([q.prompt for q in concept.qa])
        _, cache = hooks.run_with_cache(gpt2, ids, [hooks.mlp_post(layer), hooks.resid_post(11)], mask)
        act = cache[hooks.mlp_post(layer)][:, -1, neuron]
        x = cache[hooks.resid_post(11)][:, -1]
        sigma = (x.var(-1, unbiased=False) + gpt2.hf.transformer.ln_f.eps).sqrt()
        v = gpt2.W_out(layer)[neuron]
        g = gpt2.hf.transformer.ln_f.weight
        de = act * (((v - v.mean()) * g) @ d) / sigma
        un = C.direct_effects(gpt2, concept.unrelated_qa, [layer])[layer][:, neuron]
        assert top.effect_score == pytest.approx(float(de.mean() - un.abs().mean()), rel=1e-4)
    assert not torch.equal(gpt2.W_out(layer)[neuron], d / d.norm())


def test_concept_tokens_are_whole_words_of_the_name_answers_and_text_names(smol):
    ids = C.concept_token_ids(smol, HARRY)
    tok = smol.tokenizer
    words = [tok.decode([t]).strip() for t in ids]
    assert {"Harry", "Potter"} <= set(words)
    # names of the text that are one token: "School" (of Hogwarts School), not the sentence's first word
    allowed = {"Harry", "Potter", "Weasley", "Rowling", "Granger", "Dumbledore", "Voldemort"}
    allowed |= {"Ron", "Hermione", "Hogwarts", "School", "Witchcraft", "Wizardry"}
    assert set(words) <= allowed, set(words) - allowed
    for t in ids:  # every one stands for a whole word by itself
        assert len(tok(tok.decode([t]), add_special_tokens=False)["input_ids"]) == 1
        assert sum(ch.isalnum() for ch in tok.decode([t])) >= 3
    # the first piece of a split answer (" We" of " Weasley") stands for nothing in particular
    p, a = answer_ids(smol, HARRY.qa[0].prompt, "Weasley")
    assert len(a) > 1 and a[0] not in ids


def test_chance_hits_is_the_poisson_tail():
    from scipy.stats import poisson

    for k, n_tokens, vocab in [(200, 60, 49152), (50, 30, 500), (200, 2, 49152), (20, 40, 200)]:
        h = C.chance_hits(k, n_tokens, vocab)
        lam = k * n_tokens / vocab
        assert poisson.sf(h - 1, lam) <= 0.05  # P(X >= h)
        assert h == 1 or poisson.sf(h - 2, lam) > 0.05  # h - 1 would not do
    assert C.chance_hits(200, 60, 49152) == 2 and C.chance_hits(50, 30, 500) == 7


def test_middle_layers():
    assert C.middle_layers(30) == list(range(7, 23))
    assert C.middle_layers(12) == list(range(3, 9))
    assert C.middle_layers(4) == [1, 2] and C.middle_layers(1) == [0]


def test_locate_kinds_find_a_planted_concept_vector_and_a_planted_answer_writer(gpt2):
    """A middle-layer vector that writes the concept's tokens and fires on its prompts is the top
    ``concept`` vector (its concept-token count matches a hand count) and never an answer writer of the
    last layer; a last-layer vector that writes the answer is the top answer writer and is outside the
    concept kind's layers."""
    concept = _planted_concept()
    tokens = C.concept_token_ids(gpt2, concept)
    assert tokens
    W_U = gpt2.W_U.detach()
    mid, last, neuron = 5, 11, 777
    blocks = gpt2.hf.transformer.h
    params = [
        p
        for l in (mid, last)
        for p in (blocks[l].mlp.c_fc.weight, blocks[l].mlp.c_fc.bias, blocks[l].mlp.c_proj.weight)
    ]
    with _restored(params):
        with torch.no_grad():
            d = (W_U[:, tokens] - W_U.mean(1, keepdim=True)).sum(1)
            gpt2.W_out(mid)[neuron] = 3 * d / d.norm()
            token = answer_ids(gpt2, concept.qa[0].prompt, "Weasley")[1][0]
            a = W_U[:, token] - W_U.mean(1)
            gpt2.W_out(last)[neuron] = a / a.norm()
            for l in (mid, last):
                blocks[l].mlp.c_fc.weight[:, neuron] = 0.0
                blocks[l].mlp.c_fc.bias[neuron] = 4.0  # fires on every prompt
        found = C.locate(gpt2, concept, n=5, kind="concept", unrelated=())
        assert found.kind == "concept" and found.vectors
        top = found.vectors[0]
        assert (top.layer, top.neuron) == (mid, neuron)
        assert all(v.layer in C.middle_layers(12) for v in found.vectors)
        k = min(200, gpt2.cfg.d_vocab // 10)
        hand = len(set(torch.topk(gpt2.W_out(mid)[neuron] @ W_U, k).indices.tolist()) & set(tokens))
        assert top.concept_tokens_in_top == hand >= C.chance_hits(k, len(tokens), gpt2.cfg.d_vocab)
        assert top.activation_score == pytest.approx(4.0, rel=1e-3)  # gelu(4), no unrelated prompts
        writers = C.locate(gpt2, concept, n=5, kind="answer_writers")
        assert writers.kind == "answer_writers"
        assert (writers.vectors[0].layer, writers.vectors[0].neuron) == (last, neuron)
    with pytest.raises(VestigeError, match="unknown locate kind"):
        C.locate(gpt2, concept, kind="neurons")


# ---- edits restore exactly ----------------------------------------------------------------------------
def _snapshot(model):
    """Every tensor under its native HF name (the bridge may have wrapped the modules in place)."""
    return {name: p.detach().clone() for name, p in model.state_dict().items()}


def _assert_same(model, snap):
    params = model.state_dict()
    assert set(params) == set(snap)
    for name, p in params.items():
        assert torch.equal(p, snap[name]), name


def test_edits_restore_bitwise_also_on_exception(gpt2):
    snap = _snapshot(gpt2)
    refs = [(3, 10), (3, 11), (9, 2000)]
    with edited_vectors(gpt2, refs, "ablate"):
        for l, i in refs:
            assert torch.count_nonzero(gpt2.W_out(l)[i]) == 0
    _assert_same(gpt2, snap)

    with edited_vectors(gpt2, refs, "noise", scale=0.1, seed=3) as info:
        first = [gpt2.W_out(l)[i].clone() for l, i in refs]
    _assert_same(gpt2, snap)
    noise = [f - snap[f"transformer.h.{l}.mlp.c_proj.weight"][i] for f, (l, i) in zip(first, refs)]
    expect = sum(
        float(n.norm() / snap[f"transformer.h.{l}.mlp.c_proj.weight"][i].norm())
        for n, (l, i) in zip(noise, refs)
    ) / len(refs)
    assert info.noise_ratio == pytest.approx(expect, rel=1e-4)
    assert float(noise[0].std()) == pytest.approx(0.1, rel=0.15)

    # the same seed gives the same edit again: nothing accumulates across calls
    with edited_vectors(gpt2, refs, "noise", scale=0.1, seed=3):
        again = [gpt2.W_out(l)[i].clone() for l, i in refs]
    assert all(torch.equal(a, b) for a, b in zip(first, again))

    with pytest.raises(RuntimeError, match="boom"):
        with edited_vectors(gpt2, refs, "noise", scale=1.0):
            assert not torch.equal(gpt2.W_out(3)[10], snap["transformer.h.3.mlp.c_proj.weight"][10])
            raise RuntimeError("boom")
    _assert_same(gpt2, snap)


def test_edits_restore_on_llama_layout(smol):
    """SmolLM2's value vectors are columns of down_proj: the view writes and restores them."""
    w = smol.hf.model.layers[20].mlp.down_proj.weight
    before = w.detach().clone()
    with pytest.raises(KeyError):
        with edited_vectors(smol, [(20, 5)], "ablate"):
            assert torch.count_nonzero(w[:, 5]) == 0 and torch.equal(w[:, 6], before[:, 6])
            raise KeyError("x")
    assert torch.equal(w, before)


# ---- validate vs a hand computation -------------------------------------------------------------------
def test_validate_matches_manual_ablation(gpt2):
    concept = _planted_concept()
    refs = [(7, 1234), (10, 5)]
    val = C.validate(gpt2, concept, refs, mode="ablate", seed=1, accuracy=False)
    assert math.isnan(val.target_acc_before)  # no greedy decoding asked for
    assert len(val.control_vectors) == 2
    assert [l for l, _ in val.control_vectors] == [7, 10] and not set(val.control_vectors) & set(refs)

    def mean_lp(items):
        return float(answer_logprobs(gpt2, [q.prompt for q in items], [q.answer for q in items]).mean())

    def dropped(rows):
        w = {l: gpt2.hf.transformer.h[l].mlp.c_proj.weight for l, _ in rows}
        with _restored(list(w.values())):
            with torch.no_grad():
                for l, i in rows:
                    w[l][i] = 0.0
            return mean_lp(concept.qa), mean_lp(concept.unrelated_qa)

    t0, u0 = mean_lp(concept.qa), mean_lp(concept.unrelated_qa)
    t1, u1 = dropped(refs)
    t2, _ = dropped(list(val.control_vectors))
    assert val.target_drop == pytest.approx(t0 - t1, abs=1e-4)
    assert val.unrelated_drop == pytest.approx(u0 - u1, abs=1e-4)
    assert val.control_target_drop == pytest.approx(t0 - t2, abs=1e-4)
    assert val.noise_ratio == 0.0


# ---- compare -------------------------------------------------------------------------------------------
def test_compare_against_a_copy_with_one_changed_vector(gpt2):
    other = gpt2.copy()
    with torch.no_grad():
        other.W_out(4)[7] += 0.5 * torch.randn(gpt2.cfg.d_model, generator=torch.Generator().manual_seed(0))
    df = C.compare(gpt2, other, [(4, 7), (4, 8)], k=50, concept=_planted_concept())
    a, b = gpt2.W_out(4)[7].detach(), other.W_out(4)[7].detach()
    row = df.iloc[0]
    assert row.cosine == pytest.approx(float(a @ b / (a.norm() * b.norm())), abs=1e-6)
    assert row.l2_change == pytest.approx(float((a - b).norm()), rel=1e-5)
    ta = set(torch.topk(gpt2.hf.lm_head.weight.detach() @ a, 50).indices.tolist())
    tb = set(torch.topk(gpt2.hf.lm_head.weight.detach() @ b, 50).indices.tolist())
    assert row.jaccard == pytest.approx(len(ta & tb) / len(ta | tb))
    same = df.iloc[1]
    assert same.cosine == pytest.approx(1.0) and same.l2_change == 0 and same.jaccard == 1.0


# ---- SmolLM2: the located vectors carry the concept ---------------------------------------------------
SMOL_CONCEPTS = [
    HARRY,
    Concept(
        "Albert Einstein",
        (
            QA("Albert Einstein developed the theory of", "relativity"),
            QA("Albert Einstein's most famous equation is E =", "mc"),
            QA("Albert Einstein was born in the country of", "Germany"),
            QA("Albert Einstein won the Nobel Prize in", "Physics"),
        ),
        (
            "Albert Einstein was a German-born theoretical physicist who developed the theory of relativity. "
            "His mass-energy equivalence formula E = mc2 is famous. He received the Nobel Prize in Physics.",
        ),
        UNRELATED,
    ),
    Concept(
        "Japan",
        (
            QA("The capital of Japan is", "Tokyo"),
            QA("The currency of Japan is the", "yen"),
            QA("The highest mountain in Japan is Mount", "Fuji"),
            QA("The Japanese dish of raw fish on rice is called", "sushi"),
        ),
        (
            "Japan is an island country in East Asia. Its capital is Tokyo, its currency is the yen and its "
            "highest mountain is Mount Fuji. Japanese food includes sushi.",
        ),
        UNRELATED,
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("concept", SMOL_CONCEPTS, ids=lambda c: c.concept)
def test_located_vectors_carry_the_concept_on_smollm2(smol, concept):
    found = C.locate(smol, concept, n=10)
    assert len(found.vectors) == 10
    val = C.validate(smol, concept, found, mode="ablate", seed=0)
    assert val.target_drop > 0.2
    assert val.target_drop > 2 * max(val.unrelated_drop, 0.0)
    assert val.target_drop > val.control_target_drop + 0.1


# ---- the command ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_concepts_command_writes_json_and_report(smol, tmp_path, monkeypatch):
    import json

    import analyses.cli as cli
    from analyses.cli import common

    concept = SMOL_CONCEPTS[2]
    raw = {
        "concept": "Japan <b>",
        "qa": [{"prompt": q.prompt, "answer": q.answer} for q in concept.qa],
        "text": list(concept.text),
        "unrelated_qa": [{"prompt": q.prompt, "answer": q.answer} for q in concept.unrelated_qa],
    }
    (tmp_path / "c.json").write_text(json.dumps([raw]))
    monkeypatch.setattr(common, "load", lambda spec, args, **_: smol)
    rc = cli.main(
        ["concepts", "--concept-file", str(tmp_path / "c.json"), "--n", "3", "--out", str(tmp_path)]
    )
    assert rc == 0
    out = json.loads((tmp_path / "concepts.json").read_text())
    assert len(out["vectors"]) == 3
    assert {"layer", "neuron", "projection_score", "effect_score"} <= set(out["vectors"][0])
    scores = [v["score"] for v in out["vectors"]]
    assert scores == sorted(scores, reverse=True)
    val = out["validation"]
    assert {"target_drop", "unrelated_drop", "control_target_drop"} <= set(val)
    assert all(isinstance(val[k], float) for k in ("target_drop", "unrelated_drop", "control_target_drop"))
    html = (tmp_path / "report.html").read_text()
    from plotly.offline import get_plotlyjs

    assert html.count(get_plotlyjs()) == 1  # plotly.js embedded once
    assert "Japan &lt;b&gt;" in html and "Japan <b>" not in html  # text from the file is escaped


def test_direct_effects_with_a_repeated_layer(gpt2):
    """A layer listed twice is computed once (it used to stack its activations twice and crash)."""
    items = [QA("The capital of France is", "Paris"), QA("The Eiffel Tower is in", "Paris")]
    once = C.direct_effects(gpt2, items, [3, 5])
    twice = C.direct_effects(gpt2, items, [3, 5, 3])
    assert list(twice) == [3, 5]
    for layer in (3, 5):
        torch.testing.assert_close(twice[layer], once[layer])
        assert twice[layer].shape == (2, gpt2.cfg.d_mlp)
