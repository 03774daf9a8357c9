"""Representation misdirection for unlearning (RMU, Li et al. 2024, WMDP): push the forget activations at
one layer towards a fixed random direction, keep the retain activations where the frozen model has them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Float

from analyses.unlearn.batches import Batch, hidden_at, make_batch
from analyses.unlearn.config import MethodConfig
from analyses.unlearn.registry import TrainContext, TrainPlan, register
from analyses.unlearn.run import trainable_parameters
from probes.model import Model


@dataclass(frozen=True)
class RMUConfig(MethodConfig):
    """RMU: MSE(h_forget, c * u) + alpha * MSE(h_retain, h_retain_frozen) at one layer; the MLPs of the
    ``train_layers`` layers up to it train."""

    layer: int | None = field(default=None, metadata={"help": "steered layer (default: n_layers // 3)"})
    c: float = field(
        default=4.0, metadata={"help": "steering coefficient, a multiple of the layer's mean activation norm"}
    )
    # alpha 10 halved unrelated accuracy on all three concepts of data/unlearn/table.md (100: 1.0, 1.0,
    # 0.67); alpha 1000 forgot too slowly (Harry Potter 0.78 after 30 steps)
    alpha: float = field(default=100.0, metadata={"help": "weight of the retain MSE"})
    train_layers: int = field(default=3, metadata={"help": "MLPs of layers [layer - n + 1, layer] train"})


def _masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    per_token = ((a - b) ** 2).mean(-1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def rmu_loss(
    model: Model,
    ref: Model,
    forget: Batch,
    retain: Batch,
    layer: int,
    control: Float[torch.Tensor, " d_model"],
    alpha: float,
) -> torch.Tensor:
    """RMU: mean squared error between the forget activations at ``layer`` and ``control`` (= c * u, a fixed
    random unit direction scaled by c) plus alpha times the MSE between the retain activations and the frozen
    model's, over non-padding tokens."""
    h_f = hidden_at(model, forget, layer)
    h_r = hidden_at(model, retain, layer)
    with torch.no_grad():
        h_r_ref = hidden_at(ref, retain, layer)
    m_f, m_r = forget.mask.float(), retain.mask.float()
    return _masked_mse(h_f, control.expand_as(h_f), m_f) + alpha * _masked_mse(h_r, h_r_ref, m_r)


@register("rmu", RMUConfig, needs_retain=True, steps=30, lr=3e-4, trainable="mlp")
def rmu(ctx: TrainContext, options: RMUConfig) -> TrainPlan:
    work = ctx.work
    layer = options.layer if options.layer is not None else work.cfg.n_layers // 3
    lo = max(0, layer - options.train_layers + 1)
    names = trainable_parameters(work, "mlp", (lo, layer + 1))
    with torch.no_grad():
        probe = make_batch(work, ctx.forget_pool[: ctx.config.batch_size])
        h = hidden_at(ctx.ref, probe, layer)
        norm = (h.norm(dim=-1) * probe.mask).sum() / probe.mask.sum()
    u = torch.rand(work.cfg.d_model, generator=ctx.generator)
    control = (options.c * norm * u / u.norm()).to(work.device)
    return TrainPlan(
        lambda: rmu_loss(
            work, ctx.ref, ctx.forget_batch(), ctx.retain_batch(), layer, control, options.alpha
        ),
        parameters=names,
    )
