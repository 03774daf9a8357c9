"""The sampling attack: best of N sampled answers next to the greedy one.

Greedy decoding reads one path through the model's distribution; an unlearned model that moved the
answer from first place to a close second hides it from greedy decoding only. ``sampled_scores`` draws
``n`` completions per prompt (temperature ``temperature``, nucleus ``top_p``; seeded) and counts an item as
answered when any of them starts with the answer (pass@n); ``pass_at_k`` is the unbiased estimator of
Chen et al. (2021) from the number of correct samples. A small answer space makes guessing likely: the
audit runs the same attack on the knowledge floor, whose pass@n is what sampling finds by chance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import comb

import torch

from probes.data import QA
from probes.model import Model
from probes.qa import QAScores, answer_ids, answer_logprobs, is_correct, max_tokens_for
from probes.results import Result


@dataclass(frozen=True)
class SamplingConfig(Result):
    """``n`` samples per prompt at ``temperature`` with nucleus ``top_p``; the draws come from
    ``torch.manual_seed(seed + batch index)`` inside a forked RNG (the global RNG is left as it was), so a
    run is reproducible for a given seed and batch size."""

    n: int = 8
    temperature: float = 1.0
    top_p: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(
                f"SamplingConfig.n is {self.n}: draw at least one sample per prompt (8 by default)"
            )
        if self.temperature <= 0:
            raise ValueError(
                f"SamplingConfig.temperature is {self.temperature}: sampling needs a positive temperature "
                "(greedy decoding is the plain score_qa)"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingConfig.top_p is {self.top_p}: the nucleus is a share in (0, 1]")


@dataclass(frozen=True)
class SampledScores(Result):
    """Per item: the ``n`` sampled completions and how many of them are correct."""

    prompts: tuple[str, ...]
    answers: tuple[str, ...]
    samples: tuple[tuple[str, ...], ...]
    n_correct: tuple[int, ...]

    def pass_at(self, k: int) -> float:
        """Mean over items of the unbiased pass@k (Chen et al. 2021): 1 - C(n - c, k) / C(n, k)."""
        return sum(pass_at_k(len(s), c, k) for s, c in zip(self.samples, self.n_correct, strict=True)) / max(
            len(self.samples), 1
        )


def pass_at_k(n: int, c: int, k: int) -> float:
    """The probability that at least one of ``k`` of ``n`` samples, ``c`` of them correct, drawn without
    replacement, is correct."""
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} of {n} samples: k must be between 1 and n")
    return 1.0 - comb(n - c, k) / comb(n, k)


@torch.no_grad()
def sampled_scores(
    model: Model,
    items: Sequence[QA],
    config: SamplingConfig | None = None,
    *,
    prefix: str = "",
    batch_size: int = 16,
) -> SampledScores:
    """``config.n`` sampled completions of each prompt (``prefix`` prepended), each as long as the longest
    answer needs (``probes.qa.max_tokens_for``), left-padded batches of ``batch_size`` prompts."""
    cfg = config or SamplingConfig()
    prompts = [prefix + q.prompt for q in items]
    answers = [q.answer for q in items]
    max_new = max(
        (
            max_tokens_for(len(answer_ids(model, p, q.answer)[1]), q.scoring)
            for p, q in zip(prompts, items, strict=True)
        ),
        default=3,
    )
    samples: list[tuple[str, ...]] = []
    for b, start in enumerate(range(0, len(prompts), batch_size)):
        ids, mask = model.tokenize(prompts[start : start + batch_size])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + b)
            gen = model.hf.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new,
                do_sample=True,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                top_k=0,
                num_return_sequences=cfg.n,
                pad_token_id=model.tokenizer.pad_token_id,
            )
        text = model.tokenizer.batch_decode(gen[:, ids.shape[1] :], skip_special_tokens=True)
        samples += [tuple(text[i * cfg.n : (i + 1) * cfg.n]) for i in range(ids.shape[0])]
    n_correct = tuple(
        sum(is_correct(s, q.answer, q.scoring) for s in ss) for ss, q in zip(samples, items, strict=True)
    )
    return SampledScores(tuple(prompts), tuple(answers), tuple(samples), n_correct)


def best_of_n(
    model: Model,
    items: Sequence[QA],
    config: SamplingConfig | None = None,
    *,
    prefix: str = "",
    batch_size: int = 16,
) -> QAScores:
    """The sampling attack as ``QAScores``: an item is correct when any of its samples is (pass@n); its
    completion is the first correct sample (else the first sample); its log-probability the teacher-forced
    answer log-probability, as for greedy scoring."""
    s = sampled_scores(model, items, config, prefix=prefix, batch_size=batch_size)
    shown = tuple(
        next((x for x in ss if is_correct(x, q.answer, q.scoring)), ss[0] if ss else "")
        for ss, q in zip(s.samples, items, strict=True)
    )
    logprobs = answer_logprobs(model, list(s.prompts), list(s.answers), batch_size=batch_size)
    return QAScores(
        s.prompts,
        s.answers,
        shown,
        tuple(c > 0 for c in s.n_correct),
        tuple(float(x) for x in logprobs),
    )
