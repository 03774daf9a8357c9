"""PEFT adapters (probes/adapters.py): a LoRA adapter built and saved with peft, merged into its base in
memory, computes what peft's own unmerged forward computes; the base is untouched; bad adapters are
refused with a clear error."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from probes.adapters import is_adapter_dir
from probes.errors import ModelLoadError
from probes.model import load_model

peft = pytest.importorskip("peft")

IDS = torch.tensor([[1, 2, 3, 4, 5, 6, 7]])


def _save_lora(base, path, *, targets=("c_attn", "c_fc"), base_name="gpt2-seeded"):
    """A LoRA adapter on a copy of ``base`` with random (non-zero) A and B, saved as safetensors; returns
    the logits of peft's unmerged forward on ``IDS``."""
    work = base.copy()
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=list(targets), fan_in_fan_out=True, init_lora_weights=False
    )
    torch.manual_seed(0)
    model = peft.get_peft_model(work.hf, config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)  # a visible update
        logits = model(input_ids=IDS).logits
    model.save_pretrained(path)
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = base_name
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    return logits


def test_merged_lora_equals_peft_unmerged_and_leaves_the_base(gpt2, tmp_path):
    path = tmp_path / "adapter"
    expected = _save_lora(gpt2, path)
    assert is_adapter_dir(path) and (path / "adapter_model.safetensors").is_file()
    before = {k: v.clone() for k, v in gpt2.state_dict().items()}
    merged = load_model(str(path), base=gpt2)
    with torch.no_grad():
        got = merged.hf(input_ids=IDS).logits
        plain = gpt2.hf(input_ids=IDS).logits
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    assert (got - plain).abs().max() > 1e-2  # the adapter changed the function
    assert all(torch.equal(before[k], v) for k, v in gpt2.state_dict().items())  # base untouched
    # an ordinary model: no peft layers left, the base's parameter names, its tokenizer
    assert not any("lora" in n for n, _ in merged.hf.named_parameters())
    assert set(merged.state_dict()) == set(before)
    assert merged.tokenizer is gpt2.tokenizer and merged.name == str(path)
    # the merged weight is W + (alpha / r) B A on one layer (Conv1D: fan_in_fan_out, stored transposed)
    from safetensors.torch import load_file

    lora = load_file(path / "adapter_model.safetensors")
    a = lora["base_model.model.transformer.h.3.mlp.c_fc.lora_A.weight"]
    b = lora["base_model.model.transformer.h.3.mlp.c_fc.lora_B.weight"]
    w = before["transformer.h.3.mlp.c_fc.weight"]
    assert torch.allclose(
        merged.state_dict()["transformer.h.3.mlp.c_fc.weight"], w + 2.0 * (b @ a).T, atol=1e-6
    )


def test_the_base_the_adapter_names_is_loaded_when_none_is_given(gpt2, tmp_path):
    path = tmp_path / "adapter"
    expected = _save_lora(gpt2, path, targets=("c_proj",))
    merged = load_model(str(path), device="cpu")  # base_model_name_or_path: gpt2-seeded (seed 0, as gpt2)
    with torch.no_grad():
        assert torch.allclose(merged.hf(input_ids=IDS).logits, expected, atol=1e-4)


def test_bad_adapters_are_refused_with_the_cause(gpt2, tmp_path):
    path = tmp_path / "adapter"
    _save_lora(gpt2, path)
    # a pickle adapter needs allow_pickle
    pickled = tmp_path / "pickled"
    shutil.copytree(path, pickled)
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    with pytest.raises(ModelLoadError, match="pickle file") as e:
        load_model(str(pickled), base=gpt2)
    assert "allow_pickle" in str(e.value)
    # no weights at all
    (pickled / "adapter_model.bin").unlink()
    with pytest.raises(ModelLoadError, match="no adapter weights"):
        load_model(str(pickled), base=gpt2)
    # no base named and none given
    nameless = tmp_path / "nameless"
    shutil.copytree(path, nameless)
    cfg = json.loads((nameless / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = None
    (nameless / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="names no base model"):
        load_model(str(nameless))
    # a base it was not trained on (another width)
    from transformers import GPT2Config, GPT2LMHeadModel

    from probes.model import from_hf

    torch.manual_seed(0)
    small = from_hf(GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=12, n_head=4)).eval(), gpt2.tokenizer)
    with pytest.raises(ModelLoadError, match="does not fit the base model") as e:
        load_model(str(path), base=small)
    assert "--base" in str(e.value)
    # broken JSON
    (nameless / "adapter_config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_model(str(nameless), base=gpt2)


def test_vestige_audit_takes_an_adapter_directory_onto_base(gpt2, tmp_path, monkeypatch):
    """``vestige audit --unlearned ADAPTER`` merges the adapter into the loaded ``--base`` and hands the
    audit that merged model (the audit itself is tested on models in test_audit)."""
    import analyses.audit as audit_mod
    import analyses.cli

    path = tmp_path / "adapter"
    expected = _save_lora(gpt2, path, targets=("c_fc",))
    seen = {}

    def audit(base, unlearned, concept, **kwargs):
        seen.update(base=base, unlearned=unlearned, concept=concept)
        raise KeyboardInterrupt  # stop here: the models are what this test checks

    monkeypatch.setattr(audit_mod, "audit", audit)
    argv = ["--no-progress", "audit", "--base", "gpt2-seeded", "--unlearned", str(path), "--device", "cpu"]
    with pytest.raises(KeyboardInterrupt):
        analyses.cli.main([*argv, "--concept", "Harry Potter", "--out", str(tmp_path / "audit")])
    assert seen["base"].name == "gpt2-seeded" and seen["unlearned"].name == str(path)
    with torch.no_grad():
        got = seen["unlearned"].hf(input_ids=IDS).logits
        plain = seen["base"].hf(input_ids=IDS).logits
    assert torch.allclose(got, expected, atol=1e-4) and (got - plain).abs().max() > 1e-2
