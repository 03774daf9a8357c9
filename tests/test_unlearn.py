"""Unlearning baselines: each loss against a hand computation, GA's effect, needle's locality, checkpoints."""

from __future__ import annotations

import json
import math

import pytest
import torch

from analyses.unlearn import (
    NeedleConfig,
    UnlearnConfig,
    UnlearnError,
    dpo_loss,
    ga_loss,
    gd_loss,
    make_batch,
    npo_kl_loss,
    npo_loss,
    qa_examples,
    retain_kl,
    rmu_loss,
    sequence_nll,
    text_windows,
    trainable_parameters,
    unlearn,
)
from analyses.unlearn.batches import logits_of
from probes.data import QA, Concept
from probes.model import native_name

CONCEPT = Concept(
    concept="Harry Potter",
    qa=(
        QA("Harry Potter's best friend is Ron", "Weasley"),
        QA("The author of the Harry Potter books is J. K.", "Rowling"),
    ),
    text=(
        "Harry Potter is a series of seven fantasy novels written by British author J. K. Rowling. "
        "The novels chronicle the lives of a young wizard, Harry Potter, and his friends Hermione Granger "
        "and Ron Weasley, all of whom are students at Hogwarts School of Witchcraft and Wizardry.",
    ),
    unrelated_qa=(QA("The capital of France is", "Paris"), QA("The opposite of hot is", "cold")),
)


def _hand_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log p(token t | tokens < t) for t >= 1, one unpadded sequence, plain HF forward."""
    with torch.no_grad():
        logits = model.hf(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    return torch.stack([logp[t - 1, ids[t]] for t in range(1, len(ids))])


def _hand_nll(model, example) -> float:
    lp = _hand_logprobs(model, list(example.ids))
    return -float(lp[len(lp) - example.n_target :].sum())


@pytest.fixture(scope="module")
def ref(gpt2):
    """A frozen reference that differs from the model (noise on every weight)."""
    other = gpt2.copy()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in other.hf.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return other


@pytest.fixture(scope="module")
def two(gpt2):
    """Two-example forget and retain batches of different lengths (padding exercised)."""
    forget = qa_examples(gpt2, CONCEPT.qa)
    retain = qa_examples(gpt2, CONCEPT.unrelated_qa)
    assert len(forget[0].ids) != len(forget[1].ids)
    return forget, retain


def test_ga_and_gd_losses_equal_hand_computation(gpt2, two):
    forget, retain = two
    nf = [_hand_nll(gpt2, e) for e in forget]
    nr = [_hand_nll(gpt2, e) for e in retain]
    with torch.no_grad():
        ga = ga_loss(gpt2, make_batch(gpt2, forget))
        gd = gd_loss(gpt2, make_batch(gpt2, forget), make_batch(gpt2, retain), retain_weight=0.7)
    assert ga.item() == pytest.approx(-(nf[0] + nf[1]) / 2, rel=1e-5)
    assert gd.item() == pytest.approx(-(nf[0] + nf[1]) / 2 + 0.7 * (nr[0] + nr[1]) / 2, rel=1e-5)


@pytest.mark.parametrize("rows_per_piece", [None, 3])
@pytest.mark.parametrize("name", ["gpt2", "smol"])
def test_sequence_nll_through_the_target_rows_matches_float64_in_value_and_gradient(
    name, rows_per_piece, request, monkeypatch
):
    """``sequence_nll`` sends only the positions that predict a target through the output head. Against the
    same computation in float64 (a float64 copy of the model, the full forward's logits), its per-sequence
    NLL and its gradient on every weight agree to float32 precision, and at least as closely as the float32
    full-logits path (whose log-softmax over strided classes is the less exact: on SmolLM2 up to 4e-4
    relative in the NLL, 3e-3 in a norm weight's gradient, against 2.7e-4 here), for a right-padded batch
    of examples of different lengths and answer lengths, on gpt2 (seeded) and SmolLM2; in one piece of
    logits, and in pieces of 3 rows (each checkpointed: its backward recomputes its logits)."""
    import analyses.unlearn.batches as batches

    model = request.getfixturevalue(name)
    model.bridge  # noqa: B018 - as after any test that used the hook path: the shared model is wrapped
    if rows_per_piece is not None:
        monkeypatch.setattr(batches, "LOGIT_CHUNK_BYTES", rows_per_piece * 4 * model.cfg.d_vocab)
    qa = [
        *CONCEPT.qa,
        QA("The capital of France is", "Paris, a city on the Seine"),
        QA("Water boils at", "100 degrees"),
    ]
    batch = make_batch(model, qa_examples(model, qa))
    n_targets = int((batch.labels != -100).sum())
    assert (
        n_targets > 3 * 2
        if rows_per_piece
        else n_targets * 4 * model.cfg.d_vocab <= batches.LOGIT_CHUNK_BYTES
    )
    assert len({int(n) for n in (batch.labels != -100).sum(-1)}) > 1  # answers of different lengths
    assert int(batch.mask.sum(-1).min()) < batch.ids.shape[1]  # and padding

    def value_and_grads(m, **kw):
        m.hf.zero_grad(set_to_none=True)
        nll = sequence_nll(m, batch, **kw)
        nll.sum().backward()
        grads = {  # a built bridge renames the HF modules it wraps
            native_name(n): p.grad.detach().double() for n, p in m.hf.named_parameters() if p.grad is not None
        }
        m.hf.zero_grad(set_to_none=True)
        return nll.detach().double(), grads

    rows, rows_grads = value_and_grads(model)
    full, full_grads = value_and_grads(model, logits=logits_of(model, batch))
    wide = model.copy()
    wide.hf.double()
    ref, ref_grads = value_and_grads(wide, logits=wide.forward(batch.ids, batch.mask).logits)
    del wide
    assert rows.shape == (len(qa),) and all(float(v) > 0 for v in rows)
    torch.testing.assert_close(rows, ref, rtol=2e-5, atol=1e-5)
    assert float((rows - ref).abs().max()) <= float((full - ref).abs().max()) + 1e-6
    # a built bridge may hold some weights under its own names (gpt2's split q/k/v): compare the shared ones
    common = set(rows_grads) & set(ref_grads) & set(full_grads)
    assert len(common) >= len(ref_grads) // 2 and any("embed" in n or "wte" in n for n in common)

    def error(grads):  # the worst weight's gradient error, relative to that gradient's norm
        return max(
            float((grads[n] - ref_grads[n]).norm() / ref_grads[n].norm().clamp(min=1e-30)) for n in common
        )

    assert error(rows_grads) < 1e-3
    assert error(rows_grads) <= max(1.5 * error(full_grads), 1e-5)  # float32 rounding is ~1e-6 here


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_npo_and_npo_kl_losses_equal_hand_computation(gpt2, ref, two):
    forget, retain = two
    beta = 0.1
    ratios = [_hand_nll(gpt2, e) - _hand_nll(ref, e) for e in forget]
    npo_hand = -(2 / beta) * sum(_logsig(beta * r) for r in ratios) / 2
    kls = []
    for e in retain:
        ids = list(e.ids)
        with torch.no_grad():
            p = torch.log_softmax(gpt2.hf(torch.tensor([ids])).logits[0].float(), -1)
            q = torch.log_softmax(ref.hf(torch.tensor([ids])).logits[0].float(), -1)
        total = 0.0
        for t in range(len(ids) - e.n_target, len(ids)):  # positions predicting the target tokens
            total += float((q[t - 1].exp() * (q[t - 1] - p[t - 1])).sum())
        kls.append(total)
    with torch.no_grad():
        npo = npo_loss(gpt2, ref, make_batch(gpt2, forget), beta)
        kl = retain_kl(gpt2, ref, make_batch(gpt2, retain))
        both = npo_kl_loss(gpt2, ref, make_batch(gpt2, forget), make_batch(gpt2, retain), beta, 0.5)
    assert abs(ratios[0]) > 1e-2  # the reference really differs
    assert npo.item() == pytest.approx(npo_hand, rel=1e-4)
    assert kl.item() == pytest.approx(sum(kls) / 2, rel=1e-4)
    assert both.item() == pytest.approx(npo_hand + 0.5 * sum(kls) / 2, rel=1e-4)


def test_dpo_idk_loss_equals_hand_computation(gpt2, ref):
    beta = 0.1
    idk = ["I don't know.", "I'm not sure."]
    win, lose = qa_examples(gpt2, CONCEPT.qa, idk), qa_examples(gpt2, CONCEPT.qa)
    terms = []
    for w, l in zip(win, lose):
        w_ratio = -_hand_nll(gpt2, w) + _hand_nll(ref, w)
        l_ratio = -_hand_nll(gpt2, l) + _hand_nll(ref, l)
        terms.append(_logsig(beta * (w_ratio - l_ratio)))
    with torch.no_grad():
        loss = dpo_loss(gpt2, ref, make_batch(gpt2, win), make_batch(gpt2, lose), beta)
    assert loss.item() == pytest.approx(-(2 / beta) * sum(terms) / 2, rel=1e-4)


def test_rmu_loss_equals_hand_computation(gpt2, ref, two):
    forget, retain = two
    layer, alpha = 4, 3.0
    control = torch.linspace(-1, 1, gpt2.cfg.d_model)

    def hidden(model, e):
        with torch.no_grad():
            out = model.hf(torch.tensor([list(e.ids)]), output_hidden_states=True)
        return out.hidden_states[layer + 1][0].float()

    f_err = [((hidden(gpt2, e) - control) ** 2).mean(-1) for e in forget]
    r_err = [((hidden(gpt2, e) - hidden(ref, e)) ** 2).mean(-1) for e in retain]
    hand = float(torch.cat(f_err).mean()) + alpha * float(torch.cat(r_err).mean())
    with torch.no_grad():
        loss = rmu_loss(gpt2, ref, make_batch(gpt2, forget), make_batch(gpt2, retain), layer, control, alpha)
    assert loss.item() == pytest.approx(hand, rel=1e-4)


def test_text_windows_cover_the_token_stream(gpt2):
    wins = text_windows(gpt2, CONCEPT.text, 16)
    stream = gpt2.tokenizer(CONCEPT.text[0].strip() + "\n")["input_ids"]
    joined = [t for w in wins for t in w.ids]
    assert joined == stream[: len(joined)] and len(stream) - len(joined) < 4
    assert all(w.n_target == len(w.ids) - 1 for w in wins)


def test_trainable_parameter_choice(gpt2):
    mlp = trainable_parameters(gpt2, "mlp", (2, 4))
    native = [native_name(n) for n in mlp]  # the bridge may have wrapped gpt2.hf
    assert mlp and all(n.startswith(("transformer.h.2.mlp", "transformer.h.3.mlp")) for n in native)
    assert len(mlp) == 8  # c_fc and c_proj, weight and bias, in two layers
    assert len(trainable_parameters(gpt2, "all", None)) == len(list(gpt2.hf.named_parameters()))
    with pytest.raises(UnlearnError):
        trainable_parameters(gpt2, "mlp", (50, 60))


@pytest.fixture(scope="module")
def ga_run(gpt2):
    before = {k: v.clone() for k, v in gpt2.state_dict().items()}
    cfg = UnlearnConfig(method="ga", steps=3, lr=1e-4, batch_size=4, window=16, stop_fraction=None)
    result = unlearn(gpt2, CONCEPT, cfg, progress=False)
    return result, before


def test_ga_raises_forget_nll_and_leaves_the_base_model_alone(gpt2, ga_run):
    result, before = ga_run
    assert result.steps == 3 and len(result.loss_curve) == 3
    assert result.after.forget_logprob < result.before.forget_logprob - 1.0
    windows = text_windows(gpt2, CONCEPT.text, 16)
    assert sum(_hand_nll(result.model, w) for w in windows) > sum(_hand_nll(gpt2, w) for w in windows)
    for k, v in gpt2.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert result.params["lr"] == 1e-4 and result.params["trainable"] == "mlp"


def test_checkpoint_reloads_with_identical_logits(ga_run, tmp_path):
    from probes.model import load_model

    result, _ = ga_run
    out = result.save(tmp_path / "ga")
    info = json.loads((out / "unlearn.json").read_text())
    assert info["method"] == "ga" and info["steps"] == 3 and info["seconds"] > 0
    assert set(info["before"]) == {
        "forget_accuracy",
        "unrelated_accuracy",
        "forget_logprob",
        "unrelated_logprob",
    }
    assert info["after"]["forget_logprob"] == pytest.approx(result.after.forget_logprob)
    assert len(info["loss_curve"]) == 3
    reloaded = load_model(str(out), device="cpu")
    ids = torch.randint(100, 40000, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(reloaded.hf(ids).logits, result.model.hf(ids).logits)


def test_needle_changes_only_the_named_vectors(gpt2):
    vectors = ((1, 5), (3, 100), (3, 7))
    zero = unlearn(
        gpt2, CONCEPT, UnlearnConfig(method="needle", options=NeedleConfig(vectors=vectors)), progress=False
    )
    noise = unlearn(
        gpt2,
        CONCEPT,
        UnlearnConfig(method="needle", options=NeedleConfig(vectors=vectors, mode="noise")),
        progress=False,
    )
    base = gpt2.state_dict()
    for result in (zero, noise):
        new = result.model.state_dict()
        for layer in range(gpt2.cfg.n_layers):
            key = f"transformer.h.{layer}.mlp.c_proj.weight"  # Conv1D: row i is neuron i's value vector
            changed = {n for l, n in vectors if l == layer}
            for n in range(gpt2.cfg.d_mlp):
                same = torch.equal(base[key][n], new[key][n])
                assert same != (n in changed), (layer, n)
        for k in base:
            if not k.endswith("mlp.c_proj.weight"):
                assert torch.equal(base[k], new[k]), k
    assert zero.params["options"]["mode"] == "ablate"
    for layer, n in vectors:
        assert not zero.model.W_out(layer)[n].any()
        # the noise has the vector's own norm (scale 1.0)
        delta = (noise.model.W_out(layer)[n] - gpt2.W_out(layer)[n]).norm()
        assert delta.item() == pytest.approx(gpt2.W_out(layer)[n].norm().item(), rel=1e-4)
    assert torch.equal(noise.model.W_out(3)[99], gpt2.W_out(3)[99])


@pytest.mark.slow
def test_needle_search_zeroes_located_vectors_until_the_answers_go_smollm2(smol):
    """Needle with no vectors given: locate on the base (the trained half of the held-out split), zero 20 at
    a time until the trained items' accuracy <= 25% of its start. Checked: the criterion of the issue, the edited set is a prefix of locate's ranking taken in
    whole steps, and only those rows of W_out changed."""
    from analyses.unlearn import retain_qa_for
    from probes.concepts import locate
    from probes.data import DEFAULT_CONCEPT_FILE, load_concept, load_concepts

    concept = load_concept(DEFAULT_CONCEPT_FILE, "Albert Einstein")
    retain_qa = retain_qa_for(load_concepts(DEFAULT_CONCEPT_FILE), concept)
    cfg = UnlearnConfig(method="needle", options=NeedleConfig(step=20, max_vectors=200))
    r = unlearn(smol, concept, cfg, retain_qa=retain_qa, progress=False)
    edited = [tuple(v) for v in r.params["options"]["vectors"]]
    assert r.passes(), (r.before, r.after)
    assert len(edited) == 20 * r.steps and len(edited) < 200 and r.stopped_early
    assert [c["vectors"] for c in r.checks] == [20 * (i + 1) for i in range(r.steps)]
    assert r.checks[-1]["forget_accuracy"] == r.after.forget_accuracy
    assert all(c["forget_accuracy"] > 0.25 for c in r.checks[:-1])
    trained, held = concept.split_off(r.trained_items)  # Needle located on the trained half only
    assert held.qa and {q.prompt for q in held.qa}.isdisjoint(r.trained_items)
    unrelated = tuple(concept.unrelated_qa) + tuple(retain_qa)
    ranked = locate(smol, trained, n=200, unrelated=unrelated).refs()
    assert edited == [tuple(v) for v in ranked[: len(edited)]]
    by_layer: dict[int, set[int]] = {}
    for layer, n in edited:
        by_layer.setdefault(layer, set()).add(n)
    for layer in range(smol.cfg.n_layers):
        changed = (r.model.W_out(layer) != smol.W_out(layer)).any(-1).nonzero().flatten().tolist()
        assert set(changed) <= by_layer.get(layer, set())
        for n in by_layer.get(layer, ()):
            assert not r.model.W_out(layer)[n].any()


@pytest.mark.slow
def test_cli_unlearn_writes_checkpoint(tmp_path, capsys):
    from analyses.cli import main
    from probes.results import write_json

    path = write_json(tmp_path / "c.json", CONCEPT)
    out = tmp_path / "run"
    code = main(
        ["--no-progress", "unlearn", "--model", "gpt2-seeded", "--device", "cpu", "--concept-file", str(path)]
        + ["--method", "npo", "--steps", "2", "--lr", "1e-4", "--window", "16", "--stop-fraction", "none"]
        + ["--out", str(out)]
    )
    assert code == 0
    info = json.loads((out / "unlearn.json").read_text())
    assert info["method"] == "npo" and info["steps"] == 2 and info["params"]["options"]["beta"] == 0.1
    assert (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists()
    assert "forget accuracy" in capsys.readouterr().out
    bad_vector = ["--method", "needle", "--needle-vectors", "99:0"]
    assert main(["unlearn", "--model", "gpt2-seeded", "--concept-file", str(path)] + bad_vector) == 2
