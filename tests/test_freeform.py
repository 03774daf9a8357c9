"""Free-form scoring (probes/freeform.py): ROUGE recall against a hand LCS, per-token answer NLL and TOFU's
truth ratio against one-item-at-a-time HF forwards, TOFU's aggregation rule, and real answers of SmolLM2."""

from __future__ import annotations

import math

import pytest
import torch

from probes.data import QA
from probes.freeform import (
    FreeFormError,
    free_form_scores,
    mean_answer_nll,
    rouge_recall,
    truth_ratio_score,
    truth_ratios,
)


def _lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_rouge_recall_equals_a_hand_count():
    refs = ["alice met bob in paris", "the cat sat on the mat", "she runs home"]
    preds = ["in paris bob met alice", "the cat is on a mat", "she was running home"]
    r1, rl = rouge_recall(refs, preds)
    # every reference word occurs in the reordered prediction, but only "in paris" keeps its order
    assert r1[0] == 1.0 and rl[0] == pytest.approx(2 / 5)
    # "the" occurs twice in the reference, once in the prediction: clipped counts
    assert r1[1] == pytest.approx(4 / 6)
    for ref, pred, got in zip(refs[:2], preds[:2], rl[:2], strict=True):
        assert got == pytest.approx(_lcs(ref.split(), pred.split()) / len(ref.split()))
    # Porter stemming: runs and running are one word
    assert r1[2] == 1.0 and rl[2] == 1.0
    with pytest.raises(FreeFormError, match="2 references for 1 predictions"):
        rouge_recall(refs[:2], preds[:1])


def _nll_one(model, prompt: str, answer: str) -> float:
    p = model.tokenizer(prompt)["input_ids"]
    a = model.tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model.hf(input_ids=torch.tensor([p + a])).logits[0].float(), -1)
    return -sum(float(logp[len(p) - 1 + j, a[j]]) for j in range(len(a))) / len(a)


PROMPTS = ["Question: Who wrote Hamlet?\nAnswer:", "Question: What is the capital of Japan?\nAnswer:"]
PARA = ["It was written by William Shakespeare.", "Tokyo is the capital of Japan."]
PERT = [["It was written by Charles Dickens.", "It was written by Jane Austen."], ["Osaka is the capital."]]


def test_answer_nll_and_truth_ratio_equal_single_forwards(any_model):
    model = any_model
    got = mean_answer_nll(model, PROMPTS, PARA, batch_size=1)
    for g, p, a in zip(got, PROMPTS, PARA, strict=True):
        assert float(g) == pytest.approx(_nll_one(model, p, a), abs=1e-4)
    ratios = truth_ratios(model, PROMPTS, PARA, PERT, batch_size=2)
    for r, p, para, pert in zip(ratios, PROMPTS, PARA, PERT, strict=True):
        expected = math.exp(_nll_one(model, p, para) - sum(_nll_one(model, p, k) for k in pert) / len(pert))
        assert float(r) == pytest.approx(expected, rel=1e-3)
    with pytest.raises(FreeFormError, match="at least one perturbed answer"):
        truth_ratios(model, PROMPTS, PARA, [PERT[0], []])


def test_truth_ratio_score_is_tofus_rule():
    # forget: min(R, 1/R), 1 when the model cannot tell right from wrong; retain: max(0, 1 - R)
    assert truth_ratio_score([0.5, 2.0], forget=True) == pytest.approx(0.5)
    assert truth_ratio_score([1.0], forget=True) == 1.0
    assert truth_ratio_score([0.5, 2.0], forget=False) == pytest.approx(0.25)
    assert truth_ratio_score(torch.tensor([0.1]), forget=False) == pytest.approx(0.9)


def test_free_form_answers_of_smollm2(smol):
    """The real model: a known answer written in other words still gets ROUGE credit that prefix matching
    would deny, and it prefers the true paraphrase to the perturbed answers (truth ratio below 1)."""
    items = [QA(PROMPTS[0], "William Shakespeare wrote Hamlet."), QA(PROMPTS[1], PARA[1])]
    s = free_form_scores(smol, items, max_new_tokens=24)
    assert s.prompts == tuple(PROMPTS) and len(s.generations) == 2
    assert all(0.0 <= x <= 1.0 for x in s.rougeL_recall + s.rouge1_recall + s.probability)
    r1, rl = rouge_recall([q.answer for q in items], list(s.generations))
    assert (tuple(r1), tuple(rl)) == (s.rouge1_recall, s.rougeL_recall)
    assert max(s.rougeL_recall) >= 0.5, s.to_frame()  # Shakespeare, said its own way
    assert not any(g.lower().startswith(q.answer.lower()) for g, q in zip(s.generations, items, strict=True))
    ratios = truth_ratios(smol, PROMPTS, PARA, PERT)
    assert bool((ratios < 1).all()), ratios
    assert set(s.summary()) == {"rougeL_recall", "rouge1_recall", "probability", "n"}
    assert list(s.to_frame().columns)[:3] == ["prompt", "answer", "generation"]


def test_sentence_answers_are_scored_by_rouge_in_the_data_contract(smol):
    """A QA with scoring="rouge" counts when its completion (to the first blank line) recalls half of the
    answer by ROUGE-L; the default prefix match would refuse the same words in another order."""
    from probes.qa import ROUGE_CORRECT, is_correct, max_tokens_for, score_qa

    said = "It was Shakespeare who wrote Hamlet.\n\nQuestion: next"
    assert is_correct(said, "William Shakespeare wrote Hamlet.", "rouge")  # LCS 3 of 4 words: 0.75
    assert not is_correct(said, "William Shakespeare wrote Hamlet.")
    assert not is_correct("Dickens wrote it.", "William Shakespeare wrote Hamlet.", "rouge")  # 1 of 4
    assert ROUGE_CORRECT == 0.5 and max_tokens_for(5, "rouge") == 18 and max_tokens_for(5, "prefix") == 7
    with pytest.raises(ValueError, match="scoring"):
        QA("a", "b", scoring="exact")
    items = [QA(PROMPTS[0], "William Shakespeare wrote Hamlet.", scoring="rouge")]
    s = score_qa(smol, items)
    r1, rl = rouge_recall([items[0].answer], [s.completions[0].strip().split("\n\n")[0]])
    assert s.correct == (rl[0] >= ROUGE_CORRECT,) and s.correct == (True,), s.completions
    assert score_qa(smol, [QA(PROMPTS[0], items[0].answer)]).correct == (False,)
    # a rewrite of the item (an attack's re-wording) keeps its scoring
    from analyses.query_forms import framed_items

    assert framed_items(items, "past")[0].scoring == "rouge"
