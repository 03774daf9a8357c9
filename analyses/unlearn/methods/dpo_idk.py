"""DPO with "I don't know" as the preferred answer (TOFU's IDK preference baseline)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from analyses.unlearn.batches import Batch, make_batch, qa_examples, reference_nll, sequence_nll
from analyses.unlearn.config import MethodConfig
from analyses.unlearn.registry import TrainContext, TrainPlan, register
from probes.model import Model

IDK_ANSWERS = (
    "I don't know.",
    "I'm not sure.",
    "I have no idea.",
    "I can't answer that.",
    "That is unknown to me.",
)


@dataclass(frozen=True)
class DPOIDKConfig(MethodConfig):
    """DPO-IDK: the concept's questions with an "I don't know" answer preferred over the true one."""

    beta: float = field(default=0.1, metadata={"help": "DPO temperature"})
    answers: tuple[str, ...] = field(
        default=IDK_ANSWERS, metadata={"help": "the preferred answers, used in turn"}
    )


def dpo_loss(model: Model, ref: Model, preferred: Batch, rejected: Batch, beta: float = 0.1) -> torch.Tensor:
    """DPO: -(2/beta) * mean log sigmoid(beta * ((lp_theta(w) - lp_ref(w)) - (lp_theta(l) - lp_ref(l))))
    with lp = -NLL; for DPO-IDK ``preferred`` holds "I don't know" answers, ``rejected`` the true ones
    (the 2/beta scale is open-unlearning's)."""
    win = -(sequence_nll(model, preferred) - reference_nll(ref, preferred))
    lose = -(sequence_nll(model, rejected) - reference_nll(ref, rejected))
    return -(2.0 / beta) * F.logsigmoid(beta * (win - lose)).mean()


@register("dpo_idk", DPOIDKConfig, steps=30, lr=2e-5, trainable="mlp")
def dpo_idk(ctx: TrainContext, options: DPOIDKConfig) -> TrainPlan:
    work, qa = ctx.work, ctx.concept.qa
    idk = [options.answers[i % len(options.answers)] for i in range(len(qa))]
    pairs = list(zip(qa_examples(work, qa, idk), qa_examples(work, qa), strict=True))
    sampler = ctx.sampler(pairs)

    def step() -> torch.Tensor:
        picked = sampler()
        won = make_batch(work, [p[0] for p in picked])
        lost = make_batch(work, [p[1] for p in picked])
        return dpo_loss(work, ctx.ref, won, lost, options.beta)

    return TrainPlan(step)
