"""The audit: compatibility checks, weight restoration, stage cache/resume, the verdict rule, end to end."""

from __future__ import annotations

import json

import pytest
import torch

import analyses.audit.stages as audit_stages
from analyses.audit import AuditConfig, audit, verdict
from probes.data import QA, Concept
from probes.edits import check_compatible, edited_vectors, patched_vectors, weights_checksum
from probes.errors import MismatchError

TOY = Concept(
    "Harry Potter",
    qa=(
        QA("Harry Potter's best friend is Ron", "Weasley"),
        QA("Harry Potter studied at the school of", "Hogwarts"),
    ),
    text=(
        "Harry Potter is a wizard in novels by J. K. Rowling. His friend Ron Weasley is loyal. "
        "Harry studied at Hogwarts. The villain is Lord Voldemort, a dark wizard.",
    ),
    unrelated_qa=(QA("The capital of France is", "Paris"),),
)


def test_mismatched_models_refused_before_work(gpt2, smol):
    with pytest.raises(MismatchError, match="not two versions of one model") as e:
        check_compatible(gpt2, smol)
    assert "n_layers: 12 vs 30" in e.value.cause and "vocab" not in e.value.problem


def test_tokenizer_mismatch_named(gpt2):
    other = gpt2.copy()
    other.tokenizer = ()
    other.tokenizer = _tokenizer_with_extra_token(gpt2.tokenizer)
    with pytest.raises(MismatchError, match="vocab_hash"):
        check_compatible(gpt2, other)


def _tokenizer_with_extra_token(tok):
    import copy

    t = copy.deepcopy(tok)
    t.add_tokens(["<vestige-extra>"])
    return t


def test_patched_vectors_restore_bitwise_on_exception(gpt2):
    other = gpt2.copy()
    with torch.no_grad():
        other.W_out(3)[7].mul_(-1.0)
    before = weights_checksum(other)
    with pytest.raises(RuntimeError, match="boom"):
        with patched_vectors(other, gpt2, [(3, 7), (5, 1)]):
            assert torch.equal(other.W_out(3)[7], gpt2.W_out(3)[7])
            raise RuntimeError("boom")
    assert weights_checksum(other) == before


def _fake_stages():
    b = {"forget": {"accuracy": 1.0}, "unrelated": {"accuracy": 1.0}}
    u = {"forget": {"accuracy": 0.0}, "unrelated": {"accuracy": 1.0}}
    return {"base": b, "unlearned": u}


@pytest.mark.parametrize(
    "cosine,lens_share,decoy_share,attack,patched,expected",
    [
        (0.99, 0.0, 0.0, 0.0, 0.0, "suppressed"),  # vectors untouched
        (0.2, 0.0, 0.0, 1.0, 0.0, "suppressed"),  # an attack brings it back
        (0.2, 0.0, 0.0, 0.0, 1.0, "suppressed"),  # patching the base's vectors back brings it back
        (0.2, 0.0, 0.0, 0.0, 0.0, "removed"),  # nothing left, nothing comes back
        (0.2, 0.75, 0.0, 0.0, 0.0, "suppressed"),  # still decodable inside
        (0.2, 0.75, 0.6, 0.0, 0.0, "removed"),  # "decodable" only as any answer of the right type is
    ],
)
def test_verdict_rule(cosine, lens_share, decoy_share, attack, patched, expected):
    shares = [lens_share, lens_share, 0.0]  # two inner layers, then the output
    decoys = [decoy_share, decoy_share, 0.0]
    present = [l for l in range(2) if shares[l] >= 0.5 and shares[l] - decoys[l] >= 0.25]
    v, reasons = verdict(
        _fake_stages(),
        {"mean_cosine": cosine},
        {
            "unlearned_max_inner_top10_share": lens_share,
            "unlearned_max_inner_excess_over_decoys": lens_share - decoy_share,
            "best_inner_layer": 0,
            "present_layers": present,
        },
        {"unlearned": {"none": 0.0, "prefix": attack, "relearn": 0.0}},
        {"patch_vectors_from_base": {"forget_accuracy": patched}},
    )
    assert v == expected and reasons


def test_verdict_inconclusive_when_behaviour_stays():
    stages = _fake_stages()
    stages["unlearned"]["forget"]["accuracy"] = 1.0
    v, reasons = verdict(
        stages,
        {"mean_cosine": 1.0},
        {"unlearned_max_inner_top10_share": 1.0, "best_inner_layer": 0},
        {"unlearned": {"none": 1.0}},
        {"patch_vectors_from_base": {"forget_accuracy": 1.0}},
    )
    assert v == "inconclusive" and "still answers" in reasons[-1]


@pytest.mark.slow
def test_audit_resumes_from_cache_and_is_deterministic(smol, tmp_path, monkeypatch):
    """A second run over the same directory reads every stage from the cache and writes the same JSON; a
    fresh directory with the same seed gives identical JSON too."""
    unlearned = smol.copy()
    from probes import concepts as cv

    refs = cv.locate(smol, TOY, n=5).refs()
    with torch.no_grad():
        for layer, neuron in refs:
            unlearned.W_out(layer)[neuron].zero_()
    cfg = AuditConfig(n_vectors=5, relearn_steps=2, attacks=("prefix",))
    first = audit(smol, unlearned, TOY, config=cfg, out=tmp_path / "a", progress=False)
    text = (tmp_path / "a" / "audit.json").read_text()

    def boom(*a, **k):
        raise AssertionError("stage recomputed instead of read from the cache")

    with monkeypatch.context() as m:
        m.setattr(audit_stages, "_behaviour", boom)
        m.setattr(audit_stages, "_concept_vectors", boom)
        m.setattr(audit_stages, "_interventions", boom)
        audit(smol, unlearned, TOY, config=cfg, out=tmp_path / "a", progress=False)
    assert (tmp_path / "a" / "audit.json").read_text() == text
    audit(smol, unlearned, TOY, config=cfg, out=tmp_path / "b", progress=False)
    assert (tmp_path / "b" / "audit.json").read_text() == text
    data = json.loads(text)
    assert data["verdict"] == first.verdict
    assert {"verdict", "behaviour", "concept_vectors", "recovery"} <= set(data)
    assert {"mean_cosine", "mean_jaccard"} <= set(data["concept_vectors"])
    # the ablated vectors are exactly the located ones: cosine 0 for them, while the rest is untouched
    assert data["concept_vectors"]["mean_cosine"] < 0.5
    html = (tmp_path / "a" / "report.html").read_text()
    assert html.count("plotly.js v") <= 2 and "Verdict" in html


@pytest.mark.slow
def test_trace_vectors_carry_the_concept_in_the_base_smollm2(smol):
    """The trace set the interventions ablate: zeroing it in the base (checked here independently, with
    ``edited_vectors`` on the base itself) takes forget accuracy to at most 25% of its start, while as many
    random value vectors leave it near its start; the base's weights come back bitwise."""
    from probes.data import DEFAULT_CONCEPT_FILE, load_concept
    from probes.qa import score_qa

    concept = load_concept(DEFAULT_CONCEPT_FILE, "Albert Einstein")
    before = weights_checksum(smol)
    traces = audit_stages._trace_vectors(smol, concept, [], AuditConfig())
    assert weights_checksum(smol) == before
    refs = [tuple(r) for r in traces["vectors"]]
    start = score_qa(smol, concept.qa).accuracy
    assert traces["reached"] and traces["base_forget_accuracy"] == start == 1.0
    assert len(refs) % 20 == 0 and len(set(refs)) == len(refs) <= 320
    with edited_vectors(smol, refs, mode="ablate"):
        ablated = score_qa(smol, concept.qa).accuracy
    assert ablated == traces["base_forget_accuracy_when_ablated"] <= 0.25 * start
    g = torch.Generator().manual_seed(0)
    layers = torch.randint(0, smol.cfg.n_layers, (len(refs),), generator=g).tolist()
    neurons = torch.randint(0, smol.cfg.d_mlp, (len(refs),), generator=g).tolist()
    with edited_vectors(smol, list(zip(layers, neurons)), mode="ablate"):
        assert score_qa(smol, concept.qa).accuracy >= 0.75 * start
    assert weights_checksum(smol) == before
