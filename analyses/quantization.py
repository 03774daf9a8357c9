"""The quantization attack (Zhang et al., ICLR 2025, "Catastrophic failure of LLM unlearning via
quantization"): unlearning that keeps the model close to its base in weight space (a few small gradient
steps, a utility constraint) moves each weight by less than a quantization step, so rounding the unlearned
weights to a 4-bit grid puts many of them back where the base's were, and the forgotten answers return.
The paper measured 21% of the forgotten knowledge kept at full precision and 83% after 4-bit quantization.

``quantize_rtn`` is round-to-nearest per group of ``group_size`` consecutive weights along a matrix's input
dimension (the layout of llama.cpp's Q4_0 / Q4_1 blocks, 32 weights each): asymmetric (Q4_1: each group's
minimum and step) or symmetric (Q4_0-like: a step from the group's largest magnitude, a grid around 0).
``quantized`` applies it in place to every linear weight of the transformer blocks and copies the original
weights back **bitwise** on exit, also when the block raises.

The attack must not ruin the model it is applied to, or "the answers did not come back" says nothing:
``analyses.audit`` picks the coarsest group size at which the *base* keeps its own accuracy
(``AuditConfig.quantize_keep``) and reports it. SmolLM2's embedded GGUF is itself Q4_1 in groups of 32, so
at that setting the base is (nearly) unchanged and an unlearned copy is rounded back towards it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from jaxtyping import Float

from probes.model import Model
from probes.results import Result
from probes.stash import Stash


@dataclass(frozen=True)
class QuantizationConfig(Result):
    """Round-to-nearest quantization of the block weights: ``bits`` per weight, one scale (and, unless
    ``symmetric``, one minimum) per ``group_size`` consecutive input weights; ``embeddings`` also
    quantizes the input embedding matrix (the unembedding too when the two are tied)."""

    bits: int = 4
    group_size: int = 32
    symmetric: bool = False
    embeddings: bool = False

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 8:
            raise ValueError(
                f"QuantizationConfig.bits is {self.bits}: round-to-nearest here is for 2 to 8 bits per weight "
                "(4 is the attack of Zhang et al. 2025, 8 a milder one)"
            )
        if self.group_size < 1:
            raise ValueError(
                f"QuantizationConfig.group_size is {self.group_size}: a group holds at least one weight "
                "(32 is llama.cpp's Q4_1 block)"
            )


@dataclass(frozen=True)
class QuantizationInfo(Result):
    """What ``quantized`` did: the tensors and weights it rounded, and the mean over tensors of
    ||W_q - W|| / ||W||."""

    config: QuantizationConfig
    n_tensors: int
    n_weights: int
    relative_error: float


@torch.no_grad()
def quantize_rtn(
    w: Float[torch.Tensor, "*rows d_in"], bits: int = 4, group_size: int = 32, *, symmetric: bool = False
) -> Float[torch.Tensor, "*rows d_in"]:
    """``w`` rounded to ``bits`` bits in groups of ``group_size`` consecutive entries of its last dimension
    (a shorter last group when the size does not divide it), dequantized to ``w``'s dtype.

    Asymmetric (Q4_1): a group with minimum ``lo`` and maximum ``hi`` has step ``d = (hi - lo) / (2^bits -
    1)`` and each entry becomes ``lo + d * round((x - lo) / d)``. Symmetric: ``d = max|x| / (2^(bits-1) -
    1)``, entries ``d * clamp(round(x / d), -2^(bits-1), 2^(bits-1) - 1)``. A constant group is kept as it
    is. ``round`` is torch's (ties to even); computed in float32."""
    QuantizationConfig(bits, group_size, symmetric)  # validates
    shape, dtype = w.shape, w.dtype
    x = w.detach().float().reshape(-1, shape[-1])
    n = x.shape[-1]
    pad = (-n) % group_size
    if pad:  # repeat the last entry: the last group's minimum and maximum stay its own
        x = torch.cat([x, x[:, -1:].expand(-1, pad)], dim=1)
    g = x.reshape(-1, group_size)
    if symmetric:
        top = 2 ** (bits - 1) - 1
        d = g.abs().amax(dim=1, keepdim=True) / top
        safe = torch.where(d > 0, d, torch.ones_like(d))
        q = torch.clamp(torch.round(g / safe), -top - 1, top) * safe
    else:
        lo = g.amin(dim=1, keepdim=True)
        d = (g.amax(dim=1, keepdim=True) - lo) / (2**bits - 1)
        safe = torch.where(d > 0, d, torch.ones_like(d))
        q = lo + torch.clamp(torch.round((g - lo) / safe), 0, 2**bits - 1) * safe
    q = torch.where(d > 0, q, g)
    q = q.reshape(x.shape)[:, :n]
    return q.reshape(shape).to(dtype)


def quantizable(model: Model, *, embeddings: bool = False) -> list[tuple[str, torch.Tensor]]:
    """``(name, view)`` of every weight ``quantized`` rounds, each view ``[d_out, d_in]`` with the input
    dimension last (GPT-2's Conv1D stores ``[d_in, d_out]``: its view is transposed): the linear layers of
    the transformer blocks, under their native HF names (modules the TransformerLens bridge adds, such as
    its split q / k / v views of GPT-2's ``c_attn``, are not weights of their own and are skipped), and
    with ``embeddings`` the input embedding matrix."""
    from transformers.pytorch_utils import Conv1D

    prefix = model._paths["layers"] + "."
    # the block weights by storage: the bridge renames the modules it wraps (GPT-2's c_attn becomes qkv)
    native = {
        v.data_ptr(): k[: -len(".weight")]
        for k, v in model.state_dict().items()
        if k.startswith(prefix) and k.endswith(".weight")
    }
    out: list[tuple[str, torch.Tensor]] = []
    seen: set[int] = set()
    for module in model.hf.modules():
        w = getattr(module, "weight", None)
        if not isinstance(w, torch.nn.Parameter) or w.data_ptr() not in native or w.data_ptr() in seen:
            continue
        if isinstance(module, Conv1D):
            view = w.T
        elif isinstance(module, torch.nn.Linear):
            view = w
        else:
            continue
        seen.add(w.data_ptr())
        out.append((native[w.data_ptr()], view))
    if embeddings:
        emb = model.hf.get_input_embeddings().weight
        if emb.data_ptr() not in seen:
            out.append(("embed", emb))
    return out


@contextlib.contextmanager
def quantized(model: Model, config: QuantizationConfig | None = None) -> Iterator[QuantizationInfo]:
    """Within the block, ``model``'s block weights are round-to-nearest quantized (``quantize_rtn``, in
    place, so every view of the model sees them); on exit the original weights are copied back bitwise,
    also when the block raises. Memory: none beside the model's own; the originals wait in a
    ``probes.stash.Stash`` (host memory for a GPU model, a temporary file for a CPU one)."""
    cfg = config or QuantizationConfig()
    errors: list[float] = []
    n_weights = 0
    with Stash() as stash:
        try:
            with torch.no_grad():
                for _, view in quantizable(model, embeddings=cfg.embeddings):
                    q = quantize_rtn(view, cfg.bits, cfg.group_size, symmetric=cfg.symmetric)
                    norm = float(view.float().norm())
                    errors.append(float((q.float() - view.float()).norm()) / norm if norm > 0 else 0.0)
                    n_weights += view.numel()
                    stash.save(view)
                    view.copy_(q)
                    del q
            yield QuantizationInfo(cfg, len(stash), n_weights, float(sum(errors) / max(len(errors), 1)))
        finally:
            stash.restore()
