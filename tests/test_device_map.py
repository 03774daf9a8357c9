"""Device maps (issue #21): ``load_model(device_map=...)`` and ``--device-map`` on every command that
loads a model. The dispatch path runs on CPU with accelerate: a tiny seeded Llama split per layer between
``cpu`` and ``disk`` offload gives the logits, the bridge's cached residual stream and ``score_qa`` of the
undispatched model; weights that a map offloads are refused, with the fix, by what must read them."""

from __future__ import annotations

import json

import pytest
import torch

from probes import hooks
from probes.data import QA
from probes.errors import ModelLoadError
from probes.model import Model, load_model, resolve_device_map, smollm2_tokenizer
from probes.qa import score_qa

PROMPTS = ["The capital of France is", "Harry Potter's best friend is Ron Weasley, and"]
# layer 0 stays in memory, layers 1 and 2 are offloaded to disk (accelerate loads each for its forward)
SPLIT = {
    "model.embed_tokens": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.layers.2": "disk",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "cpu",
}


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    """A tiny seeded Llama (3 layers, width 64, 4 query / 2 kv heads) saved as a checkpoint directory."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(
        "llama",
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        attn_implementation="eager",
    )
    hf = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(1.0, 0.2) if p.dim() == 1 else p.normal_(0.0, 0.1)
    path = tmp_path_factory.mktemp("tiny") / "llama"
    Model(hf, smollm2_tokenizer(), name="tiny").save(path)
    return str(path)


def test_a_cpu_and_disk_split_gives_the_undispatched_models_logits_activations_and_scores(
    saved_tiny, tmp_path
):
    plain = load_model(saved_tiny, device="cpu")
    split = load_model(saved_tiny, device_map=SPLIT, offload_folder=str(tmp_path / "offload"))
    assert split.device_map == SPLIT and split.device == torch.device("cpu")
    # model.layers.K...: the disk layers sit on the meta device (read from the safetensors file per forward)
    assert {n.split(".")[2] for n in split.offloaded()} == {"1", "2"}
    ids, mask = plain.tokenize(PROMPTS)
    with torch.no_grad():
        want = plain.forward(ids, mask).logits
        got = split.forward(ids, mask).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    names = [hooks.resid_post(layer) for layer in range(3)] + [hooks.mlp_post(2)]
    want_logits, want_cache = hooks.run_with_cache(plain, ids, names, mask)
    got_logits, got_cache = hooks.run_with_cache(split, ids, names, mask)
    torch.testing.assert_close(got_logits, want_logits, atol=1e-5, rtol=0)
    for name in names:
        torch.testing.assert_close(got_cache[name], want_cache[name], atol=1e-5, rtol=0)
    items = [QA(PROMPTS[0], "Paris"), QA("Harry Potter's best friend is Ron", "Weasley")]
    a, b = score_qa(plain, items), score_qa(split, items)
    assert a.completions == b.completions and a.correct == b.correct
    assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_offloaded_weights_are_refused_by_copies_and_by_the_audit(saved_tiny):
    from analyses.audit import audit
    from probes.data import Concept

    split = load_model(saved_tiny, device_map=SPLIT)
    with pytest.raises(ModelLoadError, match="offloaded") as e:
        split.copy()
    assert "model.layers.1" in e.value.problem and "disk" in e.value.cause and "without 'disk'" in e.value.fix
    concept = Concept("X", (QA(PROMPTS[0], "Paris"),))
    with pytest.raises(ModelLoadError, match="the audit needs every weight"):
        audit(split, split, concept, progress=False)


def test_a_map_that_leaves_modules_out_is_refused_with_the_fix(saved_tiny):
    with pytest.raises(ModelLoadError, match="does not fit") as e:
        load_model(saved_tiny, device_map={"model.layers.0": "cpu", "model.layers.1": "disk"})
    assert "model.embed_tokens" in e.value.fix


def test_seeded_gpt2_is_dispatched_in_memory_by_a_per_layer_map(gpt2, tmp_path):
    """``gpt2-seeded`` is built in memory, so accelerate's ``dispatch_model`` places it (the tied
    embedding and unembedding stay together on cpu)."""
    layout = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.ln_f": "cpu", "lm_head": "cpu"}
    layout.update({f"transformer.h.{i}": "disk" if i % 4 == 3 else "cpu" for i in range(12)})
    split = load_model("gpt2-seeded", device_map=layout, offload_folder=str(tmp_path), seed=0)
    assert len(split.offloaded()) > 0 and split.device == torch.device("cpu")
    assert any(tmp_path.iterdir())  # dispatch_model wrote the offloaded blocks' weights there
    ids, mask = gpt2.tokenize(PROMPTS[:1])
    with torch.no_grad():
        torch.testing.assert_close(
            split.forward(ids, mask).logits, gpt2.forward(ids, mask).logits, atol=1e-5, rtol=0
        )


def test_the_bridge_refuses_a_map_that_mixes_gpus_with_offload_and_says_what_works():
    """TransformerBridge wraps all-GPU and CPU/disk-only maps, not a GPU beside cpu/disk offload (what
    ``auto`` gives when a model does not fit the GPUs): vestige names that and the maps that work. The
    placement is written on a CPU model here (the bridge checks ``hf_device_map`` before any forward)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(
        "llama", vocab_size=49152, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager",
    )  # fmt: skip
    hf = AutoModelForCausalLM.from_config(cfg)
    hf.hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cpu", "model.norm": 0,
                        "model.rotary_emb": 0, "lm_head": 0}  # fmt: skip
    model = Model(hf, smollm2_tokenizer(), name="mixed")
    assert model.device == torch.device("cuda", 0)  # where the embedding runs
    with pytest.raises(ModelLoadError, match="bridge cannot wrap") as e:
        _ = model.bridge
    assert "GPUs only" in e.value.fix and "{0: 5 modules, 'cpu': 1 module}" in e.value.cause


def test_device_maps_are_read_and_checked_before_any_weight_loads(tmp_path):
    assert resolve_device_map(None) is None
    assert resolve_device_map("balanced") == "balanced" and resolve_device_map(" auto ") == "auto"
    assert resolve_device_map('{"model.layers.0": "cpu", "lm_head": "disk"}') == {
        "model.layers.0": "cpu",
        "lm_head": "disk",
    }
    path = tmp_path / "map.json"
    path.write_text(json.dumps(SPLIT))
    assert resolve_device_map(str(path)) == SPLIT
    for bad, said in [
        ("balansed", "not a strategy"),
        ('{"model.layers.0": cpu}', "not valid JSON"),
        ("[1, 2]", "not a strategy"),
        ('{"model.layers.0": "gpu"}', "is not a device"),
        ('{"model.layers.0": -1}', "is not a device"),
        ('{"model.layers.0": "meta"}', "is not a device"),
        ("{}", "non-empty JSON object"),
    ]:
        with pytest.raises(ModelLoadError, match=said):
            resolve_device_map(bad)
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ModelLoadError, match="no such GPU"):
        resolve_device_map({"model.layers.0": n_gpus})
    assert resolve_device_map({"model.layers.0": n_gpus}, check_devices=False) == {"model.layers.0": n_gpus}
    assert resolve_device_map({"": "cuda:1"}, check_devices=False) == {"": 1}


@pytest.mark.parametrize(
    "argv",
    [
        ["info", "gpt2-seeded"],
        ["concepts", "--concept", "Harry Potter"],
        ["heads", "--kind", "retrieval"],
        ["unlearn", "--method", "ga", "--concept", "Harry Potter"],
        ["audit", "--base", "x", "--unlearned", "y", "--concept", "Harry Potter"],
    ],
    ids=lambda a: a[0],
)
def test_every_model_command_takes_device_map_and_refuses_a_bad_one_before_loading(argv, capsys, monkeypatch):
    import analyses.cli
    import probes.model

    monkeypatch.setattr(probes.model, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    for extra, said in [
        (["--device-map", '{"model.layers.0": "gpu"}'], "is not a device"),
        (["--device-map", "everywhere"], "not a strategy"),
        (["--device", "cpu", "--device-map", "auto"], "pass one of them"),
    ]:
        assert analyses.cli.main(["--no-progress", *argv, *extra]) == 2
        err = capsys.readouterr().err
        assert said in err and "fix:" in err and "Traceback" not in err, err


def test_device_map_reaches_load_model_from_the_command_line(saved_tiny, capsys, tmp_path):
    import analyses.cli

    layout = tmp_path / "split.json"
    layout.write_text(json.dumps(SPLIT))
    argv = ["info", saved_tiny, "--device-map", str(layout), "--max-new-tokens", "2", "--json"]
    assert analyses.cli.main(argv) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_layers"] == 3 and info["device"] == "cpu"
