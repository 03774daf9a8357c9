"""NPO with a KL term on the retain data (Zhang et al. 2024, NPO+KL)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from analyses.unlearn.batches import Batch, logits_of
from analyses.unlearn.config import MethodConfig
from analyses.unlearn.methods.npo import npo_loss
from analyses.unlearn.registry import TrainContext, TrainPlan, register
from probes.model import Model


@dataclass(frozen=True)
class NPOKLConfig(MethodConfig):
    """NPO + kl_weight * KL(p_ref || p_theta) on the retain batch."""

    beta: float = field(default=0.1, metadata={"help": "NPO temperature"})
    kl_weight: float = field(default=1.0, metadata={"help": "weight of the retain KL term"})


def retain_kl(model: Model, ref: Model, retain: Batch) -> torch.Tensor:
    """KL(p_ref || p_theta) of the next-token distributions, summed over the target tokens of each retain
    sequence (the same positions its NLL sums over) and averaged over the batch."""
    logp = torch.log_softmax(logits_of(model, retain)[:, :-1], -1)
    with torch.no_grad():
        logq = torch.log_softmax(logits_of(ref, retain)[:, :-1], -1)
    kl = (logq.exp() * (logq - logp)).sum(-1)
    return (kl * (retain.labels[:, 1:] != -100)).sum(-1).mean()


def npo_kl_loss(
    model: Model, ref: Model, forget: Batch, retain: Batch, beta: float = 0.1, kl_weight: float = 1.0
) -> torch.Tensor:
    """NPO + kl_weight * KL(p_ref || p_theta) on the retain batch."""
    return npo_loss(model, ref, forget, beta) + kl_weight * retain_kl(model, ref, retain)


@register("npo_kl", NPOKLConfig, needs_retain=True, steps=30, lr=2e-5, trainable="mlp")
def npo_kl(ctx: TrainContext, options: NPOKLConfig) -> TrainPlan:
    return TrainPlan(
        lambda: npo_kl_loss(
            ctx.work, ctx.ref, ctx.forget_batch(), ctx.retain_batch(), options.beta, options.kl_weight
        )
    )
