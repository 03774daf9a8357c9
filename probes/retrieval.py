"""Retrieval heads (Wu et al. 2024, "Retrieval Head Mechanistically Explains Long-Context Factuality").

Needle-in-a-haystack tests are built from our own long text (``data/haystack``): a needle sentence is
inserted at a sentence boundary at depth ``d`` of a context of ``n`` tokens, and a question asks for the
answer that must be copied from the needle. During greedy decoding, at every step and for every head,
``j`` = argmax of the head's attention row for the *current query* (read from ``hook_attn_scores`` with
the KV cache, so each step computes one query row; argmax of scores = argmax of the pattern). If ``j``
lies in the needle's answer span and the token at ``j`` is the token generated at this step, the head
gets ``1 / len(span)``. Scores are averaged over the tests answered correctly (ROUGE-1 recall > 0.5 of
the answer's words, as in the reference; exact containment is reported too). A head scoring *more than*
0.1 is a retrieval head (the paper's rule, "retrieval score larger than 0.1"; a head at exactly 0.1 is
not one). The bridge exposes one attention row per *query* head, so grouped-query models (SmolLM2:
9 query / 3 key-value heads) need no mapping here.

The decoding protocol is the reference's (nightdessert/Retrieval_Head, ``retrieval_head_detection.py``):
up to 50 new tokens, and decoding stops after the first generated token that holds a newline (the
reference stops on the newline token; with a BPE vocabulary that is every token containing ``"\n"``), so
an answer the model repeats on the next line is not counted twice. The answer span is the answer's
tokens *as they occur in the context*, including a leading-space piece the tokenizer splits off (SmolLM2
writes " 2,450" as ``" "``, ``"2"``, ``","``, ...): the reference tokenizes the answer with a
SentencePiece tokenizer, which prepends that space itself, so its span holds the piece too.

Deviations, on purpose, with their measured effect (SmolLM2, the bundled needles, lengths 500 and 1000,
depths 0.1 / 0.5 / 0.9: 54 tests):

- ROUGE-1 is computed without a stemmer (lower-cased alphanumeric word tokens, rouge_score's tokenizer
  minus Porter stemming, so no extra dependency): the correct/incorrect verdict equals stemmed ROUGE on
  all 54 tests.
- decoding also stops at the end-of-sequence token (the reference decodes past it until a newline):
  against a port of the reference that does not, the 270 head scores agree to 9e-8 (Spearman 1.0,
  the same 15 retrieval heads), so it changes nothing there.
- masking (both modes, see ``probes.heads``) acts on the decode steps only, as the reference's does.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from probes import hooks
from probes.data import DATA_DIR, split_sentences
from probes.errors import ContextLengthError, VestigeError
from probes.heads import Head, MaskMode, mask_hooks, random_heads, top_heads
from probes.model import Model
from probes.results import Result

HAYSTACK_FILE = DATA_DIR / "haystack" / "haystack.txt"
NEEDLES_FILE = DATA_DIR / "haystack" / "needles.json"
RETRIEVAL_THRESHOLD = 0.1  # a retrieval head scores strictly more than this
MAX_NEW_TOKENS = 50  # the reference's decoding length
_PLACEHOLDER = "\x00CONTEXT\x00"


class HaystackError(VestigeError):
    """The haystack or needle file is missing or malformed."""


@dataclass(frozen=True)
class Needle:
    needle: str
    question: str
    answer: str


def load_needles(path: str | Path = NEEDLES_FILE) -> list[Needle]:
    """Needles: a JSON list of ``{"needle", "question", "answer"}``; the answer must occur in the needle."""
    path = Path(path)
    if not path.is_file():
        raise HaystackError(
            f"needle file {str(path)!r} does not exist", None, f"pass a file like {NEEDLES_FILE}"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HaystackError(
            f"needle file {str(path)!r} cannot be read",
            f"it is not UTF-8 JSON ({e})",
            'write a JSON list [{"needle": ..., "question": ..., "answer": ...}] in UTF-8',
        ) from e
    out = []
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        if not isinstance(item, dict) or not {"needle", "question", "answer"} <= set(item):
            raise HaystackError(
                f"{path}: item {i} lacks 'needle', 'question' or 'answer'",
                f"found {item!r}"[:200],
                'write [{"needle": ..., "question": ..., "answer": ...}]',
            )
        n = Needle(str(item["needle"]).strip(), str(item["question"]).strip(), str(item["answer"]).strip())
        if n.answer.lower() not in n.needle.lower():
            raise HaystackError(
                f"{path}: item {i}: the answer {n.answer!r} does not occur in the needle",
                "the retrieval score needs the answer's token span inside the needle",
                "make the answer a verbatim substring of the needle sentence",
            )
        out.append(n)
    if not out:
        raise HaystackError(f"{path}: no needles", "the file must hold a JSON list", "add needle objects")
    return out


def load_haystack(path: str | Path = HAYSTACK_FILE) -> str:
    path = Path(path)
    if not path.is_file():
        raise HaystackError(
            f"haystack {str(path)!r} does not exist", None, f"pass a text file like {HAYSTACK_FILE}"
        )
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise HaystackError(
            f"haystack {str(path)!r} cannot be read", f"it is not UTF-8 text ({e})", "save it as UTF-8"
        ) from e


def rouge1_recall(reference: str, candidate: str) -> float:
    """Share of the reference's word unigrams (clipped counts) found in the candidate (no stemming)."""
    ref = Counter(re.findall(r"[a-z0-9]+", reference.lower()))
    cand = Counter(re.findall(r"[a-z0-9]+", candidate.lower()))
    total = sum(ref.values())
    return sum(min(c, cand[w]) for w, c in ref.items()) / total if total else 0.0


@dataclass(frozen=True)
class NIAHTest:
    """One needle-in-a-haystack prompt: token ids and the answer's token span ``[start, end)``."""

    needle: Needle
    length: int
    depth: float
    ids: tuple[int, ...] = field(repr=False)
    span: tuple[int, int]


def _template(model: Model, question: str, chat: bool) -> tuple[str, str]:
    """Text before and after the context."""
    instruction = f"\n\nAnswer the question using only the text above.\nQuestion: {question}"
    if chat and getattr(model.tokenizer, "chat_template", None):
        text = model.tokenizer.apply_chat_template(
            [{"role": "user", "content": _PLACEHOLDER + instruction}],
            tokenize=False,
            add_generation_prompt=True,
        )
        before, after = text.split(_PLACEHOLDER)
        return before, after + "Answer:"
    return "", instruction + "\nAnswer:"


def build_test(
    model: Model, sentences: Sequence[str], needle: Needle, length: int, depth: float, *, chat: bool = True
) -> NIAHTest:
    """A context of about ``length`` tokens (haystack sentences, cycled if needed, plus the needle) with the
    needle inserted at the sentence boundary nearest to ``depth`` (0 = start, 1 = end)."""
    tok = model.tokenizer

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    needle_ids = ids(" " + needle.needle)
    chosen, total, i = [], len(needle_ids), 0
    while total < length:
        s = sentences[i % len(sentences)]
        chosen.append(s)
        total += len(ids(" " + s))
        i += 1
    cut = round(depth * len(chosen))
    before, after = _template(model, needle.question, chat)
    head = ids(before + " ".join(chosen[:cut]))
    tail = ids((" " if cut < len(chosen) else "") + " ".join(chosen[cut:]) + after)
    # A BOS the tokenizer adds, unless a chat template (which spells its own special tokens) is used.
    special = [] if before else tok("", add_special_tokens=True)["input_ids"]
    # The answer's tokens inside the needle, by character offsets.
    enc = tok(" " + needle.needle, add_special_tokens=False, return_offsets_mapping=True)
    a0 = (" " + needle.needle).lower().index(needle.answer.lower())
    a1 = a0 + len(needle.answer)
    inside = [k for k, (s, e) in enumerate(enc["offset_mapping"]) if s < a1 and e > a0]
    # A leading-space piece split off the answer (" 2,450" -> " ", "2", ...) belongs to the span: a
    # SentencePiece tokenizer, as in the reference, would have prepended it to the answer's first piece.
    first = inside[0]
    if first > 0 and enc["offset_mapping"][first - 1][1] == a0:
        piece = tok.decode([enc["input_ids"][first - 1]])
        if piece and piece.isspace():
            inside.insert(0, first - 1)
    offset = len(special) + len(head)
    span = (offset + inside[0], offset + inside[-1] + 1)
    full = special + head + needle_ids + tail
    if len(full) > model.cfg.n_ctx:
        raise ContextLengthError(
            f"the needle-in-a-haystack prompt for length {length} has {len(full)} tokens (haystack, needle "
            f"and question), more than the model's context of {model.cfg.n_ctx}",
            "positions beyond the context window are undefined for this model; vestige does not truncate "
            "the haystack silently",
            f"use context lengths of at most about {model.cfg.n_ctx - (len(full) - length)} tokens",
        )
    return NIAHTest(needle, length, float(depth), tuple(full), span)


def build_tests(
    model: Model,
    needles: Sequence[Needle],
    haystack: str,
    lengths: Sequence[int] = (500,),
    depths: Sequence[float] = (0.1, 0.5, 0.9),
    *,
    chat: bool = True,
) -> list[NIAHTest]:
    """The grid lengths x depths x needles."""
    sentences = split_sentences(haystack)
    if not sentences:
        raise HaystackError("the haystack text is empty", None, "pass a long text file")
    return [
        build_test(model, sentences, n, L, d, chat=chat) for L in lengths for d in depths for n in needles
    ]


@torch.no_grad()
def decode(
    model: Model,
    ids: Sequence[int],
    max_new_tokens: int,
    *,
    span: tuple[int, int] | None = None,
    fwd_hooks: Sequence[tuple[str, Callable]] = (),
    argmax_out: list[torch.Tensor] | None = None,
    stop_at_newline: bool = True,
) -> tuple[list[int], Float[torch.Tensor, "layers heads"]]:
    """Greedy decoding through the bridge with the KV cache. The prompt minus its last token is pre-filled;
    each decode step then feeds one token, so every attention row read is the current query's. With
    ``span``, returns per head the retrieval score of this test (sum of ``1/len(span)`` over copy steps);
    ``fwd_hooks`` act on the decode steps only (masking). ``argmax_out`` (a list) receives each step's
    argmax key position per head, ``[layers, heads]``, when ``span`` is given. Decoding stops after EOS
    and, with ``stop_at_newline`` (the reference's protocol), after a token holding a newline; the
    stopping token is kept and scored, as in the reference."""
    cfg, br = model.cfg, model.bridge
    if len(ids) + max_new_tokens > cfg.n_ctx:
        raise ContextLengthError(
            f"a prompt of {len(ids)} tokens plus {max_new_tokens} new tokens exceeds the model's context of "
            f"{cfg.n_ctx}",
            "positions beyond the context window are undefined for this model",
            "use a shorter haystack or fewer new tokens",
        )
    prompt = torch.tensor([list(ids)], device=model.device)
    hits = torch.zeros(cfg.n_layers, cfg.n_heads, device=model.device)
    rows: list[torch.Tensor | None] = [None] * cfg.n_layers
    score_hooks = []
    if span is not None:

        def make(layer: int):
            def fn(scores, hook):
                # a sliding-window layer (Gemma-2/3, Mistral) keeps only the last keys: its row's key j
                # is absolute position j + (tokens so far - keys kept)
                rows[layer] = scores[0, :, -1].argmax(-1) + (seen[0] - scores.shape[-1])

            return fn

        score_hooks = [(hooks.attn_scores(layer), make(layer)) for layer in range(cfg.n_layers)]
        start, end = span
        span_ids = prompt[0, start:end]
    _, cache = br(prompt[:, :-1], return_type="logits_and_cache", use_cache=True)
    cur, out = prompt[:, -1:], []
    seen = [prompt.shape[1]]  # tokens the current decode step's query has in its past, itself included
    eos = model.tokenizer.eos_token_id
    with br.hooks(fwd_hooks=list(fwd_hooks) + score_hooks):
        for _ in range(max_new_tokens):
            logits, cache = br(cur, return_type="logits_and_cache", past_key_values=cache)
            nxt = logits[0, -1].argmax()
            if span is not None:
                j = torch.stack(rows)  # [layers, heads]
                if argmax_out is not None:
                    argmax_out.append(j.cpu())
                inside = (j >= start) & (j < end)
                same = span_ids[(j - start).clamp(0, end - start - 1)] == nxt
                hits += (inside & same).float() / (end - start)
            token = int(nxt)
            out.append(token)
            if token == eos or (stop_at_newline and "\n" in model.tokenizer.decode([token])):
                break
            cur = nxt.view(1, 1)
            seen[0] += 1
    return out, hits


@dataclass(frozen=True)
class NIAHOutcome(Result):
    needle: str
    answer: str
    length: int
    depth: float
    completion: str
    rouge1_recall: float
    correct: bool
    contains: bool


def _outcome(model: Model, test: NIAHTest, tokens: list[int]) -> NIAHOutcome:
    text = model.tokenizer.decode(tokens, skip_special_tokens=True)
    r = rouge1_recall(test.needle.answer, text)
    return NIAHOutcome(
        test.needle.needle,
        test.needle.answer,
        test.length,
        test.depth,
        text,
        r,
        r > 0.5,
        test.needle.answer.lower() in text.lower(),
    )


@dataclass(frozen=True)
class RetrievalScores(Result):
    """Retrieval score per head (layers x heads), averaged over the correctly answered tests."""

    scores: Float[torch.Tensor, "layers heads"]
    threshold: float
    outcomes: tuple[NIAHOutcome, ...] = field(repr=False)

    @property
    def n_correct(self) -> int:
        return sum(o.correct for o in self.outcomes)

    @property
    def accuracy(self) -> float:
        return self.n_correct / len(self.outcomes) if self.outcomes else float("nan")

    @property
    def retrieval_heads(self) -> list[Head]:
        """Heads scoring more than the threshold (the paper's strict rule), highest first."""
        n = int((self.scores > self.threshold).sum())
        return top_heads(self.scores, n)

    @property
    def share(self) -> float:
        return len(self.retrieval_heads) / self.scores.numel()

    def to_dict(self) -> dict:
        return {
            "scores": self.scores.tolist(),
            "threshold": self.threshold,
            "retrieval_heads": [list(h) for h in self.retrieval_heads],
            "share": self.share,
            "n_tests": len(self.outcomes),
            "n_correct": self.n_correct,
            "accuracy": self.accuracy,
            "outcomes": [o.to_dict() for o in self.outcomes],
        }

    def to_frame(self) -> pd.DataFrame:
        layers, heads = self.scores.shape
        return pd.DataFrame(
            [
                {"layer": layer, "head": h, "score": float(self.scores[layer, h])}
                for layer in range(layers)
                for h in range(heads)
            ]
        ).sort_values("score", ascending=False, ignore_index=True)


def retrieval_scores(
    model: Model,
    tests: Sequence[NIAHTest],
    *,
    max_new_tokens: int = MAX_NEW_TOKENS,
    threshold: float = RETRIEVAL_THRESHOLD,
    stop_at_newline: bool = True,
    progress: bool = True,
) -> RetrievalScores:
    """Retrieval scores of all heads from greedy decoding of ``tests`` (Wu et al. 2024), with the
    reference's protocol by default (50 new tokens, newline stop; see the module docstring)."""
    cfg = model.cfg
    total = torch.zeros(cfg.n_layers, cfg.n_heads)
    outcomes = []
    for test in tqdm(tests, desc="niah", disable=not progress, leave=False):
        tokens, hits = decode(
            model, test.ids, max_new_tokens, span=test.span, stop_at_newline=stop_at_newline
        )
        outcome = _outcome(model, test, tokens)
        outcomes.append(outcome)
        if outcome.correct:
            total += hits.cpu()
    n = sum(o.correct for o in outcomes)
    return RetrievalScores(total / max(n, 1), threshold, tuple(outcomes))


def niah_outcomes(
    model: Model,
    tests: Sequence[NIAHTest],
    *,
    heads: Sequence[Head] = (),
    mode: MaskMode = "uniform",
    max_new_tokens: int = MAX_NEW_TOKENS,
    stop_at_newline: bool = True,
    progress: bool = True,
) -> list[NIAHOutcome]:
    """Answers to ``tests`` with ``heads`` masked in ``mode`` on the decode steps."""
    fwd = mask_hooks(heads, mode) if heads else []
    return [
        _outcome(
            model,
            t,
            decode(model, t.ids, max_new_tokens, fwd_hooks=fwd, stop_at_newline=stop_at_newline)[0],
        )
        for t in tqdm(tests, desc=f"niah mask {len(heads)}", disable=not progress, leave=False)
    ]


def _accuracy(outcomes: Sequence[NIAHOutcome]) -> float:
    return sum(o.correct for o in outcomes) / len(outcomes) if outcomes else float("nan")


@dataclass(frozen=True)
class MaskingResult(Result):
    """NIAH accuracy unmasked, with the top heads masked, and with as many random non-retrieval heads."""

    mode: str
    k: int
    top_heads: tuple[Head, ...]
    random_heads: tuple[tuple[Head, ...], ...]
    baseline_accuracy: float
    top_masked_accuracy: float
    random_masked_accuracy: float
    random_accuracies: tuple[float, ...]
    top_masked_outcomes: tuple[NIAHOutcome, ...] = field(repr=False, default=())

    @property
    def top_drop(self) -> float:
        return self.baseline_accuracy - self.top_masked_accuracy

    @property
    def random_drop(self) -> float:
        return self.baseline_accuracy - self.random_masked_accuracy

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.update(top_drop=self.top_drop, random_drop=self.random_drop)
        return d


def masking_experiment(
    model: Model,
    tests: Sequence[NIAHTest],
    scores: RetrievalScores,
    *,
    fraction: float = 0.05,
    mode: MaskMode = "uniform",
    n_random: int = 2,
    seed: int = 0,
    max_new_tokens: int = MAX_NEW_TOKENS,
    progress: bool = True,
) -> MaskingResult:
    """Mask the top ``fraction`` of heads by retrieval score, then as many random heads drawn outside the
    retrieval heads (and outside that top set), ``n_random`` draws; the baseline comes from ``scores``."""
    layers, n_heads = scores.scores.shape
    k = max(1, round(fraction * layers * n_heads))
    top = top_heads(scores.scores, k)
    exclude = set(scores.retrieval_heads) | set(top)
    top_out = niah_outcomes(
        model, tests, heads=top, mode=mode, max_new_tokens=max_new_tokens, progress=progress
    )
    draws, accs = [], []
    for r in range(n_random):
        heads = random_heads(layers, n_heads, k, exclude=sorted(exclude), seed=seed + r)
        draws.append(tuple(heads))
        out = niah_outcomes(
            model, tests, heads=heads, mode=mode, max_new_tokens=max_new_tokens, progress=progress
        )
        accs.append(_accuracy(out))
    return MaskingResult(
        mode=mode,
        k=k,
        top_heads=tuple(top),
        random_heads=tuple(draws),
        baseline_accuracy=scores.accuracy,
        top_masked_accuracy=_accuracy(top_out),
        random_masked_accuracy=sum(accs) / len(accs) if accs else float("nan"),
        random_accuracies=tuple(accs),
        top_masked_outcomes=tuple(top_out),
    )
