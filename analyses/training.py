"""The one training loop: AdamW with an optional learning-rate schedule, gradient clipping, a finite-loss
check and an optional early stop. Unlearning (``analyses.unlearn``), the relearning attack
(``analyses.behaviour.relearn_attack``) and the synthetic world's from-scratch training
(``analyses.world``) all train through ``train``.

A step is: ``zero_grad``, ``loss = step_loss(step)``, refuse a non-finite loss, ``backward``, clip the
gradient norm of ``clip_parameters`` (default: the optimised ones) to ``max_grad_norm``, ``opt.step()``,
``scheduler.step()``, then ``after_step(step, loss)``, which may return ``True`` to stop. ``step_loss`` may
also return an iterable of loss parts that sum to the step's loss (gradient accumulation over micro-batches,
``micro_batches``): each part is checked and back-propagated as soon as it is made, so only one part's
graph is alive at a time, and the step's gradient is the same as the whole batch's.
``activation_checkpointing`` around a training run keeps only each transformer block's input for the
backward pass and recomputes the block there (the same gradient, bit for bit, for one more forward pass).

Half-precision parameters (bfloat16, float16: a model loaded on a GPU) train through float32 master copies
(mixed precision, Micikevicius et al. 2018): AdamW, its moments and the clipping work on the masters, and
each step writes the masters back, rounded. Updated in place, a bfloat16 weight keeps 8 bits of mantissa:
an AdamW step of 3e-5 (the relearning attack's rate) is under half a unit in the last place of any weight
larger than about 0.008 in magnitude and rounds away, so the attack would silently train nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
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


def micro_batches(items: Sequence[Any], tokens_of: Callable[[Any], int], budget: int) -> Iterator[list[Any]]:
    """``items`` in consecutive groups of at most ``budget`` tokens each (``tokens_of(item)``; one item per
    group at least), in order: the micro-batches of one step's batch."""
    group: list[Any] = []
    used = 0
    for item in items:
        n = tokens_of(item)
        if group and used + n > budget:
            yield group
            group, used = [], 0
        group.append(item)
        used += n
    if group:
        yield group


def train(
    parameters: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
    step_loss: Callable[[int], torch.Tensor | Iterable[torch.Tensor]],
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
    """Run ``steps`` AdamW steps (1-based step numbers are passed to ``step_loss`` and ``after_step``);
    half-precision parameters through float32 masters (module docstring).

    ``parameters``: tensors, or AdamW parameter groups (dicts with ``params`` and per-group options).
    ``schedule``: the learning-rate multiplier of 0-based optimizer step s (``LambdaLR``); none = constant.
    A loss that is not finite raises ``TrainingError`` naming the step (the learning rate is too high)."""
    given = list(parameters)  # a generator such as ``model.parameters()`` is read once
    groups = [dict(g) for g in given] if given and isinstance(given[0], dict) else None
    flat = [p for g in groups for p in g["params"]] if groups is not None else given
    masters = {
        id(p): p.detach().float().clone().requires_grad_(True)
        for p in flat
        if p.dtype in (torch.bfloat16, torch.float16)
    }
    pairs = [(p, masters[id(p)]) for p in flat if id(p) in masters]

    def master(p: torch.nn.Parameter) -> torch.Tensor:
        return masters.get(id(p), p)

    if groups is not None:
        for g in groups:
            g["params"] = [master(p) for p in g["params"]]
    opt = torch.optim.AdamW(
        groups if groups is not None else [master(p) for p in flat],
        lr=lr,
        weight_decay=weight_decay,
        betas=betas,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule) if schedule is not None else None
    clipped = (
        [master(p) for p in clip_parameters]
        if clip_parameters is not None
        else [p for group in opt.param_groups for p in group["params"]]
    )
    losses: list[float] = []
    bar = tqdm(range(1, steps + 1), desc=desc, disable=not progress, leave=False)
    step = 0
    try:
        for step in bar:
            opt.zero_grad(set_to_none=True)
            for p, _ in pairs:
                p.grad = None
            with torch.enable_grad():
                made = step_loss(step)
                loss = torch.zeros(())
                for part in (made,) if isinstance(made, torch.Tensor) else made:
                    if not torch.isfinite(part):
                        raise TrainingError(
                            f"{desc}: the loss became {part.item()} at step {step}",
                            "the learning rate is too high for this model",
                            "lower the learning rate (--lr)",
                        )
                    part.backward()
                    loss = loss + part.detach().cpu()
            for p, m in pairs:  # the half-precision gradients move to the float32 masters
                m.grad = None if p.grad is None else p.grad.float()
                p.grad = None
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(clipped, max_grad_norm)
            opt.step()
            with torch.no_grad():
                for p, m in pairs:
                    p.copy_(m)
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
        for p, _ in pairs:
            p.grad = None
    return TrainLog(step, tuple(losses), False)


def checkpointed_blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's transformer blocks that can recompute themselves in the backward pass (transformers'
    ``GradientCheckpointingLayer``: every supported family); empty for a model without them."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # an older transformers: train without checkpointing
        return []
    return [m for m in module.modules() if isinstance(m, GradientCheckpointingLayer)]


@contextmanager
def activation_checkpointing(module: torch.nn.Module) -> Iterator[bool]:
    """Inside the ``with`` block, autograd keeps only the input of each transformer block of ``module`` (an
    HF model) and recomputes the block during the backward pass (``torch.utils.checkpoint``,
    non-reentrant): the activations held for a backward pass shrink from every block's intermediates to
    one block's, for one more forward pass.
    Dropout modules keep their own train/eval state (only the blocks' checkpointing switch is set), so the
    gradients are those of the same computation without checkpointing (tested). Put the loss's forward
    alone inside the block (its backward may run after it): a checkpointed block drops the key/value
    cache, so generation inside it would decode without its past. Yields whether any block was switched;
    everything is put back on leaving, also on an exception."""
    import functools

    from torch.utils.checkpoint import checkpoint

    blocks = checkpointed_blocks(module)
    # no key/value cache while training: a block recomputed in the backward pass would append its keys
    # and values to the cache a second time (GPT-2 hands the cache to its blocks positionally)
    config = getattr(module, "config", None)
    use_cache = getattr(config, "use_cache", None)
    saved = [
        (b, b.gradient_checkpointing, b.training, b.__dict__.get("_gradient_checkpointing_func"))
        for b in blocks
    ]
    func = functools.partial(checkpoint, use_reentrant=False)
    try:
        if blocks and use_cache is not None:
            config.use_cache = False
        for b in blocks:
            b.gradient_checkpointing = True
            b.training = True  # the block's own flag only: its submodules (dropout) keep theirs
            b._gradient_checkpointing_func = func
        yield bool(blocks)
    finally:
        if blocks and use_cache is not None:
            config.use_cache = use_cache
        for b, on, training, old in saved:
            b.gradient_checkpointing = on
            b.training = training
            if old is None:
                b.__dict__.pop("_gradient_checkpointing_func", None)
            else:
                b._gradient_checkpointing_func = old
