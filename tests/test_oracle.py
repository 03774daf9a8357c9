"""The synthetic world and its retrain oracle (analyses.world, analyses.oracle): the known-answer test of
the audit. The end-to-end test trains a small GPT-2 on the world and its oracle (cached by config hash),
unlearns with GA and NPO, and checks that the audit tells exact unlearning from suppression."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from analyses.world import QA_ATTRIBUTES, TEMPLATES, WorldConfig, build_world, world_tokenizer
from probes.lens import same_type_decoys
from probes.linear import ProbeDataset, split_accuracy


def test_world_is_deterministic_and_holds_out_one_template():
    a, b = build_world(WorldConfig(seed=3)), build_world(WorldConfig(seed=3))
    assert a == b and a.corpus() == b.corpus()
    assert build_world(WorldConfig(seed=4)).people != a.people
    assert len({p.name for p in a.people}) == len(a.people) == 200
    for person in a.people[:50]:
        bios = " ".join(a.bios(person))
        for attr in TEMPLATES:
            held = TEMPLATES[attr][person.heldout[attr]].format(name=person.name, v=person.facts[attr])
            assert held not in bios  # the QA template never appears in training for this person
            assert person.facts[attr] in bios
    # the oracle's corpus has no sentence about a forget person
    forget = set(a.forget)
    oracle_text = " ".join(a.corpus(without_forget=True))
    assert not any(name in oracle_text for name in forget)
    assert len(a.corpus(without_forget=True)) == (200 - 20) * a.config.bios_per_person


def test_answers_are_unambiguous_and_qa_uses_the_heldout_template():
    w = build_world()
    words = [v for vals in w.values.values() for v in vals]
    assert len(set(words)) == len(words)
    assert not any(x != y and y.startswith(x) for x in words for y in words)  # greedy prefix match is exact
    concept = w.forget_concept()
    assert len(concept.qa) == 20 * len(QA_ATTRIBUTES) and len(concept.unrelated_qa) == 40
    person = w.forget_people[0]
    q = w.qa(person)[0]
    assert q.prompt + " " + q.answer + " ." == TEMPLATES[q.type][person.heldout[q.type]].format(
        name=person.name, v=q.answer
    )


def test_word_tokenizer_round_trips_and_prepends_bos():
    w = build_world()
    tok = world_tokenizer(w)
    text = w.bios(w.people[0])[0]
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert len(ids) == len(text.split()) + 1  # one token per word


def test_same_type_decoys():
    answers = ["paris", "rome", "cat", "paris", "dog"]
    types = ["city", "city", "animal", "city", "animal"]
    assert same_type_decoys(answers, types) == ["rome", "paris", "dog", "rome", "cat"]
    assert same_type_decoys(["x"], [None]) == ["x"]  # no other answer of its type: itself


def test_split_accuracy_equals_sklearn(gpt2):
    """A probe fitted on the other entities, scored on the test entities = sklearn on the same split."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    gen = torch.Generator().manual_seed(0)
    n, d, c, l2 = 60, 16, 3, 1e-3
    y = torch.arange(n) % c
    centers = torch.randn(c, d, generator=gen)
    acts = torch.stack([centers[y] * s + torch.randn(n, d, generator=gen) for s in (0.2, 1.5)])
    ds = ProbeDataset(
        "toy", "k", "{entity}", tuple(f"e{i}" for i in range(n)), tuple(str(v) for v in y.tolist())
    )
    test = [f"e{i}" for i in range(0, n, 4)]
    from probes.linear import ProbeConfig

    r = split_accuracy(gpt2, ds, test, acts=acts, config=ProbeConfig(max_iter=500, tol=1e-8))
    mask = np.array([f"e{i}" in set(test) for i in range(n)])
    for layer in range(2):
        xs = acts[layer].double().numpy()
        mean, std = xs[~mask].mean(0), xs[~mask].std(0)
        ref = sklearn.LogisticRegression(C=1 / (2 * l2 * int((~mask).sum())), tol=1e-10, max_iter=10_000)
        ref.fit((xs[~mask] - mean) / std, y.numpy()[~mask])
        expected = float((ref.predict((xs[mask] - mean) / std) == y.numpy()[mask]).mean())
        assert math.isclose(r.accuracy[layer], expected, abs_tol=1 / mask.sum() + 1e-9)
    assert r.accuracy[1] > r.accuracy[0] and r.accuracy[1] >= 0.9
    assert r.chance == pytest.approx(float((y[torch.tensor(mask)] == 0).float().mean()))


@pytest.mark.slow
def test_audit_tells_the_retrain_oracle_from_suppression(tmp_path):
    """End to end: train the world's full model and its retrain oracle, unlearn with GA and NPO, audit all
    three against the full model. The oracle must be `removed`, GA and NPO `suppressed`."""
    from analyses.oracle import OracleConfig, run_oracle

    r = run_oracle(OracleConfig(), out=tmp_path / "oracle", progress=False)
    table = r.to_frame()
    print("\n" + table.to_string())
    full = table["full model"]
    assert full["forget accuracy"] >= 0.85 and full["unrelated accuracy"] >= 0.85  # knows the world
    assert table.at["forget accuracy", "oracle"] <= 0.25  # never saw the forget people
    assert table.at["unrelated accuracy", "oracle"] >= 0.8
    # truth: GA and NPO hide what the full model knew, the oracle never saw it, the relearned model (GA, then
    # fine-tuned on the forget people's biographies) and the no-op copy still answer: nothing to audit
    assert r.verdicts == {
        "ga": "suppressed",
        "npo": "suppressed",
        "oracle": "removed",
        "relearned": "inconclusive",
        "no_op": "inconclusive",
    }
    assert table.at["forget accuracy", "relearned"] > 0.5 * full["forget accuracy"]
    oracle_calls = {c.family: c.call for c in r.audits["oracle"].traces}
    assert oracle_calls["concept_vectors"] == "not comparable"  # another training run: no shared basis
    # nor a head basis: the base's memory heads, zeroed by (layer, head), are other heads in the oracle
    assert r.audits["oracle"].concept_vectors["basis"]["heads_comparable"] is False
    assert oracle_calls["memory_heads"] == "not comparable"
    for m in ("ga", "npo"):  # unlearned from the full model: its heads, measured
        assert r.audits[m].concept_vectors["basis"]["heads_comparable"] is True
        assert {c.family: c.call for c in r.audits[m].traces}["memory_heads"] != "not comparable"
    assert "present" not in oracle_calls.values()
    for m in ("ga", "npo"):
        assert table.at["forget accuracy", m] <= 0.5 * full["forget accuracy"]
        assert (
            table.at["concept vectors: mean cosine", m] > table.at["concept vectors: mean cosine", "oracle"]
        )
    # membership inference on held-back biographies, PrivLeak against the oracle: the no-op copy leaks as
    # the full model does (measured +1.5), the oracle is its own reference (0)
    mia = r.to_frame()
    leak = "membership: PrivLeak of LOSS vs the oracle"
    assert mia.at[leak, "oracle"] == 0.0 and mia.at[leak, "no_op"] > 0.5
    assert mia.at["membership: LOSS AUC (forget vs floor biographies)", "full model"] >= 0.95
    assert set(r.membership) == {"full model", *r.audits}
    # the audit's own membership stage (the forget text unlearning trained on vs the floor people's text) and
    # PrivLeak against the oracle's audit (measured, seed 0, LOSS: no-op copy +0.27, GA -0.57: GA pushed the
    # very texts it trained on below what a model that never saw them gives them)
    leak = {m: r.audits[m].extra["privleak"]["loss"] for m in ("ga", "npo", "relearned", "no_op")}
    assert leak["no_op"] > 0.1 and leak["ga"] < -0.1, leak
    assert (
        r.audits["oracle"].extra["membership"]["n_members"] == 40
        and "privleak" not in r.audits["oracle"].extra
    )
    # the oracle never saw the forget people: quantized, it still answers none of them
    assert table.at["recovery: 4-bit quantization", "oracle"] <= 0.25
    # nor with input vectors fitted on the other forget facts (the floor's own fit shows what it teaches)
    assert table.at["recovery: soft prompt (fitted on other facts)", "oracle"] <= 0.25
    # the oracle is every other model's retain model: the models that still hold the forget people are
    # above it where the knowledge shows (measured, seed 0: GA behaviour 0.20 [0.05, 0.35] and fact
    # relearning 0.17 [0.05, 0.33] above the oracle's; the no-op copy 0.93 and 0.88), and nothing is
    # below it (no model forgot more than a model that never saw them)
    vs = r.retain_frame()
    assert set(vs.columns) == {"ga", "npo", "relearned", "no_op"} and not r.audits["oracle"].retain
    for m in ("ga", "npo", "relearned", "no_op"):
        assert "above" in {vs.at["behaviour", m], vs.at["fact_relearning", m]}, vs[m].to_dict()
        assert "below" not in set(vs[m]), vs[m].to_dict()
        assert vs.at["concept_vectors", m] == "not comparable"  # the oracle is another training run
        assert vs.at["memory_heads", m] == "not comparable"
    for m in ("relearned", "no_op"):
        assert vs.at["behaviour", m] == vs.at["quantization", m] == "above"
    assert (tmp_path / "oracle" / "oracle.json").exists()
    assert "membership" in json.loads((tmp_path / "oracle" / "oracle.json").read_text())
    assert json.loads((tmp_path / "oracle" / "ga" / "audit.json").read_text())["retain"]
    assert (tmp_path / "oracle" / "oracle" / "audit.json").exists()


def test_ground_truth_tables_against_a_naive_count():
    """``confusion`` counts truth x verdict; ``separation``'s AUC equals the share of (oracle, suppressed)
    pairs where the suppressed model keeps more of the trace (ties count half), counted by hand."""
    from analyses.audit.rule import FAMILIES
    from analyses.ground_truth import EXPECTED, GroundTruthConfig, GroundTruthResult

    rng = np.random.default_rng(0)
    rows = []
    for i, (model, truth, verdict) in enumerate(
        [("oracle", "removed", "removed")] * 3
        + [("ga", "suppressed", "suppressed")] * 4
        + [("npo", "suppressed", "removed")]
        + [("no_op", "known", "inconclusive")] * 2
    ):
        row = {"seed": i, "model": model, "truth": truth, "expected": EXPECTED[truth], "verdict": verdict}
        for fam in FAMILIES:
            row[f"{fam}: call"] = "present" if truth != "removed" else "gone"
            row[f"{fam}: relative"] = float(rng.normal(0.0 if truth == "removed" else 0.5, 0.3))
        rows.append(row)
    r = GroundTruthResult(tuple(rows), GroundTruthConfig(seeds=()), 0.0)
    conf = r.confusion()
    assert conf.at["removed", "removed"] == 3 and conf.at["suppressed", "suppressed"] == 4
    assert conf.at["suppressed", "removed"] == 1 and conf.values.sum() == len(rows)
    assert r.correct == pytest.approx(9 / 10) and list(r.misses()["model"]) == ["npo"]
    sep = r.separation().set_index("family")
    for fam in FAMILIES:
        o = [x[f"{fam}: relative"] for x in rows if x["truth"] == "removed"]
        s = [x[f"{fam}: relative"] for x in rows if x["truth"] == "suppressed"]
        naive = np.mean([1.0 if b > a else 0.5 if b == a else 0.0 for a in o for b in s])
        assert sep.at[fam, "AUC oracle vs suppressed"] == pytest.approx(naive)
        assert sep.at[fam, "present: suppressed"] == 1.0 and sep.at[fam, "gone: removed"] == 1.0


def test_separation_table_reads_an_unmeasured_trace_as_nan():
    """A world seed where no concept vector qualifies leaves the vector traces null in the audit; the
    table (and ``oracle.json``) shows NaN there and still computes the gap of every measured trace."""
    from analyses.audit.result import AuditResult
    from analyses.oracle import separation_table

    def result(forget: float, cosine: float | None) -> AuditResult:
        return AuditResult(
            concept="c",
            verdict="removed",
            reasons=(),
            behaviour={
                "forget_accuracy": {"base": 0.9, "unlearned": forget},
                "unrelated_accuracy": {"base": 0.9, "unlearned": 0.8},
            },
            concept_vectors={"mean_cosine": cosine, "mean_jaccard": None},
            logit_lens={
                "unlearned_max_inner_top10_share": 0.2,
                "unlearned_max_inner_excess_over_decoys": 0.0,
            },
            recovery={"base": {}, "unlearned": {"none": forget, "prefix": forget + 0.1}},
            interventions={"patch_vectors_from_base": {"forget_accuracy": forget}},
        )

    table = separation_table({"ga": result(0.3, None), "oracle": result(0.0, None)})
    assert math.isnan(table.at["concept vectors: mean cosine", "ga"])
    gap = table["suppressed minus oracle (closest)"]
    assert gap["forget accuracy"] == pytest.approx(0.3) and math.isnan(gap["concept vectors: mean cosine"])
    assert gap["recovery: best prompt attack"] == pytest.approx(0.3)
