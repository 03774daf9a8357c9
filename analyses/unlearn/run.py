"""Running an unlearning method: the forget and retain pools, the trainable parameters, the early stop, the
before/after evaluation, and the result with its checkpoint.

The frozen reference model is the caller's base model itself (never trained, never copied): ``unlearn``
trains one ``model.copy()`` and reads the reference under ``no_grad``. Dropout stays off (eval mode) so a
step is a deterministic function of the seed.

Forget data: the concept's ``text`` cut into token windows (loss on every token after the first) and its
QA as prompt + answer (loss on the answer tokens). Retain data: the concept's ``unrelated_qa`` and, when
given, other concepts' text windows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from analyses.lora import Adapter, adapter_of, attach_lora, block_linears, has_lora, merge_lora
from analyses.training import train
from analyses.unlearn.batches import Example, qa_examples, text_windows
from analyses.unlearn.config import UnlearnConfig, UnlearnError
from analyses.unlearn.registry import TrainContext, TrainPlan, get_method, resolve
from probes.data import QA, Concept
from probes.model import Model, native_name
from probes.qa import score_qa
from probes.results import Result, write_json


def trainable_parameters(model: Model, trainable: str, layers: tuple[int, int] | None) -> list[str]:
    """Names of the parameters that train: ``all`` or ``mlp`` (MLP blocks only), within ``layers``."""
    if trainable not in ("all", "mlp"):
        raise UnlearnError(
            f"unknown trainable choice {trainable!r}",
            None,
            "use 'all' or 'mlp' ('lora' is a way of training them)",
        )
    prefix = model._paths["layers"] + "."
    names = []
    for raw, _ in model.hf.named_parameters():
        name = native_name(raw)
        layer = None
        if name.startswith(prefix):
            layer = int(name[len(prefix) :].split(".")[0])
        if layers is not None and (layer is None or not layers[0] <= layer < layers[1]):
            continue
        if trainable == "mlp" and (layer is None or ".mlp." not in name):
            continue
        names.append(raw)
    if not names:
        raise UnlearnError(
            "no parameter is trainable",
            f"trainable={trainable!r} with layers={layers} selects nothing on this model",
            f"pick a layer range within [0, {model.cfg.n_layers})",
        )
    return names


def lr_factor(step: int, cfg: UnlearnConfig) -> float:
    """Learning-rate multiplier of optimizer step ``step`` (0-based): linear warm-up from ``warmup_start``
    (never zero), then constant or linear decay to 10%."""
    if step < cfg.warmup_steps:
        return cfg.warmup_start + (1 - cfg.warmup_start) * step / cfg.warmup_steps
    if cfg.schedule == "linear":
        rest = max(1, (cfg.steps or 1) - cfg.warmup_steps)
        return 1.0 - 0.9 * (step - cfg.warmup_steps) / rest
    return 1.0


@dataclass(frozen=True)
class QAStats(Result):
    forget_accuracy: float
    unrelated_accuracy: float
    forget_logprob: float
    unrelated_logprob: float


def evaluate(model: Model, concept: Concept) -> QAStats:
    """Forget and unrelated QA accuracy and mean answer log-probability."""
    f = score_qa(model, concept.qa)
    u = score_qa(model, concept.unrelated_qa) if concept.unrelated_qa else None
    return QAStats(
        forget_accuracy=f.accuracy,
        unrelated_accuracy=u.accuracy if u else float("nan"),
        forget_logprob=f.mean_logprob,
        unrelated_logprob=u.mean_logprob if u else float("nan"),
    )


@dataclass(frozen=True)
class UnlearnResult(Result):
    """An unlearned model and what the run did. ``model`` is excluded from ``to_dict``."""

    method: str
    concept: str
    params: dict[str, Any]
    before: QAStats
    after: QAStats
    steps: int
    seconds: float
    loss_curve: tuple[float, ...]
    checks: tuple[dict[str, float], ...]
    stopped_early: bool
    model: Model = field(repr=False, compare=False)
    trained_items: tuple[str, ...] = ()  # prompts of the QA items the run trained and stopped on
    heldout_items: tuple[str, ...] = ()  # prompts nothing saw (``UnlearnConfig.heldout``)
    heldout_before: QAStats | None = None
    heldout_after: QAStats | None = None
    adapter: Adapter | None = field(default=None, repr=False, compare=False)  # ``trainable="lora"``

    def passes(self, forget_fraction: float = 0.25, unrelated_fraction: float = 0.8) -> bool:
        """The issue's criterion: forget accuracy at most 25% of its start, unrelated at least 80%."""
        return (
            self.after.forget_accuracy <= forget_fraction * self.before.forget_accuracy + 1e-9
            and self.after.unrelated_accuracy >= unrelated_fraction * self.before.unrelated_accuracy - 1e-9
        )

    def save(self, out: str | Path) -> Path:
        """HF checkpoint (safetensors + tokenizer) in ``out`` plus ``out/unlearn.json``; a LoRA run
        (``trainable="lora"``) saves its PEFT adapter instead of the full weights (``load_model(out,
        base=...)``, ``vestige audit --unlearned out --base BASE`` merge it into the base)."""
        out = Path(out)
        if self.adapter is not None:
            self.adapter.save(out)
            self.model.tokenizer.save_pretrained(out)
        else:
            self.model.save(out)
        write_json(out / "unlearn.json", self.to_dict())
        return out


def forget_pool(model: Model, concept: Concept, window: int) -> list[Example]:
    return text_windows(model, concept.text, window) + qa_examples(model, concept.qa)


def retain_pool(model: Model, concept: Concept, retain_texts: Sequence[str], window: int) -> list[Example]:
    return qa_examples(model, concept.unrelated_qa) + text_windows(model, retain_texts, window)


def unlearn(
    model: Model,
    concept: Concept,
    config: UnlearnConfig | None = None,
    *,
    retain_texts: Sequence[str] = (),
    retain_qa: Sequence[QA] = (),
    progress: bool = True,
    evaluate_before: QAStats | None = None,
) -> UnlearnResult:
    """Unlearn ``concept`` from a copy of ``model`` (the caller's model is the frozen reference and is never
    modified). ``retain_texts``: other concepts' text for the retain set; ``retain_qa``: other concepts'
    questions that ``needle``'s location must spare (``retain_qa_for``). ``evaluate_before`` reuses a
    known before-evaluation of ``model`` (several methods on one base)."""
    cfg = resolve(config or UnlearnConfig())
    method = get_method(cfg.method)
    if method.needs_retain and not concept.unrelated_qa and not any(t.strip() for t in retain_texts):
        raise UnlearnError(
            f"{cfg.method} needs retain data",
            f"concept {concept.concept!r} has no unrelated_qa and no retain text was given",
            "add unrelated_qa to the concept file, pass retain_texts (vestige unlearn: other concepts of the "
            "same file with text, without --no-retain-text), or use ga, npo, dpo_idk or needle",
        )
    t0 = time.perf_counter()
    heldout = None
    if cfg.heldout > 0:  # the method, its early stop and its text see only the trained items
        concept, heldout = concept.split(cfg.heldout, cfg.heldout_seed)
        evaluate_before = None
    before = evaluate_before or evaluate(model, concept)
    work = model.copy()
    work.name = f"{model.name} unlearned with {cfg.method}"  # what reports call it until it is saved
    work.hf.eval()
    torch.manual_seed(cfg.seed)
    ctx = TrainContext(
        ref=model,
        work=work,
        concept=concept,
        config=cfg,
        forget_pool=forget_pool(work, concept, cfg.window) if method.kind == "train" else [],
        retain_pool=retain_pool(work, concept, retain_texts, cfg.window) if method.kind == "train" else [],
        generator=torch.Generator().manual_seed(cfg.seed),
        retain_qa=retain_qa,
        before_accuracy=before.forget_accuracy,
    )
    losses: tuple[float, ...] = ()
    if method.kind == "edit":
        outcome = method.run(ctx, cfg.options)
        steps, stopped = outcome.steps, outcome.stopped_early
        cfg = replace(cfg, options=outcome.options)
    else:
        if method.needs_retain and not ctx.retain_pool:
            raise UnlearnError(
                f"{cfg.method} needs retain data",
                f"concept {concept.concept!r} has no unrelated_qa and no retain text was given",
                "add unrelated_qa to the concept file or pass other concepts' text",
            )
        lora = cfg.trainable == "lora"
        names = trainable_parameters(work, "all" if lora else cfg.trainable, cfg.layers)
        plan: TrainPlan = method.run(ctx, cfg.options)
        names = plan.parameters or names
        if lora:  # a low-rank update of the chosen block weights; only its A and B train
            modules = block_linears(work, {native_name(n) for n in names})
            if not modules:
                raise UnlearnError(
                    "no linear weight to put a LoRA update on",
                    f"{cfg.method} trains {len(names)} parameters of {cfg.layers or 'all'} blocks, none a "
                    "block's linear weight",
                    "widen --layers, or train without --trainable lora",
                )
            lora_params = attach_lora(work, modules, rank=cfg.lora_rank, alpha=cfg.lora_alpha, seed=cfg.seed)
            ids = {id(p) for p in lora_params}
            names = [n for n, p in work.hf.named_parameters() if id(p) in ids]
        steps, stopped, losses = _train(ctx, names, plan, before, progress)
    adapter = None
    if has_lora(work):
        adapter = adapter_of(work, model.name)
        merge_lora(work)  # the returned model is an ordinary one, W + s B A in its weights
    after = evaluate(work, concept)
    for p in work.hf.parameters():
        p.requires_grad_(True)
    return UnlearnResult(
        method=cfg.method,
        concept=concept.concept,
        params=cfg.to_dict(),
        before=before,
        after=after,
        steps=steps,
        seconds=time.perf_counter() - t0,
        loss_curve=losses,
        checks=tuple(ctx.checks),
        stopped_early=stopped,
        model=work,
        trained_items=tuple(q.prompt for q in concept.qa),
        heldout_items=tuple(q.prompt for q in heldout.qa) if heldout else (),
        heldout_before=evaluate(model, heldout) if heldout else None,
        heldout_after=evaluate(work, heldout) if heldout else None,
        adapter=adapter,
    )


def _train(
    ctx: TrainContext, names: list[str], plan: TrainPlan, before: QAStats, progress: bool
) -> tuple[int, bool, tuple[float, ...]]:
    """The shared loop over the ``names`` parameters (warm-up + schedule, clipping), with the early stop:
    every ``check_every`` steps (and at the last), stop once forget accuracy <= ``stop_fraction`` of its
    start."""
    cfg, work = ctx.config, ctx.work
    chosen = set(names)
    params = []
    for name, p in work.hf.named_parameters():
        p.requires_grad_(name in chosen)
        if name in chosen:
            params.append(p)
    target = None
    if cfg.stop_fraction is not None and not math.isnan(before.forget_accuracy):
        target = cfg.stop_fraction * before.forget_accuracy

    def after_step(step: int, loss: float) -> bool:
        if target is None or not (step % cfg.check_every == 0 or step == cfg.steps):
            return False
        acc = score_qa(work, ctx.concept.qa).accuracy
        ctx.checks.append({"step": step, "forget_accuracy": acc})
        return acc <= target + 1e-9

    log = train(
        params,
        lambda step: plan.loss(),
        cfg.steps,
        lr=cfg.lr,
        schedule=lambda s: lr_factor(s, cfg),
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        after_step=after_step,
        desc=cfg.method,
        progress=progress,
    )
    return log.steps, log.stopped_early, log.losses


def retain_qa_for(concepts: Sequence[Concept], concept: Concept, limit: int = 40) -> list[QA]:
    """The first question of up to ``limit`` other concepts of the same file (what ``needle`` spares)."""
    others = [c for c in concepts if c.concept.lower() != concept.concept.lower() and c.qa]
    return [c.qa[0] for c in others[:limit]]


def retain_texts_for(concepts: Sequence[Concept], concept: Concept, limit: int = 8) -> list[str]:
    """Text of up to ``limit`` other concepts of the same file (the retain corpus)."""
    others = [c for c in concepts if c.concept.lower() != concept.concept.lower() and c.text]
    return [t for c in others[:limit] for t in c.text]
