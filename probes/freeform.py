"""Free-form answers scored the way the benchmarks score them, next to the data contract's prefix match.

Benchmarks such as TOFU and MUSE ask questions whose answers are sentences; a greedy continuation rarely
starts with the reference word for word, so prefix accuracy reads 0 for a model that knows the answer.
These scores read such answers:

- ROUGE recall (``rouge_recall``): the share of the reference's unigrams (ROUGE-1) and of its longest
  common subsequence (ROUGE-L) found in the generated answer, with Porter stemming (the ``rouge-score``
  package, ``RougeScorer(["rouge1", "rougeL"], use_stemmer=True)``, as TOFU and MUSE use it).
- answer probability (``mean_answer_nll``): ``exp(-mean NLL per answer token)`` under teacher forcing
  (TOFU's "Prob." on its retain and forget sets).
- the truth ratio (``truth_ratios``, TOFU, Maini et al. 2024): ``R = exp(L(paraphrased) - mean_k
  L(perturbed_k))`` with ``L`` the mean NLL per answer token, i.e. the geometric mean of the perturbed
  (wrong) answers' per-token probability over the paraphrased correct answer's. ``R`` near 1: the model
  cannot tell right from wrong; ``R`` << 1: it prefers the right answer. TOFU reports ``min(R, 1 / R)`` on
  the forget set and ``max(0, 1 - R)`` on the others (``truth_ratio_score``; TOFU's aggregation code
  holds ``1 / R`` and writes the same two numbers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

from probes.data import QA
from probes.model import Model
from probes.qa import answer_ids, answer_logprobs
from probes.results import Result
from probes.rouge import FreeFormError, rouge_recall


def mean_answer_nll(
    model: Model, prompts: Sequence[str], answers: Sequence[str], *, batch_size: int = 16
) -> Float[torch.Tensor, " n"]:
    """Mean negative log-likelihood per answer token of ``answers[i]`` after ``prompts[i]``."""
    summed = answer_logprobs(model, prompts, answers, batch_size=batch_size)
    lengths = torch.tensor([len(answer_ids(model, p, a)[1]) for p, a in zip(prompts, answers, strict=True)])
    return -summed / lengths.to(summed.dtype)


def truth_ratios(
    model: Model,
    prompts: Sequence[str],
    paraphrased: Sequence[str],
    perturbed: Sequence[Sequence[str]],
    *,
    batch_size: int = 16,
) -> Float[torch.Tensor, " n"]:
    """TOFU's truth ratio per item: ``exp(L(paraphrased[i]) - mean_k L(perturbed[i][k]))``, ``L`` the
    mean NLL per answer token after ``prompts[i]`` (below 1 when the right answer is the likelier)."""
    if not (len(prompts) == len(paraphrased) == len(perturbed)) or any(len(p) == 0 for p in perturbed):
        raise FreeFormError(
            "the truth ratio needs, per prompt, one paraphrased answer and at least one perturbed answer",
            f"got {len(prompts)} prompts, {len(paraphrased)} paraphrased answers and "
            f"{len(perturbed)} perturbed lists (empty lists: {sum(len(p) == 0 for p in perturbed)})",
            "use items whose benchmark ships paraphrased and perturbed answers (TOFU's *_perturbed sets)",
        )
    para = mean_answer_nll(model, prompts, paraphrased, batch_size=batch_size)
    flat_prompts = [p for p, ks in zip(prompts, perturbed, strict=True) for _ in ks]
    flat = mean_answer_nll(model, flat_prompts, [k for ks in perturbed for k in ks], batch_size=batch_size)
    out, i = [], 0
    for ks in perturbed:
        out.append(flat[i : i + len(ks)].mean())
        i += len(ks)
    return torch.exp(para - torch.stack(out))


def truth_ratio_score(ratios: Sequence[float] | torch.Tensor, *, forget: bool) -> float:
    """TOFU's reported truth-ratio statistic: mean ``min(R, 1/R)`` on a forget set (1: the model cannot
    tell the answers apart), else mean ``max(0, 1 - R)`` (higher: it prefers the right answers)."""
    r = np.asarray(torch.as_tensor(ratios, dtype=torch.float64))
    return float(np.mean(np.minimum(r, 1 / r)) if forget else np.mean(np.maximum(0.0, 1 - r)))


@dataclass(frozen=True)
class FreeFormScores(Result):
    """Generated answers of ``prompts`` and their ROUGE recall and answer probability against ``answers``."""

    prompts: tuple[str, ...]
    answers: tuple[str, ...]
    generations: tuple[str, ...]
    rouge1_recall: tuple[float, ...]
    rougeL_recall: tuple[float, ...]  # noqa: N815 (the benchmarks' name)
    probability: tuple[float, ...]  # exp(-mean NLL per answer token)

    @property
    def rouge_l(self) -> float:
        return float(np.mean(self.rougeL_recall)) if self.rougeL_recall else float("nan")

    def summary(self) -> dict[str, float]:
        return {
            "rougeL_recall": self.rouge_l,
            "rouge1_recall": float(np.mean(self.rouge1_recall)) if self.rouge1_recall else float("nan"),
            "probability": float(np.mean(self.probability)) if self.probability else float("nan"),
            "n": len(self.prompts),
        }

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "prompt": self.prompts,
                "answer": self.answers,
                "generation": self.generations,
                "rouge1_recall": self.rouge1_recall,
                "rougeL_recall": self.rougeL_recall,
                "probability": self.probability,
            }
        )


@torch.no_grad()
def free_form_scores(
    model: Model, items: Sequence[QA], *, max_new_tokens: int = 64, batch_size: int = 16
) -> FreeFormScores:
    """Greedy answers of ``items`` (up to ``max_new_tokens`` tokens, cut at the first blank line, as an
    answer ends) scored by ROUGE recall against ``item.answer``, and the answer's probability."""
    prompts = [q.prompt for q in items]
    answers = [q.answer for q in items]
    raw = model.generate(prompts, max_new_tokens, batch_size) if items else []
    generations = [g.strip().split("\n\n", 1)[0].strip() for g in raw]
    r1, rl = rouge_recall(answers, generations)
    nll = mean_answer_nll(model, prompts, answers, batch_size=batch_size) if items else torch.zeros(0)
    return FreeFormScores(
        tuple(prompts),
        tuple(answers),
        tuple(generations),
        tuple(r1),
        tuple(rl),
        tuple(float(x) for x in torch.exp(-nll)),
    )
