"""Neuron bases: do two models index their MLP neurons the same way, and if not, can they be aligned?

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
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int

from probes.model import Model
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


@dataclass(frozen=True)
class AlignmentInfo(Result):
    """Whether two models share a neuron basis. ``agreement``: median control-neuron cosine as given;
    ``realigned``: the other model's neurons were permuted into the base's order (``agreement_after``
    then measures the aligned pair); ``comparable``: per-index weight comparisons mean something."""

    agreement: float
    realigned: bool
    agreement_after: float
    comparable: bool


@contextlib.contextmanager
def aligned_to(base: Model, other: Model, *, n: int = 64, seed: int = 0) -> Iterator[AlignmentInfo]:
    """Inside the block, ``other`` indexes its MLP neurons as ``base`` does, when it can (see the module
    docstring); its own order is restored bitwise on exit, also on an exception."""
    agreement = basis_agreement(base, other, n=n, seed=seed)
    if agreement >= SHARED:
        yield AlignmentInfo(agreement, False, agreement, True)
        return
    perms = {}
    for layer in range(base.cfg.n_layers):
        perms[layer], match = neuron_alignment(base, other, layer, seed=seed)
        if match < SHARED:  # not a permutation of the base's neurons: another run
            yield AlignmentInfo(agreement, False, agreement, False)
            return
    inverse = {l: torch.argsort(p) for l, p in perms.items()}
    permute_mlp_neurons(other, perms)
    try:
        after = basis_agreement(base, other, n=n, seed=seed)
        if after < SHARED:  # another run, not a permutation: put it back and say so
            permute_mlp_neurons(other, inverse)
            inverse = {}
            yield AlignmentInfo(agreement, False, agreement, False)
        else:
            yield AlignmentInfo(agreement, True, after, True)
    finally:
        if inverse:
            permute_mlp_neurons(other, inverse)
