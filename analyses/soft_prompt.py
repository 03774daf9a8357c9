"""The soft-prompt attack: a few input embeddings optimised by gradient to bring answers back.

An embedding-space attack (Schwinn et al. 2024, "Soft prompt threats"; the optimised-attack item of
Lynch et al. 2024) searches the continuous input space instead of the discrete prompts a person would
write: ``n_tokens`` free vectors placed before the prompt are fitted with Adam to raise the answers'
log-probability on some facts (the training split), with every weight of the model frozen. What counts is
**transfer**: the fitted prompt is scored on *other* facts, which it never saw. A prompt that only
memorised its training answers lifts nothing elsewhere; one that undoes a suppression lifts every fact
the suppression hides. Fitted on facts the model never knew (the floor) and scored on other such facts,
it shows what the attack can teach by itself (in the audit: ``analyses.audit.traces.soft_prompt_values``).

Mechanics: the prompt is the text ``marker * n_tokens + "\\n"`` before each question, where ``marker`` is
a string the tokenizer turns into one token id on its own (checked per tokenizer); a forward hook on the
input embedding replaces the first run of ``n_tokens`` such ids in every row by the fitted vectors. It
works through every path that embeds token ids (greedy generation with a KV cache, teacher-forced
scoring, padding on either side), and the model's weights are never written.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Float

from probes.data import QA
from probes.errors import VestigeError
from probes.model import Model
from probes.qa import QAScores, score_qa
from probes.results import Result

# strings tried in turn as the placeholder of one soft token (then the tokenizer's unknown token): the first
# that stays one token id, repeated and followed by a newline and a prompt, and is not the padding id, is used
MARKERS = ("\u00a7", " *", " \u00a7")


class SoftPromptError(VestigeError):
    """A soft prompt cannot be fitted or placed."""


@dataclass(frozen=True)
class SoftPromptConfig(Result):
    """``n_tokens`` vectors, fitted for ``steps`` Adam steps at ``lr`` on batches of ``batch_size`` facts
    (seeded), initialised from the input embeddings of ``init_text``'s tokens (cycled to ``n_tokens``)."""

    n_tokens: int = 8
    steps: int = 40
    lr: float = 3e-3
    batch_size: int = 8
    init_text: str = "Here is a true fact:"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_tokens < 1:
            raise ValueError(f"SoftPromptConfig.n_tokens is {self.n_tokens}: fit at least one vector (8)")
        if self.steps < 0 or self.lr <= 0 or self.batch_size < 1:
            raise ValueError(
                f"SoftPromptConfig: steps {self.steps}, lr {self.lr}, batch_size {self.batch_size}: steps are "
                "at least 0, the learning rate positive and a batch at least one fact"
            )
        if not self.init_text.strip():
            raise ValueError("SoftPromptConfig.init_text is empty: the vectors start from its embeddings")


@dataclass(frozen=True)
class SoftPrompt(Result):
    """Fitted vectors (``vectors``: n_tokens x d_model, fp32, on the CPU), the placeholder they replace,
    and the loss (mean summed answer NLL of the batch) before each step."""

    vectors: Float[torch.Tensor, "n_tokens d_model"] = field(repr=False)
    marker: str
    marker_id: int
    losses: tuple[float, ...]
    config: SoftPromptConfig

    @property
    def n_tokens(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def prefix(self) -> str:
        """The text placed before each prompt; its ``n_tokens`` marker tokens carry the vectors."""
        return self.marker * self.n_tokens + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "marker": self.marker,
            "n_tokens": self.n_tokens,
            "losses": list(self.losses),
            "vector_norms": [float(x) for x in self.vectors.norm(dim=-1)],
            "config": self.config.to_dict(),
        }


def find_marker(model: Model, n_tokens: int, prompts: Sequence[str] = ("The answer is",)) -> tuple[str, int]:
    """The first of ``MARKERS`` that ``model``'s tokenizer keeps as ``n_tokens`` copies of one id before
    each of ``prompts`` (after a newline), with no other copy of that id in the prompt; its id."""
    tok = model.tokenizer
    unk = getattr(tok, "unk_token", None)
    for marker in (*MARKERS, *([unk] if unk else [])):
        ids = tok(marker, add_special_tokens=False)["input_ids"]
        if len(ids) != 1 or ids[0] == tok.pad_token_id:
            continue
        t = ids[0]
        ok = True
        for p in prompts:
            full = tok(marker * n_tokens + "\n" + p, add_special_tokens=True)["input_ids"]
            runs = _first_run(torch.tensor([full]), t, n_tokens)
            if runs[0] < 0 or full.count(t) != n_tokens:
                ok = False
                break
        if ok:
            return marker, t
    raise SoftPromptError(
        f"model {model.name!r}: no placeholder for the soft prompt",
        f"none of {MARKERS} stays one token id when repeated {n_tokens} times before these prompts, or the "
        "prompts contain that token themselves",
        "add a string that this tokenizer keeps as one token to analyses.soft_prompt.MARKERS",
    )


def _first_run(ids: torch.Tensor, token: int, n: int) -> torch.Tensor:
    """Per row, the start of the first run of ``n`` consecutive ``token`` ids (-1 where there is none)."""
    if ids.shape[1] < n:
        return torch.full((ids.shape[0],), -1, dtype=torch.long, device=ids.device)
    windows = (ids == token).unfold(1, n, 1).all(-1)  # (batch, pos - n + 1)
    start = windows.to(torch.int8).argmax(1)
    return torch.where(windows.any(1), start, torch.full_like(start, -1))


@contextmanager
def soft_prompted(
    model: Model, vectors: Float[torch.Tensor, "n_tokens d_model"], marker_id: int
) -> Iterator[None]:
    """While active, the input embedding of ``model`` puts ``vectors`` in place of the first run of
    ``len(vectors)`` ``marker_id`` tokens of every row (rows without such a run, and the one-token steps
    of cached decoding, are left alone). ``vectors`` may require grad: the replacement is differentiable."""
    n = int(vectors.shape[0])
    emb = model.hf.get_input_embeddings()

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor | None:
        ids = args[0] if args else kwargs.get("input", kwargs.get("input_ids"))
        if ids is None or ids.dim() != 2 or ids.shape[1] <= n:
            return None
        start = _first_run(ids, marker_id, n)
        rows = (start >= 0).nonzero().flatten()
        if rows.numel() == 0:
            return None
        pos = start[rows, None] + torch.arange(n, device=ids.device)
        out = output.clone()
        out[rows[:, None], pos] = vectors.to(device=output.device, dtype=output.dtype)
        return out

    handle = emb.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def fit_soft_prompt(
    model: Model, facts: Sequence[QA], config: SoftPromptConfig | None = None, *, progress: bool = False
) -> SoftPrompt:
    """Fit ``config.n_tokens`` input vectors that raise the answers of ``facts`` (the summed answer NLL,
    averaged over a seeded batch) with every weight of ``model`` frozen; ``model`` is left unchanged
    (its ``requires_grad`` flags are restored, no gradient is left on it)."""
    from analyses.training import activation_checkpointing, train
    from analyses.unlearn.batches import make_batch, qa_examples, sequence_nll

    cfg = config or SoftPromptConfig()
    if not facts:
        raise SoftPromptError(
            "no facts to fit the soft prompt on",
            "the soft prompt is fitted on some facts and scored on others; it was given none",
            "pass the facts the unlearning run trained on, or a concept with at least 2 QA items",
        )
    marker, t = find_marker(model, cfg.n_tokens, [q.prompt for q in facts])
    prefix = marker * cfg.n_tokens + "\n"
    emb = model.hf.get_input_embeddings()
    init_ids = model.tokenizer(cfg.init_text, add_special_tokens=False)["input_ids"]
    init_ids = [init_ids[i % len(init_ids)] for i in range(cfg.n_tokens)]
    with torch.no_grad():
        start = emb.weight[torch.tensor(init_ids, device=emb.weight.device)].float().cpu()
    vectors = torch.nn.Parameter(start.clone().to(model.device))
    examples = qa_examples(model, [replace(q, prompt=prefix + q.prompt) for q in facts])
    gen = torch.Generator().manual_seed(cfg.seed)
    was_training = model.hf.training
    losses: list[float] = []
    try:
        model.hf.train(False)

        def step_loss(step: int) -> torch.Tensor:
            pick = torch.randperm(len(examples), generator=gen)[: cfg.batch_size].tolist()
            # the same gradient, one block's activations at a time (the forward only: see finetuned)
            with soft_prompted(model, vectors, t), activation_checkpointing(model.hf):
                loss = sequence_nll(model, make_batch(model, [examples[i] for i in pick])).mean()
            losses.append(float(loss.detach()))
            return loss

        if cfg.steps:
            with model.frozen():
                train([vectors], step_loss, cfg.steps, lr=cfg.lr, desc="soft prompt", progress=progress)
    finally:
        model.hf.train(was_training)
    return SoftPrompt(vectors.detach().float().cpu(), marker, t, tuple(losses), cfg)


def soft_prompt_scores(
    model: Model, prompt: SoftPrompt, items: Sequence[QA], *, batch_size: int = 16
) -> QAScores:
    """Greedy accuracy and answer log-probability of ``items`` with ``prompt`` before each question
    (``QAScores.prompts`` hold the marker text that carries the vectors)."""
    with soft_prompted(model, prompt.vectors, prompt.marker_id):
        return score_qa(model, items, prefix=prompt.prefix, batch_size=batch_size)
