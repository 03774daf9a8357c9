"""Logit lens (nostalgebraist 2020): the answer read off the residual stream of every layer.

For each prompt, the residual stream after each block at the last position goes through the model's own
final norm and unembedding; we keep the log-probability and rank of the answer's first token. After the
last block this is exactly the model's output, so "present inside, absent at the output" shows as a high
rank in middle layers and a low one at the end (the signature of suppression described by
Hong et al. 2024 and Lynch et al. 2024).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float

from probes import hooks
from probes.model import Model
from probes.qa import answer_ids
from probes.results import Result


@dataclass(frozen=True)
class LensResult(Result):
    """``logprob[i, l]`` and ``rank[i, l]`` of prompt i's answer (first token) after layer l."""

    prompts: tuple[str, ...]
    answers: tuple[str, ...]
    logprob: np.ndarray = field(repr=False)
    rank: np.ndarray = field(repr=False)
    decoy_rank: np.ndarray | None = field(default=None, repr=False)

    @property
    def mean_logprob(self) -> np.ndarray:
        return self.logprob.mean(axis=0)

    @property
    def top10_share(self) -> np.ndarray:
        """Per layer: the share of prompts whose answer is among the 10 most likely tokens."""
        return (self.rank < 10).mean(axis=0)

    @property
    def decoy_top10_share(self) -> np.ndarray | None:
        """The same share for the decoy answers: what ranking any answer of the right type gives. A small
        vocabulary or a narrow answer type makes the top 10 easy to reach by type alone."""
        return None if self.decoy_rank is None else (self.decoy_rank < 10).mean(axis=0)

    def to_dict(self) -> dict:
        return {
            "prompts": list(self.prompts),
            "answers": list(self.answers),
            "mean_logprob_by_layer": self.mean_logprob.tolist(),
            "top10_share_by_layer": self.top10_share.tolist(),
            "logprob": self.logprob.tolist(),
            "rank": self.rank.tolist(),
            "decoy_top10_share_by_layer": (
                None if self.decoy_rank is None else self.decoy_top10_share.tolist()
            ),
        }

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "layer": np.arange(self.logprob.shape[1]),
                "mean_logprob": self.mean_logprob,
                "top10_share": self.top10_share,
            }
        )

    def figure(self, name: str = "", fig: go.Figure | None = None) -> go.Figure:
        fig = fig or go.Figure()
        fig.add_scatter(
            x=list(range(self.logprob.shape[1])),
            y=self.mean_logprob.tolist(),
            mode="lines+markers",
            name=name or "mean answer log-prob",
        )
        fig.update_layout(xaxis_title="layer", yaxis_title="answer log-prob (logit lens)", height=360)
        return fig


@torch.no_grad()
def lens_logits(
    model: Model, resid: Float[torch.Tensor, "... d_model"]
) -> Float[torch.Tensor, "... d_vocab"]:
    """Residual stream -> final norm -> unembedding (the model's own output head), soft-capped as the model
    caps its logits (Gemma-2's ``final_logit_softcapping``)."""
    return model.unembed(model.final_norm(resid))


LENS_FLOATS = 1 << 20  # vocabulary-sized log-probabilities held at once by ``logit_lens`` (4 MB float32)


def _count_above(lp: Float[torch.Tensor, "b l v"], threshold: Float[torch.Tensor, "b l 1"]) -> np.ndarray:
    """How many entries of each row of ``lp`` exceed ``threshold`` (a rank), counted in int32: summing the
    boolean comparison as it is would first copy it to int64, twice the size of the log-probabilities."""
    return (lp > threshold).sum(-1, dtype=torch.int32).cpu().numpy()


@torch.no_grad()
def logit_lens(
    model: Model,
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    decoys: Sequence[str] | None = None,
    batch_size: int = 16,
) -> LensResult:
    """Answer log-probability and rank at every layer for each prompt (one cached forward per batch).
    ``decoys`` (one per prompt, e.g. another item's answer of the same type) are ranked in the same pass,
    as the chance baseline of the answer's rank."""
    if decoys is not None and len(decoys) != len(prompts):
        raise ValueError(f"{len(decoys)} decoys for {len(prompts)} prompts; give one decoy per prompt")
    n_layers = model.cfg.n_layers
    names = [hooks.resid_post(l) for l in range(n_layers)]
    logprob = np.zeros((len(prompts), n_layers))
    rank = np.zeros((len(prompts), n_layers), dtype=np.int64)
    decoy_rank = None if decoys is None else np.zeros_like(rank)
    for start in range(0, len(prompts), batch_size):
        chunk_p, chunk_a = prompts[start : start + batch_size], answers[start : start + batch_size]
        pairs = [answer_ids(model, p, a) for p, a in zip(chunk_p, chunk_a, strict=True)]
        ids, mask = model.pad([p for p, _ in pairs], padding_side="left")
        _, cache = hooks.run_with_cache(model, ids, names, mask, logits_to_keep=1)
        target = torch.tensor([a[0] for _, a in pairs], device=ids.device)
        stacked = torch.stack([cache[n][:, -1] for n in names], dim=1)  # [batch, layer, d_model]
        del cache
        rows = slice(start, start + len(pairs))
        if decoy_rank is not None:
            chunk_d = decoys[start : start + batch_size]
            first = [answer_ids(model, p, d)[1][0] for p, d in zip(chunk_p, chunk_d, strict=True)]
            decoy = torch.tensor(first, device=ids.device)
        # a few layers at a time: [batch, layers, vocab] log-probabilities within LENS_FLOATS floats; each
        # layer unembedded alone, so that the numbers (and the ranks, near ties included) do not depend on
        # how many layers a chunk holds (a matmul over more rows may round differently)
        step = max(1, LENS_FLOATS // (len(pairs) * model.cfg.d_vocab))
        for l0 in range(0, n_layers, step):
            l1 = min(l0 + step, n_layers)
            logits = torch.stack([lens_logits(model, stacked[:, layer]) for layer in range(l0, l1)], dim=1)
            lp = torch.log_softmax(logits.float(), dim=-1)  # [batch, l, vocab]
            del logits
            tgt_lp = lp.gather(-1, target[:, None, None].expand(-1, l1 - l0, 1))
            logprob[rows, l0:l1] = tgt_lp.squeeze(-1).cpu().numpy()
            rank[rows, l0:l1] = _count_above(lp, tgt_lp)
            if decoy_rank is not None:
                d_lp = lp.gather(-1, decoy[:, None, None].expand(-1, l1 - l0, 1))
                decoy_rank[rows, l0:l1] = _count_above(lp, d_lp)
            del lp
    return LensResult(tuple(prompts), tuple(answers), logprob, rank, decoy_rank)


def same_type_decoys(answers: Sequence[str], types: Sequence[str | None]) -> list[str]:
    """For each item, the answer of the next item of the same type with a different answer (cyclically);
    the item's own answer when its type has no other answer (then the decoy equals the answer)."""
    groups: dict[str | None, list[int]] = {}
    for i, t in enumerate(types):
        groups.setdefault(t, []).append(i)
    out = list(answers)
    for idx in groups.values():
        for k, i in enumerate(idx):
            for j in idx[k + 1 :] + idx[:k]:
                if answers[j].lower() != answers[i].lower():
                    out[i] = answers[j]
                    break
    return out
