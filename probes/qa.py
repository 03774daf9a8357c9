"""Question answering on completion prompts: greedy accuracy and teacher-forced answer log-probability.

The data contract (docs/data.md): correct when the greedy continuation, stripped, starts with the answer
(case-insensitive); the answer's log-probability is summed over its tokens under teacher forcing.
Batches are left-padded with padding-aware positions, so batched = one at a time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from probes.batching import token_batches
from probes.data import CHOICE_LETTERS, QA, Concept, choice_letters
from probes.errors import ConceptFileError
from probes.model import Model
from probes.results import Result


def answer_ids(model: Model, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the answer as it continues the prompt (a space between them
    unless the prompt ends with white space)."""
    tok = model.tokenizer
    sep = "" if prompt[-1:].isspace() else " "
    p = tok(prompt, add_special_tokens=True)["input_ids"]
    a = tok(sep + answer, add_special_tokens=False)["input_ids"]
    return p, a


ROUGE_CORRECT = 0.5  # a sentence answer counts when its ROUGE-L recall reaches this


def is_correct(completion: str, answer: str, scoring: str = "prefix") -> bool:
    """``prefix``: the stripped completion starts with the answer, case-insensitive (the data contract).
    ``rouge``: the completion, up to its first blank line, recalls at least ``ROUGE_CORRECT`` of the answer
    by ROUGE-L (a sentence answer said in the model's own words). ``choice``: the completion names the
    right letter first ("B", "B.", "B) ..."); this is how a sampled answer to a multiple-choice item is read,
    while ``score_qa`` scores such an item by the log-likelihood of its option letters (``choice_scores``)."""
    if scoring == "rouge":
        from probes.rouge import rouge_recall

        return rouge_recall([answer], [completion.strip().split("\n\n", 1)[0]])[1][0] >= ROUGE_CORRECT
    if scoring == "choice":
        return re.match(rf"{re.escape(answer.strip())}(?![A-Za-z0-9])", completion.strip()) is not None
    return completion.strip().lower().startswith(answer.strip().lower())


def max_tokens_for(n_answer_tokens: int, scoring: str) -> int:
    """New tokens to decode for an answer of ``n_answer_tokens``: the answer and 2 more for a prefix match;
    twice the answer and 8 more for a sentence said in other words."""
    return 2 * n_answer_tokens + 8 if scoring == "rouge" else n_answer_tokens + 2


def last_logits(
    model: Model, ids: torch.Tensor, mask: torch.Tensor, keep: int
) -> Float[torch.Tensor, "batch keep d_vocab"]:
    """The logits of the last ``keep`` positions only: the unembedding runs on those alone where the HF
    model takes ``logits_to_keep`` (vocabulary-sized memory ``keep / pos`` of the full logits), else the
    full logits are sliced."""
    keep = min(keep, ids.shape[1])
    if model.takes_logits_to_keep:
        return model.forward(ids, mask, logits_to_keep=keep).logits
    return model.forward(ids, mask).logits[:, -keep:]


@torch.no_grad()
def answer_logprobs(
    model: Model, prompts: Sequence[str], answers: Sequence[str], *, batch_size: int = 16
) -> Float[torch.Tensor, " n"]:
    """Summed log p(answer tokens | prompt) under teacher forcing, fp32, on the CPU (batches of at most
    ``batch_size`` pairs and ``probes.batching.BATCH_TOKENS`` padded tokens). The body runs once per batch
    (``Model.final_hidden``); the output head then runs on one pair's answer positions at a time
    (``Model.unembed``), so the vocabulary-sized numbers held at once are one answer's logits, not the
    batch's (16 answers of 40 tokens after prompts of 30: 2.6 MB of hidden states instead of 129 MB of
    logits and as much again for their log-softmax, on SmolLM2 in float32)."""
    every = [answer_ids(model, p, a) for p, a in zip(prompts, answers, strict=True)]
    out = []
    for batch in token_batches([len(p) + len(a) for p, a in every], batch_size):
        pairs = [every[i] for i in batch]
        ids, mask = model.pad([p + a for p, a in pairs], padding_side="left")
        hidden = model.final_hidden(ids, mask)
        width = hidden.shape[1]
        for i, (_, a) in enumerate(pairs):
            # left-padded: every answer ends its row; position t predicts token t + 1
            logits = model.unembed(hidden[i, width - len(a) - 1 : width - 1]).float()
            tgt = torch.tensor(a, device=logits.device)
            logp = logits.gather(-1, tgt[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
            out.append(logp.sum().cpu())
    result = torch.stack(out) if out else torch.zeros(0)
    if not bool(torch.isfinite(result).all()):  # a diverged model: name the layer, not a NaN table
        from probes.errors import NonFiniteError
        from probes.finite import check_activations

        i = int((~torch.isfinite(result)).nonzero()[0])
        check_activations(model, [prompts[i] + " " + answers[i]])
        raise NonFiniteError(
            f"model {model.name!r}: the log-probability of {answers[i]!r} after {prompts[i]!r} is "
            f"{float(result[i])}",
            "the logits of the answer tokens are not finite",
            "check the model with probes.finite.check_finite / check_activations",
        )
    return result


@torch.no_grad()
def option_logprobs(
    model: Model, prompts: Sequence[str], options: Sequence[Sequence[str]], *, batch_size: int = 16
) -> list[list[float]]:
    """``log p(option | prompt)`` for every option of every prompt, summed over the option's tokens as they
    continue the prompt (``answer_ids``), fp32. When every option is one token (answer letters) a prompt
    takes one forward pass, read at its last position; otherwise each (prompt, option) pair is scored by
    ``answer_logprobs``."""
    pairs = [[answer_ids(model, p, o) for o in opts] for p, opts in zip(prompts, options, strict=True)]
    if not all(len(a) == 1 for row in pairs for _, a in row):
        flat = answer_logprobs(
            model,
            [p for p, opts in zip(prompts, options) for _ in opts],
            [o for opts in options for o in opts],
            batch_size=batch_size,
        ).tolist()
        out, i = [], 0
        for opts in options:
            out.append(flat[i : i + len(opts)])
            i += len(opts)
        return out
    out = []
    for batch in token_batches([len(row[0][0]) for row in pairs], batch_size):
        rows = [pairs[i] for i in batch]
        ids, mask = model.pad([row[0][0] for row in rows], padding_side="left")
        last = torch.log_softmax(last_logits(model, ids, mask, 1)[:, -1].float(), dim=-1).cpu()
        out += [[float(last[i, a[0]]) for _, a in row] for i, row in enumerate(rows)]
    for i, values in enumerate(out):
        if not all(math.isfinite(v) for v in values):  # answer_logprobs names the diverged layer
            answer_logprobs(model, [prompts[i]] * len(options[i]), list(options[i]))
    return out


@dataclass(frozen=True)
class ChoiceScores(Result):
    """Multiple-choice items scored as lm-eval-harness scores WMDP (``acc``): per item the log-likelihood of
    each option letter after the prompt, the option with the highest (``chosen``), the right one
    (``answer_index``) and whether they agree."""

    prompts: tuple[str, ...]
    options: tuple[tuple[str, ...], ...]
    logprobs: tuple[tuple[float, ...], ...]
    chosen: tuple[int, ...]
    answer_index: tuple[int, ...]

    @property
    def correct(self) -> tuple[bool, ...]:
        return tuple(c == a for c, a in zip(self.chosen, self.answer_index, strict=True))

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct) if self.correct else float("nan")

    def to_frame(self) -> pd.DataFrame:
        width = max((len(o) for o in self.options), default=0)
        return pd.DataFrame(
            {
                "prompt": self.prompts,
                "answer": [o[a] for o, a in zip(self.options, self.answer_index, strict=True)],
                "chosen": [o[c] for o, c in zip(self.options, self.chosen, strict=True)],
                "correct": self.correct,
                **{
                    f"logprob_{CHOICE_LETTERS[k]}": [
                        lp[k] if k < len(lp) else math.nan for lp in self.logprobs
                    ]
                    for k in range(width)
                },
            }
        )

    def summary(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "n": len(self.prompts)}


def choice_scores(
    model: Model, items: Sequence[QA], *, prefix: str = "", batch_size: int = 16
) -> ChoiceScores:
    """Score ``"choice"`` items (``QA.scoring``): the log-likelihood of each option letter (``A``, ``B``, ...
    one per ``record["choices"]`` entry, as it continues ``prefix + prompt``); the item is correct when the
    right letter has the highest. Ties go to the first option (``argmax``), as in lm-eval-harness."""
    bad = [i for i, q in enumerate(items) if q.scoring != "choice"]
    if bad:
        raise ConceptFileError(
            f"item {bad[0]} is scored {items[bad[0]].scoring!r}, not as a multiple-choice item",
            "choice_scores reads the option letters of items with scoring='choice'",
            "pass multiple-choice items only (e.g. from probes.benchmarks.load_wmdp), or use score_qa",
        )
    prompts = [prefix + q.prompt for q in items]
    options = [choice_letters(q) for q in items]
    logprobs = option_logprobs(model, prompts, options, batch_size=batch_size)
    return ChoiceScores(
        prompts=tuple(prompts),
        options=tuple(tuple(o) for o in options),
        logprobs=tuple(tuple(lp) for lp in logprobs),
        chosen=tuple(max(range(len(lp)), key=lp.__getitem__) for lp in logprobs),
        answer_index=tuple(o.index(q.answer) for o, q in zip(options, items, strict=True)),
    )


@dataclass(frozen=True)
class QAScores(Result):
    """Per-item greedy completions, correctness and answer log-probabilities."""

    prompts: tuple[str, ...]
    answers: tuple[str, ...]
    completions: tuple[str, ...]
    correct: tuple[bool, ...]
    logprobs: tuple[float, ...]

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct) if self.correct else float("nan")

    @property
    def mean_logprob(self) -> float:
        """The mean over the items asked (a query form leaves an item it could not ask at NaN)."""
        asked = [x for x in self.logprobs if x == x]
        return sum(asked) / len(asked) if asked else float("nan")

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "prompt": self.prompts,
                "answer": self.answers,
                "completion": self.completions,
                "correct": self.correct,
                "logprob": self.logprobs,
            }
        )

    def summary(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "mean_logprob": self.mean_logprob, "n": len(self.prompts)}


def score_qa(
    model: Model,
    items: Sequence[QA],
    *,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    prefix: str = "",
    progress: bool = False,
) -> QAScores:
    """Greedy accuracy and answer log-probability of ``items`` (``prefix`` is prepended to every prompt,
    e.g. an adversarial instruction or the concept's text). A multiple-choice item (``scoring="choice"``)
    is correct when its right letter is the most likely option (``choice_scores``); its log-probability is
    that letter's, and its completion is still the greedy one."""
    prompts = [prefix + q.prompt for q in items]
    answers = [q.answer for q in items]
    if max_new_tokens is None:
        max_new_tokens = max(
            (
                max_tokens_for(len(answer_ids(model, p, q.answer)[1]), q.scoring)
                for p, q in zip(prompts, items)
            ),
            default=3,
        )
    completions: list[str] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="qa", disable=not progress, leave=False):
        completions += model.generate(prompts[start : start + batch_size], max_new_tokens, batch_size)
    correct = [is_correct(c, q.answer, q.scoring) for c, q in zip(completions, items)]
    logprobs = [0.0] * len(items)
    plain = [i for i, q in enumerate(items) if q.scoring != "choice"]
    if plain:
        values = answer_logprobs(
            model, [prompts[i] for i in plain], [answers[i] for i in plain], batch_size=batch_size
        )
        for i, x in zip(plain, values.tolist(), strict=True):
            logprobs[i] = x
    choice = [i for i, q in enumerate(items) if q.scoring == "choice"]
    if choice:
        cs = choice_scores(model, [items[i] for i in choice], prefix=prefix, batch_size=batch_size)
        for i, ok, lp, a in zip(choice, cs.correct, cs.logprobs, cs.answer_index, strict=True):
            correct[i], logprobs[i] = ok, lp[a]
    return QAScores(
        prompts=tuple(prompts),
        answers=tuple(answers),
        completions=tuple(completions),
        correct=tuple(correct),
        logprobs=tuple(float(x) for x in logprobs),
    )


def validate_concept(model: Model, concept: Concept) -> Concept:
    """Check that ``model``'s tokenizer can produce every answer of ``concept`` (``qa`` and
    ``unrelated_qa``): its tokens, as they continue the prompt, must not hold the unknown token, must have
    an output row in the model, and must decode (as completions are decoded, special tokens skipped) back to
    the answer; prompt and answer must fit the context. Raises ``ConceptFileError`` naming the file, the
    entry and the item; returns ``concept`` unchanged otherwise."""
    tok = model.tokenizer
    unk = getattr(tok, "unk_token_id", None)
    d_vocab, n_ctx = model.cfg.d_vocab, model.cfg.n_ctx
    where = f"{concept.source or '<concept>'}: entry {concept.concept!r}"
    for key, items in (("qa", concept.qa), ("unrelated_qa", concept.unrelated_qa)):
        for i, q in enumerate(items):
            p_ids, a_ids = answer_ids(model, q.prompt, q.answer)
            decoded = tok.decode(a_ids, skip_special_tokens=True)
            problem = (
                f"{where}: {key}[{i}]: the answer {q.answer!r} cannot be produced by the tokenizer of "
                f"{model.name!r}"
            )
            fix = (
                "write the answer as plain text the model can generate (no special-token markup, no characters "
                "the tokenizer drops), or drop the item"
            )
            if not a_ids:
                raise ConceptFileError(problem, "it tokenizes to no token at all", fix)
            if unk is not None and unk in a_ids:
                raise ConceptFileError(problem, f"its tokens {a_ids} contain the unknown token {unk}", fix)
            if max(a_ids) >= d_vocab:
                raise ConceptFileError(
                    problem, f"token id {max(a_ids)} has no row in the model's {d_vocab}-row unembedding", fix
                )
            if not is_correct(decoded, q.answer):
                raise ConceptFileError(
                    problem,
                    f"its tokens {a_ids} decode to {decoded!r}, so no greedy completion can start with it",
                    fix,
                )
            if len(p_ids) + len(a_ids) > n_ctx:
                raise ConceptFileError(
                    f"{where}: {key}[{i}]: prompt and answer take {len(p_ids) + len(a_ids)} tokens, more "
                    f"than the model's context of {n_ctx}",
                    None,
                    "shorten the prompt",
                )
    return concept
