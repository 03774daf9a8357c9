"""Foundation: loading, bridge/HF/nnsight parity, value vectors, save/load, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from probes import hooks
from probes.errors import ContextLengthError, ModelLoadError
from probes.model import load_model


def _ids(model, batch=2, length=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, 40000, (batch, length), generator=g)


def test_bridge_logits_equal_hf(any_model):
    ids = _ids(any_model)
    with torch.no_grad():
        hf = any_model.hf(ids).logits
        br = any_model.bridge(ids)
    assert torch.allclose(hf, br, atol=1e-4, rtol=0)


def _envoy(root, path: str):
    for part in path.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


def test_nnsight_matches_bridge_resid_and_mlp(any_model):
    """nnsight over the same module reads the same residual stream and neuron activations (the input of
    the MLP's output projection) as the bridge's hooks."""
    model = any_model
    ids = _ids(model, length=7)
    layers = [0, model.cfg.n_layers // 2, model.cfg.n_layers - 1]
    names = [hooks.resid_post(l) for l in layers] + [hooks.mlp_post(l) for l in layers]
    _, cache = hooks.run_with_cache(model, ids, names)
    lm, saved = model.nnsight, {}
    with lm.trace(ids):
        for l in layers:
            block = _envoy(lm, f"{model._paths['layers']}.{l}")
            saved[("mlp", l)] = _envoy(block, model._paths["mlp_out"]).input.save()
            saved[("resid", l)] = block.output.save()
    for l in layers:
        resid = saved[("resid", l)]
        resid = resid[0] if isinstance(resid, tuple) else resid
        assert torch.allclose(resid, cache[hooks.resid_post(l)], atol=1e-5, rtol=0)
        assert torch.allclose(saved[("mlp", l)], cache[hooks.mlp_post(l)], atol=1e-5, rtol=0)


def test_value_vectors_are_the_hf_weights(any_model):
    model = any_model
    bridge_w_out = model.bridge.W_out
    for layer in (0, model.cfg.n_layers - 1):
        mod = model.layer_module(layer, "mlp_out")
        for i in (0, 7, model.cfg.d_mlp - 1):
            direct = mod.weight[i] if model.family == "gpt2" else mod.weight[:, i]
            assert torch.equal(model.W_out(layer)[i], direct)
            assert torch.equal(bridge_w_out[layer][i], direct)
    assert model.W_out(0).shape == (model.cfg.d_mlp, model.cfg.d_model)
    # The view shares storage with the parameter: an edit through it is an edit of the model.
    assert model.W_out(1).data_ptr() == model.layer_module(1, "mlp_out").weight.data_ptr()


def test_padding_is_invisible(any_model):
    """Left-padded batches with padding-aware positions give the unpadded logits."""
    model = any_model
    texts = ["The capital of France is", "Water boils at one hundred degrees"]
    ids, mask = model.tokenize(texts, padding_side="left")
    with torch.no_grad():
        batched = model.forward(ids, mask).logits
        for i, t in enumerate(texts):
            single, _ = model.tokenize([t])
            alone = model.forward(single).logits[0, -1]
            assert torch.allclose(batched[i, -1], alone, atol=1e-4)


def test_reading_passes_build_no_key_value_cache(any_model):
    """Model.forward, final_hidden and the bridge's hooked passes ask the HF model for no key/value cache
    (it holds every layer's keys and values, which nothing reads); generation still decodes with one, and
    the logits are the same either way."""
    model = any_model
    ids, mask = model.tokenize(["The capital of France is", "Water boils at"], padding_side="left")
    seen: list[object] = []

    def spy(module, args, kwargs):
        seen.append(kwargs.get("use_cache"))

    with torch.no_grad():
        cached = model.forward(ids, mask, use_cache=True)
        handle = model.hf.register_forward_pre_hook(spy, with_kwargs=True)
        try:
            plain = model.forward(ids, mask)
            hooks.run_with_cache(model, ids, [hooks.resid_post(0)], mask=mask)
            hooks.run_with_hooks(model, ids, [], mask=mask)
            assert seen == [False, False, False]
            model.generate(["The capital of France is"], max_new_tokens=2)
            assert seen[3] is not False  # generation asks for its cache
        finally:
            handle.remove()
        body = model.hf.get_decoder()
        handle = body.register_forward_pre_hook(spy, with_kwargs=True)
        try:
            model.final_hidden(ids, mask)
        finally:
            handle.remove()
    assert seen[-1] is False
    assert plain.past_key_values is None and cached.past_key_values is not None
    # equal on SmolLM2; gpt2's attention takes another kernel without the cache (1.9e-6 apart)
    torch.testing.assert_close(plain.logits, cached.logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "prompt,answer",
    [
        ("The capital of France is", "Paris"),
        ("The largest planet in our solar system is", "Jupiter"),
        ("The chemical symbol for gold is", "Au"),
        ("Harry Potter's best friend is Ron", "Weasley"),
    ],
)
def test_smollm2_knows_facts(smol, prompt, answer):
    completion = smol.generate([prompt], max_new_tokens=6)[0]
    assert completion.strip().lower().startswith(answer.lower()), completion


def test_save_and_reload_bitwise(any_model, tmp_path):
    ids = _ids(any_model)
    path = any_model.save(tmp_path / "ckpt")
    assert (path / "model.safetensors").exists() and (path / "tokenizer_config.json").exists()
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    back = load_model(str(path), device="cpu")
    native = any_model.copy()  # the bridge wraps any_model.hf in place; the copy is the plain HF module
    with torch.no_grad():
        assert torch.equal(native.hf(ids).logits, back.hf(ids).logits)
    assert list(back.hf.state_dict()) == list(native.hf.state_dict())


def test_copy_has_own_weights(gpt2):
    _ = gpt2.bridge  # copying a bridged model yields a plain HF module with the same weights
    twin = gpt2.copy()
    assert type(twin.hf.transformer.h[0]).__name__ == "GPT2Block"
    assert all(torch.equal(a, b) for a, b in zip(twin.state_dict().values(), gpt2.state_dict().values()))
    assert twin.tokenizer is gpt2.tokenizer
    before = gpt2.W_out(0)[3].clone()
    with torch.no_grad():
        twin.W_out(0)[3] += 1.0
    assert torch.equal(gpt2.W_out(0)[3], before)
    assert not torch.equal(twin.W_out(0)[3], before)


def test_seeded_gpt2_is_reproducible_and_gpt2_small_shaped(gpt2):
    again = load_model("gpt2-seeded", device="cpu", seed=0)
    assert torch.equal(again.W_out(5), gpt2.W_out(5))
    c = gpt2.cfg
    assert (c.n_layers, c.n_heads, c.d_model, c.d_mlp, c.d_vocab) == (12, 12, 768, 3072, 50257)


def test_smollm2_config(smol):
    c = smol.cfg
    assert (c.n_layers, c.n_heads, c.n_kv_heads, c.d_model, c.d_mlp, c.d_vocab) == (
        30,
        9,
        3,
        576,
        1536,
        49152,
    )


def test_smollm2_cache_makes_second_load_fast(smol):
    again = load_model("smollm2-135m", device="cpu")
    assert again.load_seconds < 10
    ids = _ids(smol, 1, 5)
    with torch.no_grad():
        assert torch.equal(again.hf(ids).logits, smol.hf(ids).logits)


def test_context_length_is_checked(gpt2):
    with pytest.raises(ContextLengthError, match="more than the model's context of 1024"):
        gpt2.tokenize(["word " * 1100])


def test_real_gpt2_small(real_gpt2):
    ids = _ids(real_gpt2)
    with torch.no_grad():
        assert torch.allclose(real_gpt2.hf(ids).logits, real_gpt2.bridge(ids), atol=1e-4)
    assert torch.equal(real_gpt2.W_out(3)[5], real_gpt2.layer_module(3, "mlp_out").weight[5])


# ---- bad input ---------------------------------------------------------------------------------------------
def test_unknown_spec():
    with pytest.raises(ModelLoadError, match="unknown model spec 'llama-9000'") as e:
        load_model("llama-9000")
    assert "smollm2-135m" in e.value.fix


def test_missing_path(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nothing" / "here"))


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ModelLoadError, match="holds no model weights"):
        load_model(str(tmp_path))


def test_not_a_model_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match="not a model directory"):
        load_model(str(tmp_path))


def test_pickle_checkpoint_refused_then_allowed(gpt2, tmp_path):
    torch.save(gpt2.state_dict(), tmp_path / "pytorch_model.bin")  # a legacy pickle checkpoint
    gpt2.hf.config.save_pretrained(tmp_path)
    gpt2.tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "pytorch_model.bin").exists()
    with pytest.raises(ModelLoadError, match="only pickle weights") as e:
        load_model(str(tmp_path))
    assert "allow_pickle=True" in e.value.fix
    back = load_model(str(tmp_path), allow_pickle=True)
    assert torch.equal(back.W_out(2), gpt2.W_out(2))


def test_remote_code_refused(gpt2, tmp_path):
    gpt2.save(tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="needs remote code") as e:
        load_model(str(tmp_path / "m"))
    assert "trust_remote_code=True" in e.value.fix


def test_unsupported_gguf_named(tmp_path):
    bad = tmp_path / "weird.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="weird.gguf"):
        load_model(str(bad))


def test_a_bfloat16_checkpoint_loads_as_it_is_with_dtype_auto(tmp_path):
    """``dtype="auto"`` (``--dtype auto``) keeps a checkpoint in the dtype it was saved in (issue #20: bf16 /
    fp16 releases load as they are); the default stays float32. A tiny seeded Llama saved in bfloat16: with
    auto every weight is bfloat16 and equal to the saved one, hooks and QA scoring run on it, and its logits
    agree with the float32 load's to bfloat16 precision; the embedded GGUF has no stored float dtype and
    stays float32."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from probes import hooks
    from probes.data import QA
    from probes.model import Model, smollm2_tokenizer
    from probes.qa import score_qa

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(
        "llama", vocab_size=49152, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )  # fmt: skip
    hf = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)
    path = Model(hf, smollm2_tokenizer(), name="tiny-bf16").save(tmp_path / "bf16")
    as_is = load_model(str(path), device="cpu", dtype="auto")
    widened = load_model(str(path), device="cpu")
    assert {p.dtype for p in as_is.hf.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in widened.hf.parameters()} == {torch.float32}
    for (name, p), q in zip(hf.named_parameters(), as_is.hf.parameters()):
        assert torch.equal(p, q), name
    ids, mask = as_is.tokenize(["The capital of France is"])
    logits, cache = hooks.run_with_cache(as_is, ids, [hooks.resid_post(1)], mask)
    assert cache[hooks.resid_post(1)].dtype == torch.bfloat16 and cache[hooks.resid_post(1)].shape[-1] == 64
    ref = widened.hf(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(logits.float(), ref, atol=0.05 * ref.abs().max().item())
    scores = score_qa(as_is, [QA("The capital of France is", "Paris")])
    assert len(scores.correct) == 1 and np.isfinite(scores.logprobs).all()
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_model(str(path), device="cpu", dtype="float33")
