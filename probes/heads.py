"""Attention heads as units: naming, the two masking modes, and the ranking helpers shared by retrieval
heads (Wu et al. 2024) and memory/context heads (Jin et al. 2024, PH3). See ``probes.retrieval`` and
``probes.memory_heads`` for the two experiments.

Masking modes (docs/retrieval_heads.md, docs/memory_heads.md):

- ``uniform``: the head's pre-softmax scores (``hook_attn_scores``) are set to 0 over the keys its query
  may see, so it attends uniformly to them; positions the causal or padding mask hides stay masked.
  This is Wu et al.'s masking.
- ``zero``: the head's output before ``W_O`` (``hook_z``) is set to 0 (PH3's pruning). The same edit as a
  weight change (which also holds in copies of the model) is ``probes.edits.zeroed_heads``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import torch
from jaxtyping import Float

from probes import hooks

Head = tuple[int, int]
MaskMode = Literal["uniform", "zero"]
MASK_MODES: tuple[str, ...] = ("uniform", "zero")


def all_heads(n_layers: int, n_heads: int) -> list[Head]:
    return [(layer, head) for layer in range(n_layers) for head in range(n_heads)]


def by_layer(heads: Iterable[Head]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, head in heads:
        out.setdefault(int(layer), []).append(int(head))
    return out


def _visible(scores: torch.Tensor) -> torch.Tensor:
    """Keys the query may see: HF writes the causal/padding mask as the dtype's minimum (or -inf)."""
    return scores > torch.finfo(scores.dtype).min / 2


def mask_hooks(heads: Iterable[Head], mode: MaskMode = "uniform") -> list[tuple[str, Callable]]:
    """TransformerLens-style forward hooks that mask ``heads`` in ``mode`` (see the module docstring)."""
    if mode not in MASK_MODES:
        raise ValueError(f"unknown masking mode {mode!r}; use one of {MASK_MODES}")
    out = []
    for layer, idx in sorted(by_layer(heads).items()):
        index = torch.tensor(sorted(set(idx)))
        if mode == "uniform":

            def fn(scores, hook, index=index):
                index_ = index.to(scores.device)
                sel = scores[:, index_]
                scores = scores.clone()
                scores[:, index_] = torch.where(_visible(sel), torch.zeros_like(sel), sel)
                return scores

            out.append((hooks.attn_scores(layer), fn))
        else:

            def fn(z, hook, index=index):
                z = z.clone()
                z[:, :, index.to(z.device)] = 0
                return z

            out.append((hooks.attn_z(layer), fn))
    return out


def top_heads(scores: Float[torch.Tensor, "layers heads"], k: int, *, largest: bool = True) -> list[Head]:
    """The ``k`` heads with the largest (or smallest) score, best first, as ``[layer, head]`` pairs."""
    n_heads = scores.shape[1]
    flat = scores.flatten().float()
    k = max(0, min(k, flat.numel()))
    order = torch.argsort(flat, descending=largest, stable=True)[:k]
    return [(int(i) // n_heads, int(i) % n_heads) for i in order]


def random_heads(
    n_layers: int, n_heads: int, k: int, *, exclude: Sequence[Head] = (), seed: int = 0
) -> list[Head]:
    """``k`` heads drawn uniformly without replacement from the heads not in ``exclude`` (the control
    Wu et al. should have used: their random heads could include retrieval heads)."""
    banned = {tuple(h) for h in exclude}
    pool = [h for h in all_heads(n_layers, n_heads) if h not in banned]
    if k > len(pool):
        raise ValueError(f"cannot draw {k} random heads from {len(pool)} heads outside the excluded set")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(pool), generator=gen)[:k]
    return [pool[int(i)] for i in order]
