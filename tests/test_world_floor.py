"""The knowledge floor of the synthetic world (analyses.world.World.floor_people / floor_concept): people
that neither the full model nor the retrain oracle ever saw, measured like the forget people, as the
chance level of every trace."""

from __future__ import annotations

import hashlib
import json

import pytest

from analyses.behaviour import answer_free_text
from analyses.world import (
    ATTRIBUTES,
    N_VALUES,
    QA_ATTRIBUTES,
    TEMPLATES,
    WORLD_VERSION,
    WorldConfig,
    build_world,
    world_tokenizer,
)

# Taken from the default world before the floor existed: the floor must not move the world (the cached
# models under its config key stay valid).
CORPUS_SHA256 = "78da4b1562e415baf07a710187ced13c79ed343fb2622da0df4dd60772f2baea"
PEOPLE_SHA256 = "b020e74a4f22919fa867b4e11cf3d6d461ff443ef757f65f7772a7abba4da613"
CONFIG_KEY = "886e6fd9fce7e820"


def _people_sha(world) -> str:
    blob = [[p.name, p.facts, p.heldout] for p in world.people] + [list(world.forget)]
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def test_floor_leaves_the_world_unchanged():
    w = build_world()
    w.floor_people()
    w.floor_concept(50)
    assert WORLD_VERSION == 2 and w.config.key() == CONFIG_KEY
    assert hashlib.sha256("\n".join(w.corpus()).encode()).hexdigest() == CORPUS_SHA256
    assert _people_sha(w) == PEOPLE_SHA256
    assert w == build_world() and w.corpus(without_forget=True) == build_world().corpus(without_forget=True)


def test_floor_is_deterministic_and_seeded():
    a, b = build_world(WorldConfig(seed=3)), build_world(WorldConfig(seed=3))
    assert a.floor_people() == b.floor_people() and a.floor_concept() == b.floor_concept()
    assert a.floor_people(7) == a.floor_people(7)
    assert build_world(WorldConfig(seed=4)).floor_people() != a.floor_people()
    assert len(a.floor_people(5)) == 5 and len(a.floor_people()) == 20


def test_floor_people_are_new_names_of_known_words_with_uniform_facts():
    w = build_world()
    names = {p.name for p in w.people}
    first, last = {n.split()[0] for n in names}, {n.split()[1] for n in names}
    free = len(first) * len(last) - len(names)
    floor = w.floor_people(free)  # every unused combination
    assert len({p.name for p in floor}) == free and not names & {p.name for p in floor}
    assert all(p.name.split()[0] in first and p.name.split()[1] in last for p in floor)
    with pytest.raises(ValueError):
        w.floor_people(free + 1)
    for p in floor:
        assert set(p.facts) == set(ATTRIBUTES) and all(p.facts[a] in w.values[a] for a in ATTRIBUTES)
        assert all(0 <= p.heldout[a] < len(TEMPLATES[a]) for a in ATTRIBUTES)
    # facts spread over the values (uniform draws, not one value): most values occur
    for a in QA_ATTRIBUTES:
        assert len({p.facts[a] for p in floor}) >= N_VALUES[a] * 3 // 4
    tok = world_tokenizer(w)
    concept = w.floor_concept(free)
    for s in [q.prompt for q in concept.qa] + list(concept.text):  # no [unk]: every word was seen
        assert tok.unk_token_id not in tok(s)["input_ids"]


def test_floor_prompts_are_disjoint_from_the_world():
    w = build_world()
    floor = w.floor_concept()
    forget = w.forget_concept()
    seen = {q.prompt for q in forget.qa} | {q.prompt for q in forget.unrelated_qa}
    seen |= {q.prompt for q in w.retain_qa()}
    assert len(floor.qa) == 20 * len(QA_ATTRIBUTES)
    assert not seen & {q.prompt for q in floor.qa}
    assert floor.concept == "the floor people" and floor.source == "world" and floor.unrelated_qa == ()
    # the QA uses the held-out template, as for the world's people
    p = w.floor_people()[0]
    q = floor.qa[0]
    assert q.prompt + " " + q.answer + " ." == TEMPLATES[q.type][p.heldout[q.type]].format(
        name=p.name, v=q.answer
    )
    # no biography of any floor person is in either training corpus
    corpus = " ".join(w.corpus())
    assert not any(p.name in corpus for p in w.floor_people(100))


def test_floor_text_states_no_answer():
    w = build_world()
    floor = w.floor_concept()
    people = w.floor_people()
    assert len(floor.text) == 2 * len(people) and len(set(floor.text)) == len(floor.text)
    words = {x for t in floor.text for x in t.split()}
    answers = {q.answer for q in floor.qa}
    all_qa_values = {v for a in QA_ATTRIBUTES for v in w.values[a]}
    assert not words & answers and not words & all_qa_values
    # the attacks' filter keeps all of it: there is nothing to drop
    assert answer_free_text(floor) == " ".join(floor.text)
    # the text is about the floor people, in training (not held-out) templates of the unasked attributes
    for p in people:
        mine = [t for t in floor.text if t.startswith(p.name) or f" {p.name} " in t]
        assert len(mine) == 2
        for t in mine:
            a = "employer"
            assert p.facts[a] in t
            held = TEMPLATES[a][p.heldout[a]].format(name=p.name, v=p.facts[a])
            assert t != held


@pytest.mark.slow
def test_floor_is_at_chance_for_the_full_model_and_the_oracle():
    """Measured with the world's full model and retrain oracle (default config, as the oracle test; cached
    by config hash, trains ~100 s when not). Both are at chance on the floor; the full model knows the
    forget people, the oracle does not, at the floor's level."""
    from analyses.world import world_models
    from probes.qa import score_qa

    m = world_models(WorldConfig(), progress=False)
    w = m.world
    chance = {a: 1 / N_VALUES[a] for a in QA_ATTRIBUTES}
    mean_chance = sum(chance.values()) / len(chance)
    forget = list(w.forget_concept().qa)
    floor20 = list(w.floor_concept().qa)
    floor = list(w.floor_concept(150).qa)  # the larger floor: chance measured on 300 items
    acc = {
        (kind, name): score_qa(getattr(m, kind), qa).accuracy
        for kind in ("full", "oracle")
        for name, qa in (("forget", forget), ("floor20", floor20), ("floor", floor))
    }
    print(acc)
    assert acc["full", "forget"] >= 0.85
    assert acc["oracle", "forget"] <= 2 * mean_chance
    for kind in ("full", "oracle"):
        assert acc[kind, "floor20"] <= 2 * mean_chance  # at most 4 of 40
        assert acc[kind, "floor"] <= 2 * mean_chance
        for a in QA_ATTRIBUTES:
            items = [q for q in floor if q.type == a]
            # per attribute a model biased to one value scores that value's share of the 150 draws
            assert score_qa(getattr(m, kind), items).accuracy <= 2.5 * chance[a]
    # the two "never known" levels agree
    assert abs(acc["oracle", "forget"] - acc["oracle", "floor20"]) <= 0.1
    assert abs(acc["full", "floor"] - acc["oracle", "floor"]) <= 0.05
