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
    item_form_scores,
    multiple_choice_scores,
    query_form_scores,
    step_by_step_items,
    variants_of,
)
from probes.data import QA, Concept, load_concepts, load_floor, parse_concept
from probes.errors import ConceptFileError
from probes.qa import score_qa

ITEMS = (
    QA(
        "The capital of France is",
        "Paris",
        "city",
        reverse=QA("Paris is the capital city of", "France", "country"),
        translations={
            "fr": QA("La capitale de la France est", "Paris"),
            "es": QA("La capital de Francia es", "París"),
        },
    ),
    QA(
        "The capital of Japan is",
        "Tokyo",
        "city",
        reverse=QA("Tokyo is the capital city of", "Japan", "country"),
        translations={"es": QA("La capital de Japón es", "Tokio")},
    ),
    QA("Water freezes at a temperature of zero degrees", "Celsius", "unit"),
    QA(
        "The capital of Italy is",
        "Rome",
        "city",
        reverse=QA("Rome is the capital city of", "Italy", "country"),
        translations={"fr": QA("La capitale de l'Italie est", "Rome")},
    ),
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
        query_form_scores(smol, ITEMS, "backwards")
    # SmolLM2 knows these: the recognition test finds at least the capitals
    mc = query_form_scores(smol, ITEMS, "multiple_choice")
    assert sum(mc.correct) >= 3
    # and it still completes them inside the tense frames and the story
    for form in ("past", "future", "indirect"):
        assert sum(query_form_scores(smol, ITEMS, form).correct) >= 3, form


def test_item_forms_ask_each_items_own_variants_and_leave_the_others_unasked(any_model):
    """``reverse`` and ``cross_lingual`` equal scoring the variants one by one: an item counts when any
    variant is answered, its completion is the likeliest variant's, and items without one are not asked."""
    assert [v.answer for v in variants_of(ITEMS[0], "cross_lingual")] == ["París", "Paris"]  # es, fr
    for form in ("reverse", "cross_lingual"):
        got = item_form_scores(any_model, ITEMS, form)
        assert got.prompts == tuple(q.prompt for q in ITEMS)
        for i, q in enumerate(ITEMS):
            variants = variants_of(q, form)
            if not variants:
                assert (got.correct[i], got.completions[i]) == (False, "")
                assert got.logprobs[i] != got.logprobs[i]  # NaN: not asked
                continue
            one = score_qa(any_model, variants)
            best = max(range(len(variants)), key=lambda k: one.logprobs[k])
            assert got.correct[i] == any(one.correct)
            # greedy completions are as long as a batch's longest answer needs: compare their common part
            a, b = got.completions[i], one.completions[best]
            assert a.startswith(b) or b.startswith(a)
            assert got.answers[i] == variants[best].answer
            assert got.logprobs[i] == pytest.approx(one.logprobs[best], abs=1e-4)
        # the mean log-probability is over the items asked
        asked = [x for x in got.logprobs if x == x]
        assert got.mean_logprob == pytest.approx(sum(asked) / len(asked))
    bare = (ITEMS[2], ITEMS[4])
    with pytest.raises(QueryFormError, match="nothing to ask"):
        query_form_scores(any_model, bare, "reverse")
    # the audit's control may lack them: allowed there, every item then unanswered
    loose = query_form_scores(any_model, bare, "cross_lingual", require=False)
    assert loose.correct == (False, False) and loose.completions == ("", "")


def test_concept_files_carry_reverse_and_translations_and_name_bad_ones():
    raw = {
        "concept": "capitals",
        "qa": [
            {
                "prompt": "The capital of France is",
                "answer": "Paris",
                "reverse": {"prompt": "Paris is the capital city of", "answer": "France", "type": "country"},
                "translations": {
                    "fr": {"prompt": "La capitale de la France est", "answer": "Paris"},
                    "de": None,
                },
            }
        ],
    }
    q = parse_concept(raw).qa[0]
    assert q.reverse == QA("Paris is the capital city of", "France", "country")
    assert q.translations == {"fr": QA("La capitale de la France est", "Paris")}  # null: no translation
    # the variants do not change an item's identity (splits, caches and sets compare prompt and answer)
    assert q == QA("The capital of France is", "Paris") and hash(q) == hash(
        QA("The capital of France is", "Paris")
    )
    bad_lang = {
        **raw,
        "qa": [{**raw["qa"][0], "translations": {"French": raw["qa"][0]["translations"]["fr"]}}],
    }
    with pytest.raises(ConceptFileError, match="not a language code"):
        parse_concept(bad_lang)
    bad_rev = {**raw, "qa": [{**raw["qa"][0], "reverse": {"prompt": "Paris is the capital city of"}}]}
    with pytest.raises(ConceptFileError, match="reverse lacks 'prompt' or 'answer'"):
        parse_concept(bad_rev)
    bad_tr = {**raw, "qa": [{**raw["qa"][0], "translations": ["fr"]}]}
    with pytest.raises(ConceptFileError, match="keyed by language code"):
        parse_concept(bad_tr)


SWEEP = ("Wolfgang Amadeus Mozart", "Albert Einstein", "Harry Potter")


def test_bundled_reverse_and_translations_are_well_formed():
    """Every bundled concept item and every floor fact has a reverse; the three concepts of the attack sweep,
    the unrelated facts and the floor have French and Spanish translations. No variant gives its answer
    away in its prompt, and a reverse prompt states the forward answer."""
    concepts = load_concepts()
    floor = load_floor()
    items = [q for c in concepts for q in (*c.qa, *c.unrelated_qa)] + list(floor.qa)
    for q in items:
        assert q.reverse is not None, q.prompt
        assert q.answer.lower() in q.reverse.prompt.lower(), q.prompt
        for v in (q.reverse, *q.translations.values()):
            assert v.answer.lower() not in v.prompt.lower() and v.prompt == v.prompt.rstrip(), v.prompt
    translated = [q for c in concepts if c.concept in SWEEP for q in c.qa]
    translated += [q for c in concepts for q in c.unrelated_qa] + list(floor.qa)
    assert all(set(q.translations) == {"es", "fr"} for q in translated)


def test_smollm2_answers_the_reverse_of_what_it_knows_and_no_floor_fact(smol):
    """Real numbers on SmolLM2 (the base): the reverse direction of the sweep concepts is mostly answered
    (Einstein 22/22, Harry Potter 27/32, Mozart 10/21 when measured), the floor's reverse never (0/58)."""
    concepts = {c.concept: c for c in load_concepts()}
    got = {name: query_form_scores(smol, concepts[name].qa, "reverse").accuracy for name in SWEEP}
    assert (
        got["Albert Einstein"] == 1.0 and got["Harry Potter"] >= 0.8 and got["Wolfgang Amadeus Mozart"] >= 0.4
    )
    assert query_form_scores(smol, load_floor().qa, "reverse").accuracy == 0.0
    assert query_form_scores(smol, load_floor().qa, "cross_lingual").accuracy == 0.0
