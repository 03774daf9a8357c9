"""Linear probes (Zhang et al. 2024; control task of Hewitt & Liang 2019): batched fit = sklearn, a planted
direction is decoded from its layer on and not before, transfer, and SmolLM2's real attributes."""

from __future__ import annotations

import json

import pytest
import torch

from probes import hooks
from probes.errors import MismatchError
from probes.linear import (
    ProbeConfig,
    ProbeDataError,
    ProbeDataset,
    collect_activations,
    fit_probes,
    fit_probes_on,
    load_probe_dataset,
    probe_inputs,
    stratified_folds,
    subset,
    transfer,
    wilson_interval,
)
from probes.logistic import fit_logistic

PLANT_LAYER = 5


def test_bundled_datasets_follow_the_format():
    for name in ("city_country", "person_occupation"):
        ds = load_probe_dataset(name)
        assert len(ds) >= 150 and len(ds.classes) >= 4
        assert "{entity}" in ds.template and ds.y.max().item() == len(ds.classes) - 1


def test_bad_files_are_explained(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"template": "{entity} is", "items": [{"entity": "x"}]}))
    with pytest.raises(ProbeDataError, match="items"):
        load_probe_dataset(bad)
    with pytest.raises(ProbeDataError, match="entity"):
        ProbeDataset("x", "a", "no slot", ("a", "b"), ("1", "2"))
    with pytest.raises(ProbeDataError, match="not found"):
        load_probe_dataset("no_such_set")


def test_probe_position_is_the_last_entity_token(gpt2):
    ds = ProbeDataset(
        "t", "country", "{entity} is a city in", ("Rio de Janeiro", "Lyon"), ("Brazil", "France")
    )
    tok = gpt2.tokenizer
    for ids, entity, text in zip(probe_inputs(gpt2, ds), ds.entities, ds.texts()):
        assert tok.decode(ids).strip() == entity  # cut right after the entity
        full = tok(text)["input_ids"]
        assert full[: len(ids)] == ids and len(full) > len(ids)
    last = probe_inputs(gpt2, ds, position="last")
    assert [tok.decode(x) for x in last] == ds.texts()


def test_activations_match_a_full_unpadded_forward(gpt2):
    ds = subset(load_probe_dataset("person_occupation"), range(0, 40, 5))
    acts = collect_activations(gpt2, ds, batch_size=3)
    assert acts.shape == (gpt2.cfg.n_layers, len(ds), gpt2.cfg.d_model)
    start = ds.template.index("{entity}")
    for i, (entity, text) in enumerate(zip(ds.entities, ds.texts())):
        enc = gpt2.tokenizer(text, return_offsets_mapping=True)
        pos = max(j for j, (a, b) in enumerate(enc["offset_mapping"]) if a < start + len(entity))
        ids = torch.tensor([enc["input_ids"]])  # the whole text, no padding
        _, cache = hooks.run_with_cache(gpt2, ids, [hooks.resid_post(3), hooks.resid_post(11)])
        torch.testing.assert_close(acts[3, i], cache[hooks.resid_post(3)][0, pos], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(acts[11, i], cache[hooks.resid_post(11)][0, pos], rtol=1e-4, atol=1e-4)


def test_wilson_and_folds():
    lo, hi = wilson_interval(81, 100)
    assert lo == pytest.approx(0.7222, abs=1e-3) and hi == pytest.approx(0.8749, abs=1e-3)  # textbook example
    y = torch.arange(40) % 4
    fold = stratified_folds(y, 5, seed=0)
    for k in range(5):
        assert torch.bincount(y[fold == k], minlength=4).tolist() == [2, 2, 2, 2]


def test_batched_fit_equals_sklearn():
    """Same objective as StandardScaler + LogisticRegression(C = 1 / (2 l2 n)); tight solves agree."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    gen = torch.Generator().manual_seed(0)
    n, d, c, l2 = 90, 40, 3, 1e-2
    y = torch.arange(n) % c
    centers = torch.randn(c, d, generator=gen)
    x = torch.stack([centers[y] * s + torch.randn(n, d, generator=gen) * 2 for s in (0.3, 1.0)])  # 2 layers
    x[1, :, 0] *= 50.0  # a badly scaled feature: standardization must handle it
    train = torch.ones(2, n, dtype=torch.bool)
    train[0, :20] = False
    fit = fit_logistic(x, y[None], train, c, l2=l2, max_iter=500, tol=1e-7)
    for p in range(2):
        rows = train[p]
        xs = x[p][rows].double()
        mean, std = xs.mean(0), xs.std(0, unbiased=False)
        ref = sklearn.LogisticRegression(C=1 / (2 * l2 * int(rows.sum())), tol=1e-10, max_iter=10_000)
        ref.fit(((xs - mean) / std).numpy(), y[rows].numpy())
        w = fit.weight[0, p].double()
        coef = torch.tensor(ref.coef_).T  # [d, c]
        torch.testing.assert_close(w, coef, rtol=2e-3, atol=2e-3)
        ref_logits = ((x[p].double() - mean) / std) @ coef + torch.tensor(ref.intercept_)
        ours = fit.heldout_logits[0, p].double()
        centered = lambda t: t - t.mean(-1, keepdim=True)  # noqa: E731 (softmax ignores a shared shift)
        torch.testing.assert_close(centered(ours), centered(ref_logits), rtol=2e-3, atol=2e-3)


def _planted(model, ds: ProbeDataset, layer: int, scale: float):
    """Add a class direction to the MLP output of ``layer`` at each entity's last token (a hook on the HF
    module, keyed by token id), so resid_post of ``layer`` and later carry the label and earlier ones do not."""
    inputs = probe_inputs(model, ds)
    gen = torch.Generator().manual_seed(1)
    dirs = torch.nn.functional.normalize(
        torch.randn(len(ds.classes), model.cfg.d_model, generator=gen), dim=-1
    )
    table = torch.zeros(model.cfg.d_vocab, model.cfg.d_model)
    for ids, label in zip(inputs, ds.y.tolist()):
        table[ids[-1]] = scale * dirs[label]
    seen = {}
    emb = model.hf.get_input_embeddings()
    emb = getattr(emb, "_original_component", emb)
    h_ids = emb.register_forward_pre_hook(lambda mod, args: seen.__setitem__("ids", args[0]))
    mlp = model.layer_module(layer, "mlp_out")
    h_add = mlp.register_forward_hook(lambda mod, args, out: out + table[seen["ids"]])
    try:
        return collect_activations(model, ds, batch_size=64)
    finally:
        h_ids.remove()
        h_add.remove()


@pytest.fixture(scope="module")
def planted(gpt2):
    """160 cities whose last tokens are distinct, with random labels (4 classes): nothing to decode until
    the planted layer."""
    cities = load_probe_dataset("city_country")
    last_tokens, keep = set(), []
    for i, ids in enumerate(probe_inputs(gpt2, cities)):
        if ids[-1] not in last_tokens:
            last_tokens.add(ids[-1])
            keep.append(i)
    keep = keep[:160]
    gen = torch.Generator().manual_seed(0)
    labels = [("north", "south", "east", "west")[i] for i in torch.randperm(len(keep), generator=gen) % 4]
    ds = ProbeDataset(
        "planted", "direction", cities.template, tuple(cities.entities[i] for i in keep), tuple(labels)
    )
    clean = collect_activations(gpt2, ds, batch_size=64)
    scale = 2.0 * clean[PLANT_LAYER].norm(dim=-1).median().item()
    return ds, _planted(gpt2, ds, PLANT_LAYER, scale)


def test_planted_direction_is_decoded_from_its_layer_on(planted):
    ds, acts = planted
    assert len(ds) >= 150
    res = fit_probes_on(acts, ds, config=ProbeConfig(folds=5, l2=1e-2), model_name="gpt2-seeded")
    for layer, acc in zip(res.layers, res.accuracy):
        if layer < PLANT_LAYER:
            assert acc < 0.45, (layer, acc)  # chance is 0.25
        else:
            assert acc > 0.9, (layer, acc)
    # the control task (shuffled labels) stays at chance everywhere, so selectivity is high from L on
    assert max(res.control_accuracy) < 0.45
    assert min(res.selectivity[PLANT_LAYER:]) > 0.5
    assert res.best_layer >= PLANT_LAYER
    frame = res.to_frame()
    assert list(frame.columns)[:2] == ["layer", "accuracy"] and len(frame) == 12
    assert all(lo <= a <= hi for a, lo, hi in zip(res.accuracy, res.accuracy_low, res.accuracy_high))
    fig = res.figure()
    assert [t.name for t in fig.data] == ["probe", "control (shuffled labels)"]
    assert res.to_dict()["best_layer"] == res.best_layer


def test_transfer_to_same_and_other_model(gpt2, planted):
    ds, acts = planted
    res = fit_probes_on(acts, ds, config=ProbeConfig(folds=5, l2=1e-2), model_name="gpt2-seeded")
    same = transfer(res, gpt2, acts=acts)
    assert same.applied_accuracy == res.accuracy  # each item from the fold probe that did not see it
    assert same.refit.accuracy == res.accuracy
    # the full-data probe applied to its own training activations
    full = res.probe.predict(acts)
    assert (full[PLANT_LAYER:] == ds.y[None]).float().mean() > 0.95
    # another model without the planted direction: the probe fails, a re-fit cannot find it either
    from probes.model import load_model

    other = load_model("gpt2-seeded", device="cpu", seed=1)
    moved = transfer(res, other)
    assert max(moved.applied_accuracy) < 0.45 and max(moved.refit.accuracy) < 0.45
    assert len(moved.to_frame()) == 12 and len(moved.figure().data) == 4


def test_transfer_refuses_other_shapes(smol, planted):
    ds, acts = planted
    res = fit_probes_on(acts, ds, config=ProbeConfig(folds=2, max_iter=5))
    with pytest.raises(MismatchError):
        transfer(res, smol)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["city_country", "person_occupation"])
def test_smollm2_decodes_real_attributes(smol, name):
    res = fit_probes(smol, name)
    best = res.layers.index(res.best_layer)
    assert res.selectivity[best] >= 0.2
    assert res.accuracy[best] > res.chance + 0.2
    assert res.accuracy_low[best] > max(res.control_high)  # beyond the control's interval
    print(f"\n{name}\n" + res.to_frame().round(3).to_string(index=False))


def test_fitting_layers_in_chunks_gives_the_fits_of_all_layers_at_once(planted, monkeypatch):
    """``fit_probes_on`` fits a few layers at a time (``PROBE_CHUNK_FLOATS``); the problems are
    independent, so one layer per chunk gives the accuracies, weights and held-out logits of one batch."""
    import probes.linear as linear

    ds, acts = planted
    monkeypatch.setattr(linear, "PROBE_CHUNK_FLOATS", 1 << 40)  # every layer at once
    whole = linear.fit_probes_on(acts, ds)
    monkeypatch.setattr(linear, "PROBE_CHUNK_FLOATS", 1)  # one layer per chunk
    chunked = linear.fit_probes_on(acts, ds)
    assert chunked.accuracy == whole.accuracy and chunked.control_accuracy == whole.control_accuracy
    for name in ("mean", "std", "weight", "bias"):
        torch.testing.assert_close(
            getattr(chunked.probe, name), getattr(whole.probe, name), atol=1e-4, rtol=1e-4
        )


def test_heldout_predict_uses_each_items_own_fold_probe(planted):
    """Item i is classified by the probe of fold ``fold_of[i]`` (which did not train on it): the same
    predictions as a loop over items, for the probe's own activations and for shifted ones."""
    ds, acts = planted
    probe = fit_probes_on(acts, ds).probe
    for a in (acts, acts + 0.5 * acts.std()):
        got = probe.heldout_predict(a)
        for i in range(0, len(ds), 7):
            j = int(probe.fold_of[i])
            z = (a[:, i] - probe.mean[j]) / probe.std[j]  # [L, d]
            want = (torch.einsum("ld,ldc->lc", z, probe.weight[j]) + probe.bias[j]).argmax(-1)
            assert torch.equal(got[:, i], want), i
