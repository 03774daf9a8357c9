"""Training data of unlearning: token windows of the forget text, prompt + answer sequences, right-padded
batches, a seeded sampler, and the two model readings every loss is built from (the summed NLL of each
sequence, and the residual stream after a block).

Conventions (open-unlearning / TOFU): the NLL of a sequence is **summed** over its target tokens and
averaged over the batch by the losses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int

from probes.data import QA
from probes.model import Model
from probes.qa import answer_ids


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


def token_stream(model: Model, texts: Sequence[str]) -> list[int]:
    """The tokens of ``texts`` one after the other, each text stripped and ended by a newline: what
    ``text_windows`` cuts into windows."""
    stream: list[int] = []
    for t in texts:
        stream += model.tokenizer(t.strip() + "\n", add_special_tokens=True)["input_ids"]
    return stream


def text_windows(
    model: Model, texts: Sequence[str], window: int, max_tokens: int | None = None
) -> list[Example]:
    """Cut the token stream of ``texts`` (its first ``max_tokens`` tokens, when given) into windows of
    ``window`` tokens (a tail shorter than a quarter window is dropped unless it is all there is); every
    token after the first is a target."""
    stream = token_stream(model, texts)
    if max_tokens is not None:
        stream = stream[:max_tokens]
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


class Sampler:
    """Seeded epochs over a pool of items, ``k`` at a time."""

    def __init__(self, pool: Sequence, k: int, g: torch.Generator):
        self.pool, self.k, self.g, self.order = list(pool), min(k, len(pool)), g, []

    def __call__(self) -> list:
        if len(self.order) < self.k:
            self.order += torch.randperm(len(self.pool), generator=self.g).tolist()
        picked, self.order = self.order[: self.k], self.order[self.k :]
        return [self.pool[i] for i in picked]


def logits_of(model: Model, batch: Batch) -> Float[torch.Tensor, "batch pos d_vocab"]:
    return model.forward(batch.ids, batch.mask).logits.float()


# the output head and its cross-entropy run over at most this many bytes of float32 logits at a time, each
# piece recomputed in the backward pass: the vocabulary-sized logits of a whole training batch never exist
LOGIT_CHUNK_BYTES = 8 * 2**20


def sequence_nll(
    model: Model, batch: Batch, logits: torch.Tensor | None = None
) -> Float[torch.Tensor, " batch"]:
    """NLL of each sequence summed over its target tokens. Without ``logits``, only the positions that
    predict a target go through the output head (``Model.unembed`` of those rows of ``Model.final_hidden``),
    in pieces of at most ``LOGIT_CHUNK_BYTES`` of logits, each checkpointed when gradients are on (its
    backward recomputes its logits): the same numbers as the full forward's logits there (closer to float64,
    as the log-softmax runs over contiguous classes), without holding the vocabulary-sized logits, their
    log-softmax and their gradient for every position at once (on SmolLM2, 196 KB per position each)."""
    tgt = batch.labels[:, 1:]
    if logits is not None:
        ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), tgt.clamp(min=0), reduction="none")
        return (ce * (tgt != -100)).sum(-1)
    hidden = model.final_hidden(batch.ids, batch.mask)[:, :-1]
    tgt = tgt.to(hidden.device)  # a dispatched model ends on another device than its input
    rows, cols = (tgt != -100).nonzero(as_tuple=True)
    ce = target_nll(model, hidden[rows, cols], tgt[rows, cols])
    return ce.new_zeros(tgt.shape[0]).index_add(0, rows, ce)


def target_nll(
    model: Model, hidden: Float[torch.Tensor, "n d_model"], targets: Int[torch.Tensor, " n"]
) -> Float[torch.Tensor, " n"]:
    """``-log p(target)`` of each final hidden state (float32), through the output head in pieces of at most
    ``LOGIT_CHUNK_BYTES`` of logits; with gradients on, each piece is checkpointed, so the backward pass
    holds one piece's logits at a time too."""
    from torch.utils.checkpoint import checkpoint

    def piece(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model.unembed(h).float(), t, reduction="none")

    step = max(1, LOGIT_CHUNK_BYTES // (4 * model.cfg.d_vocab))
    parts = [
        checkpoint(piece, hidden[i : i + step], targets[i : i + step], use_reentrant=False)
        if torch.is_grad_enabled()
        else piece(hidden[i : i + step], targets[i : i + step])
        for i in range(0, targets.shape[0], step)
    ]
    return torch.cat(parts) if parts else piece(hidden, targets)


def reference_nll(ref: Model, batch: Batch) -> Float[torch.Tensor, " batch"]:
    """``sequence_nll`` of the frozen reference model (no gradient)."""
    with torch.no_grad():
        return sequence_nll(ref, batch)


def hidden_at(model: Model, batch: Batch, layer: int) -> Float[torch.Tensor, "batch pos d_model"]:
    """The residual stream after block ``layer`` (HF ``hidden_states[layer + 1]``)."""
    out = model.forward(batch.ids, batch.mask, output_hidden_states=True)
    return out.hidden_states[layer + 1].float()
