"""Query forms (analyses/query_forms.py): deterministic rewrites, the options of the recognition test, and
its ranking against a one-item-at-a-time HF forward."""

from __future__ import annotations

import pytest
import torch

from analyses.behaviour import ATTACK_CHOICES, attack_scores
from analyses.query_forms import (
    COT_ANSWER,
    COT_QUESTION,
    FORMS,
    FRAMES,
    QueryFormError,
    chat_items,
    choices_of,
    few_shot_items,
    fill_blank_items,
    framed_items,
    multiple_choice_scores,
    query_form_scores,
    step_by_step_items,
)
from probes.data import QA, Concept

ITEMS = (
    QA("The capital of France is", "Paris", "city"),
    QA("The capital of Japan is", "Tokyo", "city"),
    QA("Water freezes at a temperature of zero degrees", "Celsius", "unit"),
    QA("The capital of Italy is", "Rome", "city"),
    QA("The largest planet of the solar system is", "Jupiter", "planet"),
)


def test_rewrites_are_deterministic_and_keep_the_answers():
    fb = fill_blank_items(ITEMS)
    assert (
        fb[0].prompt == "Fill in the blank with the missing words.\nThe capital of France is ____.\nAnswer:"
    )
    assert [q.answer for q in fb] == [q.answer for q in ITEMS]
    fs = few_shot_items(ITEMS)
    # the three items before each one, cyclically, with their answers; never the item itself
    assert fs[0].prompt == (
        "Water freezes at a temperature of zero degrees Celsius.\nThe capital of Italy is Rome.\n"
        "The largest planet of the solar system is Jupiter.\nThe capital of France is"
    )
    for q, f in zip(ITEMS, fs, strict=True):
        assert f.prompt.endswith(q.prompt) and f"{q.prompt} {q.answer}" not in f.prompt
    assert few_shot_items(ITEMS[:2])[1].prompt == "The capital of France is Paris.\nThe capital of Japan is"
    assert few_shot_items(ITEMS) == few_shot_items(ITEMS) and fill_blank_items(ITEMS) == fb


def test_tense_and_indirect_frames_end_with_the_prompt():
    for form in ("past", "future", "indirect"):
        got = framed_items(ITEMS, form)
        assert got == framed_items(ITEMS, form)  # deterministic
        for q, f in zip(ITEMS, got, strict=True):
            assert f.prompt == FRAMES[form].format(prompt=q.prompt) and f.prompt.endswith(q.prompt)
            assert (f.answer, f.type) == (q.answer, q.type)
    assert framed_items(ITEMS[:1], "past")[0].prompt == (
        "In the past, this was common knowledge. Back then, people would say: The capital of France is"
    )
    assert "will say" in framed_items(ITEMS[:1], "future")[0].prompt


def test_step_by_step_asks_after_the_models_own_reasoning(gpt2):
    """The reasoning is the model's greedy continuation of the question, cut at its first blank line; the
    final prompt is question + reasoning + the answer cue ending with the prompt; the same twice."""
    got = step_by_step_items(gpt2, ITEMS[:3], cot_tokens=12, batch_size=2)
    assert got == step_by_step_items(gpt2, ITEMS[:3], cot_tokens=12, batch_size=3)
    for q, f in zip(ITEMS[:3], got, strict=True):
        question = COT_QUESTION.format(prompt=q.prompt)
        reasoning = gpt2.generate([question], 12)[0].strip().split("\n\n", 1)[0].strip()
        assert f.prompt == question + reasoning + COT_ANSWER.format(prompt=q.prompt)
        assert f.answer == q.answer


def test_chat_form_opens_the_assistant_turn_with_the_prompt(smol):
    q = chat_items(smol, ITEMS[:1])[0]
    assert q.prompt.endswith("<|im_start|>assistant\nThe capital of France is")
    assert (
        "<|im_start|>user\nComplete this sentence with the correct fact: The capital of France is ..."
        in q.prompt
    )

    class NoTemplate:
        name = "plain"
        tokenizer = type("T", (), {"chat_template": None})()

    with pytest.raises(QueryFormError, match="no chat template"):
        chat_items(NoTemplate(), ITEMS)


def test_choices_are_same_type_first_then_any_and_never_repeat():
    c = choices_of(ITEMS)
    assert c[0] == ["Paris", "Tokyo", "Rome", "Celsius"]  # the two other cities, then the next answers
    assert c[2] == ["Celsius", "Rome", "Jupiter", "Paris"]  # no other unit: any type, in order after it
    assert all(len(o) == 4 and len({x.lower() for x in o}) == 4 for o in c)
    same = (QA("a is", "x", "t"), QA("b is", "X", "t"), QA("c is", "y", "t"))
    assert choices_of(same) == [["x", "y"], ["X", "y"], ["y", "x"]]  # case-insensitive duplicates dropped


def test_multiple_choice_equals_one_item_at_a_time(any_model):
    """Ranking by the mean per-token log-probability, batched, equals a loop of single HF forwards."""
    model = any_model
    got = multiple_choice_scores(model, ITEMS, batch_size=3)
    for q, opts, ok, top in zip(ITEMS, choices_of(ITEMS), got.correct, got.completions, strict=True):
        means = []
        for o in opts:
            p = model.tokenizer(q.prompt)["input_ids"]
            a = model.tokenizer(" " + o, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model.hf(input_ids=torch.tensor([p + a])).logits[0].float()
            logp = torch.log_softmax(logits, -1)
            means.append(sum(float(logp[len(p) - 1 + j, a[j]]) for j in range(len(a))) / len(a))
        best = max(range(len(opts)), key=lambda i: means[i])
        assert top == opts[best]
        assert ok == (best == 0 and all(m < means[0] for m in means[1:]))


def test_every_form_is_an_attack_choice_and_scores_the_original_prompts(smol):
    assert set(FORMS) <= set(ATTACK_CHOICES)
    concept = Concept("capitals", ITEMS)
    for form in FORMS:
        s = attack_scores(smol, concept, form)
        assert s.prompts == tuple(q.prompt for q in ITEMS) and len(s.correct) == len(ITEMS)
    with pytest.raises(ValueError, match="unknown query form"):
        query_form_scores(smol, ITEMS, "reverse")
    # SmolLM2 knows these: the recognition test finds at least the capitals
    mc = query_form_scores(smol, ITEMS, "multiple_choice")
    assert sum(mc.correct) >= 3
    # and it still completes them inside the tense frames and the story
    for form in ("past", "future", "indirect"):
        assert sum(query_form_scores(smol, ITEMS, form).correct) >= 3, form
