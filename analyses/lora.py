"""Low-rank updates of a model's block weights, trained in place and saved as a PEFT LoRA adapter.

``attach_lora`` adds ``W + (alpha / r) B A`` (Hu et al. 2021: ``B`` zero at the start, ``A`` seeded) to the
chosen linear weights of a model through ``torch.nn.utils.parametrize``: the base weights stay frozen and
untouched, only ``A`` and ``B`` train, so an optimizer holds state for ``r (rows + cols)`` numbers per
weight instead of ``rows * cols``. The relearning attack (``analyses.relearning``, variant ``lora``) and
LoRA unlearning (``UnlearnConfig(trainable="lora")``) both train through it.

``adapter_of`` exports the trained update in PEFT's own layout (``adapter_config.json`` and the tensors of
``adapter_model.safetensors``: ``base_model.model.{module}.lora_A.weight`` of shape ``[r, in]`` and
``lora_B.weight`` of shape ``[out, r]``, ``fan_in_fan_out`` for GPT-2's ``Conv1D``), so that
``peft.PeftModel.from_pretrained`` on the base model, and ``vestige audit --unlearned ADAPTER --base BASE``,
give back the same function; ``merge_lora`` folds the update into the weights in place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.utils import parametrize

from probes.model import Model

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class LoRADelta(torch.nn.Module):
    """``weight + scale * B @ A`` as a parametrisation of a weight of shape ``[rows, cols]``."""

    def __init__(self, rows: int, cols: int, rank: int, alpha: float, generator: torch.Generator, like):
        super().__init__()
        a = torch.randn(rank, cols, generator=generator) / rank**0.5
        self.A = torch.nn.Parameter(a.to(device=like.device, dtype=like.dtype))
        self.B = torch.nn.Parameter(torch.zeros(rows, rank, device=like.device, dtype=like.dtype))
        self.scale = alpha / rank
        self.rank, self.alpha = rank, alpha

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scale * (self.B @ self.A)


def native_name(name: str) -> str:
    """A module or parameter name of the HF model without the bridge's in-place wrappers."""
    return name.replace("._original_component", "")


def block_linears(model: Model, weights: set[str] | None = None) -> list[tuple[str, torch.nn.Module]]:
    """``(native module name, module)`` of the blocks' linear layers (``Linear``, GPT-2's ``Conv1D``),
    optionally only those whose ``{name}.weight`` is in ``weights`` (native parameter names). Only the
    checkpoint's own modules count: layers the TransformerLens bridge adds (GPT-2's split ``q``/``k``/``v``)
    are not the model's weights and could not be saved as an adapter of it."""
    from transformers.pytorch_utils import Conv1D

    prefix = model._paths["layers"] + "."
    native = model._native_key_set
    out, seen = [], set()
    for raw, m in model.hf.named_modules():
        name = native_name(raw)
        if not name.startswith(prefix) or not isinstance(m, (torch.nn.Linear, Conv1D)) or name in seen:
            continue
        if f"{name}.weight" not in native:
            continue
        if weights is not None and f"{name}.weight" not in weights:
            continue
        seen.add(name)
        out.append((name, m))
    return out


def attach_lora(
    modules: list[tuple[str, torch.nn.Module]], *, rank: int = 8, alpha: float = 16.0, seed: int = 0
) -> list[torch.nn.Parameter]:
    """Parametrise each module's ``weight`` as ``W + (alpha / rank) B A`` and return the new ``A`` and
    ``B`` (the only parameters that should train; ``W`` itself is not touched)."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}")
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for _, m in modules:
        w = m.weight
        delta = LoRADelta(w.shape[0], w.shape[1], rank, alpha, gen, w)
        parametrize.register_parametrization(m, "weight", delta)
        chosen += [delta.A, delta.B]
    return chosen


def _deltas(model: Model) -> list[tuple[str, torch.nn.Module, LoRADelta]]:
    out, seen = [], set()
    for raw, m in model.hf.named_modules():
        name = native_name(raw)
        # registered on this module itself: the bridge's wrappers hand attribute reads (``parametrizations``
        # too) through to the module they wrap, so ``parametrize.is_parametrized`` would see them twice
        own = m._modules.get("parametrizations")
        if name in seen or not isinstance(own, torch.nn.ModuleDict) or "weight" not in own:
            continue
        for p in m.parametrizations.weight:
            if isinstance(p, LoRADelta):
                seen.add(name)
                out.append((name, m, p))
    return out


def covers_every_block_linear(model: Model) -> bool:
    """Whether ``block_linears`` reaches every linear layer the checkpoint's architecture has in its blocks
    (not so on a bridged GPT-2, whose attention the bridge has re-wired): compared with the same
    architecture built on the meta device (no memory)."""
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(model.hf.config)
    prefix = model._paths["layers"] + "."
    wanted = {
        n
        for n, m in plain.named_modules()
        if n.startswith(prefix) and isinstance(m, (torch.nn.Linear, Conv1D))
    }
    return wanted <= {n for n, _ in block_linears(model)}


def has_lora(model: Model) -> bool:
    """Whether ``model`` carries ``attach_lora`` parametrisations."""
    return bool(_deltas(model))


@dataclass(frozen=True)
class Adapter:
    """A LoRA update in PEFT's layout: ``config`` (``adapter_config.json``) and ``tensors``."""

    config: dict
    tensors: dict[str, torch.Tensor]

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``adapter_config.json`` and ``adapter_model.safetensors`` into ``path`` atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        try:
            (tmp / ADAPTER_CONFIG).write_text(json.dumps(self.config, indent=2) + "\n")
            save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(tmp / ADAPTER_WEIGHTS))
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return path


def adapter_of(model: Model, base_name: str) -> Adapter:
    """The LoRA update carried by ``model`` as a PEFT adapter of the base ``base_name``."""
    from transformers.pytorch_utils import Conv1D

    deltas = _deltas(model)
    if not deltas:
        raise ValueError(f"{model.name!r} carries no LoRA update (attach_lora was not called on it)")
    ranks = {d.rank for _, _, d in deltas}
    alphas = {d.alpha for _, _, d in deltas}
    conv = {isinstance(m, Conv1D) for _, m, _ in deltas}
    if len(ranks) > 1 or len(alphas) > 1 or len(conv) > 1:
        raise ValueError("one adapter holds one rank, one alpha and one kind of linear layer")
    fan_in_fan_out = conv.pop()
    tensors = {}
    for name, _, d in deltas:
        a, b = d.A.detach(), d.B.detach()
        # W [rows, cols] + s B A. Linear: W is [out, in], so lora_A = A [r, in], lora_B = B [out, r].
        # Conv1D: W is [in, out] and PEFT adds (lora_B @ lora_A)^T, so lora_A = B^T, lora_B = A^T.
        lora_a, lora_b = (b.T, a.T) if fan_in_fan_out else (a, b)
        tensors[f"base_model.model.{name}.lora_A.weight"] = lora_a.clone()
        tensors[f"base_model.model.{name}.lora_B.weight"] = lora_b.clone()
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "r": ranks.pop(),
        "lora_alpha": alphas.pop(),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": fan_in_fan_out,
        "target_modules": [name for name, _, _ in deltas],  # full names: PEFT matches them exactly
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    return Adapter(config=config, tensors=tensors)


def merge_lora(model: Model) -> None:
    """Fold every LoRA update into its weight (``W <- W + s B A``) and remove the parametrisations."""
    for _, m, _ in _deltas(model):
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)


def remove_lora(model: Model) -> None:
    """Drop every LoRA update, leaving the original weights (which training never wrote) in place."""
    for _, m, _ in _deltas(model):
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
