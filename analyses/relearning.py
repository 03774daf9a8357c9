"""Relearning variants: which parameters the relearning attack may move, and recovery against steps.

Deeb & Roger (2024) relearn with full fine-tuning; an attacker with less access, or a defender asking how
shallow the suppression is, fine-tunes far fewer parameters. ``PARAMS`` names the choices:

- ``all``: every parameter (the audit's default ``fact_relearning``).
- ``norms``: only the normalisation weights (and biases) - a few thousand numbers that rescale features.
- ``biases``: only the bias vectors (models without biases, e.g. Llama-style ones, are refused).
- ``layer:K``: only block ``K``.
- ``lora``: a rank-``lora_rank`` update ``B A`` (``B`` zero at the start, ``A`` seeded, scaled by
  ``lora_alpha / lora_rank``; Hu et al. 2021) added to every linear weight of the blocks through a
  ``torch.nn.utils.parametrize`` parametrisation, the base weights frozen.

``relearn_curve`` fine-tunes on T and scores the held-out V, the control and (from a copy fine-tuned on
as many floor facts) the rest of the floor after each of ``checkpoints`` steps: recovery against steps,
net of what the same fine-tuning teaches facts never known. Every copy is a copy: the model passed in is
never modified.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from analyses.lora import attach_lora, block_linears
from probes.data import QA, Concept
from probes.errors import VestigeError
from probes.model import Model
from probes.qa import score_qa
from probes.results import Result

PARAMS = ("all", "norms", "biases", "layer:K", "lora")


class RelearnError(VestigeError):
    """A relearning variant cannot be set up on this model."""


def is_variant(params: str) -> bool:
    """Whether ``params`` names one of ``PARAMS`` (``layer:K`` with a non-negative integer K)."""
    return params in ("all", "norms", "biases", "lora") or (
        params.startswith("layer:") and params[len("layer:") :].isdigit()
    )


def select_parameters(
    work: Model, params: str, *, lora_rank: int = 8, lora_alpha: float = 16.0, seed: int = 0
) -> list[torch.nn.Parameter]:
    """Set ``work`` up for the variant ``params`` (one of ``PARAMS``; ``layer:K`` with a block index) and
    return the parameters that train; every other parameter of ``work`` is frozen. ``lora`` adds its
    parametrisations to ``work`` (a copy: its weights stay the base ones, the update lives in ``B A``)."""
    named = list(work.hf.named_parameters())
    for _, p in named:
        p.requires_grad_(False)
    prefix = work._paths["layers"] + "."
    if params == "all":
        chosen = [p for _, p in named]
    elif params == "norms":
        norms = [m for m in work.hf.modules() if "norm" in type(m).__name__.lower()]
        chosen = [p for m in norms for p in m.parameters(recurse=False)]
    elif params == "biases":
        chosen = [p for n, p in named if n.endswith(".bias")]
    elif params.startswith("layer:"):
        try:
            k = int(params.split(":", 1)[1])
        except ValueError:
            k = -1
        if not 0 <= k < work.cfg.n_layers:
            raise RelearnError(
                f"relearning variant {params!r} names no block",
                f"the model has blocks 0 to {work.cfg.n_layers - 1}",
                f"use layer:K with K in [0, {work.cfg.n_layers})",
            )
        chosen = [p for n, p in named if n.startswith(f"{prefix}{k}.")]
    elif params == "lora":
        chosen = attach_lora(block_linears(work), rank=lora_rank, alpha=lora_alpha, seed=seed)
    else:
        raise RelearnError(
            f"unknown relearning variant {params!r}",
            f"the variants are {PARAMS}",
            "pick one of them (layer:K with a block index)",
        )
    if not chosen:
        raise RelearnError(
            f"relearning variant {params!r} selects no parameter of {work.name!r}",
            "the model has no such parameters (e.g. a Llama-style model has no biases)",
            f"pick another of {PARAMS}",
        )
    for p in chosen:
        p.requires_grad_(True)
    return chosen


@dataclass(frozen=True)
class RelearnCurve(Result):
    """Accuracy after each checkpoint step of fine-tuning on T: ``forget`` (held-out V), ``control`` (the
    same copy), ``floor`` (a copy fine-tuned on as many floor facts, scored on the rest of the floor);
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
    """Fine-tune ``model`` on ``examples_of(work)`` (``analyses.behaviour.finetuned``: a copy for ``all``,
    lean and restored afterwards for the other ``params``) and score each of ``tests`` at every checkpoint
    (step 0: before any step)."""
    from analyses.behaviour import finetuned

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
    ``checkpoints`` AdamW steps; the floor side fine-tunes a copy on a seeded sample of ``len(trained)``
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
    each of ``checkpoints`` steps; the floor side fine-tunes the same way on the floor's answer-free text
    and scores the floor's facts, so what the text teaches by itself is measured, not assumed."""
    from analyses.behaviour import answer_free_text
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

    def windows_of(text: str):
        return lambda work: text_windows(work, [text], window)

    got, n, losses = _curve_on(
        model,
        windows_of(texts["forget"]),
        {"forget": forget.qa, "control": control},
        params,
        checkpoints,
        **kw,
    )
    fl, _, _ = _curve_on(model, windows_of(texts["floor"]), {"floor": floor.qa}, params, checkpoints, **kw)
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
