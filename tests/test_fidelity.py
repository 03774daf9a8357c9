"""vestige against the papers' reference rules, on the same SmolLM2 inputs.

Each test ports the one small rule it needs from the reference implementation (cited at the function)
and runs it on a plain, unwrapped HF copy of SmolLM2 (``ref``), the way the reference code runs, while
vestige runs on the session model (bridge and all). The ports are our own code, written from reading
the references; nothing is vendored.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest
import torch

from probes import concepts as C
from probes import retrieval
from probes.ches import ches_pairs, pair_ids


@pytest.fixture(scope="module")
def ref(smol):
    """An unwrapped HF copy of SmolLM2 (same weights, no bridge): what the reference code runs on."""
    return smol.copy()


# ---- CHES (Razin et al. 2024) ---------------------------------------------------------------------------
QUESTIONS = [
    "What is the capital of France?",
    "Who is Harry Potter's best friend?",
    "What is the largest planet in the solar system?",
    "At what temperature does water boil?",
    "Name a primary colour.",
]
CHOSEN = [
    "Paris, a city on the Seine.",
    "Ron Weasley.",
    "Jupiter, the gas giant.",
    "100 degrees Celsius at sea level.",
    "Red.",
]
REJECTED = ["I don't know.", "Draco Malfoy, of course.", "Saturn and its rings.", "I don't know.", "Green."]


def _chat_query(tok, question: str) -> str:
    """The reference's prompt for a chat-template model (``__create_chat_template_format_input_func``)."""
    return tok.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )


def ref_ches_per_example(hf, tok, query: str, chosen: str, rejected: str) -> tuple[float, float]:
    """princeton-nlp/unintentional-unalignment, ``compute_preference_similarity_per_example.py``,
    ``get_and_log_hidden_embedding_based_pref_similarities``: ``query`` and ``query + response`` are
    tokenized alone (no special tokens with a chat template), every final hidden state from the last
    query token to the end is summed, and the lengths are the numbers of summed states."""
    q_len = len(tok(query, add_special_tokens=False)["input_ids"])
    sums, lens = [], []
    for text in (query + chosen, query + rejected):
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            h = hf(input_ids=ids, output_hidden_states=True).hidden_states[-1][0][q_len - 1 :].double()
        sums.append(h.sum(0))
        lens.append(h.shape[0])
    sp, sn = sums
    raw = float(sp @ sn - sp.norm() ** 2)
    normalized = float(sp @ sn / (lens[0] * lens[1]) - sp.norm() ** 2 / lens[0] ** 2)
    return raw, normalized


def ref_compute_ches_scores(hf, tok, query: str, chosen: str, rejected: str) -> tuple[float, float]:
    """princeton-nlp/unintentional-unalignment, ``ches/ches.py``, ``compute_ches_scores``: on sequences
    that end with EOS, zero the states before the last prompt token, drop the last position (the EOS's
    own state), sum; lengths = positions left minus the last prompt index."""
    q_len = len(tok(query, add_special_tokens=False)["input_ids"])
    sums, lens = [], []
    for text in (query + chosen, query + rejected):
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            h = hf(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1].double()
        keep = torch.arange(h.shape[1]) >= q_len - 1
        h = (h * keep[None, :, None])[:, :-1]
        sums.append(h.sum(1)[0])
        lens.append(h.shape[1] - (q_len - 1))
    sp, sn = sums
    raw = float(sp @ sn - sp.norm() ** 2)
    normalized = float(sp @ sn / (lens[0] * lens[1]) - sp.norm() ** 2 / lens[0] ** 2)
    return raw, normalized


def test_ches_agrees_with_the_reference(smol, ref):
    tok = smol.tokenizer
    queries = [_chat_query(tok, q) for q in QUESTIONS]
    for q, c, r in zip(queries, CHOSEN, REJECTED):  # identical inputs: the same token ids
        for resp in (c, r):
            p_ids, r_ids = pair_ids(smol, q, resp)
            assert p_ids + r_ids == tok(q + resp, add_special_tokens=False)["input_ids"]
    raw = ches_pairs(smol, queries, CHOSEN, REJECTED)
    normalized = ches_pairs(smol, queries, CHOSEN, REJECTED, length_normalized=True)
    for i, (q, c, r) in enumerate(zip(queries, CHOSEN, REJECTED)):
        for port in (ref_ches_per_example, ref_compute_ches_scores):
            want_raw, want_norm = port(ref.hf, tok, q, c, r)
            assert raw[i].item() == pytest.approx(want_raw, rel=1e-5)
            assert normalized[i].item() == pytest.approx(want_norm, rel=1e-5)
    # without the EOS position vestige is a different quantity, by a wide margin
    no_eos = ches_pairs(smol, queries, CHOSEN, REJECTED, eos=False)
    assert ((no_eos - raw).abs() / raw.abs()).min() > 0.01


# ---- retrieval heads (Wu et al. 2024) -------------------------------------------------------------------
def ref_find_needle_idx(prompt_ids: list[int], needle_ids: list[int]) -> tuple[int, int]:
    """nightdessert/Retrieval_Head, ``retrieval_head_detection.py``, ``find_needle_idx``: the first
    window of ``len(needle_ids)`` prompt tokens holding more than 90% of the needle's distinct ids."""
    want = set(needle_ids)
    for i in range(len(prompt_ids)):
        window = set(prompt_ids[i : i + len(needle_ids)])
        if len(window & want) / len(want) > 0.9:
            return i, i + len(needle_ids)
    return -1, -1


def ref_rouge1_recall(reference: str, candidate: str) -> float:
    """rouge_score's ROUGE-1 recall as ``retrieval_head_detection.py`` calls it (tokens: lower case,
    runs of [a-z0-9]); the Porter stemmer of ``use_stemmer=True`` is left out, as in vestige."""

    def tokens(text: str) -> Counter:
        return Counter(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())

    ref_t, cand_t = tokens(reference), tokens(candidate)
    total = sum(ref_t.values())
    return sum(min(n, cand_t[w]) for w, n in ref_t.items()) / total if total else 0.0


@torch.no_grad()
def ref_decode(hf, tok, prompt_ids: list[int], span: tuple[int, int], decode_len: int = 50):
    """``retrieval_head_detection.py``, ``decode`` + ``retrieval_calculate``: pre-fill all but the last
    prompt token, then feed one token a step with ``output_attentions``; a head whose top-1 attended
    position lies in the needle span and holds the token just generated gets ``1 / span length``; stop
    after the newline token (SmolLM2's BPE: any token holding a newline)."""
    start, end = span
    ids = torch.tensor([prompt_ids])
    past = hf(input_ids=ids[:, :-1], use_cache=True).past_key_values
    inp = ids[0, -1]
    output = []
    score = None
    for _ in range(decode_len):
        out = hf(input_ids=inp.view(1, 1), past_key_values=past, use_cache=True, output_attentions=True)
        past = out.past_key_values
        inp = out.logits[0, -1].argmax()
        output.append(int(inp))
        top = torch.stack([a[0, :, -1].topk(1).indices[:, 0] for a in out.attentions])  # [layers, heads]
        if score is None:
            score = torch.zeros(top.shape)
        for (layer, head), i in zip(
            [(l, h) for l in range(top.shape[0]) for h in range(top.shape[1])], top.flatten().tolist()
        ):
            if start <= i < end and int(inp) == prompt_ids[i]:
                score[layer, head] += 1 / (end - start)
        if "\n" in tok.decode([int(inp)]):
            break
    return output, score


def ref_retrieval_scores(hf, tok, tests) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """``evaluate_and_log`` + ``retrieval_head_accumulate``: a test counts when ROUGE-1 recall * 100 of
    the answer exceeds 50; a head's score is its mean over the counted tests. The needle span is looked
    up with the answer as it stands in the context (``" " + answer``: SentencePiece, which the reference
    uses, prepends that space on its own)."""
    counted, spans = [], []
    for t in tests:
        needle_ids = tok(" " + t.needle.answer, add_special_tokens=False)["input_ids"]
        span = ref_find_needle_idx(list(t.ids), needle_ids)
        spans.append(span)
        output, score = ref_decode(hf, tok, list(t.ids), span)
        response = tok.decode(output, skip_special_tokens=True).strip()
        if ref_rouge1_recall(t.needle.answer, response) * 100 > 50:
            counted.append(score)
    return torch.stack(counted).mean(0), spans


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.flatten().numpy(), b.flatten().numpy()).statistic)


@pytest.mark.slow
def test_retrieval_scores_agree_with_the_reference(smol, ref):
    needles = retrieval.load_needles()
    tests = retrieval.build_tests(smol, needles, retrieval.load_haystack(), [500], [0.5])
    got = retrieval.retrieval_scores(smol, tests, progress=False)
    want, spans = ref_retrieval_scores(ref.hf, smol.tokenizer, tests)
    assert [t.span for t in tests] == spans  # the answer spans, leading-space pieces included
    assert got.n_correct > len(tests) // 2
    assert (got.scores - want).abs().max() <= 1e-5
    assert _spearman(got.scores, want) > 0.999
    strict = sorted(zip(*torch.where(want > retrieval.RETRIEVAL_THRESHOLD)))
    assert sorted(got.retrieval_heads) == [(int(l), int(h)) for l, h in strict]


def test_answer_span_keeps_the_leading_space_piece(smol):
    """SmolLM2 splits " 2,450" into " ", "2", ",", ...: the span holds the " " piece, as the reference's
    (SentencePiece) span would, and equals the reference's window search."""
    needle = retrieval.Needle(
        "Felix paid 2,450 dollars for his telescope.", "How much did Felix pay?", "2,450"
    )
    test = retrieval.build_tests(smol, [needle], retrieval.load_haystack(), [200], [0.5])[0]
    s, e = test.span
    assert smol.tokenizer.convert_ids_to_tokens(test.ids[s]) == "Ġ"
    assert smol.tokenizer.decode(list(test.ids[s:e])) == " 2,450"
    ids = smol.tokenizer(" 2,450", add_special_tokens=False)["input_ids"]
    assert ref_find_needle_idx(list(test.ids), ids) == (s, e)


def test_decoding_stops_at_a_newline(smol):
    test = retrieval.build_tests(
        smol, retrieval.load_needles()[:1], retrieval.load_haystack(), [200], [0.5], chat=False
    )[0]
    stopped, _ = retrieval.decode(smol, test.ids, 30)
    free, _ = retrieval.decode(smol, test.ids, 30, stop_at_newline=False)
    text = smol.tokenizer.decode(stopped)
    assert "\n" in smol.tokenizer.decode(stopped[-1:]) or len(stopped) == 30 or stopped[-1] == 2
    assert "\n" not in smol.tokenizer.decode(stopped[:-1])
    assert free[: len(stopped)] == stopped and text.strip()


def test_threshold_is_strict():
    scores = torch.tensor([[0.1, 0.25], [0.0999, 0.1000001]])
    r = retrieval.RetrievalScores(scores, retrieval.RETRIEVAL_THRESHOLD, ())
    assert r.retrieval_heads == [(0, 1), (1, 1)]  # a head at exactly 0.1 is not a retrieval head


# ---- ConceptVectors (Hong et al. 2024) ----------------------------------------------------------------
VECTORS = [(layer, neuron) for layer in (0, 7, 15, 22, 29) for neuron in (0, 42, 777, 1535)]


def ref_projection(hf, layer: int, dim: int, top_k: int = 200) -> tuple[list[int], torch.Tensor]:
    """yihuaihong/ConceptVectors, ``forget.py``, ``evaluate`` (and ``evaluate_util.jaccard_similarity``):
    the value vector ``down_proj.weight.T[dim]`` times the output embedding, sorted descending, top 200."""
    E = hf.get_output_embeddings().weight.detach()
    params = hf.state_dict()[f"model.layers.{layer}.mlp.down_proj.weight"].T[dim, :]
    logits = params.T.matmul(E.T)
    values, order = torch.sort(logits, descending=True)
    return order[:top_k].tolist(), values[:top_k]


def ref_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """``evaluate_util.cosine_similarity``: F.cosine_similarity, clamped to at most 1."""
    return min(torch.nn.functional.cosine_similarity(a, b, dim=-1).item(), 1.0)


def test_concept_projection_agrees_with_the_reference(smol, ref):
    layers = sorted({layer for layer, _ in VECTORS})
    res = C.scan(smol, layers, k=200)
    for layer, neuron in VECTORS:
        want_ids, want_scores = ref_projection(ref.hf, layer, neuron)
        ids, scores = res.top(layer, neuron)
        assert ids == want_ids  # the same tokens in the same order
        assert torch.allclose(torch.tensor(scores), want_scores, atol=1e-5, rtol=0)
        top = C.top_tokens(smol, layer, neuron, k=200)
        assert [smol.tokenizer.decode([t]) for t in want_ids] == [t for t, _ in top]
    # compare() of a model with an exact copy: the reference's clamped cosine and a full overlap
    df = C.compare(smol, ref, VECTORS, k=200)
    assert (df.cosine <= 1.0).all() and (df.jaccard == 1.0).all()
    for (layer, neuron), cos in zip(VECTORS, df.cosine):
        v = ref.hf.state_dict()[f"model.layers.{layer}.mlp.down_proj.weight"].T[neuron, :]
        assert cos == pytest.approx(ref_cosine(v, v.clone()), abs=1e-6)


def test_final_norm_projection_is_a_different_ranking(smol, ref):
    """``final_norm=True`` is not the reference's projection: far fewer shared top-200 tokens."""
    res = C.scan(smol, sorted({layer for layer, _ in VECTORS}), k=200, final_norm=True)
    overlaps = [
        len(set(ref_projection(ref.hf, layer, neuron)[0]) & set(res.top(layer, neuron)[0]))
        for layer, neuron in VECTORS
    ]
    assert min(overlaps) < 150


# ---- plain HF code next to the bridge -------------------------------------------------------------------
def test_hf_output_attentions_survive_the_bridge(any_model):
    from probes import hooks

    model = any_model
    ids = torch.tensor([model.tokenizer("The capital of France is Paris, a city on the Seine")["input_ids"]])
    plain = model.copy()
    with torch.no_grad():
        want = plain.hf(input_ids=ids, output_attentions=True).attentions
        model.bridge  # noqa: B018 - build the bridge (wraps the HF attention modules)
        got = model.hf(input_ids=ids, output_attentions=True).attentions
        _, cache = hooks.run_with_cache(model, ids, hooks.all_layers(hooks.attn_pattern, model.cfg.n_layers))
    assert len(got) == len(want) == model.cfg.n_layers
    for layer, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a, cache[hooks.attn_pattern(layer)], rtol=1e-5, atol=1e-5)


def test_hf_output_attentions_refused_when_unrecordable(gpt2, monkeypatch):
    """Where the recording hook cannot be installed, asking for attentions raises instead of returning
    an empty tuple."""
    from transformers.utils import output_capturing

    from probes.model import BridgeAttentionError

    monkeypatch.delattr(output_capturing, "install_output_capuring_hook")
    model = gpt2.copy()
    model.bridge  # noqa: B018
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(BridgeAttentionError, match="output_attentions"):
        model.hf(input_ids=ids, output_attentions=True)
    assert model.hf(input_ids=ids).logits.shape[:2] == (1, 3)  # everything else still works
