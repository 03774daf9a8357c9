"""The comparison with a retain model (``analyses.audit.retain``): the paired rule against hand-computed
intervals, and its guards. The end-to-end check (the world's oracle as every model's retain model) is in
tests/test_oracle.py."""

from __future__ import annotations

import numpy as np
import pytest

from analyses.audit.retain import RETAIN_CALLS, compare_with_retain, retain_frame
from analyses.audit.rule import FAMILIES
from probes.stats import bootstrap_mean

# ``probes.alignment.AlignmentInfo.to_dict()`` of a fine-tuned copy, and of another training run
SHARED_BASIS = {"comparable": True, "heads_comparable": True}
ANOTHER_RUN = {"comparable": False, "heads_comparable": False}


def _values(forget, *, base_forget=None, base_floor=None, families=("behaviour", "logit_lens")):
    """A ``traces`` stage with the same per-item values in the named families; the base's (for the signal)
    in ``behaviour``, ``logit_lens`` and ``memory_heads``."""
    base = {"forget": base_forget or [1.0] * len(forget), "floor": base_floor or [0.0] * len(forget)}
    out = {}
    for f in families:
        out[f] = {"unlearned": {"forget": list(forget), "control": [1.0], "floor": [0.0]}}
        if f in ("behaviour", "logit_lens", "memory_heads"):
            out[f]["base"] = base
    return out


def _calls(mine, theirs, **kw):
    calls = compare_with_retain(mine, theirs, basis=SHARED_BASIS, retain_basis=SHARED_BASIS, **kw)
    return {c.family: c for c in calls}


def test_one_call_per_family_and_known_calls():
    calls = compare_with_retain(
        _values([1, 0]), _values([0, 0]), basis=SHARED_BASIS, retain_basis=SHARED_BASIS
    )
    assert [c.family for c in calls] == list(FAMILIES)
    assert {c.call for c in calls} <= set(RETAIN_CALLS)
    assert len(retain_frame(calls)) == len(FAMILIES)


def test_paired_difference_and_the_three_directions():
    n = 20
    # the same items answered by both: reached, with a zero-width paired interval
    same = _calls(_values([1.0] * 10 + [0.0] * 10), _values([1.0] * 10 + [0.0] * 10))["behaviour"]
    assert same.call == "reached" and same.difference.mean == 0.0 and same.difference.lo == same.difference.hi
    # every item still answered where the retain model answers none: above, d = 1 exactly
    above = _calls(_values([1.0] * n), _values([0.0] * n))["behaviour"]
    assert above.call == "above" and above.difference.mean == pytest.approx(1.0)
    # the unlearned model answers none of what the retain model answers: below
    below = _calls(_values([0.0] * n), _values([1.0] * n))["behaviour"]
    assert below.call == "below" and below.difference.mean == pytest.approx(-1.0)
    # a paired interval, by hand: bootstrap_mean of the per-item differences with the same seed
    rng = np.random.default_rng(3)
    u, r = rng.random(n), rng.random(n)
    got = _calls(_values(u), _values(r), seed=7)["logit_lens"]
    want = bootstrap_mean(u - r, seed=7)
    assert (got.difference.mean, got.difference.lo, got.difference.hi) == pytest.approx(
        (want.mean, want.lo, want.hi)
    )
    assert got.unlearned.mean == pytest.approx(u.mean()) and got.retain.mean == pytest.approx(r.mean())


def test_a_difference_counts_first_and_reached_is_an_equivalence_test():
    # a small but certain difference is "above", not "reached": the retain model answers none of what the
    # unlearned model still answers on 8 of 40 items
    small = _calls(_values([1.0] * 8 + [0.0] * 32), _values([0.0] * 40))["behaviour"]
    assert small.difference.lo > 0 and small.difference.hi < small.margin and small.call == "above"
    # differences that cancel: the interval holds 0; within 0.5 x 1.0 of the base's signal it is reached,
    # against a base signal of 0.1 (margin 0.05) the same interval is inconclusive
    base = dict(base_forget=[1.0] * 10, base_floor=[0.0] * 10)
    u, r = [0.1] * 5 + [0.0] * 5, [0.0] * 5 + [0.1] * 5
    near = _calls(_values(u, **base), _values(r))["behaviour"]
    assert near.difference.lo < 0 < near.difference.hi and near.margin == pytest.approx(0.5)
    assert near.call == "reached"
    # a weak but certain base signal (each item 0.1 above the floor; one item of ten at 1.0 would hold 0 in
    # its interval, which the main rule and this comparison both call not informative)
    weak = dict(base_forget=[0.1] * 10, base_floor=[0.0] * 10)
    far = _calls(_values(u, **weak), _values(r))["behaviour"]
    assert far.margin == pytest.approx(0.05) and far.call == "inconclusive"


def test_guards_not_informative_not_comparable_not_measured():
    # the base does not know the concept above the floor: nothing to compare against
    flat = _calls(_values([1.0] * 4, base_forget=[0.0] * 4), _values([0.0] * 4))["behaviour"]
    assert flat.call == "not informative"
    # one item of ten above the floor: the base's interval holds 0, as the main rule calls it not informative
    one = _calls(_values([1.0] * 10, base_forget=[1.0] + [0.0] * 9), _values([0.0] * 10))["behaviour"]
    assert one.call == "not informative" and "holds 0" in one.why
    # a retain model from another training run: the weight-space families do not compare
    vals = _values([1.0] * 4, families=("behaviour", "activations", "memory_heads"))
    for basis, retain_basis in ((SHARED_BASIS, ANOTHER_RUN), (ANOTHER_RUN, SHARED_BASIS)):
        by = {c.family: c for c in compare_with_retain(vals, vals, basis=basis, retain_basis=retain_basis)}
        assert {f: by[f].call for f in ("activations", "concept_vectors", "memory_heads")} == dict.fromkeys(
            ("activations", "concept_vectors", "memory_heads"), "not comparable"
        )
        assert "attention-head basis" in by["memory_heads"].why and "neuron basis" in by["activations"].why
        assert by["behaviour"].call == "reached"  # the per-item behaviour compares across runs
    # heads re-aligned or shared, neurons not (or heads not checked: None): the heads still compare
    for heads in (True, None):
        basis = {"comparable": False, "heads_comparable": heads}
        by = {c.family: c.call for c in compare_with_retain(vals, vals, basis=basis, retain_basis=basis)}
        assert by["memory_heads"] == "reached" and by["activations"] == "not comparable"
    # a family measured in one audit only, or on other items
    assert _calls(_values([1.0] * 4), _values([1.0] * 4, families=("behaviour",)))["logit_lens"].call == (
        "not measured"
    )
    assert _calls(_values([1.0] * 4), _values([1.0] * 3))["behaviour"].call == "not measured"


def test_vestige_audit_takes_a_retain_model(tmp_path, monkeypatch):
    """``vestige audit --retain-model M`` loads M like --unlearned and hands it to the audit (the comparison
    itself runs end to end in tests/test_oracle.py, where the world's oracle is every model's retain model).
    The three models are one tiny seeded Llama checkpoint, so that loading costs nothing."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    import analyses.audit as audit_mod
    import analyses.cli
    from probes.model import Model, smollm2_tokenizer

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(
        "llama", vocab_size=49152, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
    )  # fmt: skip
    path = str(
        Model(AutoModelForCausalLM.from_config(cfg), smollm2_tokenizer(), name="t").save(tmp_path / "t")
    )
    seen = {}

    def audit(base, unlearned, concept, **kwargs):
        seen.update(kwargs)
        raise KeyboardInterrupt  # stop here: what the audit was handed is what this test checks

    monkeypatch.setattr(audit_mod, "audit", audit)
    monkeypatch.setattr("probes.qa.validate_concept", lambda model, concept: concept)  # a random model
    argv = ["--no-progress", "audit", "--base", path, "--unlearned", path, "--retain-model", path]
    with pytest.raises(KeyboardInterrupt):
        analyses.cli.main(
            [*argv, "--device", "cpu", "--concept", "Harry Potter", "--out", str(tmp_path / "a")]
        )
    assert seen["retain_model"].name == path and seen["retain_model"].cfg.n_layers == 1


def test_a_retain_audit_of_other_items_is_refused():
    from analyses.audit import AuditConfig
    from analyses.audit.result import AuditResult
    from analyses.audit.runner import _check_same_items
    from probes.data import QA, Concept
    from probes.errors import VestigeError

    cfg = AuditConfig.quick()
    concept = Concept("c", (QA("a is", "b"), QA("c is", "d")))
    ref = AuditResult("c", "removed", (), {}, {}, {}, {}, {}, extra={"config": cfg.to_dict()})
    ref = ref.__class__(**{**ref.__dict__, "items": ({"prompt": "a is"}, {"prompt": "c is"})})
    _check_same_items(ref, concept, cfg)  # same items, same config: fine
    with pytest.raises(VestigeError, match="other items"):
        _check_same_items(ref, Concept("c", (QA("a is", "b"),)), cfg)
    with pytest.raises(VestigeError, match="other config"):
        _check_same_items(ref, concept, AuditConfig())
