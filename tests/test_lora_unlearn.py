"""LoRA unlearning (``UnlearnConfig(trainable="lora")``): only a low-rank update trains, the run saves a PEFT
adapter, and PEFT itself (``load_model(adapter, base=...)`` merges with ``PeftModel``) gives back exactly
the model the run returned: on GPT-2's ``Conv1D`` (``fan_in_fan_out``) and on SmolLM2's ``Linear``."""

from __future__ import annotations

import json

import pytest
import torch

from analyses.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, block_linears
from analyses.unlearn import UnlearnConfig, UnlearnError, unlearn
from analyses.unlearn.registry import LORA_LR, resolve
from probes.model import load_model
from tests.test_unlearn import CONCEPT

pytest.importorskip("peft")


def _run(model, **overrides):
    cfg = UnlearnConfig(
        method="ga", steps=3, batch_size=4, window=16, stop_fraction=None, heldout=0.0, **overrides
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = unlearn(model, CONCEPT, cfg, progress=False)
    for k, v in model.state_dict().items():  # the base is the frozen reference: untouched
        assert torch.equal(v, before[k]), k
    return result, before


@pytest.mark.parametrize("name", ["gpt2", "smol"])
def test_lora_unlearning_saves_a_peft_adapter_that_reloads_to_the_same_model(name, request, tmp_path):
    model = request.getfixturevalue(name)
    result, before = _run(model, trainable="lora", lora_rank=4, lora_alpha=8.0, layers=(1, 3), lr=1e-3)
    assert result.params["trainable"] == "lora" and result.params["lora_rank"] == 4
    assert result.after.forget_logprob < result.before.forget_logprob - 0.1  # gradient ascent lowered it
    after = result.model.state_dict()
    chosen = {f"{n}.weight" for n, _ in block_linears(model.copy())}  # unbridged, as the run's copy
    in_range = {n for n in chosen if n.split(".")[2] in ("1", "2")}  # transformer.h.K / model.layers.K
    changed = {k for k, v in after.items() if not torch.equal(v, before[k])}
    assert changed == in_range  # every block linear weight of layers 1-2, nothing else (no bias, no norm)
    for k in changed:  # each change has rank at most r
        assert torch.linalg.matrix_rank((after[k] - before[k]).double(), rtol=1e-6) <= 4, k

    out = result.save(tmp_path / "lora")
    config = json.loads((out / ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8.0
    assert config["fan_in_fan_out"] is (name == "gpt2")
    assert len(config["target_modules"]) == len(in_range)
    assert (out / ADAPTER_WEIGHTS).is_file() and (out / "unlearn.json").is_file()
    assert not (out / "model.safetensors").exists()  # the update only, not the whole model

    reloaded = load_model(str(out), base=model, device="cpu")  # merged by PEFT
    ids = torch.randint(100, 40000, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(reloaded.hf(ids).logits, result.model.hf(ids).logits, rtol=0, atol=2e-5)


def test_lora_runs_take_their_own_default_learning_rate():
    assert resolve(UnlearnConfig(method="npo", trainable="lora")).lr == LORA_LR == 1e-4
    assert resolve(UnlearnConfig(method="npo")).lr == 2e-5  # the full methods' default is unchanged


def test_lora_run_with_no_linear_weight_is_refused(gpt2):
    with pytest.raises(UnlearnError, match="no parameter is trainable"):
        _run(gpt2, trainable="lora", layers=(40, 41))
