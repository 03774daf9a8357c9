"""The audit: compatibility checks, weight restoration, stage cache/resume, the verdict rule, end to end."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import analyses.audit.stages as audit_stages
from analyses.audit import AuditConfig, audit, verdict
from analyses.audit.rule import TraceCall, call_family, call_vectors
from probes.data import QA, Concept
from probes.edits import check_compatible, edited_vectors, patched_vectors, weights_checksum
from probes.errors import MismatchError
from probes.stats import Interval, bootstrap_difference, bootstrap_mean

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


def _iv(mean: float, lo: float, hi: float, n: int = 12) -> Interval:
    return Interval(mean, lo, hi, n)


ZERO = [0.0] * 12
ALL = [1.0] * 12


@pytest.mark.parametrize(
    "forget,control,floor,base_forget,expected",
    [
        (ALL, ALL, ZERO, ALL, "present"),  # the unlearned model still shows it, far above the floor
        (ZERO, ALL, ZERO, ALL, "gone"),  # at the floor while the control is not
        (ZERO, ZERO, ZERO, ALL, "inconclusive"),  # at the floor, but so is everything else
        # 2 of 12 against 0 of 12: not above the floor, and with 95% confidence under half the base's signal
        ([1.0] * 2 + [0.0] * 10, ALL, ZERO, ALL, "gone"),
        # 5 of 12 against a floor of 3 of 12: not above it, but it may keep more than half the base's signal
        ([1.0] * 5 + [0.0] * 7, ALL, [1.0] * 3 + [0.0] * 9, ALL, "inconclusive"),
        ([1.0] * 6 + [0.0] * 6, ALL, ZERO, ALL, "present"),  # 6 of 12: the difference's interval excludes 0
        (ALL, ALL, ALL, ALL, "not informative"),  # the measure reads the same on facts never known
    ],
)
def test_call_family(forget, control, floor, base_forget, expected):
    values = {"forget": forget, "control": control, "floor": floor}
    call = call_family("logit_lens", values, {"forget": base_forget, "floor": floor})
    assert call.call == expected, call.why
    assert call.forget.mean == pytest.approx(sum(forget) / len(forget))
    assert call.floor.lo <= call.floor.mean <= call.floor.hi
    assert call.difference.mean == pytest.approx(call.forget.mean - call.floor.mean)


def test_an_attack_that_breaks_the_control_is_not_informative():
    """An attack family whose attack takes the control to the floor while the unlearned model answers it
    without the attack shows nothing (not informative, no vote); a method that lost the control itself
    stays inconclusive, and a forget set lifted above the floor stays present."""
    base = {"forget": ALL, "floor": ZERO}
    broken = {"forget": ZERO, "control": ZERO, "floor": ZERO}
    call = call_family("soft_prompt", broken, base, plain_control=ALL)
    assert call.call == "not informative" and not call.votes
    assert "the attack took the control" in call.why
    assert call_family("soft_prompt", broken, base, plain_control=ZERO).call == "inconclusive"
    assert call_family("soft_prompt", broken, base).call == "inconclusive"
    lifted = {"forget": ALL, "control": ZERO, "floor": ZERO}
    assert call_family("soft_prompt", lifted, base, plain_control=ALL).call == "present"


def test_call_family_without_a_floor_is_not_measured():
    call = call_family("behaviour", {"forget": ALL, "control": ALL, "floor": []})
    assert call.call == "not measured" and not call.votes


@pytest.mark.parametrize(
    "forget,control,comparable,expected",
    [
        # moved no more than any vector: not edited, which is not evidence that the concept is there
        ([0.999] * 10, [0.999] * 64, True, "not informative"),
        ([0.0] * 10, [0.999] * 64, True, "gone"),  # zeroed or scrambled: at the unrelated-vector floor
        ([0.6] * 10, [0.999] * 64, True, "inconclusive"),  # edited, but not erased
        # a short GA run: every vector at 0.999999, the located ones at 0.999998 - not an edit of them
        ([0.999998] * 10, [0.999999] * 64, True, "not informative"),
        ([0.999] * 10, [0.999] * 64, False, "not comparable"),  # another training run
    ],
)
def test_call_vectors(forget, control, comparable, expected):
    floor = list(np.random.default_rng(0).normal(0, 0.05, 64))
    call = call_vectors({"forget": forget, "control": control, "floor": floor}, comparable, agreement=0.02)
    assert call.call == expected, call.why


def _calls(**families: str) -> list[TraceCall]:
    return [TraceCall(f, c, "test") for f, c in families.items()]


@pytest.mark.parametrize(
    "calls,expected",
    [
        (_calls(behaviour="gone", prompt_attacks="present", logit_lens="gone"), "suppressed"),
        (_calls(behaviour="gone", prompt_attacks="gone", logit_lens="gone"), "removed"),
        (_calls(behaviour="gone", prompt_attacks="inconclusive", logit_lens="gone"), "inconclusive"),
        # families that cannot vote do not block a verdict, and do not make one
        (_calls(behaviour="gone", concept_vectors="not comparable", probes="not informative"), "removed"),
        (_calls(concept_vectors="not comparable", probes="not measured"), "inconclusive"),
    ],
)
def test_verdict_rule(calls, expected):
    v, reasons = verdict(
        calls,
        base_accuracy=_iv(1.0, 1.0, 1.0),
        unlearned_accuracy=_iv(0.0, 0.0, 0.0),
        base_floor=_iv(0, 0, 0),
    )
    assert v == expected and reasons
    assert any(c.family in r for c in calls for r in reasons)


def test_verdict_inconclusive_when_behaviour_stays_or_the_base_does_not_know():
    calls = _calls(prompt_attacks="present")
    v, reasons = verdict(
        calls,
        base_accuracy=_iv(1.0, 1.0, 1.0),
        unlearned_accuracy=_iv(0.9, 0.7, 1.0),
        base_floor=_iv(0, 0, 0),
    )
    assert v == "inconclusive" and "still answers" in reasons[-1]
    v, reasons = verdict(
        calls,
        base_accuracy=_iv(0.1, 0.0, 0.25),
        unlearned_accuracy=_iv(0.0, 0.0, 0.0),
        base_floor=_iv(0.05, 0.0, 0.1),
    )
    assert v == "inconclusive" and "above the floor" in reasons[-1]


def test_the_weight_attacks_are_skipped_only_when_there_is_nothing_to_forget():
    """``runner._skip_when_nothing_to_forget`` applies the verdict's own test (``rule.nothing_to_forget``) to
    the base's per-item values: a base at the floor turns the weight attacks, membership and the trace search
    off with a note naming each; a base above it, or ``attack_when_nothing_to_forget``, keeps the config (and
    the latter never computes the base's values)."""
    from analyses.audit.rule import nothing_to_forget
    from analyses.audit.runner import _skip_when_nothing_to_forget

    cfg = AuditConfig(bootstrap=500)
    unknown = {"forget": [False, True, False, False, False, False], "floor": [False, False, True, False]}
    known = {"forget": [True] * 6, "floor": [False] * 4}
    off, notes = _skip_when_nothing_to_forget(cfg, lambda: unknown)
    assert (off.relearn_steps, off.fact_relearn_steps, off.soft_prompt_steps) == (0, 0, 0)
    assert (off.quantize_bits, off.membership, off.trace_max) == (0, False, 0)
    assert off.attacks == cfg.attacks and off.n_vectors == cfg.n_vectors  # prompt attacks and traces stay
    assert len(notes) == 1 and "nothing to forget" in notes[0]
    for setting in ("relearn_steps=0", "fact_relearn_steps=0", "quantize_bits=0", "trace_max=0"):
        assert setting in notes[0]
    assert _skip_when_nothing_to_forget(cfg, lambda: known) == (cfg, [])
    forced = replace(cfg, attack_when_nothing_to_forget=True)

    def never():
        raise AssertionError("the base's values are not needed when the attacks always run")

    assert _skip_when_nothing_to_forget(forced, never) == (forced, [])
    # already off: nothing to say
    quiet = replace(off, attack_when_nothing_to_forget=False)
    assert _skip_when_nothing_to_forget(quiet, lambda: unknown) == (quiet, [])
    # the same test the verdict applies, on the same numbers
    b = bootstrap_mean(unknown["forget"], n_boot=500, seed=0)
    assert nothing_to_forget(b, bootstrap_mean(unknown["floor"], n_boot=500, seed=0))
    assert nothing_to_forget(_iv(0.0, 0.0, 0.0), None) and not nothing_to_forget(_iv(0.5, 0.3, 0.7), None)


@pytest.mark.slow
def test_an_audit_of_what_the_base_never_knew_skips_the_weight_attacks():
    """A seeded model knows no concept: its audit says "nothing to forget", records the config that ran
    (weight attacks off) and notes why; the relearning families are then not measured."""
    from test_architectures import CONCEPT, TINY_AUDIT, tiny_model

    base = tiny_model("llama3")
    unlearned = base.copy()
    with torch.no_grad():
        unlearned.W_out(1)[3].zero_()
    cfg = AuditConfig.quick(**TINY_AUDIT, probe_dataset="")
    result = audit(base, unlearned, CONCEPT, config=cfg, progress=False)
    assert result.verdict == "inconclusive" and any("nothing to forget" in r for r in result.reasons)
    assert any("nothing to forget, so the attacks" in n for n in result.notes), result.notes
    ran = result.extra["config"]
    assert ran["relearn_steps"] == 0 and ran["fact_relearn_steps"] == 0 and ran["membership"] is False
    calls = {c.family: c.call for c in result.traces}
    assert calls["relearning"] == "not measured" and calls["fact_relearning"] == "not measured"
    assert not result.extra["membership"]
    # with attack_when_nothing_to_forget the same audit relearns: tests/test_memory.py's audit


def test_bootstrap_interval_agrees_with_the_normal_approximation_and_covers():
    """Against an independent computation: for Bernoulli(0.5) items the 95% interval's width is close to
    2 * 1.96 * sqrt(p (1-p) / n), and over 300 samples it covers the true mean about 95% of the time."""
    rng = np.random.default_rng(1)
    n, p, covered, widths = 60, 0.5, 0, []
    for i in range(300):
        x = rng.random(n) < p
        iv = bootstrap_mean(x, n_boot=1000, seed=i)
        covered += iv.lo <= p <= iv.hi
        widths.append(iv.hi - iv.lo)
    assert 0.90 <= covered / 300 <= 0.99
    assert np.mean(widths) == pytest.approx(2 * 1.96 * np.sqrt(p * (1 - p) / n), rel=0.1)
    same = bootstrap_mean([0.25] * 7)
    assert (same.mean, same.lo, same.hi, same.n) == (0.25, 0.25, 0.25, 7)
    assert bootstrap_mean([0, 1, 1, 0], seed=3) == bootstrap_mean([0, 1, 1, 0], seed=3)  # seeded
    with pytest.raises(ValueError, match="no values"):
        bootstrap_mean([])


def test_bootstrap_difference_agrees_with_the_normal_approximation_and_covers():
    """Against an independent computation: for two Bernoulli samples the 95% interval of the difference has
    the width 2 * 1.96 * sqrt(p1 q1 / n1 + p2 q2 / n2) and covers the true difference about 95% of the time;
    one correct item of 40 against none is not a difference (its lower end is 0)."""
    rng = np.random.default_rng(2)
    n1, n2, p1, p2, covered, widths = 40, 60, 0.4, 0.2, 0, []
    for i in range(300):
        iv = bootstrap_difference(rng.random(n1) < p1, rng.random(n2) < p2, n_boot=1000, seed=i)
        covered += iv.lo <= p1 - p2 <= iv.hi
        widths.append(iv.hi - iv.lo)
    assert 0.90 <= covered / 300 <= 0.99
    expected = 2 * 1.96 * np.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    assert np.mean(widths) == pytest.approx(expected, rel=0.1)
    one = bootstrap_difference([1.0] + [0.0] * 39, [0.0] * 40)
    assert one.mean == pytest.approx(0.025) and one.lo == 0.0 and one.hi > 0.0
    with pytest.raises(ValueError, match="no values"):
        bootstrap_difference([], [1.0])


def test_the_gone_margin_is_a_share_of_the_base_signal():
    """A stricter margin turns the same values from gone to inconclusive; the margin scales with what the
    base shows (forget - floor), so a measure on another scale gets the same call."""
    values = {"forget": [1.0] * 2 + [0.0] * 10, "control": ALL, "floor": ZERO}
    base = {"forget": ALL, "floor": ZERO}
    assert call_family("behaviour", values, base).call == "gone"
    assert call_family("behaviour", values, base, margin=0.2).call == "inconclusive"
    scaled = {k: [10 * x for x in v] for k, v in values.items()}
    call = call_family("memory_heads", scaled, {k: [10 * x for x in v] for k, v in base.items()})
    assert call.call == "gone" and call.margin == pytest.approx(5.0)


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
    # two items: SmolLM2's accuracy on them is not above the floor by its interval, so every attack is asked
    # for (the attack table's rows below), not skipped as for a concept with nothing to forget
    cfg = AuditConfig.quick(n_vectors=5, fact_relearn_steps=2, attack_when_nothing_to_forget=True)
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
    # the two kinds: the ablated vectors are exactly the located answer writers (cosine 0 for them), while
    # the middle-layer concept vectors are other vectors, untouched
    cv_ = data["concept_vectors"]
    assert cv_["kind"] == "concept" and cv_["answer_writers"]["kind"] == "answer_writers"
    assert [[v["layer"], v["neuron"]] for v in cv_["answer_writers"]["vectors"]] == [list(r) for r in refs]
    assert cv_["answer_writers"]["mean_cosine"] < 0.5
    assert cv_["mean_cosine"] is None or cv_["mean_cosine"] > 0.99
    html = (tmp_path / "a" / "report.html").read_text()
    assert html.count("plotly.js v") <= 2 and "Verdict" in html
    # each attack alone: net recovery = its forget accuracy minus the floor's, from the per-item values
    frame = first.attacks_frame().set_index("attack")
    assert list(frame.index) == ["none (greedy)", "prefix", "relearning", "fact_relearning", "quantization"]
    tv = data["trace_values"]
    per = tv["prompt_attacks"]["unlearned"]["by_attack"]["prefix"]
    assert frame.at["prefix", "forget"] == pytest.approx(np.mean(per["forget"]))
    assert frame.at["prefix", "floor"] == pytest.approx(np.mean(per["floor"]))
    for name, row in frame.iterrows():
        assert row["net"] == pytest.approx(row["forget"] - row["floor"]), name
        assert row["net_lo"] <= row["net"] <= row["net_hi"] and row["seconds"] >= 0
    # the battery's pooled family is the per-item OR of the attacks it pools
    assert tv["prompt_attacks"]["unlearned"]["floor"] == per["floor"]
    assert frame.at["none (greedy)", "forget"] == pytest.approx(
        np.mean(tv["behaviour"]["unlearned"]["forget"])
    )
    assert "Attacks: net recovery over the floor" in html
    timings = json.loads((tmp_path / "a" / "timings.json").read_text())
    assert set(timings["attacks"]) == set(frame.index)


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


def test_present_is_family_wise_so_a_removed_model_is_rarely_convicted_by_chance():
    """Against a simulation: m = 8 families whose forget and floor items come from one distribution (the
    truth of a removed model). Each tested at 95%, some family is "present" by chance in about
    1 - 0.975^8 = 18% of the models; at the family-wise level 1 - 0.05 / 8 (what ``family_calls`` passes)
    in 2.5% nominally (the percentile bootstrap over 40 items undercovers a little at 99.4%: measured 4%
    over 150 models at 2000 resamples). A difference above 0 at 95% but not family-wise is inconclusive, never gone."""
    rng = np.random.default_rng(5)
    m, reps, base = 8, 100, {"forget": ALL, "floor": ZERO}
    plain = wise = 0
    for r in range(reps):
        any_plain = any_wise = False
        for k in range(m):
            values = {
                "forget": list(rng.random(40) < 0.3),
                "control": ALL,
                "floor": list(rng.random(40) < 0.3),
            }
            kw = dict(n_boot=1000, seed=r * m + k)
            any_plain |= call_family("behaviour", values, base, **kw).call == "present"
            any_wise |= (
                call_family("behaviour", values, base, present_level=1 - 0.05 / m, **kw).call == "present"
            )
        plain += any_plain
        wise += any_wise
    assert 0.1 <= plain / reps <= 0.3  # measured 0.17
    assert wise / reps <= 0.07 and wise < plain / 3  # measured 0.05
    # 9 of 40 against 2 of 40: above 0 at 95%, not at 99.375%; half the base's signal (0.5) not excluded
    values = {"forget": [1.0] * 9 + [0.0] * 31, "control": ALL, "floor": [1.0] * 2 + [0.0] * 38}
    assert call_family("behaviour", values, base).call == "present"
    call = call_family("behaviour", values, base, present_level=1 - 0.05 / m)
    assert call.call == "inconclusive" and call.present_difference.lo <= 0 < call.difference.lo
    assert "family-wise" in call.why


def test_memory_heads_are_not_comparable_without_a_shared_head_basis():
    """The base's memory heads are zeroed by (layer, head): in a model of another training run
    (``heads_comparable`` False) those are other heads, so the family is "not comparable" and leaves the
    family-wise count, as the activations do without a neuron basis. Heads re-aligned, shared, or not
    checked (None) are measured."""
    from analyses.audit.runner import family_calls

    rng = np.random.default_rng(0)

    def logits(mean):
        return list(rng.normal(mean, 2.0, 40))

    def accuracy(forget):
        return {
            "base": {"forget": ALL, "floor": ZERO},
            "unlearned": {"forget": forget, "control": ALL, "floor": ZERO},
        }

    values = {
        "behaviour": accuracy(ZERO),
        "logit_lens": accuracy([1.0] * 12 + [0.0] * 28),
        "memory_heads": {
            "base": {"forget": logits(8), "floor": logits(0)},
            "unlearned": {"forget": logits(3), "control": logits(8), "floor": logits(0)},
        },
    }
    calls = {}
    for heads in (True, None, False):
        got = family_calls(values, {"comparable": False, "heads_comparable": heads}, AuditConfig())
        calls[heads] = {c.family: c for c in got}
    for heads in (True, None):
        assert calls[heads]["memory_heads"].call == "present"
        assert "98.33% family-wise" in calls[heads]["logit_lens"].why  # 3 families vote: 1 - 0.05 / 3
    assert calls[False]["memory_heads"].call == "not comparable"
    assert "attention-head basis" in calls[False]["memory_heads"].why
    assert "97.50% family-wise" in calls[False]["logit_lens"].why  # 2 families vote
    assert calls[False]["activations"].call == "not comparable"  # no neuron basis either


def test_an_item_form_without_its_data_is_refused_before_any_stage(gpt2, tmp_path):
    """``--attacks reverse`` on a concept whose items have no ``reverse`` stops before any stage runs,
    naming the concept and the fix; the floor is checked the same way."""
    from analyses.query_forms import QueryFormError

    cfg = AuditConfig(attacks=("prefix", "reverse"))
    with pytest.raises(QueryFormError, match="concept 'Harry Potter' has a 'reverse' entry") as e:
        audit(gpt2, gpt2, TOY, config=cfg, out=tmp_path / "a", progress=False)
    assert "drop 'reverse' from the attacks" in e.value.fix
    assert not (tmp_path / "a" / "audit.json").exists() and not list((tmp_path / "a").glob("**/*.json"))
    with_reverse = Concept(
        TOY.concept,
        qa=tuple(
            replace(q, reverse=QA("Hogwarts is attended by the boy wizard Harry", "Potter")) for q in TOY.qa
        ),
        text=TOY.text,
        unrelated_qa=TOY.unrelated_qa,
    )
    bare_floor = Concept("knowledge floor", (QA("The capital of Varnholt is", "Quessel"),))
    with pytest.raises(QueryFormError, match="the floor has a 'reverse' entry"):
        audit(gpt2, gpt2, with_reverse, config=cfg, floor=bare_floor, progress=False)
