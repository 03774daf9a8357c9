"""Low-rank updates of a model's block weights, trained in place and saved as a PEFT LoRA adapter.

``attach_lora`` adds ``W + (alpha / r) B A`` (Hu et al. 2021: ``B`` zero at the start, ``A`` seeded) to the
chosen linear weights of a model as PEFT computes it: a forward hook adds ``(alpha / r) x (B A)^T`` to each
layer's output through the two thin factors, so no full-size ``W + B A`` or weight gradient is ever
formed. The base weights stay frozen and untouched; only ``A`` and ``B`` train, so an optimizer holds
state for ``r (rows + cols)`` numbers per weight instead of ``rows * cols``. The relearning attack (``analyses.relearning``, variant ``lora``) and
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
from dataclasses import dataclass
from pathlib import Path

import torch

from probes.model import Model, native_name
from probes.results import atomic_dir

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class LoRADelta(torch.nn.Module):
    """``scale * B @ A``, the update of a weight of shape ``[rows, cols]`` (``B`` ``[rows, r]``, ``A``
    ``[r, cols]``); ``output(x)`` is what it adds to the layer's output (``Linear``: ``x (B A)^T``;
    ``Conv1D``, whose weight is ``[in, out]``: ``x B A``)."""

    def __init__(
        self, rows: int, cols: int, rank: int, alpha: float, generator: torch.Generator, like, conv: bool
    ):
        super().__init__()
        a = torch.randn(rank, cols, generator=generator) / rank**0.5
        self.A = torch.nn.Parameter(a.to(device=like.device, dtype=like.dtype))
        self.B = torch.nn.Parameter(torch.zeros(rows, rank, device=like.device, dtype=like.dtype))
        self.scale = alpha / rank
        self.rank, self.alpha, self.conv = rank, alpha, conv

    def delta(self) -> torch.Tensor:
        return self.scale * (self.B @ self.A)

    def output(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv:
            return self.scale * ((x @ self.B) @ self.A)
        return self.scale * ((x @ self.A.T) @ self.B.T)


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


_STATE = "_vestige_lora"  # Model attribute: native module name -> (module, LoRADelta, hook handle)
_CHILD = "vestige_lora"  # the LoRADelta's name as a child of the layer it updates


def attach_lora(
    model: Model,
    modules: list[tuple[str, torch.nn.Module]],
    *,
    rank: int = 8,
    alpha: float = 16.0,
    seed: int = 0,
) -> list[torch.nn.Parameter]:
    """Add ``(alpha / rank) B A`` to each of ``modules``' weight (of ``model``) through a forward hook and
    return the new ``A`` and ``B`` (the only parameters that should train; ``W`` itself is not touched)."""
    from transformers.pytorch_utils import Conv1D

    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}")
    state = _state(model)
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for name, m in modules:
        if name in state:
            raise ValueError(f"{name} already carries a LoRA update")
        w = m.weight
        delta = LoRADelta(w.shape[0], w.shape[1], rank, alpha, gen, w, isinstance(m, Conv1D))

        def hook(module, args, out, delta=delta):
            return out + delta.output(args[0])

        m.add_module(_CHILD, delta)  # A and B are the module's parameters while the update is on
        state[name] = (m, delta, m.register_forward_hook(hook))
        chosen += [delta.A, delta.B]
    return chosen


def _state(model: Model) -> dict:
    if not hasattr(model, _STATE):
        setattr(model, _STATE, {})
    return getattr(model, _STATE)


def _deltas(model: Model) -> list[tuple[str, torch.nn.Module, LoRADelta]]:
    return [(name, m, d) for name, (m, d, _) in _state(model).items()]


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
    """Whether ``model`` carries ``attach_lora`` updates."""
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
        with atomic_dir(path) as tmp:
            (tmp / ADAPTER_CONFIG).write_text(json.dumps(self.config, indent=2) + "\n")
            save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(tmp / ADAPTER_WEIGHTS))
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
    """Fold every LoRA update into its weight (``W <- W + s B A``, in place) and drop the hooks."""
    with torch.no_grad():
        for name, (m, d, handle) in list(_state(model).items()):
            handle.remove()
            m.weight.add_(d.delta().to(m.weight.dtype))
            del m._modules[_CHILD], _state(model)[name]


def remove_lora(model: Model) -> None:
    """Drop every LoRA update, leaving the original weights (which training never wrote) in place."""
    for name, (m, _, handle) in list(_state(model).items()):
        handle.remove()
        del m._modules[_CHILD], _state(model)[name]
