"""Negative preference optimisation (NPO, Zhang et al. 2024): the forget data as dispreferred responses
only, against the frozen reference model."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from analyses.unlearn.batches import Batch, reference_nll, sequence_nll
from analyses.unlearn.config import MethodConfig
from analyses.unlearn.registry import TrainContext, TrainPlan, register
from probes.model import Model


@dataclass(frozen=True)
class NPOConfig(MethodConfig):
    """NPO: -(2/beta) * mean log sigmoid(beta * (NLL_theta(x_f) - NLL_ref(x_f)))."""

    beta: float = field(default=0.1, metadata={"help": "NPO temperature"})


def npo_loss(model: Model, ref: Model, forget: Batch, beta: float = 0.1) -> torch.Tensor:
    """NPO: -(2/beta) * mean log sigmoid(beta * (NLL_theta(x_f) - NLL_ref(x_f)))."""
    ratio = sequence_nll(model, forget) - reference_nll(ref, forget)
    return -(2.0 / beta) * F.logsigmoid(beta * ratio).mean()


@register("npo", NPOConfig, steps=30, lr=2e-5, trainable="mlp")
def npo(ctx: TrainContext, options: NPOConfig) -> TrainPlan:
    return TrainPlan(lambda: npo_loss(ctx.work, ctx.ref, ctx.forget_batch(), options.beta))
