"""Held-out items: a deterministic split of a concept's QA, unlearning that never sees the held-out side
(QA, early stop, and the text sentences that state its answers), and an audit that measures on it and
refuses a split that overlaps what the run trained on."""

from __future__ import annotations

import json

import pytest

from analyses.audit import AuditConfig, audit
from analyses.cli import main
from analyses.unlearn import UnlearnConfig, unlearn
from analyses.unlearn.run import forget_pool
from probes.data import QA, Concept
from probes.errors import ConceptFileError, VestigeError
from probes.results import write_json

CONCEPT = Concept(
    concept="Harry Potter",
    qa=(
        QA("Harry Potter's best friend is Ron", "Weasley"),
        QA("The author of the Harry Potter books is J. K.", "Rowling"),
        QA("Harry Potter studied at the school of", "Hogwarts"),
        QA("Harry Potter's owl is called", "Hedwig"),
    ),
    text=(
        "Harry Potter is a series of fantasy novels by J. K. Rowling. His best friend is Ron Weasley. "
        "He studies at Hogwarts. His owl Hedwig carries his letters.",
    ),
    unrelated_qa=(QA("The capital of France is", "Paris"), QA("The opposite of hot is", "cold")),
)


def test_split_is_deterministic_disjoint_and_order_free():
    trained, held = CONCEPT.split(0.5, seed=0)
    assert len(trained.qa) == 2 and len(held.qa) == 2
    assert set(trained.qa).isdisjoint(held.qa) and set(trained.qa) | set(held.qa) == set(CONCEPT.qa)
    again = Concept(CONCEPT.concept, tuple(reversed(CONCEPT.qa)), CONCEPT.text, CONCEPT.unrelated_qa)
    t2, h2 = again.split(0.5, seed=0)
    assert set(h2.qa) == set(held.qa) and set(t2.qa) == set(trained.qa)
    assert {frozenset(CONCEPT.split(0.5, seed=s)[1].qa) for s in range(8)} != {frozenset(held.qa)}
    for q in held.qa:  # the trained side's text states no held-out answer
        assert all(q.answer.lower() not in t.lower() for t in trained.text)
    assert held.text == CONCEPT.text and held.unrelated_qa == CONCEPT.unrelated_qa
    assert len(CONCEPT.split(0.01)[1].qa) == 1 and len(CONCEPT.split(0.99)[0].qa) == 1
    with pytest.raises(ConceptFileError, match="nothing can be held out"):
        Concept("x", CONCEPT.qa[:1]).split(0.5)
    with pytest.raises(ConceptFileError, match="strictly between 0 and 1"):
        CONCEPT.split(1.0)


def test_unlearning_never_sees_the_heldout_items(gpt2, tmp_path):
    cfg = UnlearnConfig(method="ga", steps=2, lr=1e-4, batch_size=4, window=16, heldout=0.5)
    run = unlearn(gpt2, CONCEPT, cfg, progress=False)
    trained, held = CONCEPT.split(0.5)
    assert run.trained_items == tuple(q.prompt for q in trained.qa)
    assert run.heldout_items == tuple(q.prompt for q in held.qa)
    assert run.heldout_before is not None and run.heldout_after is not None
    pool = {tuple(e.ids) for e in forget_pool(gpt2, trained, cfg.window)}
    for q in held.qa:  # no training sequence holds a held-out prompt + answer
        from probes.qa import answer_ids

        p, a = answer_ids(gpt2, q.prompt, q.answer)
        assert tuple(p + a) not in pool
    info = json.loads((run.save(tmp_path / "ga") / "unlearn.json").read_text())
    assert info["trained_items"] == list(run.trained_items) and info["params"]["heldout"] == 0.5


# the held-out plumbing, not the attacks: every stage runs, on few control and floor items
FAST = dict(
    probe_dataset="",
    relearn_steps=0,
    fact_relearn_steps=0,
    quantize_bits=0,
    n_vectors=2,
    control_limit=8,
    floor_limit=8,
)


def test_audit_scores_what_the_run_held_out_and_refuses_trained_items(gpt2, tmp_path):
    cfg = AuditConfig.quick(**FAST)
    trained, held = CONCEPT.split(0.5)
    with pytest.raises(VestigeError, match="held-out items were trained on"):
        audit(
            gpt2,
            gpt2.copy(),
            CONCEPT,
            config=AuditConfig(heldout=0.5, heldout_seed=0),
            trained_items=[q.prompt for q in held.qa],
            progress=False,
        )
    every = [q.prompt for q in CONCEPT.qa]
    with pytest.raises(VestigeError, match="every one of the 4 items") as err:
        audit(gpt2, gpt2.copy(), CONCEPT, config=cfg, trained_items=every, progress=False)
    assert "--allow-trained-items" in str(err.value) and "memorisation" in str(err.value)
    r = audit(
        gpt2,
        gpt2.copy(),
        CONCEPT,
        config=AuditConfig.quick(**FAST, allow_trained_items=True),
        trained_items=every,
        progress=False,
    )
    assert any("were trained on by the unlearning run" in n for n in r.notes)
    assert {i["split"] for i in r.items} == {"all"}
    # the split given explicitly, and the split read from the run's trained items: the same audit
    for config in (AuditConfig.quick(**FAST, heldout=0.5), cfg):
        r = audit(
            gpt2,
            gpt2.copy(),
            CONCEPT,
            config=config,
            trained_items=[q.prompt for q in trained.qa],
            progress=False,
        )
        # the seeded gpt2 knows nothing: the only note is that the weight attacks were skipped for it
        assert all("nothing to forget, so the attacks" in n for n in r.notes), r.notes
        assert r.behaviour["items"]["heldout"] == [q.prompt for q in held.qa]
        assert r.behaviour["items"]["trained"] == [q.prompt for q in trained.qa]
        assert "trained_split_forget_accuracy" in r.behaviour
        assert [i["prompt"] for i in r.items if i["split"] == "heldout"] == [q.prompt for q in held.qa]


def test_cli_audit_reads_the_runs_trained_items(gpt2, tmp_path, monkeypatch, capsys):
    import analyses.audit as audit_mod
    from analyses.cli import common

    trained, held = CONCEPT.split(0.5)
    run = tmp_path / "run"
    run.mkdir()
    write_json(run / "unlearn.json", {"trained_items": [q.prompt for q in held.qa]})
    path = write_json(tmp_path / "c.json", CONCEPT)
    monkeypatch.setattr(common, "load", lambda spec, args, **_: gpt2)
    seen = {}
    monkeypatch.setattr(
        audit_mod, "audit", lambda *a, **k: seen.update(k) or (_ for _ in ()).throw(SystemExit(7))
    )
    argv = ["audit", "--base", "b", "--unlearned", str(run), "--concept-file", str(path), "--heldout", "0.5"]
    with pytest.raises(SystemExit):
        main(argv + ["--out", str(tmp_path / "out")])
    assert seen["trained_items"] == [q.prompt for q in held.qa] and seen["config"].heldout == 0.5


@pytest.mark.slow
def test_fact_relearning_scores_each_item_on_a_copy_that_never_saw_it(smol):
    """Deeb & Roger's retrain on T, test on V (``traces.fact_relearn_values``) against the same fine-tuning
    done by hand: with the run's trained facts every held-out item is scored on the copy fine-tuned on
    them; without, each half on the copy fine-tuned on the other half; the floor on a copy fine-tuned on as
    many other floor facts; the control on the forget copy. The model itself is never modified."""
    import numpy as np

    from analyses.audit.traces import ItemSets, fact_relearn_values
    from analyses.behaviour import fact_relearned_copy
    from probes.data import load_concept, load_floor
    from probes.edits import weights_checksum
    from probes.qa import score_qa

    concept = load_concept(name="Wolfgang Amadeus Mozart")
    trained, held = concept.split(0.5, 0)
    held = Concept(held.concept, held.qa[:4])
    floor = load_floor()
    sets = ItemSets(
        forget=held,
        control=Concept(held.concept, tuple(load_concept(name="Albert Einstein").qa[:3])),
        floor=Concept(held.concept, tuple(floor.qa[:6])),
    )
    before = weights_checksum(smol)
    kw = dict(steps=3, lr=3e-5, seed=0)

    def by_hand(facts, items):
        import torch

        torch.manual_seed(0)
        return [float(c) for c in score_qa(fact_relearned_copy(smol, facts, **kw), items).correct]

    got = fact_relearn_values(smol, sets, trained.qa[:4], **kw)
    assert got["trained_on"] == 4 and got["floor_trained_on"] == 3
    assert got["forget"] == by_hand(trained.qa[:4], held.qa)
    assert got["control"] == by_hand(trained.qa[:4], sets.control.qa)
    assert len(got["floor"]) == 3 and len(got["forget_completions"]) == 4

    halves = fact_relearn_values(smol, sets, (), **kw)  # no trained facts: two folds of the audited items
    assert halves["trained_on"] == 2
    perm = np.random.default_rng(0).permutation(4)
    a, b = sorted(perm[:2]), sorted(perm[2:])
    on_b = by_hand([held.qa[i] for i in b], [held.qa[i] for i in a])
    on_a = by_hand([held.qa[i] for i in a], [held.qa[i] for i in b])
    assert [halves["forget"][i] for i in a] == on_b and [halves["forget"][i] for i in b] == on_a
    assert weights_checksum(smol) == before
    with pytest.raises(ConceptFileError, match="no facts"):
        fact_relearned_copy(smol, [], **kw)
