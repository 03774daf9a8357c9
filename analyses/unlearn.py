"""Unlearning baselines that produce the models vestige audits (REFERENCES.md section 6).

Methods: ``ga`` (gradient ascent), ``gd`` (gradient difference), ``npo`` and ``npo_kl`` (negative
preference optimisation, Zhang et al. 2024), ``dpo_idk`` (DPO with "I don't know" preferred, TOFU),
``rmu`` (representation misdirection, WMDP, Li et al. 2024) and ``needle`` (ablate or perturb only the located
concept vectors, the ConceptVectors oracle, Hong et al. 2024).

Conventions (open-unlearning / TOFU): the NLL of a sequence is **summed** over its target tokens and
averaged over the batch; beta = 0.1; the frozen reference model is the caller's base model itself (never
trained, never copied): ``unlearn`` trains one ``model.copy()`` and reads the reference under ``no_grad``.
Dropout stays off (eval mode) so a step is a deterministic function of the seed.

Forget data: the concept's ``text`` cut into token windows (loss on every token after the first) and its QA
as prompt + answer (loss on the answer tokens). Retain data: the concept's ``unrelated_qa`` and, when given,
other concepts' text windows.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from probes.data import QA, Concept
from probes.errors import VestigeError
from probes.model import Model
from probes.qa import answer_ids, score_qa
from probes.results import Result, write_json

METHODS = ("ga", "gd", "npo", "npo_kl", "dpo_idk", "rmu", "needle")
IDK_ANSWERS = (
    "I don't know.",
    "I'm not sure.",
    "I have no idea.",
    "I can't answer that.",
    "That is unknown to me.",
)


class UnlearnError(VestigeError):
    """An unlearning run cannot start with the given method, data or parameters."""


# ---- configuration -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class UnlearnConfig(Result):
    """Every hyper-parameter of a run. ``None`` fields take the method's default (``METHOD_DEFAULTS``)."""

    method: str = "ga"
    steps: int | None = None  # optimizer steps (the budget)
    lr: float | None = None
    batch_size: int = 8  # forget (and retain) sequences per step
    window: int = 64  # tokens per forget-text window
    warmup_steps: int = 2
    warmup_start: float = 0.3  # first step's LR as a fraction of ``lr`` (never zero)
    schedule: str = "constant"  # after warm-up: "constant" or "linear" (decays to 10% of lr)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    trainable: str | None = None  # "all" or "mlp"
    layers: tuple[int, int] | None = None  # [start, stop) blocks whose parameters train; None = all
    stop_fraction: float | None = 0.25  # stop once forget accuracy <= this fraction of its start
    check_every: int = 5  # steps between early-stop checks
    seed: int = 0
    beta: float = 0.1  # NPO / DPO temperature
    retain_weight: float = 1.0  # GD's c; RMU's alpha is ``rmu_alpha``
    kl_weight: float = 1.0  # NPO+KL
    rmu_layer: int | None = None  # None = n_layers // 3
    rmu_c: float = 4.0  # steering coefficient as a multiple of the layer's mean activation norm
    rmu_alpha: float = 100.0
    rmu_train_layers: int = 3  # MLPs of layers [rmu_layer - n + 1, rmu_layer] train
    needle_vectors: tuple[tuple[int, int], ...] = ()  # (layer, neuron); () = locate them (see needle_search)
    needle_mode: str = "zero"  # "zero" (ablate) or "noise" (add Gaussian noise)
    needle_scale: float = 1.0  # noise norm as a multiple of the vector's norm
    needle_step: int = 20  # located vectors added per search step
    needle_max: int = 320  # at most this many located vectors are edited
    idk_answers: tuple[str, ...] = IDK_ANSWERS

    def resolved(self) -> UnlearnConfig:
        """This config with the method's defaults filled in."""
        if self.method not in METHODS:
            raise UnlearnError(
                f"unknown unlearning method {self.method!r}",
                None,
                f"use one of {', '.join(METHODS)}",
            )
        defaults = METHOD_DEFAULTS[self.method]
        fill = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        return dataclasses.replace(self, **fill)


# Defaults chosen on SmolLM2-135M for a run of at most a few minutes on 2 CPU cores; measured in
# data/unlearn/table.md (scripts/unlearn_table.py): 19 of 21 concept x method runs meet the criterion,
# each in 6-205 s. gd at lr 2e-5 left Einstein at 0.33 after 30 steps (3e-5: 0.22 in 25); rmu with
# alpha 10 halved unrelated accuracy on all three concepts (alpha 100: 1.0, 1.0, 0.67; alpha 1000 forgot
# too slowly: Harry Potter 0.78 after 30 steps).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "ga": dict(steps=30, lr=2e-5, trainable="mlp"),
    "gd": dict(steps=30, lr=3e-5, trainable="mlp"),
    "npo": dict(steps=30, lr=2e-5, trainable="mlp"),
    "npo_kl": dict(steps=30, lr=2e-5, trainable="mlp"),
    "dpo_idk": dict(steps=30, lr=2e-5, trainable="mlp"),
    "rmu": dict(steps=30, lr=3e-4, trainable="mlp"),
    "needle": dict(steps=0, lr=0.0, trainable="mlp"),
}


# ---- batches -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    """Token ids of one training sequence; the loss reads its last ``n_target`` tokens."""

    ids: tuple[int, ...]
    n_target: int


@dataclass
class Batch:
    """A right-padded batch; ``labels`` is -100 except at target tokens (HF convention, unshifted)."""

    ids: Int[torch.Tensor, "batch pos"]
    mask: Int[torch.Tensor, "batch pos"]
    labels: Int[torch.Tensor, "batch pos"]


def text_windows(model: Model, texts: Sequence[str], window: int) -> list[Example]:
    """Cut the token stream of ``texts`` into windows of ``window`` tokens (a tail shorter than a quarter
    window is dropped unless it is all there is); every token after the first is a target."""
    stream: list[int] = []
    for t in texts:
        stream += model.tokenizer(t.strip() + "\n", add_special_tokens=True)["input_ids"]
    out = []
    for start in range(0, len(stream), window):
        chunk = stream[start : start + window]
        if len(chunk) >= 2 and (len(chunk) >= window // 4 or not out):
            out.append(Example(tuple(chunk), len(chunk) - 1))
    return out


def qa_examples(model: Model, items: Sequence[QA], answers: Sequence[str] | None = None) -> list[Example]:
    """Prompt + answer sequences with the answer tokens as targets (``answers`` replaces the QA answers,
    e.g. "I don't know" for DPO's preferred side)."""
    out = []
    for i, q in enumerate(items):
        p, a = answer_ids(model, q.prompt, q.answer if answers is None else answers[i])
        out.append(Example(tuple(p + a), len(a)))
    return out


def make_batch(model: Model, examples: Sequence[Example]) -> Batch:
    ids, mask = model.pad([list(e.ids) for e in examples], padding_side="right")
    labels = torch.full_like(ids, -100)
    for i, e in enumerate(examples):
        n = len(e.ids)
        labels[i, n - e.n_target : n] = ids[i, n - e.n_target : n]
    return Batch(ids, mask, labels)


# ---- losses (REFERENCES.md section 6) -----------------------------------------------------------------
def _logits(model: Model, batch: Batch) -> Float[torch.Tensor, "batch pos d_vocab"]:
    return model.forward(batch.ids, batch.mask).logits.float()


def sequence_nll(
    model: Model, batch: Batch, logits: torch.Tensor | None = None
) -> Float[torch.Tensor, " batch"]:
    """NLL of each sequence summed over its target tokens."""
    logits = _logits(model, batch) if logits is None else logits
    tgt = batch.labels[:, 1:]
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), tgt.clamp(min=0), reduction="none")
    return (ce * (tgt != -100)).sum(-1)


def _ref_nll(ref: Model, batch: Batch) -> torch.Tensor:
    with torch.no_grad():
        return sequence_nll(ref, batch)


def ga_loss(model: Model, forget: Batch) -> torch.Tensor:
    """Gradient ascent: minimise -NLL(forget)."""
    return -sequence_nll(model, forget).mean()


def gd_loss(model: Model, forget: Batch, retain: Batch, retain_weight: float = 1.0) -> torch.Tensor:
    """Gradient difference: -NLL(forget) + c * NLL(retain)."""
    return -sequence_nll(model, forget).mean() + retain_weight * sequence_nll(model, retain).mean()


def npo_loss(model: Model, ref: Model, forget: Batch, beta: float = 0.1) -> torch.Tensor:
    """NPO: -(2/beta) * mean log sigmoid(beta * (NLL_theta(x_f) - NLL_ref(x_f)))."""
    ratio = sequence_nll(model, forget) - _ref_nll(ref, forget)
    return -(2.0 / beta) * F.logsigmoid(beta * ratio).mean()


def retain_kl(model: Model, ref: Model, retain: Batch) -> torch.Tensor:
    """KL(p_ref || p_theta) of the next-token distributions, summed over the target tokens of each retain
    sequence (the same positions its NLL sums over) and averaged over the batch."""
    logp = torch.log_softmax(_logits(model, retain)[:, :-1], -1)
    with torch.no_grad():
        logq = torch.log_softmax(_logits(ref, retain)[:, :-1], -1)
    kl = (logq.exp() * (logq - logp)).sum(-1)
    return (kl * (retain.labels[:, 1:] != -100)).sum(-1).mean()


def npo_kl_loss(
    model: Model, ref: Model, forget: Batch, retain: Batch, beta: float = 0.1, kl_weight: float = 1.0
) -> torch.Tensor:
    """NPO + kl_weight * KL(p_ref || p_theta) on the retain batch."""
    return npo_loss(model, ref, forget, beta) + kl_weight * retain_kl(model, ref, retain)


def dpo_loss(model: Model, ref: Model, preferred: Batch, rejected: Batch, beta: float = 0.1) -> torch.Tensor:
    """DPO: -(2/beta) * mean log sigmoid(beta * ((lp_theta(w) - lp_ref(w)) - (lp_theta(l) - lp_ref(l))))
    with lp = -NLL; for DPO-IDK ``preferred`` holds "I don't know" answers, ``rejected`` the true ones
    (the 2/beta scale is open-unlearning's)."""
    win = -(sequence_nll(model, preferred) - _ref_nll(ref, preferred))
    lose = -(sequence_nll(model, rejected) - _ref_nll(ref, rejected))
    return -(2.0 / beta) * F.logsigmoid(beta * (win - lose)).mean()


def hidden_at(model: Model, batch: Batch, layer: int) -> Float[torch.Tensor, "batch pos d_model"]:
    """The residual stream after block ``layer`` (HF ``hidden_states[layer + 1]``)."""
    out = model.forward(batch.ids, batch.mask, output_hidden_states=True)
    return out.hidden_states[layer + 1].float()


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


# ---- needle ------------------------------------------------------------------------------------------
def needle_edit(
    model: Model,
    vectors: Sequence[tuple[int, int]],
    *,
    mode: str = "noise",
    scale: float = 1.0,
    seed: int = 0,
) -> None:
    """Perturb (``noise``: add Gaussian noise whose norm is ``scale`` times the vector's norm) or ablate
    (``zero``) the value vectors ``(layer, neuron)`` of ``model`` in place; nothing else changes."""
    if not vectors:
        raise UnlearnError(
            "needle needs the concept vectors to edit",
            "no (layer, neuron) pairs were given",
            "locate them first (vestige concepts) and pass needle_vectors=((layer, neuron), ...)",
        )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer, neuron in vectors:
            if not (0 <= layer < model.cfg.n_layers and 0 <= neuron < model.cfg.d_mlp):
                raise UnlearnError(
                    f"concept vector ({layer}, {neuron}) does not exist",
                    f"the model has {model.cfg.n_layers} layers of {model.cfg.d_mlp} neurons",
                    "pass (layer, neuron) pairs from a concept location on this model",
                )
            row = model.W_out(layer)[neuron]
            if mode == "zero":
                row.zero_()
            elif mode == "noise":
                noise = torch.randn(row.shape, generator=g).to(row)
                row.add_(noise * (scale * row.norm() / noise.norm()))
            else:
                raise UnlearnError(f"unknown needle mode {mode!r}", None, "use 'noise' or 'zero'")


def needle_search(
    ref: Model,
    work: Model,
    concept: Concept,
    cfg: UnlearnConfig,
    before: QAStats,
    retain_qa: Sequence[QA],
    checks: list[dict[str, float]],
) -> tuple[int, bool, tuple[tuple[int, int], ...]]:
    """Needle without given vectors: rank ``cfg.needle_max`` value vectors with ``probes.concepts.locate``
    on ``ref`` (its specificity penalty reads the concept's unrelated QA plus ``retain_qa``), then edit them
    ``cfg.needle_step`` at a time, best first, until forget accuracy reaches ``cfg.stop_fraction`` of its
    start (the early stop the trained methods use). Returns (search steps, stopped early, edited vectors).

    Measured on SmolLM2 (Harry Potter, 18 QA): zeroing the top 10 vectors leaves accuracy 0.78, the top
    120 leaves 0.33 and the top 240 leaves 0.22 with unrelated accuracy unchanged; noise of the vector's
    own norm (the paper's scale 1.0) is weaker per vector and costs more unrelated accuracy."""
    from probes.concepts import locate

    unrelated = tuple(concept.unrelated_qa) + tuple(retain_qa)
    ranked = locate(ref, concept, n=cfg.needle_max, unrelated=unrelated or None).refs()
    if not ranked:
        raise UnlearnError(
            f"needle found no concept vector for {concept.concept!r}",
            "no value vector has a positive specific effect on the concept's answers",
            "check the concept's QA (does the model answer them?) or pass --needle-vectors",
        )
    target = None
    if cfg.stop_fraction is not None and not math.isnan(before.forget_accuracy):
        target = cfg.stop_fraction * before.forget_accuracy
    done, step = 0, 0
    while done < len(ranked):
        step += 1
        batch = ranked[done : done + cfg.needle_step]
        needle_edit(work, batch, mode=cfg.needle_mode, scale=cfg.needle_scale, seed=cfg.seed + step)
        done += len(batch)
        if target is not None:
            acc = score_qa(work, concept.qa).accuracy
            checks.append({"step": step, "vectors": done, "forget_accuracy": acc})
            if acc <= target + 1e-9:
                return step, done < len(ranked), tuple(ranked[:done])
    return step, False, tuple(ranked[:done])


# ---- the training loop -------------------------------------------------------------------------------
def trainable_parameters(model: Model, trainable: str, layers: tuple[int, int] | None) -> list[str]:
    """Names of the parameters that train: ``all`` or ``mlp`` (MLP blocks only), within ``layers``."""
    if trainable not in ("all", "mlp"):
        raise UnlearnError(f"unknown trainable choice {trainable!r}", None, "use 'all' or 'mlp'")
    prefix = model._paths["layers"] + "."
    names = []
    for raw, _ in model.hf.named_parameters():
        name = raw.replace("._original_component", "")  # the bridge's in-place wrappers
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


class _Sampler:
    """Seeded epochs over a pool of examples, ``k`` at a time."""

    def __init__(self, pool: Sequence[Example], k: int, g: torch.Generator):
        self.pool, self.k, self.g, self.order = list(pool), min(k, len(pool)), g, []

    def __call__(self) -> list[Example]:
        if len(self.order) < self.k:
            self.order += torch.randperm(len(self.pool), generator=self.g).tolist()
        picked, self.order = self.order[: self.k], self.order[self.k :]
        return [self.pool[i] for i in picked]


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

    def passes(self, forget_fraction: float = 0.25, unrelated_fraction: float = 0.8) -> bool:
        """The issue's criterion: forget accuracy at most 25% of its start, unrelated at least 80%."""
        return (
            self.after.forget_accuracy <= forget_fraction * self.before.forget_accuracy + 1e-9
            and self.after.unrelated_accuracy >= unrelated_fraction * self.before.unrelated_accuracy - 1e-9
        )

    def save(self, out: str | Path) -> Path:
        """HF checkpoint (safetensors + tokenizer) in ``out`` plus ``out/unlearn.json``."""
        out = Path(out)
        self.model.save(out)
        write_json(out / "unlearn.json", self.to_dict())
        return out


def _forget_pool(model: Model, concept: Concept, cfg: UnlearnConfig) -> list[Example]:
    return text_windows(model, concept.text, cfg.window) + qa_examples(model, concept.qa)


def _retain_pool(model: Model, concept: Concept, retain_texts: Sequence[str], cfg: UnlearnConfig):
    return qa_examples(model, concept.unrelated_qa) + text_windows(model, retain_texts, cfg.window)


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
    cfg = (config or UnlearnConfig()).resolved()
    t0 = time.perf_counter()
    before = evaluate_before or evaluate(model, concept)
    work = model.copy()
    work.hf.eval()
    torch.manual_seed(cfg.seed)
    losses: list[float] = []
    checks: list[dict[str, float]] = []
    stopped, steps = False, 0
    if cfg.method == "needle" and cfg.needle_vectors:
        needle_edit(work, cfg.needle_vectors, mode=cfg.needle_mode, scale=cfg.needle_scale, seed=cfg.seed)
    elif cfg.method == "needle":
        steps, stopped, edited = needle_search(model, work, concept, cfg, before, retain_qa, checks)
        cfg = dataclasses.replace(cfg, needle_vectors=edited)
    else:
        step_loss, names = _setup(model, work, concept, cfg, retain_texts)
        steps, stopped = _train(work, concept, cfg, names, step_loss, before, losses, checks, progress)
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
        loss_curve=tuple(losses),
        checks=tuple(checks),
        stopped_early=stopped,
        model=work,
    )


def _setup(
    ref: Model, work: Model, concept: Concept, cfg: UnlearnConfig, retain_texts: Sequence[str]
) -> tuple[Callable[[], torch.Tensor], list[str]]:
    """The per-step loss closure of ``cfg.method`` and the names of the parameters it trains."""
    g = torch.Generator().manual_seed(cfg.seed)
    forget_pool = _forget_pool(work, concept, cfg)
    retain_pool = _retain_pool(work, concept, retain_texts, cfg)
    needs_retain = cfg.method in ("gd", "npo_kl", "rmu")
    if needs_retain and not retain_pool:
        raise UnlearnError(
            f"{cfg.method} needs retain data",
            f"concept {concept.concept!r} has no unrelated_qa and no retain text was given",
            "add unrelated_qa to the concept file or pass other concepts' text",
        )
    forget = _Sampler(forget_pool, cfg.batch_size, g)
    retain = _Sampler(retain_pool, cfg.batch_size, g) if retain_pool else None
    names = trainable_parameters(work, cfg.trainable, cfg.layers)
    m = cfg.method
    if m == "ga":
        return (lambda: ga_loss(work, make_batch(work, forget()))), names
    if m == "gd":
        return (
            lambda: gd_loss(work, make_batch(work, forget()), make_batch(work, retain()), cfg.retain_weight)
        ), names
    if m == "npo":
        return (lambda: npo_loss(work, ref, make_batch(work, forget()), cfg.beta)), names
    if m == "npo_kl":
        return (
            lambda: npo_kl_loss(
                work, ref, make_batch(work, forget()), make_batch(work, retain()), cfg.beta, cfg.kl_weight
            )
        ), names
    if m == "dpo_idk":
        idk = [cfg.idk_answers[i % len(cfg.idk_answers)] for i in range(len(concept.qa))]
        pairs = list(zip(qa_examples(work, concept.qa, idk), qa_examples(work, concept.qa), strict=True))
        sampler = _Sampler(range(len(pairs)), cfg.batch_size, g)  # type: ignore[arg-type]

        def dpo_step() -> torch.Tensor:
            picked = [pairs[i] for i in sampler()]
            w = make_batch(work, [p[0] for p in picked])
            lo = make_batch(work, [p[1] for p in picked])
            return dpo_loss(work, ref, w, lo, cfg.beta)

        return dpo_step, names
    # rmu
    layer = cfg.rmu_layer if cfg.rmu_layer is not None else work.cfg.n_layers // 3
    lo = max(0, layer - cfg.rmu_train_layers + 1)
    names = trainable_parameters(work, "mlp", (lo, layer + 1))
    with torch.no_grad():
        probe = make_batch(work, forget_pool[: cfg.batch_size])
        h = hidden_at(ref, probe, layer)
        norm = (h.norm(dim=-1) * probe.mask).sum() / probe.mask.sum()
    u = torch.rand(work.cfg.d_model, generator=g)
    control = (cfg.rmu_c * norm * u / u.norm()).to(work.device)
    return (
        lambda: rmu_loss(
            work, ref, make_batch(work, forget()), make_batch(work, retain()), layer, control, cfg.rmu_alpha
        )
    ), names


def _train(
    work: Model,
    concept: Concept,
    cfg: UnlearnConfig,
    names: list[str],
    step_loss: Callable[[], torch.Tensor],
    before: QAStats,
    losses: list[float],
    checks: list[dict[str, float]],
    progress: bool,
) -> tuple[int, bool]:
    """AdamW over the ``names`` parameters, warm-up + schedule, gradient clipping, optional early stop."""
    chosen = set(names)
    params = []
    for name, p in work.hf.named_parameters():
        p.requires_grad_(name in chosen)
        if name in chosen:
            params.append(p)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    target = None
    if cfg.stop_fraction is not None and not math.isnan(before.forget_accuracy):
        target = cfg.stop_fraction * before.forget_accuracy
    step = 0
    for step in tqdm(range(1, cfg.steps + 1), desc=cfg.method, disable=not progress, leave=False):
        loss = step_loss()
        if not torch.isfinite(loss):
            raise UnlearnError(
                f"{cfg.method} loss became {loss.item()} at step {step}",
                "the learning rate is too high for this model",
                "lower --lr",
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if target is not None and (step % cfg.check_every == 0 or step == cfg.steps):
            acc = score_qa(work, concept.qa).accuracy
            checks.append({"step": step, "forget_accuracy": acc})
            if acc <= target + 1e-9:
                return step, step < cfg.steps
    return step, False


def retain_qa_for(concepts: Sequence[Concept], concept: Concept, limit: int = 40) -> list[QA]:
    """The first question of up to ``limit`` other concepts of the same file (what ``needle`` spares)."""
    others = [c for c in concepts if c.concept.lower() != concept.concept.lower() and c.qa]
    return [c.qa[0] for c in others[:limit]]


def retain_texts_for(concepts: Sequence[Concept], concept: Concept, limit: int = 8) -> list[str]:
    """Text of up to ``limit`` other concepts of the same file (the retain corpus)."""
    others = [c for c in concepts if c.concept.lower() != concept.concept.lower() and c.text]
    return [t for c in others[:limit] for t in c.text]
