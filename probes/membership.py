"""Membership inference on texts: does the model behave as if it was trained on them?

Per text ``x`` with token log-probabilities ``l_i = log p(x_i | x_<i)`` (every token after the first),
four scores, each oriented so that **higher means "member"**:

- ``loss`` (Yeom et al. 2018): minus the mean NLL, i.e. the mean ``l_i``;
- ``zlib`` (Carlini et al. 2021): minus the total NLL divided by the length in bytes of the zlib-compressed
  text (a text that is easy to compress is easy to predict without having been seen);
- ``min_k`` (Shi et al. 2023, Min-K% Prob): the mean of the lowest ``k`` share of the ``l_i`` (k = 0.2);
- ``min_k_plus_plus`` (Zhang et al. 2024, Min-K%++): the same over ``z_i = (l_i - mu_i) / sigma_i``, where
  ``mu_i`` and ``sigma_i^2`` are the mean and variance of ``log p(v | x_<i)`` over the vocabulary under
  ``p(. | x_<i)`` itself.

``membership_inference`` scores members (texts the model is thought to have seen: a forget set) and
non-members (texts of the same kind it never saw) and gives each score's ROC AUC, P(score(member) >
score(non-member)) with ties counted half, and a percentile-bootstrap interval over texts. ``priv_leak``
is MUSE's PrivLeak against a reference model that never saw the members (a retrain oracle):
``(AUC_model - AUC_reference) / AUC_reference``, near 0 when the model looks like the reference.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from probes.model import Model
from probes.results import Result
from probes.stats import Interval

MIA_SCORES: tuple[str, ...] = ("loss", "zlib", "min_k", "min_k_plus_plus")


@dataclass(frozen=True)
class MembershipConfig(Result):
    """``k``: the share of lowest-scoring tokens Min-K% and Min-K%++ average; ``max_tokens``: each text is
    cut to its first ``max_tokens`` tokens; ``batch_size`` texts per forward pass; ``bootstrap``
    resamples of the AUC interval."""

    k: float = 0.2
    max_tokens: int = 256
    batch_size: int = 4
    bootstrap: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.k <= 1:
            raise ValueError(
                f"MembershipConfig.k is {self.k}: Min-K% averages the lowest k share of the tokens, so k is in "
                "(0, 1] (0.2 in Shi et al. 2023)"
            )
        if self.max_tokens < 2:
            raise ValueError(
                f"MembershipConfig.max_tokens is {self.max_tokens}: a text needs at least 2 tokens for one "
                "predicted token"
            )


@dataclass(frozen=True)
class TokenStats:
    """One text's per-token values (its tokens after the first): ``logp`` = log p(x_i | x_<i), ``mu`` and
    ``sigma`` the mean and standard deviation of log p(v | x_<i) under p(. | x_<i); ``n_bytes`` the length
    of the zlib-compressed text."""

    logp: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    n_bytes: int


STATS_FLOATS = 1 << 20  # floats per working tensor of ``token_stats`` (4 MB in float32)


@torch.no_grad()
def token_stats(
    model: Model, texts: Sequence[str], *, max_tokens: int = 256, batch_size: int = 4
) -> list[TokenStats]:
    """``TokenStats`` of each text, computed in batches (right-padded; padding never enters a value).
    Memory: the batch's final hidden states ``[batch, tokens, d_model]``; the logits, their log-softmax
    and its moments a few positions at a time (``STATS_FLOATS`` floats per working tensor), never the
    whole batch's ``[batch, tokens, vocab]`` logits."""
    out: list[TokenStats] = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        seqs = [ids[:max_tokens] for ids in model.token_ids(chunk)]
        short = [t for t, s in zip(chunk, seqs, strict=True) if len(s) < 2]
        if short:
            raise ValueError(
                f"text {short[0][:60]!r} has fewer than 2 tokens: membership scores need at least one "
                "predicted token; drop empty texts"
            )
        ids, mask = model.pad(seqs, padding_side="right")
        hidden = model.final_hidden(ids, mask)
        n_pred = ids.shape[1] - 1  # position t predicts token t + 1
        target = torch.empty(len(chunk), n_pred, device=hidden.device)
        mu, var = torch.empty_like(target), torch.empty_like(target)
        step = max(1, STATS_FLOATS // (len(chunk) * model.cfg.d_vocab))
        for s in range(0, n_pred, step):
            e = min(s + step, n_pred)
            logq = torch.log_softmax(model.unembed(hidden[:, s:e]).float(), dim=-1)
            p = logq.exp()
            mu[:, s:e] = (p * logq).sum(-1)
            target[:, s:e] = logq.gather(-1, ids[:, s + 1 : e + 1, None])[..., 0]
            # two-pass: no cancellation in E[x^2] - mu^2 (in place: three working tensors, not five)
            var[:, s:e] = logq.sub_(mu[:, s:e, None]).square_().mul_(p).sum(-1)
            del logq, p
        del hidden
        sigma = var.clamp(min=0).sqrt()
        for i, (text, s) in enumerate(zip(chunk, seqs, strict=True)):
            n = len(s) - 1
            out.append(
                TokenStats(
                    target[i, :n].cpu().numpy().astype(np.float64),
                    mu[i, :n].cpu().numpy().astype(np.float64),
                    sigma[i, :n].cpu().numpy().astype(np.float64),
                    len(zlib.compress(text.encode("utf-8"))),
                )
            )
    return out


def scores_of(stats: TokenStats, k: float = 0.2) -> dict[str, float]:
    """The four scores of one text (higher = member)."""
    lp = stats.logp
    n_low = max(1, int(len(lp) * k))
    z = (lp - stats.mu) / np.where(stats.sigma > 0, stats.sigma, 1.0)
    return {
        "loss": float(lp.mean()),
        "zlib": float(lp.sum() / stats.n_bytes),
        "min_k": float(np.sort(lp)[:n_low].mean()),
        "min_k_plus_plus": float(np.sort(z)[:n_low].mean()),
    }


def membership_scores(
    model: Model, texts: Sequence[str], config: MembershipConfig | None = None
) -> pd.DataFrame:
    """One row per text, one column per score of ``MIA_SCORES`` (higher = member)."""
    cfg = config or MembershipConfig()
    stats = token_stats(model, texts, max_tokens=cfg.max_tokens, batch_size=cfg.batch_size)
    return pd.DataFrame([scores_of(s, cfg.k) for s in stats], columns=list(MIA_SCORES))


def auc(members: Sequence[float] | np.ndarray, nonmembers: Sequence[float] | np.ndarray) -> float:
    """ROC AUC of "member" scoring higher: P(member > non-member) + P(tie) / 2 (Mann-Whitney)."""
    a = np.asarray(members, dtype=np.float64)[:, None]
    b = np.asarray(nonmembers, dtype=np.float64)[None, :]
    if a.size == 0 or b.size == 0:
        raise ValueError("an AUC needs at least one member and one non-member text")
    return float((a > b).mean() + 0.5 * (a == b).mean())


def bootstrap_auc(
    members: Sequence[float] | np.ndarray,
    nonmembers: Sequence[float] | np.ndarray,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """``auc`` with a percentile-bootstrap interval (members and non-members each resampled from their own
    texts); ``n`` is the number of members."""
    a = np.asarray(members, dtype=np.float64)
    b = np.asarray(nonmembers, dtype=np.float64)
    value = auc(a, b)
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, a.size, size=(n_boot, a.size))
    ib = rng.integers(0, b.size, size=(n_boot, b.size))
    boots = np.array([auc(a[i], b[j]) for i, j in zip(ia, ib, strict=True)])
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(boots, [tail, 1.0 - tail])
    return Interval(value, float(min(lo, value)), float(max(hi, value)), int(a.size), level)


@dataclass(frozen=True)
class MembershipResult(Result):
    """Each score's AUC (members vs non-members, with its interval) and the per-text scores."""

    model: str
    auc: dict[str, Interval]
    n_members: int
    n_nonmembers: int
    config: MembershipConfig
    scores: pd.DataFrame | None = field(default=None, repr=False, compare=False)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [{"score": s, "auc": i.mean, "lo": i.lo, "hi": i.hi} for s, i in self.auc.items()]
        )


def membership_inference(
    model: Model,
    members: Sequence[str],
    nonmembers: Sequence[str],
    config: MembershipConfig | None = None,
) -> MembershipResult:
    """Score ``members`` and ``nonmembers`` with every score of ``MIA_SCORES`` and give each one's AUC with
    a bootstrap interval. Non-members must be texts of the same kind (same style and length) that the
    model never saw, or the AUC measures the difference in kind."""
    cfg = config or MembershipConfig()
    if not members or not nonmembers:
        raise ValueError(
            f"membership inference got {len(members)} member and {len(nonmembers)} non-member texts: it needs "
            "both (the forget texts, and texts of the same kind the model never saw)"
        )
    frame = membership_scores(model, [*members, *nonmembers], cfg)
    frame.insert(0, "member", [True] * len(members) + [False] * len(nonmembers))
    m, nm = frame[frame.member], frame[~frame.member]
    aucs = {
        s: bootstrap_auc(m[s], nm[s], n_boot=cfg.bootstrap, seed=cfg.seed + i)
        for i, s in enumerate(MIA_SCORES)
    }
    return MembershipResult(model.name, aucs, len(members), len(nonmembers), cfg, frame)


def priv_leak(auc_model: float, auc_reference: float) -> float:
    """MUSE's PrivLeak: ``(AUC_model - AUC_reference) / AUC_reference``. Near 0: the model tells members
    from non-members as the reference (which never saw them) does; large positive: under-unlearned; large
    negative: over-unlearned (the members now look less familiar than texts never seen)."""
    if auc_reference <= 0:
        raise ValueError(f"PrivLeak divides by the reference's AUC, which is {auc_reference}")
    return (auc_model - auc_reference) / auc_reference
