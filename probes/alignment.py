"""Neuron and head bases: do two models index their MLP neurons (and attention heads) the same way, and if
not, can they be aligned?

Permuting the neurons of an MLP layer (the rows of its input projections and of ``W_out`` together) leaves
the model's function unchanged, but moves every value vector to another index. A weight-space trace that
compares "vector (layer, i) of the base" with "vector (layer, i) of the unlearned model" is then comparing
two different neurons: the cosine of a suppressed model can fall from 1.0 to 0.0 with nothing unlearned.
And two separately trained models (a retrain oracle) share no basis at all: a per-index cosine between
them says "other run", not "concept gone".

- ``basis_agreement``: the median cosine, between two models, of the whole weights of seeded random
  neurons (inputs and output): ~1 for a fine-tuned copy, ~0 for a permuted copy or another run.
- ``neuron_alignment``: per layer, the permutation of the other model's neurons that best matches the base
  (an optimal assignment on the cosine of the neurons' weights, scipy's ``linear_sum_assignment``).
- ``aligned_to``: inside the block, the other model's neurons are permuted in place into the base's
  order when that recovers a shared basis (function unchanged); the original order comes back bitwise on
  exit. ``AlignmentInfo.comparable`` says whether per-index weight comparisons mean anything.
- ``permute_mlp_neurons``: the function-preserving transformation itself (tests use it to attack traces).

Attention heads have the same symmetry: moving a head's query, key and value rows (and biases) and its
columns of the output projection together to another index leaves every output equal, and relabels every
per-(layer, head) result (head effects, memory heads, pruning targets). With grouped-query attention a
query head must stay with its key/value group, so a permutation moves kv groups (their query heads along)
and query heads within a group; ``permute_attention_heads`` refuses any other.

- ``head_agreement``: the median, over every (layer, head), of the head's cosine with the same index in
  the other model (mean over its Q, K, V and O blocks): ~1 for a fine-tuned copy.
- ``head_alignment``: per layer, the group-respecting permutation of the other model's heads that best
  matches the base (Hungarian on the kv groups, each pair scored by a Hungarian on its query heads).
- ``aligned_to`` also puts a head-permuted copy back into the base's head order for the block.

Head permutations are supported for the families whose attention is laid out as known per-head blocks:
``HEAD_ARCHITECTURES`` (gpt2's fused ``c_attn`` with bias; llama, mistral, qwen2 (q/k/v biases), qwen3
(per-head-shared q/k norms), olmo, olmo2 (q/k norms over all heads, permuted along), gemma, gemma2,
gemma3_text, phi3 (one fused ``qkv_proj``: query rows, then key rows, then value rows). Anything else (e.g.
GPT-NeoX, whose fused ``query_key_value`` interleaves q, k and v per head) raises ``HeadLayoutError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int

from probes.errors import VestigeError
from probes.model import Model, _get, native_name
from probes.results import Result

SHARED = 0.9  # median control cosine above which two models share a neuron basis


def _parts(model: Model, layer: int) -> list[torch.Tensor]:
    return [*model.mlp_inputs(layer), model.W_out(layer)]


def neuron_weights(model: Model, layer: int, rows: Sequence[int] | None = None) -> Float[torch.Tensor, "n k"]:
    """Everything a neuron of ``layer`` owns, one row per neuron (all of them, or ``rows``): its input
    weights (and bias) and its value vector, in fp32 (detached)."""
    parts = [p.detach() if rows is None else p.detach()[list(rows)] for p in _parts(model, layer)]
    return torch.cat([p.float().reshape(p.shape[0], -1) for p in parts], dim=1)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def control_neurons(model: Model, layers: Sequence[int], n: int, seed: int = 0) -> list[tuple[int, int]]:
    """``n`` seeded random (layer, neuron) pairs spread over ``layers``."""
    gen = torch.Generator().manual_seed(seed)
    layers = list(layers)
    picks = torch.randint(len(layers), (n,), generator=gen).tolist()
    neurons = torch.randint(model.cfg.d_mlp, (n,), generator=gen).tolist()
    return [(layers[i], j) for i, j in zip(picks, neurons)]


@torch.no_grad()
def basis_agreement(
    base: Model, other: Model, layers: Sequence[int] | None = None, *, n: int = 64, seed: int = 0
) -> float:
    """Median cosine of the weights of ``n`` seeded random neurons, index for index, between the models."""
    layers = list(range(base.cfg.n_layers)) if layers is None else list(layers)
    by_layer: dict[int, list[int]] = {}
    for layer, i in control_neurons(base, layers, n, seed):
        by_layer.setdefault(layer, []).append(i)
    cos = []
    for layer, idx in by_layer.items():
        a = _unit(neuron_weights(base, layer, idx))
        b = _unit(neuron_weights(other, layer, idx).to(a.device))
        cos += (a * b).sum(-1).clamp(-1.0, 1.0).tolist()
    return float(torch.tensor(cos).median())


def _signatures(model: Model, layer: int, dims: int, seed: int) -> Float[torch.Tensor, "d_mlp dims"]:
    """Unit rows of the neurons' weights projected to ``dims`` seeded Gaussian directions (cosines are
    kept up to ~1/sqrt(dims); identical neurons keep identical signatures). Projected part by part, so
    the weights are never copied into one matrix."""
    gen = torch.Generator().manual_seed(seed)
    total, sq = None, None
    for p in _parts(model, layer):
        w = p.detach().float().reshape(p.shape[0], -1)
        proj = (torch.randn(w.shape[1], dims, generator=gen) / dims**0.5).to(w.device)
        total = w @ proj if total is None else total + w @ proj
        sq = (w * w).sum(-1) if sq is None else sq + (w * w).sum(-1)
    return _unit(total / sq.sqrt().clamp_min(1e-12)[:, None])


@torch.no_grad()
def neuron_alignment(
    base: Model, other: Model, layer: int, *, dims: int = 64, seed: int = 0
) -> tuple[Int[torch.Tensor, " d_mlp"], float]:
    """``(perm, match)``: ``other``'s neuron ``perm[i]`` is the best match of ``base``'s neuron i (a
    one-to-one assignment maximising the summed cosine of the neurons' weight signatures), and ``match``
    the median cosine of each base neuron's best match. When every neuron's best match is a different one
    (a permuted copy) that is the optimum; otherwise, if the match is close enough to be a permutation at
    all (``match >= SHARED``), the optimal assignment is solved (Hungarian, O(d_mlp^3)); another training
    run (low ``match``) gets the greedy matches, which ``aligned_to`` then rejects."""
    from scipy.optimize import linear_sum_assignment

    a = _signatures(base, layer, dims, seed)
    b = _signatures(other, layer, dims, seed).to(a.device)
    sim = a @ b.T
    top, best = sim.max(dim=1)
    match = float(top.median())
    if torch.unique(best).numel() == best.numel() or match < SHARED:
        return best.cpu(), match
    rows, cols = linear_sum_assignment(sim.cpu().numpy(), maximize=True)
    perm = torch.empty(len(rows), dtype=torch.long)
    perm[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return perm, match


@torch.no_grad()
def permute_mlp_neurons(model: Model, perms: dict[int, torch.Tensor]) -> None:
    """In place: neuron i of layer l becomes the old neuron ``perms[l][i]`` (inputs, bias and value vector
    move together, so every output of the model stays the same up to float rounding of the sums)."""
    for layer, perm in perms.items():
        perm = perm.to(model.W_out(layer).device)
        for rows in [*model.mlp_inputs(layer), model.W_out(layer)]:
            rows.copy_(rows[perm].clone())


def random_permutations(model: Model, seed: int = 0) -> dict[int, torch.Tensor]:
    """A seeded random permutation of the neurons of every layer."""
    gen = torch.Generator().manual_seed(seed)
    return {l: torch.randperm(model.cfg.d_mlp, generator=gen) for l in range(model.cfg.n_layers)}


# ---- attention heads ------------------------------------------------------------------------------------
HEAD_ARCHITECTURES = (
    "gpt2",
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "olmo",
    "olmo2",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
)


class HeadLayoutError(VestigeError):
    """The attention heads of a model cannot be permuted (or matched) safely."""


@dataclass(frozen=True)
class _HeadParts:
    """Views of everything the heads of one layer own, each with dim 0 = ``units * d_head`` (a unit's
    rows contiguous): ``query`` parts have one unit per query head, ``kv`` parts one per kv group. Each
    part carries its block name (``q``, ``o``, ``k``, ``v``): a bias or norm joins its projection's block
    in the similarity."""

    query: tuple[tuple[str, torch.Tensor], ...]
    kv: tuple[tuple[str, torch.Tensor], ...]


def _unsupported(model: Model, why: str) -> HeadLayoutError:
    arch = getattr(model.hf.config, "model_type", "?")
    return HeadLayoutError(
        f"cannot permute the attention heads of a {arch!r} model",
        why,
        f"head permutation and re-alignment support {', '.join(HEAD_ARCHITECTURES)}; for another "
        "architecture, add its per-head parameter layout to probes.alignment._head_parts",
    )


def _head_parts(model: Model, layer: int) -> _HeadParts:
    c = model.cfg
    arch = getattr(model.hf.config, "model_type", "")
    if arch not in HEAD_ARCHITECTURES:
        raise _unsupported(model, "its attention parameters are not laid out as known per-head blocks")
    dq, dkv = c.n_heads * c.d_head, c.n_kv_heads * c.d_head
    if c.n_heads % c.n_kv_heads:
        raise _unsupported(model, f"{c.n_heads} query heads do not split into {c.n_kv_heads} kv groups")
    block = model.layers()[layer]
    if model.family == "gpt2":
        attn = _get(block, "attn")
        if getattr(attn, "is_cross_attention", False) or getattr(
            model.hf.config, "add_cross_attention", False
        ):
            raise _unsupported(model, "it has cross-attention, whose heads are not permuted")
        w, b = _get(attn, "c_attn").weight.T, _get(attn, "c_attn").bias  # Conv1D: [3 d_model, d_model] view
        if w.shape[0] != 3 * dq:
            raise _unsupported(model, f"c_attn has {w.shape[0]} outputs, not 3 x {dq}")
        q = [("q", w[:dq]), ("q", b[:dq])]
        kv = [("k", w[dq : 2 * dq]), ("k", b[dq : 2 * dq]), ("v", w[2 * dq :]), ("v", b[2 * dq :])]
        return _HeadParts(tuple([*q, ("o", model.W_O(layer))]), tuple(kv))
    attn = _get(block, "self_attn")
    if model.family == "phi3":
        w = _get(attn, "qkv_proj").weight  # Linear [dq + 2 dkv, d_model]
        if w.shape[0] != dq + 2 * dkv or getattr(_get(attn, "qkv_proj"), "bias", None) is not None:
            raise _unsupported(model, f"qkv_proj has {w.shape[0]} outputs, not {dq} + 2 x {dkv}")
        q = [("q", w[:dq]), ("o", model.W_O(layer))]
        return _HeadParts(tuple(q), (("k", w[dq : dq + dkv]), ("v", w[dq + dkv :])))
    found: dict[str, torch.Tensor] = {}
    for name, p in attn.named_parameters():
        name = native_name(name)  # the bridge wraps the projections in place
        n = p.shape[0]
        if name in ("q_proj.weight", "q_proj.bias", "q_norm.weight") and n == dq:
            found[name] = p  # olmo2's q/k norms span all heads; their RMS is permutation-invariant
        elif name in ("k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias", "k_norm.weight") and (
            n == dkv
        ):
            found[name] = p
        elif name == "o_proj.weight" and p.shape[1] == dq:
            found[name] = p.T  # Linear [d_model, n_heads d_head]: head h owns columns
        elif name == "o_proj.bias" or (name in ("q_norm.weight", "k_norm.weight") and n == c.d_head):
            continue  # shared by every head (added after the sum over heads / one norm per head, tied)
        else:
            raise _unsupported(
                model, f"layer {layer}'s attention has a parameter {name} {tuple(p.shape)} of no known layout"
            )
    if not {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"} <= set(found):
        raise _unsupported(model, f"layer {layer}'s attention lacks separate q/k/v/o projections")
    # a fixed order, so that part j of two models is the same parameter
    order = ("q_proj.weight", "q_proj.bias", "q_norm.weight", "o_proj.weight")
    query = tuple((name[0], found[name]) for name in order if name in found)
    order = ("k_proj.weight", "k_proj.bias", "k_norm.weight", "v_proj.weight", "v_proj.bias")
    return _HeadParts(query, tuple((name[0], found[name]) for name in order if name in found))


def _check_head_perm(model: Model, layer: int, perm: torch.Tensor) -> torch.Tensor:
    c = model.cfg
    perm = torch.as_tensor(perm, dtype=torch.long).cpu()
    r = c.n_heads // c.n_kv_heads
    ok = perm.shape == (c.n_heads,) and torch.equal(perm.sort().values, torch.arange(c.n_heads))
    groups = perm.reshape(c.n_kv_heads, r) // r if ok else None
    if not ok or not bool((groups == groups[:, :1]).all()):
        raise HeadLayoutError(
            f"layer {layer}: {perm.tolist()} is not a grouped-query head permutation",
            f"a permutation of the {c.n_heads} query heads must move each of the {c.n_kv_heads} kv groups "
            f"(query heads g*{r} .. g*{r}+{r - 1}) as a whole, or its heads would read another group's keys",
            "permute kv groups and query heads within a group (see random_head_permutations)",
        )
    return perm


def _rows(perm: torch.Tensor, d_head: int) -> torch.Tensor:
    return (perm[:, None] * d_head + torch.arange(d_head)).reshape(-1)


@torch.no_grad()
def permute_attention_heads(model: Model, perms: dict[int, torch.Tensor]) -> None:
    """In place: query head i of layer l becomes the old head ``perms[l][i]`` (its query rows, bias and
    norm slice, and its output-projection columns move together); kv group g becomes the old group
    ``perms[l][g * r] // r`` (``r`` = query heads per group; key/value rows and biases move together).
    Every output stays the same up to float rounding of the sum over heads. Raises ``HeadLayoutError``
    for a permutation that splits a kv group or an architecture outside ``HEAD_ARCHITECTURES``."""
    c = model.cfg
    r = c.n_heads // c.n_kv_heads
    checked = {
        layer: (_check_head_perm(model, layer, p), _head_parts(model, layer)) for layer, p in perms.items()
    }
    for perm, parts in checked.values():  # every layer checked before any is written
        kv_perm = perm[::r] // r
        for units, named in ((perm, parts.query), (kv_perm, parts.kv)):
            for _, p in named:
                p.copy_(p[_rows(units, c.d_head).to(p.device)])  # indexing copies: no aliasing


def random_head_permutations(model: Model, seed: int = 0) -> dict[int, torch.Tensor]:
    """A seeded random grouped-query head permutation of every layer: kv groups shuffled, then the query
    heads within each group (with one kv group per head, a plain shuffle of the heads)."""
    c = model.cfg
    r = c.n_heads // c.n_kv_heads
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for layer in range(c.n_layers):
        groups = torch.randperm(c.n_kv_heads, generator=gen)
        out[layer] = torch.cat([g * r + torch.randperm(r, generator=gen) for g in groups.tolist()])
    return out


def _sample(part: torch.Tensor, units: int, idx: torch.Tensor | None) -> np.ndarray:
    """``[units, n]`` (float64): the coordinates ``idx`` (flat, within a unit's block) of each unit's
    block of ``part`` (a view with ``units * d_head`` leading rows), scaled by sqrt(block / n), or the
    whole block when ``idx`` is None. One ``index_select`` from the view's storage, by its strides: the
    weights are never copied whole, and no op is large enough to start a thread pool (on a busy CPU each
    pooled op of a per-layer loop cost ~12 ms)."""
    x = part.detach()
    x = x[:, None] if x.dim() == 1 else x
    if idx is None:
        out = x.reshape(units, -1)
    else:
        rows, cols = x.shape
        s0, s1 = x.stride()
        k, col = idx // cols, idx % cols
        head = torch.arange(units)[:, None] * (rows // units)
        off = (head + k[None, :]) * s0 + col[None, :] * s1 + x.storage_offset()
        flat = x.as_strided((x.storage_offset() + (rows - 1) * s0 + (cols - 1) * s1 + 1,), (1,), 0)
        out = flat.index_select(0, off.reshape(-1).to(x.device)).view(units, -1)
        # scaled so that the sample's dot products estimate the whole block's (a bias or norm slice
        # concatenated to it keeps its true weight)
        return out.float().cpu().numpy().astype(np.float64) * np.sqrt(rows // units * cols / len(idx))
    return out.float().cpu().numpy().astype(np.float64)


@torch.no_grad()
def _head_similarity(
    base: Model, other: Model, layers: Sequence[int], *, coords: int = 2048, seed: int = 0
) -> tuple[Float[torch.Tensor, "layers n_heads n_heads"], Float[torch.Tensor, "layers n_kv n_kv"]]:
    """Per layer, ``(S_q, S_kv)``: the mean cosine of the query-side blocks (Q, O) of base head i and
    other head j, and of the kv blocks (K, V) of base group g and other group h (a bias or norm slice
    counts with its projection's block). Each block is compared on ``coords`` seeded coordinates (the
    same ones in every head, layer and model; a whole block when it is smaller): unrelated heads then
    differ by ~1/sqrt(coords) from their full cosine, identical heads stay identical, and a pass over a
    model's heads reads a few MB instead of all attention weights (SmolLM2: 30 layers in ~0.05 s). The
    small matrices are computed in float64 numpy; the result is on the CPU (float64)."""
    c = base.cfg
    layers = list(layers)
    gen = torch.Generator().manual_seed(seed)
    parts = {who: [_head_parts(m, l) for l in layers] for who, m in (("base", base), ("other", other))}
    for a, b in zip(parts["base"], parts["other"], strict=True):
        if [(k, p.shape) for k, p in a.query + a.kv] != [(k, p.shape) for k, p in b.query + b.kv]:
            raise HeadLayoutError(
                "the two models' attention heads are laid out differently",
                "one has parameters (biases, norms) or shapes the other lacks",
                "compare a model with a copy of itself (probes.edits.check_compatible)",
            )
    sims = []
    for side, units in (("query", c.n_heads), ("kv", c.n_kv_heads)):
        grams: dict[str, np.ndarray] = {}
        sq: dict[str, list[np.ndarray]] = {}
        for j, (key, ref) in enumerate(getattr(parts["base"][0], side)):
            size = ref.numel() // units
            idx = None if size <= coords else torch.randperm(size, generator=gen)[:coords]
            x, y = (
                np.stack([_sample(getattr(hp, side)[j][1], units, idx) for hp in parts[who]])
                for who in ("base", "other")
            )
            g = x @ y.transpose(0, 2, 1)
            n2 = [(x * x).sum(-1), (y * y).sum(-1)]
            grams[key] = g if key not in grams else grams[key] + g
            sq[key] = n2 if key not in sq else [sq[key][0] + n2[0], sq[key][1] + n2[1]]
        cos = [
            grams[k] / np.maximum(np.sqrt(sq[k][0])[:, :, None] * np.sqrt(sq[k][1])[:, None, :], 1e-24)
            for k in grams
        ]
        sims.append(torch.from_numpy(np.clip(sum(cos) / len(cos), -1.0, 1.0)))
    return sims[0], sims[1]


def _head_cosines(s_q: torch.Tensor, s_kv: torch.Tensor, perm: torch.Tensor, r: int) -> torch.Tensor:
    """Per base head i, the cosine (mean over Q, K, V, O) with the other model's head ``perm[i]``."""
    i = torch.arange(len(perm))
    return (s_q[i, perm] + s_kv[i // r, perm // r]) / 2


@torch.no_grad()
def head_agreement(
    base: Model, other: Model, layers: Sequence[int] | None = None, *, coords: int = 2048, seed: int = 0
) -> float:
    """Median, over every head of ``layers`` (all by default), of its cosine (mean over its Q, K, V, O
    blocks) with the head of the same index in ``other``: ~1 for a fine-tuned copy, low for a permuted
    copy or another run."""
    c = base.cfg
    layers = range(c.n_layers) if layers is None else layers
    r = c.n_heads // c.n_kv_heads
    s_q, s_kv = _head_similarity(base, other, layers, coords=coords, seed=seed)
    identity = torch.arange(c.n_heads)
    return float(torch.cat([_head_cosines(a, b, identity, r) for a, b in zip(s_q, s_kv)]).median())


def _assign(sim: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Maximum-sum one-to-one assignment: ``(cols, total)`` with row i assigned to ``cols[i]``."""
    if sim.shape[0] == 1:
        return torch.zeros(1, dtype=torch.long), float(sim[0, 0])
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(sim.double().numpy(), maximize=True)
    out = torch.empty(len(rows), dtype=torch.long)
    out[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.long)
    return out, float(sim[torch.arange(len(out)), out].sum())


@torch.no_grad()
def head_alignment(
    base: Model, other: Model, layer: int, *, coords: int = 2048, seed: int = 0
) -> tuple[Int[torch.Tensor, " n_heads"], float]:
    """``(perm, match)``: ``other``'s query head ``perm[i]`` is the match of ``base``'s head i, under the
    grouped-query constraint, maximising the summed head cosine (mean over Q, K, V, O blocks): each pair
    of kv groups is scored by its K/V cosine plus the optimal assignment of its query heads (Q/O cosine),
    then the groups are assigned (both Hungarian, scipy's ``linear_sum_assignment``; a few heads, so
    microseconds). ``match``: the median matched head cosine (~1 for a permuted copy)."""
    s_q, s_kv = _head_similarity(base, other, [layer], coords=coords, seed=seed)
    return _match_heads(s_q[0], s_kv[0], base.cfg.n_heads // base.cfg.n_kv_heads)


def _match_heads(s_q: torch.Tensor, s_kv: torch.Tensor, r: int) -> tuple[torch.Tensor, float]:
    n_kv = s_kv.shape[0]
    score = torch.empty(n_kv, n_kv)
    inner: dict[tuple[int, int], torch.Tensor] = {}
    for g in range(n_kv):
        for h in range(n_kv):
            cols, total = _assign(s_q[g * r : (g + 1) * r, h * r : (h + 1) * r])
            inner[g, h] = h * r + cols
            score[g, h] = r * s_kv[g, h] + total
    groups, _ = _assign(score)
    perm = torch.cat([inner[g, int(groups[g])] for g in range(n_kv)])
    return perm, float(_head_cosines(s_q, s_kv, perm, r).median())


@dataclass(frozen=True)
class _HeadPlan:
    agreement: float  # median head cosine, index for index
    perms: dict[int, torch.Tensor]  # the layers to permute (non-identity matches)
    agreement_after: float  # the same once ``perms`` are applied
    comparable: bool | None


def _plan_heads(base: Model, other: Model, seed: int = 0) -> _HeadPlan:
    """Per layer, the assignment of ``other``'s heads to the base's; a layer is re-aligned when its
    assignment is not the identity and matches at median cosine >= ``SHARED`` (a permutation of the
    base's heads). Heads are comparable when every layer then matches at >= ``SHARED``. A fine-tuned copy
    (identity everywhere) costs one pass over the attention weights and is never written."""
    c = base.cfg
    r = c.n_heads // c.n_kv_heads
    try:
        s_q, s_kv = _head_similarity(base, other, range(c.n_layers), seed=seed)
    except HeadLayoutError:
        return _HeadPlan(float("nan"), {}, float("nan"), None)  # not checked: heads stay as they are
    identity = torch.arange(c.n_heads)
    diag, matched, perms, comparable = [], [], {}, True
    for layer in range(c.n_layers):
        diag.append(_head_cosines(s_q[layer], s_kv[layer], identity, r))
        perm, match = _match_heads(s_q[layer], s_kv[layer], r)
        if torch.equal(perm, identity) or match < SHARED:
            # aligned already, or not a permutation of the base's heads (another run): left as it is
            comparable &= float(diag[-1].median()) >= SHARED
            matched.append(diag[-1])
        else:
            perms[layer] = perm
            matched.append(_head_cosines(s_q[layer], s_kv[layer], perm, r))
    return _HeadPlan(float(torch.cat(diag).median()), perms, float(torch.cat(matched).median()), comparable)


@dataclass(frozen=True)
class AlignmentInfo(Result):
    """Whether two models share a neuron basis. ``agreement``: median control-neuron cosine as given;
    ``realigned``: the other model's neurons were permuted into the base's order (``agreement_after``
    then measures the aligned pair); ``comparable``: per-index weight comparisons mean something.

    The same for attention heads: ``head_agreement`` (median head cosine, index for index, as given),
    ``heads_realigned`` (some layer's heads were permuted into the base's order: ``head_layers_realigned``),
    ``head_agreement_after`` (the aligned pair) and ``heads_comparable`` (every layer's heads match the
    base's at >= ``SHARED``; per-(layer, head) results can be compared; ``None``: an architecture outside
    ``HEAD_ARCHITECTURES``, heads not checked)."""

    agreement: float
    realigned: bool
    agreement_after: float
    comparable: bool
    head_agreement: float = float("nan")
    heads_realigned: bool = False
    head_agreement_after: float = float("nan")
    heads_comparable: bool | None = None
    head_layers_realigned: tuple[int, ...] = ()


@contextlib.contextmanager
def aligned_to(base: Model, other: Model, *, n: int = 64, seed: int = 0) -> Iterator[AlignmentInfo]:
    """Inside the block, ``other`` indexes its MLP neurons and its attention heads as ``base`` does, when
    it can (see the module docstring); its own order is restored bitwise on exit, also on an exception.
    Neurons and heads are decided independently: a copy with permuted heads and fine-tuned MLPs gets its
    heads re-aligned only."""
    neurons: dict[str, object] = {}
    undo_neurons: dict[int, torch.Tensor] = {}
    undo_heads: dict[int, torch.Tensor] = {}
    try:
        agreement = basis_agreement(base, other, n=n, seed=seed)
        neurons = dict(agreement=agreement, realigned=False, agreement_after=agreement, comparable=True)
        if agreement < SHARED:
            perms = {}
            for layer in range(base.cfg.n_layers):
                perms[layer], match = neuron_alignment(base, other, layer, seed=seed)
                if match < SHARED:  # not a permutation of the base's neurons: another run
                    neurons["comparable"] = False
                    break
            if neurons["comparable"]:
                permute_mlp_neurons(other, perms)
                undo_neurons = {l: torch.argsort(p) for l, p in perms.items()}
                after = basis_agreement(base, other, n=n, seed=seed)
                if after < SHARED:  # another run, not a permutation: put it back and say so
                    permute_mlp_neurons(other, undo_neurons)
                    undo_neurons = {}
                    neurons["comparable"] = False
                else:
                    neurons.update(realigned=True, agreement_after=after)
        plan = _plan_heads(base, other, seed)
        for layer, perm in plan.perms.items():
            permute_attention_heads(other, {layer: perm})
            undo_heads[layer] = torch.argsort(perm)
        heads = dict(
            head_agreement=plan.agreement,
            heads_realigned=bool(plan.perms),
            head_agreement_after=plan.agreement_after,  # = head_agreement(base, other) now
            heads_comparable=plan.comparable,
            head_layers_realigned=tuple(sorted(plan.perms)),
        )
        yield AlignmentInfo(**neurons, **heads)
    finally:
        if undo_heads:
            permute_attention_heads(other, undo_heads)
        if undo_neurons:
            permute_mlp_neurons(other, undo_neurons)
