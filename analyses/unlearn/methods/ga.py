"""Gradient ascent (GA): maximise the NLL of the forget data (TOFU's GA baseline, Maini et al. 2024)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from analyses.unlearn.batches import Batch, sequence_nll
from analyses.unlearn.config import MethodConfig
from analyses.unlearn.registry import TrainContext, TrainPlan, register
from probes.model import Model


@dataclass(frozen=True)
class GAConfig(MethodConfig):
    """Gradient ascent: minimise -NLL(forget). No options of its own."""


def ga_loss(model: Model, forget: Batch) -> torch.Tensor:
    """Gradient ascent: minimise -NLL(forget)."""
    return -sequence_nll(model, forget).mean()


# Defaults chosen on SmolLM2-135M (data/unlearn/table.md, scripts/unlearn_table.py).
@register("ga", GAConfig, steps=30, lr=2e-5, trainable="mlp")
def ga(ctx: TrainContext, options: GAConfig) -> TrainPlan:
    return TrainPlan(lambda: ga_loss(ctx.work, ctx.forget_batch()))
