"""Relearning against steps: how fast, and through how few parameters, fine-tuning brings knowledge back.

Deeb & Roger (2024) relearn with full fine-tuning; an attacker with less access, or a defender asking how
shallow the suppression is, fine-tunes far fewer parameters (the choices, ``PARAMS``, and the lean
training are in ``analyses.finetune``). ``relearn_curve`` fine-tunes on facts T and scores the held-out V,
the control and (fine-tuned on as many floor facts) the rest of the floor after each of ``checkpoints``
steps; ``benign_relearn_curve`` (Hu et al. 2024) does the same on the concept's text without its answers.
Recovery against steps, net of what the same fine-tuning teaches facts never known. The model passed in
comes back unchanged: it trains in place and is restored exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from analyses.finetune import PARAMS, RelearnError, finetuned, is_variant, select_parameters  # noqa: F401
from probes.data import QA, Concept
from probes.model import Model
from probes.qa import score_qa
from probes.results import Result


@dataclass(frozen=True)
class RelearnCurve(Result):
    """Accuracy after each checkpoint step of fine-tuning on T: ``forget`` (held-out V), ``control`` (the
    same fine-tuned model), ``floor`` (the model fine-tuned on as many floor facts, scored on the rest of the floor);
    ``n_trainable`` numbers moved."""

    params: str
    steps: tuple[int, ...]
    forget: tuple[float, ...]
    control: tuple[float, ...]
    floor: tuple[float, ...]
    n_trainable: int
    lr: float
    losses: tuple[float, ...] = field(default=(), repr=False)
    on: str = "facts"  # what it fine-tuned on: "facts" (T, Deeb & Roger) or "text" (benign, Hu et al.)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "params": self.params,
                "on": self.on,
                "step": self.steps,
                "forget": self.forget,
                "control": self.control,
                "floor": self.floor,
                "net": [f - fl for f, fl in zip(self.forget, self.floor, strict=True)],
                "n_trainable": self.n_trainable,
            }
        )


def _curve_on(
    model: Model,
    examples_of,
    tests: dict[str, Sequence[QA]],
    params: str,
    checkpoints: Sequence[int],
    *,
    lr: float,
    batch_size: int,
    seed: int,
    lora_rank: int,
    desc: str,
) -> tuple[dict[str, list[float]], int, list[float]]:
    """Fine-tune ``model`` on ``examples_of(work)`` (``analyses.finetune.finetuned``: in place, restored
    afterwards) and score each of ``tests`` at every checkpoint
    (step 0: before any step)."""
    out: dict[str, list[float]] = {k: [] for k in tests}
    losses: list[float] = []
    n_trainable = [0]

    def score_all(on: Model) -> None:
        for k, items in tests.items():
            out[k].append(score_qa(on, items).accuracy if items else float("nan"))

    torch.manual_seed(seed)
    if 0 in checkpoints:
        score_all(model)  # before any step every variant computes the model's own function
    holder: list[Model] = []

    def after(step: int, loss: float) -> bool:
        losses.append(loss)
        if step in checkpoints:
            score_all(holder[0])
        return False

    def examples(work: Model):
        holder.append(work)
        n_trainable[0] = sum(p.numel() for p in work.hf.parameters() if p.requires_grad)
        return examples_of(work)

    kw = dict(steps=max(checkpoints), lr=lr, batch_size=batch_size, seed=seed, desc=desc, params=params)
    with finetuned(model, examples, lora_rank=lora_rank, after_step=after, **kw):
        pass
    return out, n_trainable[0], losses


def relearn_curve(
    model: Model,
    trained: Sequence[QA],
    heldout: Sequence[QA],
    control: Sequence[QA],
    floor: Sequence[QA],
    *,
    params: str = "all",
    checkpoints: Sequence[int] = (0, 2, 5, 10),
    lr: float = 3e-5,
    batch_size: int = 4,
    seed: int = 0,
    lora_rank: int = 8,
) -> RelearnCurve:
    """Retrain on T (``trained``), test on V (``heldout``) with only ``params`` trainable, after each of
    ``checkpoints`` AdamW steps; the floor side fine-tunes on a seeded sample of ``len(trained)``
    floor facts (at most half) and scores the rest."""
    if not trained or not heldout:
        raise RelearnError(
            "relearning needs facts to train on and held-out facts to test",
            f"got {len(trained)} trained and {len(heldout)} held-out facts",
            "pass the unlearning run's trained items as T and the other items of the concept as V",
        )
    checkpoints = tuple(sorted(set(int(c) for c in checkpoints)))
    if checkpoints[0] < 0 or checkpoints[-1] < 1:
        raise RelearnError(
            f"checkpoints {checkpoints} are not steps",
            "checkpoints are step counts from 0 (before training) up, with at least one step",
            "pass e.g. (0, 2, 5, 10)",
        )
    kw: dict[str, Any] = dict(lr=lr, batch_size=batch_size, seed=seed, lora_rank=lora_rank)
    from analyses.unlearn.batches import qa_examples

    def facts_of(facts):
        return lambda work: qa_examples(work, facts)

    kw["desc"] = f"relearn {params}"
    got, n, losses = _curve_on(
        model, facts_of(trained), {"forget": heldout, "control": control}, params, checkpoints, **kw
    )
    floor = list(floor)
    k = min(len(trained), len(floor) // 2)
    if k >= 1:
        on = set(np.random.default_rng(seed).choice(len(floor), k, replace=False).tolist())
        rest = [q for i, q in enumerate(floor) if i not in on]
        fl, _, _ = _curve_on(
            model, facts_of([floor[i] for i in sorted(on)]), {"floor": rest}, params, checkpoints, **kw
        )
        floor_acc = fl["floor"]
    else:
        floor_acc = [float("nan")] * len(checkpoints)
    return RelearnCurve(
        params,
        checkpoints,
        tuple(got["forget"]),
        tuple(got["control"]),
        tuple(floor_acc),
        n,
        lr,
        tuple(losses),
    )


def benign_relearn_curve(
    model: Model,
    forget: Concept,
    control: Sequence[QA],
    floor: Concept,
    *,
    params: str = "all",
    checkpoints: Sequence[int] = (0, 5, 10, 20),
    lr: float = 3e-5,
    batch_size: int = 8,
    window: int = 64,
    seed: int = 0,
    lora_rank: int = 8,
) -> RelearnCurve:
    """Benign relearning against steps (Hu et al. 2024, "Jogging the memory of unlearned LLMs through
    targeted relearning attacks"): fine-tune on public text *about* the concept that does not state the
    evaluated answers (the concept's text with every sentence holding one removed,
    ``analyses.behaviour.answer_free_text``) and score the concept's QA (``forget``) and ``control`` after
    each of ``checkpoints`` steps; the floor side fine-tunes the same way on as many tokens of the floor's
    answer-free text (its first ones; fewer only where it is shorter) and scores the floor's facts, so
    what the same amount of text teaches by itself is measured, not assumed."""
    from analyses.behaviour import answer_free_text, relearn_tokens
    from analyses.unlearn.batches import text_windows

    checkpoints = tuple(sorted(set(int(c) for c in checkpoints)))
    if not checkpoints or checkpoints[0] < 0 or checkpoints[-1] < 1:
        raise RelearnError(
            f"checkpoints {checkpoints} are not steps",
            "checkpoints are step counts from 0 (before training) up, with at least one step",
            "pass e.g. (0, 5, 10, 20)",
        )
    texts = {"forget": answer_free_text(forget), "floor": answer_free_text(floor)}
    missing = [k for k, t in texts.items() if not t]
    if missing or not forget.qa:
        raise RelearnError(
            f"benign relearning has no {' or '.join(missing) or 'forget'} text or questions to use",
            "it fine-tunes on each side's text without the answers and scores that side's questions",
            "give the concept and the floor background text (the bundled ones have it) and questions",
        )
    kw: dict[str, Any] = dict(lr=lr, batch_size=batch_size, seed=seed, lora_rank=lora_rank)
    kw["desc"] = f"benign relearn {params}"

    def windows_of(text: str, max_tokens: int | None = None):
        return lambda work: text_windows(work, [text], window, max_tokens)

    got, n, losses = _curve_on(
        model,
        windows_of(texts["forget"]),
        {"forget": forget.qa, "control": control},
        params,
        checkpoints,
        **kw,
    )
    floor_windows = windows_of(texts["floor"], relearn_tokens(model, forget))
    fl, _, _ = _curve_on(model, floor_windows, {"floor": floor.qa}, params, checkpoints, **kw)
    return RelearnCurve(
        params,
        checkpoints,
        tuple(got["forget"]),
        tuple(got["control"]),
        tuple(fl["floor"]),
        n,
        lr,
        tuple(losses),
        on="text",
    )
