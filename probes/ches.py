"""CHES similarity: how alike two responses look to the model's final hidden state.

Razin et al. 2024, "Unintentional Unalignment: Likelihood Displacement in Direct Preference Optimization".
With ``h_{x,z<k}`` the final hidden state (after the final norm: the vector the unembedding multiplies,
``ln_final.hook_out`` = HF ``hidden_states[-1]``) that predicts token ``k`` of response ``z`` given prompt
``x``, and ``S_z = sum_k h_{x,z<k}``:

    CHES_x(y+, y-)       = <S+, S-> - ||S+||^2
    length-normalized    = <S+, S-> / (|y+| |y-|) - ||S+||^2 / |y+|^2

The response is taken to end with the end-of-sequence token, as in both reference scripts
(princeton-nlp/unintentional-unalignment, ``ches/ches.py`` and ``compute_preference_similarity_per_example.py``):
the sum runs over the positions that predict the response tokens *and* the EOS that closes it, from the
last prompt token to the last response token, and ``|y|`` counts that EOS (``eos=True``, the default,
what to use when comparing with the paper). The EOS itself is never fed: the hidden state that predicts
it is the one at the last response token, which a causal model computes without seeing what follows.
``eos=False`` sums one position fewer (only the response tokens, ``|y|`` without EOS); on the five
chat-template SmolLM2 triples of ``tests/test_fidelity.py`` that changes raw CHES by 3-40% and
length-normalized CHES by 9-190%. With ``eos=True`` vestige equals both reference rules on those
triples to a relative 3e-14.

Deviations, on purpose: the prompt and the response are tokenized separately (``pair_ids``: one space
between them unless either side brings its own white space), where the reference tokenizes the
concatenated text and cuts it at the prompt's length; the two agree whenever the boundary does not merge
tokens (a chat-template prompt ends with a newline, so they always agree there). Positions are computed from the attention mask,
so left and right padding give the same numbers (the reference is correct only with left padding), the
hidden states come from one padding-aware forward pass of the HF base model (the same numbers as the
``ln_final.hook_out`` hook, without computing the logits), and the sums are accumulated in float64
whatever the model's dtype (raw CHES overflows fp16).

Each distinct (prompt, response) sequence is run once; ``ches_matrix`` reuses the summed embeddings for
every forget x retain pair (one forward per sequence, then a Gram matrix).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from probes.data import QA
from probes.errors import VestigeError
from probes.model import Model
from probes.results import Result

Item = tuple[str, str] | QA


class CHESInputError(VestigeError):
    """A CHES input has no response tokens to sum over."""


def pair_ids(model: Model, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """Token ids of the prompt (with special tokens) and of the response as it continues the prompt: one
    space between them unless the prompt ends or the response starts with white space (the QA convention
    of ``probes.qa.answer_ids``)."""
    tok = model.tokenizer
    sep = "" if (prompt[-1:].isspace() or response[:1].isspace()) else " "
    p = tok(prompt, add_special_tokens=True)["input_ids"]
    r = tok(sep + response, add_special_tokens=False)["input_ids"] if response else []
    if not r:
        raise CHESInputError(
            f"response {response!r} to prompt {prompt[:60]!r} has no tokens",
            "CHES sums the hidden states that predict each response token; an empty response has none",
            "pass a non-empty response",
        )
    if not p:
        raise CHESInputError(
            f"prompt {prompt!r} has no tokens",
            "the first response token is predicted from the last prompt token, which must exist",
            "pass a non-empty prompt",
        )
    return p, r


def response_positions(
    mask: Int[torch.Tensor, "batch pos"], prompt_lens: Int[torch.Tensor, " batch"], *, eos: bool = True
) -> torch.Tensor:
    """Boolean ``[batch, pos]``: the positions whose hidden state predicts a response token, i.e. token
    indices ``prompt_len - 1 .. len - 2`` of each unpadded sequence, plus ``len - 1`` (the state that
    predicts the closing EOS) with ``eos``; located through the mask (so any padding side works)."""
    rank = mask.long().cumsum(-1) - 1  # index of each real token inside its own sequence
    length = mask.long().sum(-1, keepdim=True)
    start = prompt_lens.to(mask.device)[:, None] - 1
    last = length - 1 if eos else length - 2
    return mask.bool() & (rank >= start) & (rank <= last)


@torch.inference_mode()
def final_hidden(
    model: Model, ids: Int[torch.Tensor, "batch pos"], mask: Int[torch.Tensor, "batch pos"]
) -> Float[torch.Tensor, "batch pos d_model"]:
    """The final hidden state after the final norm (``ln_final.hook_out``), padding-aware positions
    (``Model.final_hidden`` without autograd)."""
    return model.final_hidden(ids, mask)


def response_embeddings(
    model: Model,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    batch_size: int = 16,
    padding_side: str = "left",
    eos: bool = True,
    progress: bool = False,
) -> tuple[Float[torch.Tensor, "n d_model"], Int[torch.Tensor, " n"]]:
    """``S = sum_k h_{x,z<k}`` (float64, CPU) and the response lengths ``|z|`` for each (prompt, response);
    with ``eos`` (the reference's protocol) the response ends with EOS: one more summed state and
    ``|z|`` counts the EOS. Identical sequences are run once; batches are sorted by length to keep
    padding small."""
    if len(prompts) != len(responses):
        raise CHESInputError(
            f"{len(prompts)} prompts but {len(responses)} responses",
            "each response is scored against the prompt at the same index",
            "pass lists of equal length",
        )
    keys = list(zip(prompts, responses))
    unique = list(dict.fromkeys(keys))
    tokenized = [pair_ids(model, p, r) for p, r in unique]
    order = sorted(range(len(unique)), key=lambda i: len(tokenized[i][0]) + len(tokenized[i][1]))
    sums = torch.zeros(len(unique), model.cfg.d_model, dtype=torch.float64)
    lengths = torch.tensor([len(r) + int(eos) for _, r in tokenized], dtype=torch.long)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="CHES", disable=not progress):
        chunk = order[start : start + batch_size]
        ids, mask = model.pad([tokenized[i][0] + tokenized[i][1] for i in chunk], padding_side=padding_side)
        prompt_lens = torch.tensor([len(tokenized[i][0]) for i in chunk], device=ids.device)
        sel = response_positions(mask, prompt_lens, eos=eos)
        h = final_hidden(model, ids, mask)
        summed = torch.where(sel[..., None], h.to(torch.float64), 0.0).sum(1)
        sums[chunk] = summed.cpu()
    index = {k: i for i, k in enumerate(unique)}
    rows = torch.tensor([index[k] for k in keys], dtype=torch.long)
    return sums[rows], lengths[rows]


def ches_from_sums(
    s_pos: Float[torch.Tensor, "n d_model"],
    s_neg: Float[torch.Tensor, "n d_model"],
    len_pos: Int[torch.Tensor, " n"],
    len_neg: Int[torch.Tensor, " n"],
    *,
    length_normalized: bool = False,
) -> Float[torch.Tensor, " n"]:
    """CHES of each row pair from summed embeddings (Razin et al. 2024, eq. for CHES and its normalized
    form)."""
    cross = (s_pos * s_neg).sum(-1)
    own = (s_pos * s_pos).sum(-1)
    if not length_normalized:
        return cross - own
    lp, ln = len_pos.to(cross.dtype), len_neg.to(cross.dtype)
    return cross / (lp * ln) - own / lp**2


def ches_pairs(
    model: Model,
    prompts: Sequence[str],
    preferred: Sequence[str],
    dispreferred: Sequence[str],
    *,
    length_normalized: bool = False,
    batch_size: int = 16,
    padding_side: str = "left",
    eos: bool = True,
    progress: bool = False,
) -> Float[torch.Tensor, " n"]:
    """CHES_x(y+, y-) for each (prompt, preferred, dispreferred) triple, batched (float64, CPU); ``eos``
    as in ``response_embeddings`` (default: the reference's EOS-terminated responses)."""
    n = len(prompts)
    if not (len(preferred) == len(dispreferred) == n):
        raise CHESInputError(
            f"{n} prompts, {len(preferred)} preferred and {len(dispreferred)} dispreferred responses",
            "each triple is (prompt, y+, y-) at the same index",
            "pass three lists of equal length",
        )
    sums, lengths = response_embeddings(
        model,
        list(prompts) * 2,
        list(preferred) + list(dispreferred),
        batch_size=batch_size,
        padding_side=padding_side,
        eos=eos,
        progress=progress,
    )
    return ches_from_sums(sums[:n], sums[n:], lengths[:n], lengths[n:], length_normalized=length_normalized)


def ches(
    model: Model,
    prompt: str,
    preferred: str,
    dispreferred: str,
    length_normalized: bool = False,
    *,
    eos: bool = True,
) -> float:
    """CHES_x(y+, y-) of one pair (Razin et al. 2024). High values: y- looks like y+ to the model, and
    pushing y- down displaces likelihood away from y+. ``eos``: see ``response_embeddings``."""
    return float(
        ches_pairs(
            model, [prompt], [preferred], [dispreferred], length_normalized=length_normalized, eos=eos
        )[0]
    )


def _as_pair(item: Item) -> tuple[str, str]:
    if isinstance(item, QA):
        return item.prompt, item.answer
    prompt, response = item
    return str(prompt), str(response)


@dataclass(frozen=True)
class CHESMatrix(Result):
    """CHES between every forget item (dispreferred, pushed down by unlearning) and every retain item
    (preferred, to be kept): ``raw[i, j] = <S_forget_i, S_retain_j> - ||S_retain_j||^2``, and the
    length-normalized form. Each item is scored under its own prompt; with a shared prompt this is
    exactly Razin et al.'s CHES_x(retain_j, forget_i). High values predict collateral damage on retain
    item j when forget item i is unlearned."""

    forget: tuple[tuple[str, str], ...]
    retain: tuple[tuple[str, str], ...]
    raw: Float[torch.Tensor, "n_forget n_retain"] = field(repr=False)
    normalized: Float[torch.Tensor, "n_forget n_retain"] = field(repr=False)
    model: str = ""

    def to_frame(self) -> pd.DataFrame:
        rows = []
        for i, (fp, fr) in enumerate(self.forget):
            for j, (rp, rr) in enumerate(self.retain):
                rows.append(
                    {
                        "forget": i,
                        "retain": j,
                        "forget_prompt": fp,
                        "forget_response": fr,
                        "retain_prompt": rp,
                        "retain_response": rr,
                        "ches": float(self.raw[i, j]),
                        "ches_normalized": float(self.normalized[i, j]),
                    }
                )
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "forget": [list(x) for x in self.forget],
            "retain": [list(x) for x in self.retain],
            "ches": self.raw.tolist(),
            "ches_normalized": self.normalized.tolist(),
        }

    def figure(self, length_normalized: bool = True) -> go.Figure:
        """Heatmap of the matrix (forget items as rows)."""
        values = self.normalized if length_normalized else self.raw
        fig = go.Figure(
            go.Heatmap(
                z=values.numpy(),
                x=[f"{j}: {r[:30]}" for j, (_, r) in enumerate(self.retain)],
                y=[f"{i}: {r[:30]}" for i, (_, r) in enumerate(self.forget)],
                colorscale="RdBu_r",
                zmid=0.0,
                colorbar={"title": "CHES"},
            )
        )
        kind = "length-normalized CHES" if length_normalized else "CHES"
        fig.update_layout(title=f"{kind}: forget (rows) x retain (columns)", xaxis_title="retain item")
        return fig


def ches_matrix(
    model: Model,
    forget: Sequence[Item],
    retain: Sequence[Item],
    *,
    batch_size: int = 16,
    padding_side: str = "left",
    eos: bool = True,
    progress: bool = False,
) -> CHESMatrix:
    """CHES for all forget x retain pairs from one forward per distinct sequence and a Gram matrix;
    ``eos`` as in ``response_embeddings`` (default: the reference's EOS-terminated responses)."""
    f_items = tuple(_as_pair(x) for x in forget)
    r_items = tuple(_as_pair(x) for x in retain)
    items = f_items + r_items
    sums, lengths = response_embeddings(
        model,
        [p for p, _ in items],
        [r for _, r in items],
        batch_size=batch_size,
        padding_side=padding_side,
        eos=eos,
        progress=progress,
    )
    nf = len(f_items)
    s_f, s_r = sums[:nf], sums[nf:]
    l_f, l_r = lengths[:nf].to(torch.float64), lengths[nf:].to(torch.float64)
    cross = s_f @ s_r.T  # [n_forget, n_retain]
    own = (s_r * s_r).sum(-1)  # ||S_retain||^2
    raw = cross - own[None, :]
    normalized = cross / (l_f[:, None] * l_r[None, :]) - (own / l_r**2)[None, :]
    return CHESMatrix(f_items, r_items, raw, normalized, model=getattr(model, "name", ""))
