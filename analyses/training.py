"""The one training loop: AdamW with an optional learning-rate schedule, gradient clipping, a finite-loss
check and an optional early stop. Unlearning (``analyses.unlearn``), the relearning attack
(``analyses.behaviour.relearn_attack``) and the synthetic world's from-scratch training
(``analyses.world``) all train through ``train``.

A step is: ``loss = step_loss(step)``, refuse a non-finite loss, ``zero_grad``, ``backward``, clip the
gradient norm of ``clip_parameters`` (default: the optimised ones) to ``max_grad_norm``, ``opt.step()``,
``scheduler.step()``, then ``after_step(step, loss)``, which may return ``True`` to stop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from probes.errors import VestigeError


class TrainingError(VestigeError):
    """A training run diverged or cannot start."""


@dataclass(frozen=True)
class TrainLog:
    """What ``train`` did: steps taken, the loss of each, and whether ``after_step`` stopped it early."""

    steps: int
    losses: tuple[float, ...]
    stopped_early: bool


def train(
    parameters: Sequence[torch.nn.Parameter] | Sequence[dict[str, Any]],
    step_loss: Callable[[int], torch.Tensor],
    steps: int,
    *,
    lr: float,
    schedule: Callable[[int], float] | None = None,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    max_grad_norm: float | None = 1.0,
    clip_parameters: Iterable[torch.nn.Parameter] | None = None,
    after_step: Callable[[int, float], bool] | None = None,
    desc: str = "train",
    progress: bool = False,
    show_loss: bool = False,
) -> TrainLog:
    """Run ``steps`` AdamW steps (1-based step numbers are passed to ``step_loss`` and ``after_step``).

    ``parameters``: tensors, or AdamW parameter groups (dicts with ``params`` and per-group options).
    ``schedule``: the learning-rate multiplier of 0-based optimizer step s (``LambdaLR``); none = constant.
    A loss that is not finite raises ``TrainingError`` naming the step (the learning rate is too high)."""
    opt = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, betas=betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule) if schedule is not None else None
    clipped = (
        list(clip_parameters)
        if clip_parameters is not None
        else [p for group in opt.param_groups for p in group["params"]]
    )
    losses: list[float] = []
    bar = tqdm(range(1, steps + 1), desc=desc, disable=not progress, leave=False)
    step = 0
    try:
        for step in bar:
            with torch.enable_grad():
                loss = step_loss(step)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"{desc}: the loss became {loss.item()} at step {step}",
                        "the learning rate is too high for this model",
                        "lower the learning rate (--lr)",
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(clipped, max_grad_norm)
            opt.step()
            if sched is not None:
                sched.step()
            value = float(loss.detach())
            losses.append(value)
            if show_loss:
                bar.set_postfix(loss=f"{value:.3f}")
            if after_step is not None and after_step(step, value):
                return TrainLog(step, tuple(losses), step < steps)
    finally:
        bar.close()
        opt.zero_grad(set_to_none=True)
    return TrainLog(step, tuple(losses), False)
