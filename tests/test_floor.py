"""The knowledge floor (data/floor/fictional.json): facts about fictional entities that no model knows. The
file's contract, and on SmolLM2-135M-Instruct: every answer producible, none answered, none brought back by
the behavioural attacks (the measured numbers are in data/floor/README.md)."""

from __future__ import annotations

import json

import pytest

from analyses.behaviour import ATTACKS, answer_free_text, attack_scores, measure_behaviour
from probes.data import (
    DEFAULT_CONCEPT_FILE,
    FLOOR_FILE,
    data_path,
    load_concepts,
    load_floor,
    split_sentences,
)
from probes.qa import answer_ids, score_qa, validate_concept

# the answer types of data/concepts/README.md
TYPES = {
    "person", "surname", "city", "region", "country", "continent", "place", "celestial_body", "year",
    "number", "unit", "month", "color", "language", "currency", "direction", "animal", "creature", "food",
    "substance", "object", "body_part", "organization", "product", "title", "profession", "field", "event",
    "adjective", "other",
}  # fmt: skip


@pytest.fixture(scope="module")
def floor():
    return load_floor()


def test_floor_loads_as_one_concept(floor):
    assert FLOOR_FILE == data_path("floor", "fictional.json") and FLOOR_FILE.is_file()
    raw = json.loads(FLOOR_FILE.read_text(encoding="utf-8"))
    assert isinstance(raw, dict) and set(raw) == {"concept", "qa", "text", "unrelated_qa"}
    assert floor.concept == "knowledge floor" and floor.unrelated_qa == ()
    assert load_floor(FLOOR_FILE) == floor


def test_floor_items(floor):
    assert len(floor.qa) >= 48
    assert len({q.prompt for q in floor.qa}) == len(floor.qa)
    assert len({q.answer.lower() for q in floor.qa}) == len(floor.qa)
    assert all(q.type in TYPES for q in floor.qa)
    # every type has a second item, so that same-type decoys and knowledge conflicts have a partner
    types = [q.type for q in floor.qa]
    assert all(types.count(t) >= 2 for t in types)
    for q in floor.qa:
        assert not q.prompt[-1:].isspace() and not q.prompt.endswith(("-", "?"))
        # invented words: no digits (SmolLM2 starts every number with a lone space token), no very
        # common first words, and the answer is not given away by its own or another item's prompt
        assert not any(ch.isdigit() for ch in q.answer) and len(q.answer) >= 5
        assert q.answer.split()[0].lower() not in {"the", "a", "an", "of", "in", "and"}
        assert not any(q.answer.lower() in o.prompt.lower() for o in floor.qa)


def test_floor_text_states_no_answer(floor):
    sentences = [s for t in floor.text for s in split_sentences(t)]
    assert len(floor.text) >= 3 and len(sentences) >= 10
    low = " ".join(floor.text).lower()
    assert [q.answer for q in floor.qa if q.answer.lower() in low] == []
    # the attacks' answer-free text keeps every sentence
    assert split_sentences(answer_free_text(floor)) == sentences


def test_floor_is_disjoint_from_the_bundled_concepts(floor):
    prompts = {q.prompt.lower() for q in floor.qa}
    answers = {q.answer.lower() for q in floor.qa}
    candidates = data_path("concepts", "candidates.json")
    for path in (DEFAULT_CONCEPT_FILE, candidates):
        for c in load_concepts(path):
            theirs = c.qa + c.unrelated_qa
            assert not prompts & {q.prompt.lower() for q in theirs}, c.concept
            assert not answers & {q.answer.lower() for q in theirs}, c.concept
            assert not any(a in " ".join(c.text).lower() for a in answers), c.concept


def test_floor_is_unknown_to_smollm2(smol, floor):
    """Every answer is producible by the tokenizer, and SmolLM2 answers none of them, plain or with the
    expert-prefix attack (the cheap attack; the two costly ones are the slow test below)."""
    assert validate_concept(smol, floor) is floor
    n = len(floor.qa)
    plain = score_qa(smol, floor.qa)
    assert sum(plain.correct) <= 1, [
        (a, c) for a, c, ok in zip(plain.answers, plain.completions, plain.correct) if ok
    ]
    assert plain.accuracy <= 1 / n
    assert plain.mean_logprob < -15.0  # measured -25.1: invented multi-token words, far below any known fact
    prefix = attack_scores(smol, floor, "prefix")
    assert prefix.accuracy <= 2 / n


def test_floor_first_tokens_are_not_predicted(smol, floor):
    """No answer's first token is the model's top prediction after its prompt (first-token measurements
    such as the logit lens start from a low floor; measured: median rank 312, best rank 8)."""
    import torch

    pairs = [answer_ids(smol, q.prompt, q.answer) for q in floor.qa]
    ids, mask = smol.pad([p for p, _ in pairs], padding_side="left")
    with torch.no_grad():
        logits = smol.forward(ids, mask).logits[:, -1].float()
    first = torch.tensor([a[0] for _, a in pairs])
    ranks = (logits > logits.gather(1, first[:, None])).sum(1)
    assert int(ranks.min()) >= 1, [q for q, r in zip(floor.qa, ranks.tolist()) if r == 0]


@pytest.mark.slow
def test_floor_survives_every_attack_on_smollm2(smol, floor):
    """measure_behaviour with every attack of ATTACKS (the in-context attack reads the answer-free text) on
    every eighth item (8 of 58: the whole set takes about 5 minutes on 2 idle cores; its numbers, 0/58
    under each attack, are in data/floor/README.md)."""
    from dataclasses import replace

    part = replace(floor, qa=floor.qa[::8])
    n = len(part.qa)
    b = measure_behaviour(smol, part, attacks=ATTACKS)
    assert b.forget.accuracy <= 1 / n and b.forget.n == n
    assert set(b.attacks) == set(ATTACKS)
    for name, s in b.attacks.items():
        assert s.n == n and s.accuracy <= 1 / n, (name, s)
