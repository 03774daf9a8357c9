"""Every hook name vestige uses, spelled once, and helpers that cache only the named activations.

Names are TransformerLens 4.x ``TransformerBridge`` names (legacy names still resolve there):
``blocks.{l}.hook_resid_post`` ``[batch, pos, d_model]``, ``blocks.{l}.mlp.hook_post``
``[batch, pos, d_mlp]``, ``blocks.{l}.attn.hook_z`` ``[batch, pos, n_heads, d_head]``,
``blocks.{l}.attn.hook_pattern`` / ``hook_attn_scores`` ``[batch, n_heads, q, k]`` and
``ln_final.hook_out`` ``[batch, pos, d_model]`` (the final hidden state the unembedding multiplies).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from jaxtyping import Float, Int

from probes.model import NO_CACHE, Model


def resid_pre(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_pre"


def resid_post(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def mlp_post(layer: int) -> str:
    """Neuron activations (after the non-linearity / gating): what multiplies the value vectors."""
    return f"blocks.{layer}.mlp.hook_post"


def mlp_out(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


def attn_out(layer: int) -> str:
    return f"blocks.{layer}.hook_attn_out"


def attn_z(layer: int) -> str:
    """Per-head attention outputs before ``W_O``: ``[batch, pos, n_heads, d_head]``."""
    return f"blocks.{layer}.attn.hook_z"


def attn_pattern(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


def attn_scores(layer: int) -> str:
    """Pre-softmax attention scores (causal mask applied): where uniform-attention masking happens."""
    return f"blocks.{layer}.attn.hook_attn_scores"


LN_FINAL = "ln_final.hook_out"
EMBED = "hook_embed"


def all_layers(fn: Callable[[int], str], n_layers: int) -> list[str]:
    return [fn(layer) for layer in range(n_layers)]


def _pass_kwargs(model: Model, mask: torch.Tensor | None, logits_to_keep: int | None) -> dict:
    """The bridge pass's keyword arguments: no key/value cache (``NO_CACHE``), the padding ``mask`` with
    its position ids, and ``logits_to_keep`` where the HF model takes it."""
    kwargs: dict = dict(NO_CACHE)
    if mask is not None:
        kwargs |= {"attention_mask": mask, "position_ids": model.position_ids(mask)}
    if logits_to_keep is not None and model.takes_logits_to_keep:
        kwargs["logits_to_keep"] = logits_to_keep
    return kwargs


def run_with_cache(
    model: Model,
    ids: Int[torch.Tensor, "batch pos"],
    names: Iterable[str],
    mask: Int[torch.Tensor, "batch pos"] | None = None,
    *,
    grad: bool = False,
    logits_to_keep: int | None = None,
) -> tuple[Float[torch.Tensor, "batch pos d_vocab"], dict[str, torch.Tensor]]:
    """One forward pass through the bridge that keeps only the ``names`` activations (on the model's
    device). Padding-aware: pass the attention ``mask`` of a left- or right-padded batch.
    ``logits_to_keep=k``: unembed only the last ``k`` positions (where the HF model takes it), for a
    caller that reads the cache alone: the full logits are the pass's largest tensor (SmolLM2: 49,152
    floats per token against 576 per cached activation)."""
    wanted = set(names)
    unknown = wanted - set(model.bridge.hook_dict)
    if unknown:
        raise KeyError(
            f"unknown hook names {sorted(unknown)[:5]}; see probes/hooks.py for the names vestige uses"
        )
    kwargs = _pass_kwargs(model, mask, logits_to_keep)
    with torch.set_grad_enabled(grad):
        logits, cache = model.bridge.run_with_cache(ids, names_filter=lambda n: n in wanted, **kwargs)
    return logits, {name: cache[name] for name in wanted}


def run_with_hooks(
    model: Model,
    ids: Int[torch.Tensor, "batch pos"],
    fwd_hooks: list[tuple[str, Callable]],
    mask: Int[torch.Tensor, "batch pos"] | None = None,
    *,
    grad: bool = False,
    logits_to_keep: int | None = None,
) -> Float[torch.Tensor, "batch pos d_vocab"]:
    """A forward pass with TransformerLens-style hooks ``(name, fn(activation, hook) -> activation|None)``;
    the hooks are removed afterwards, also when the pass raises. ``logits_to_keep=k``: unembed only the
    last ``k`` positions (where the HF model takes it; ``run_with_cache``), for a caller that reads only
    those (a metric at the last token of a left-padded batch)."""
    kwargs = _pass_kwargs(model, mask, logits_to_keep)
    with torch.set_grad_enabled(grad), model.bridge.hooks(fwd_hooks=fwd_hooks):
        return model.bridge(ids, **kwargs)
