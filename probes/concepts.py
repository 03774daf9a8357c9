"""Concept vectors: the parametric knowledge traces of ConceptVectors (Hong et al. 2024, "Intrinsic
Evaluation of Unlearning Using Parametric Knowledge Traces"; docs/concept_vectors.md).

A concept vector is one MLP value vector, row ``i`` of ``model.W_out(layer)``: what neuron ``i`` writes
into the residual stream. This module

- ``scan``s the vocabulary projection ``W_U^T v`` of every value vector (top-k tokens, chunked, bounded
  memory, on the model's device);
- ``locate``s the vectors of a concept automatically and offline: the reference judged candidates by
  hand / GPT-4; we score (a) how strongly the projection promotes the concept's tokens and (b) the
  vector's direct effect on the concept's answers, minus its direct effect on unrelated answers (without
  that subtraction the ranking picks generic output neurons of the last layers, docs/concept_vectors.md);
- ``validate``s them causally (ablation or Gaussian noise, against as many random vectors of the same
  layers) inside ``probes.edits.edited_vectors``, which always restores the exact weights. The reference
  perturbs in place and never restores, so noise accumulates across concepts; we never do;
- ``compare``s the vectors of a base and an unlearned model (cosine, L2, top-k Jaccard, retained concept
  tokens).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from probes import hooks
from probes.data import QA, Concept
from probes.edits import VectorRef, as_refs, check_compatible, edited_vectors
from probes.errors import VestigeError
from probes.model import Model
from probes.qa import answer_ids, answer_logprobs, score_qa
from probes.results import Result

# ---- vocabulary projection ---------------------------------------------------------------------------


def _norm_weight(model: Model) -> torch.Tensor | None:
    return model.final_norm_gain()


def value_vectors(
    model: Model, layer: int, *, final_norm: bool = False
) -> Float[torch.Tensor, "d_mlp d_model"]:
    """The value vectors of ``layer`` (detached), optionally multiplied by the final norm's weight (what
    the unembedding sees of them, up to the per-position normalisation scale); where the MLP's output is
    normalised before it joins the residual stream (``Model.mlp_out_norm``), also by that norm's gain."""
    w_out = model.W_out(layer).detach()
    if final_norm:
        post = model.mlp_out_norm(layer)
        if post is not None and model.norm_gain(post) is not None:
            w_out = w_out * model.norm_gain(post)
        if model.final_norm_centers:  # LayerNorm removes the mean of what is written
            w_out = w_out - w_out.mean(-1, keepdim=True)
        weight = _norm_weight(model)
        if weight is not None:
            w_out = w_out * weight
    return w_out


@dataclass(frozen=True)
class ScanResult(Result):
    """Top-k vocabulary projection of every value vector of ``layers``:
    ``token_ids[j, i]`` / ``scores[j, i]`` belong to neuron ``i`` of layer ``layers[j]``, best first."""

    layers: tuple[int, ...]
    k: int
    final_norm: bool
    token_ids: Int[torch.Tensor, "layer d_mlp k"]
    scores: Float[torch.Tensor, "layer d_mlp k"]

    def top(self, layer: int, neuron: int) -> tuple[list[int], list[float]]:
        j = self.layers.index(layer)
        return self.token_ids[j, neuron].tolist(), self.scores[j, neuron].tolist()

    def to_dict(self) -> dict:
        return {"layers": list(self.layers), "k": self.k, "final_norm": self.final_norm}

    def to_frame(self, n: int = 10) -> pd.DataFrame:
        """One row per (layer, neuron): the ``n`` best token ids and scores."""
        rows = []
        for j, layer in enumerate(self.layers):
            ids, sc = self.token_ids[j, :, :n].tolist(), self.scores[j, :, :n].tolist()
            rows += [
                {"layer": layer, "neuron": i, "top_ids": a, "top_scores": b}
                for i, (a, b) in enumerate(zip(ids, sc))
            ]
        return pd.DataFrame(rows)


SCAN_FLOATS = 1 << 24  # logits of value vectors held at once by ``scan`` (64 MB in float32)


@torch.no_grad()
def scan(
    model: Model,
    layers: Sequence[int] | None = None,
    k: int = 200,
    final_norm: bool = False,
    *,
    chunk: int | None = 0,
    progress: bool = False,
) -> ScanResult:
    """Vocabulary projection ``W_U^T v`` of every value vector, reduced to its top ``k`` tokens.

    Computed on the model's device in chunks of ``chunk`` vectors (None: a whole layer at once; 0, the
    default: as many as make ``SCAN_FLOATS`` logits, 341 on SmolLM2's 49,152-token vocabulary): peak
    memory is one ``[chunk, d_vocab]`` block of logits, and the result does not depend on ``chunk``. An
    out-of-memory error halves the chunk and retries (``probes.chunks.run_chunked``). The default is the
    ConceptVectors reference projection (yihuaihong/ConceptVectors, ``forget.py`` / ``evaluate_util.py``:
    the raw value vector times the output embedding, no final norm). ``final_norm=True`` multiplies ``v``
    by the final norm's weight first (what the unembedding sees of it); that is not the reference's
    projection and changes the top tokens a lot (SmolLM2, 200 random value vectors: top-200
    overlap with the reference 1-185 of 200, median 145)."""
    from probes.chunks import run_chunked

    layers = tuple(range(model.cfg.n_layers)) if layers is None else tuple(layers)
    W_U = model.W_U.detach()
    k = min(k, W_U.shape[1])
    d_mlp = model.cfg.d_mlp
    chunk = d_mlp if chunk is None else chunk or max(1, SCAN_FLOATS // W_U.shape[1])
    ids = torch.empty((len(layers), d_mlp, k), dtype=torch.int32)
    scores = torch.empty((len(layers), d_mlp, k), dtype=torch.float32)
    for j, layer in enumerate(tqdm(layers, desc="scan", disable=not progress, leave=False)):
        V = value_vectors(model, layer, final_norm=final_norm)

        def block(start: int, stop: int, j: int = j, V: torch.Tensor = V) -> None:
            top = torch.topk(V[start:stop] @ W_U, k, dim=-1)
            ids[j, start:stop] = top.indices.to("cpu", torch.int32)
            scores[j, start:stop] = top.values.to("cpu", torch.float32)

        chunk = run_chunked(block, d_mlp, chunk)
    return ScanResult(layers, k, final_norm, ids, scores)


@torch.no_grad()
def top_tokens(
    model: Model, layer: int, neuron: int, k: int = 20, *, final_norm: bool = False
) -> list[tuple[str, float]]:
    """The ``k`` tokens a value vector promotes most, decoded, with their projection scores (by default
    the reference's raw projection, see ``scan``)."""
    v = value_vectors(model, layer, final_norm=final_norm)[neuron]
    top = torch.topk(v @ model.W_U.detach(), k)
    return [
        (model.tokenizer.decode([int(t)]), float(s))
        for t, s in zip(top.indices.tolist(), top.values.tolist())
    ]


# ---- concept tokens ----------------------------------------------------------------------------------

_STOPWORDS = frozenset(
    """about above after again against also among an and any are around as at be became because been
    before being below between both but by called can could did does during each early even first for
    from further had has have having he her here hers him his how however into is it its itself known
    large later like made many may more most much must near new not now of off often on once one only or
    other our out over own part same several she should since so some such than that the their them then
    there these they this those through to under until up upon very was way well were what when where
    which while who whom why will with within would year years you your""".split()
)


def concept_token_ids(model: Model, concept: Concept, *, n_text_words: int = 30) -> list[int]:
    """Token ids that stand for ``concept``: the words of its name, its answers (as they continue their
    prompts, and as words) and the ``n_text_words`` most frequent names of its ``text`` (capitalised
    words that do not start a sentence: generic words of the text, "century", "works", "major", are not
    the concept's), each where the tokenizer writes it as one token (with or without a leading space)
    of at least 3 letters or digits, stop words left out. The answers come first. A word the tokenizer splits
    is left out: its first piece (" We" of " Weasley", " Row" of " Rowling", " pro" of " prolific")
    stands for many words, and a value vector that promotes it is not about the concept."""
    tok = model.tokenizer
    words: list[str] = [q.answer for q in concept.qa]
    words += re.findall(r"[A-Za-z][A-Za-z'\-]+", concept.concept)
    # the text's names: capitalised words that are not the first word of a sentence
    counts = Counter(
        m.group(1)
        for t in concept.text
        for m in re.finditer(r"(?<=[A-Za-z0-9,;:'\)] )([A-Z][A-Za-z'\-]{2,})", t)
        if m.group(1).lower() not in _STOPWORDS
    )
    words += [w for w, _ in counts.most_common(n_text_words)]
    d_vocab = model.W_U.shape[1]
    keep: list[int] = []
    for w in words:
        if w.lower() in _STOPWORDS or len(re.sub(r"[^A-Za-z0-9]", "", w)) < 3:
            continue
        for form in (" " + w, w):
            ids = tok(form, add_special_tokens=False)["input_ids"]
            if len(ids) == 1 and ids[0] < d_vocab and ids[0] not in keep:
                keep.append(ids[0])
    return keep


def chance_hits(k: int, n_tokens: int, d_vocab: int, alpha: float = 0.05) -> int:
    """The fewest concept tokens a top-``k`` projection must hold to beat chance: the smallest ``h >= 1``
    with ``P(X >= h) <= alpha`` for ``X ~ Poisson(k * n_tokens / d_vocab)`` (a random vector's top-k
    holds each of the ``n_tokens`` with probability ``k / d_vocab``). SmolLM2 (k 200, 60 tokens, 49,152
    words): 2; a 500-word vocabulary (k 50, 30 tokens): 7."""
    lam = k * n_tokens / max(d_vocab, 1)
    h, term, below = 0, math.exp(-lam), 0.0
    while True:
        below += term  # P(X <= h)
        h += 1
        if 1.0 - below <= alpha:
            return max(h, 1)
        term *= lam / h


# ---- locate ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConceptVector(Result):
    """One located value vector and its two scores (see ``locate``)."""

    layer: int
    neuron: int
    projection_score: float
    effect_score: float
    score: float
    # kind "concept": the activation score, and how many concept tokens the vector's top-k projection holds
    activation_score: float | None = None
    concept_tokens_in_top: int | None = None


LOCATE_KINDS = ("concept", "answer_writers")


@dataclass(frozen=True)
class LocateResult(Result):
    """Value vectors ranked for a concept, best first (``kind``: see ``locate``)."""

    concept: str
    vectors: tuple[ConceptVector, ...]
    concept_tokens: tuple[int, ...]
    n_scored: int
    kind: str = "answer_writers"

    def refs(self) -> list[VectorRef]:
        return [(v.layer, v.neuron) for v in self.vectors]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([v.to_dict() for v in self.vectors])


def _norm_eps(norm: torch.nn.Module) -> float:
    return float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-5)))


def _last_position_state(
    model: Model, prompts: Sequence[str], layers: Sequence[int], batch_size: int
) -> tuple[dict[int, torch.Tensor], torch.Tensor, dict[int, torch.Tensor]]:
    """Neuron activations of ``layers``, the final-norm scale ``1/sigma`` and, per layer, the scale of the
    norm on the MLP's output (``Model.mlp_out_norm``; 1 without one), at the last prompt token."""
    last = model.cfg.n_layers - 1
    names = [hooks.mlp_post(l) for l in layers] + [hooks.resid_post(last)]
    acts: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
    inv_scale = []
    eps = _norm_eps(model.final_norm)
    for start in range(0, len(prompts), batch_size):
        ids, mask = model.tokenize(list(prompts[start : start + batch_size]), padding_side="left")
        _, cache = hooks.run_with_cache(model, ids, names, mask, logits_to_keep=1)
        for l in layers:
            acts[l].append(cache[hooks.mlp_post(l)][:, -1].float())
        x = cache[hooks.resid_post(last)][:, -1].float()
        if model.final_norm_centers:
            x = x - x.mean(-1, keepdim=True)
        inv_scale.append(torch.rsqrt(x.pow(2).mean(-1) + eps))
    acts = {l: torch.cat(a) for l, a in acts.items()}
    post_inv = {}
    for l in layers:
        norm = model.mlp_out_norm(l)
        if norm is None:
            post_inv[l] = torch.ones(len(prompts), device=acts[l].device)
            continue
        module = model.layer_module(l, "mlp_out")
        raw = acts[l] @ model.W_out(l).detach().float()
        if getattr(module, "bias", None) is not None:
            raw = raw + module.bias.detach().float()
        post_inv[l] = torch.rsqrt(raw.pow(2).mean(-1) + _norm_eps(norm))
    return acts, torch.cat(inv_scale), post_inv


@torch.no_grad()
def direct_effects(
    model: Model, items: Sequence[QA], layers: Sequence[int] | None = None, *, batch_size: int = 16
) -> dict[int, Float[torch.Tensor, "item d_mlp"]]:
    """Direct effect of every neuron on the first answer token of every item, at the prompt's last
    position: ``a_i * ((g * v_i) . (W_U[:, answer] - mean_t W_U[:, t])) / sigma`` where ``a_i`` is the
    activation, ``g`` the final norm's weight and ``sigma`` its normalisation scale on that prompt (frozen,
    the usual direct-logit-attribution linearisation). Centring the unembedding over the vocabulary makes
    it the effect on the answer's logit relative to the mean logit."""
    # each layer once, in the given order (a repeated layer used to stack its activations twice)
    layers = list(range(model.cfg.n_layers)) if layers is None else list(dict.fromkeys(layers))
    if not items:
        return {l: torch.zeros(0, model.cfg.d_mlp, device=model.device) for l in layers}
    acts, inv_scale, post_inv = _last_position_state(model, [q.prompt for q in items], layers, batch_size)
    return _direct_effects_of(model, items, layers, acts, inv_scale, post_inv)


def _direct_effects_of(
    model: Model,
    items: Sequence[QA],
    layers: Sequence[int],
    acts: dict[int, torch.Tensor],
    inv_scale: torch.Tensor,
    post_inv: dict[int, torch.Tensor],
) -> dict[int, torch.Tensor]:
    W_U = model.W_U.detach().float()
    answers = torch.tensor([answer_ids(model, q.prompt, q.answer)[1][0] for q in items], device=W_U.device)
    U = W_U[:, answers] - W_U.mean(1, keepdim=True)  # [d_model, item]
    out = {}
    for l in layers:
        G = value_vectors(model, l, final_norm=True).float() @ U  # [d_mlp, item]
        out[l] = acts[l] * G.T * (inv_scale * post_inv[l])[:, None]
    return out


@torch.no_grad()
def projection_scores(
    model: Model,
    token_ids: Sequence[int],
    layers: Sequence[int] | None = None,
    *,
    top: int = 5,
    final_norm: bool = False,
) -> dict[int, Float[torch.Tensor, " d_mlp"]]:
    """How strongly each value vector's projection promotes ``token_ids``: the projection logits
    ``v . W_U[:, t]`` (the ConceptVectors reference projection; ``(g * v) . W_U[:, t]`` with
    ``final_norm``) standardised over the whole vocabulary (z-scores, exact from the mean and covariance
    of the unembedding columns, no full projection needed), averaged over the ``top`` best concept
    tokens of that vector."""
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    W_U = model.W_U.detach().float()
    mean = W_U.mean(1)
    cov = _column_covariance(W_U, mean)
    T = W_U[:, torch.tensor(list(token_ids), device=W_U.device, dtype=torch.long)] - mean[:, None]
    q = max(1, min(top, len(token_ids)))
    out = {}
    for l in layers:
        V = value_vectors(model, l, final_norm=final_norm).float()
        sd = ((V @ cov) * V).sum(-1).clamp_min(1e-12).sqrt()
        z = (V @ T) / sd[:, None]
        out[l] = z.topk(q, dim=-1).values.mean(-1)
    return out


COVARIANCE_COLUMNS = 4096  # unembedding columns centred at once by ``_column_covariance`` (9 MB on SmolLM2)


def _column_covariance(
    W: Float[torch.Tensor, "d n"], mean: Float[torch.Tensor, " d"]
) -> Float[torch.Tensor, "d d"]:
    """The covariance of the columns of ``W`` (``mean``: their mean), accumulated over blocks of
    ``COVARIANCE_COLUMNS`` centred columns: the same sum as centring the whole matrix at once, without a
    copy of it (SmolLM2's unembedding: 113 MB)."""
    cov = torch.zeros(W.shape[0], W.shape[0], dtype=W.dtype, device=W.device)
    for start in range(0, W.shape[1], COVARIANCE_COLUMNS):
        block = W[:, start : start + COVARIANCE_COLUMNS] - mean[:, None]
        cov.addmm_(block, block.T)
    return cov / W.shape[1]


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """Robust z-score (median, MAD): a few huge generic neurons must not flatten the rest."""
    med = x.median()
    mad = (x - med).abs().median().clamp_min(1e-12) * 1.4826
    return (x - med) / mad


def middle_layers(n_layers: int) -> list[int]:
    """The middle half of the blocks, ``[n/4, 3n/4)`` rounded outwards (at least one): where the
    ConceptVectors reference found its concept vectors (LLaMA-2-7B: 18-25 of 32), away from the last
    blocks' generic answer writers. SmolLM2 (30 blocks): 7-22; gpt2-small: 3-8; a 4-block model: 1-2."""
    lo = n_layers // 4
    return list(range(lo, max(lo + 1, -(-3 * n_layers // 4))))


@torch.no_grad()
def locate(
    model: Model,
    concept: Concept,
    n: int = 10,
    *,
    kind: str = "answer_writers",
    layers: Sequence[int] | None = None,
    unrelated: Sequence[QA] | None = None,
    projection_weight: float = 0.5,
    activation_weight: float = 1.0,
    top_k: int = 200,
    batch_size: int = 16,
    final_norm: bool = False,
) -> LocateResult:
    """Rank value vectors for ``concept`` with no human or external judge. Two kinds:

    ``kind="answer_writers"`` (the causal kind: what Needle and the audit's trace search zero) ranks
    every layer's vectors by two scores:

    - ``projection_score``: see ``projection_scores`` (concept tokens: ``concept_token_ids``), on the
      ConceptVectors reference projection (raw value vector times the output embedding) unless
      ``final_norm``; the final-norm weighting changes the top tokens a lot (SmolLM2, 200 random value
      vectors: top-200 overlap with the reference 1-185 of 200, median 145), so what is reported as
      ConceptVectors projections uses the reference's;
    - ``effect_score``: mean direct effect on the concept's answers (``direct_effects``) minus the mean
      *absolute* direct effect on the unrelated answers (``unrelated``, default ``concept.unrelated_qa``).
      The subtraction removes generic output neurons that move every answer; the effect is a
      direct-logit attribution, so it always goes through the final norm (that is the logit the model
      computes, not a projection convention); the absolute value also removes neurons that push
      unrelated answers down (measured on SmolLM2, Japan: target drop 2.12 vs 1.42 nats with the signed
      mean, unrelated drop about equal).

    The ranking ``score`` is the robust z-score of ``effect_score`` plus ``projection_weight`` times the
    robust z-score of ``projection_score``; vectors with no positive specific effect are not returned.
    On SmolLM2 these sit in the last blocks and write the answers' first pieces: answer writers.

    ``kind="concept"`` (the ConceptVectors kind: vectors that *express* the concept) ranks the vectors of
    the ``middle_layers`` (unless ``layers``) by the robust z-score of ``projection_score`` plus
    ``activation_weight`` times that of ``activation_score``: the neuron's mean activation at the last
    token of the concept's prompts minus its mean absolute activation on the unrelated prompts (a vector
    that writes the concept's tokens but does not fire on its prompts is not its vector). Only vectors
    that fire more on the concept (``activation_score > 0``) and, among the ``max(200, 20n)`` best-scored,
    whose exact top-``top_k`` projection (at most a tenth of the vocabulary) holds more concept tokens than
    chance (``chance_hits``) are returned, best score first (``concept_tokens_in_top``: how many); their ``effect_score`` is computed as for answer writers, for comparison. Fewer than ``n`` come
    back when fewer qualify."""
    if kind not in LOCATE_KINDS:
        raise VestigeError(
            f"unknown locate kind {kind!r}",
            f"the kinds are {', '.join(LOCATE_KINDS)}",
            'use kind="concept" (vectors that express the concept) or kind="answer_writers" (vectors that '
            "write its answers)",
        )
    if layers is None:
        layers = middle_layers(model.cfg.n_layers) if kind == "concept" else range(model.cfg.n_layers)
    layers = list(dict.fromkeys(layers))
    unrelated = concept.unrelated_qa if unrelated is None else tuple(unrelated)
    tokens = concept_token_ids(model, concept)
    if not tokens:
        raise VestigeError(
            f"concept {concept.concept!r} yields no concept tokens",
            "its name, answers and text have no word of three letters or more",
            "give the concept a name, answers or text with words",
        )
    acts, inv, post = _last_position_state(model, [q.prompt for q in concept.qa], layers, batch_size)
    de = _direct_effects_of(model, concept.qa, layers, acts, inv, post)
    acts_un = de_un = None
    if unrelated:
        acts_un, inv_un, post_un = _last_position_state(
            model, [q.prompt for q in unrelated], layers, batch_size
        )
        de_un = _direct_effects_of(model, unrelated, layers, acts_un, inv_un, post_un)
    proj = projection_scores(model, tokens, layers, final_norm=final_norm)
    effect = torch.stack(
        [de[l].mean(0) - (de_un[l].abs().mean(0) if de_un is not None else 0.0) for l in layers]
    ).cpu()
    projection = torch.stack([proj[l] for l in layers]).cpu()
    d_mlp = model.cfg.d_mlp

    def vector(f: int, score: torch.Tensor, **extra) -> ConceptVector:  # flat index f over layers x d_mlp
        return ConceptVector(
            layers[f // d_mlp],
            f % d_mlp,
            float(projection.flatten()[f]),
            float(effect.flatten()[f]),
            float(score.flatten()[f]),
            **extra,
        )

    if kind == "answer_writers":
        score = _standardise(effect) + projection_weight * _standardise(projection)
        score = torch.where(effect > 0, score, torch.full_like(score, -math.inf))
        n = min(n, int((effect > 0).sum()))
        best = torch.topk(score.flatten(), n).indices.tolist() if n > 0 else []
        vectors = tuple(vector(f, score) for f in best)
        return LocateResult(concept.concept, vectors, tuple(tokens), score.numel(), kind)
    activation = torch.stack(
        [acts[l].mean(0) - (acts_un[l].abs().mean(0) if acts_un is not None else 0.0) for l in layers]
    ).cpu()
    score = _standardise(projection) + activation_weight * _standardise(activation)
    score = torch.where(activation > 0, score, torch.full_like(score, -math.inf))
    k = min(top_k, max(1, model.cfg.d_vocab // 10))
    need = chance_hits(k, len(tokens), model.cfg.d_vocab)
    wanted, W_U = set(tokens), model.W_U.detach().float()
    flat = score.flatten()
    pool = min(int(torch.isfinite(flat).sum()), max(200, 20 * n)) if n > 0 else 0
    candidates = torch.topk(flat, pool).indices.tolist() if pool else []  # best score first
    by_layer: dict[int, torch.Tensor] = {}
    vectors = []
    for f in candidates:  # the exact top-k projection of the best-scored vectors, until n qualify
        if len(vectors) == n:
            break
        layer, neuron = layers[f // d_mlp], f % d_mlp
        if layer not in by_layer:
            by_layer[layer] = value_vectors(model, layer, final_norm=final_norm).float()
        hits = len(set(torch.topk(by_layer[layer][neuron] @ W_U, k).indices.tolist()) & wanted)
        if hits >= need:
            extra = dict(activation_score=float(activation.flatten()[f]), concept_tokens_in_top=hits)
            vectors.append(vector(f, score, **extra))
    return LocateResult(concept.concept, tuple(vectors), tuple(tokens), flat.numel(), kind)


# ---- editing and validation --------------------------------------------------------------------------


def random_vectors(
    model: Model, vectors: Sequence[VectorRef] | Sequence[ConceptVector] | LocateResult, seed: int = 0
) -> list[VectorRef]:
    """A control set: for each vector, a random neuron of the same layer, none of them in ``vectors``."""
    refs = as_refs(vectors)
    taken = set(refs)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for layer, _ in refs:
        while True:
            neuron = int(torch.randint(model.cfg.d_mlp, (1,), generator=gen))
            if (layer, neuron) not in taken:
                taken.add((layer, neuron))
                out.append((layer, neuron))
                break
    return out


@dataclass(frozen=True)
class Validation(Result):
    """Causal validation of concept vectors (ConceptVectors, docs/concept_vectors.md).

    Drops are falls of the mean answer log-probability (nats, positive = worse); ``control_*`` come from
    as many random vectors of the same layers edited the same way."""

    concept: str
    mode: str
    scale: float
    n_vectors: int
    target_drop: float
    unrelated_drop: float
    control_target_drop: float
    control_unrelated_drop: float
    target_acc_before: float
    target_acc_after: float
    unrelated_acc_before: float
    unrelated_acc_after: float
    control_target_acc: float
    noise_ratio: float
    control_vectors: tuple[tuple[int, int], ...]

    @property
    def beats_control(self) -> bool:
        return self.target_drop > self.control_target_drop

    @property
    def spares_unrelated(self) -> bool:
        """The unrelated answers fall by less than half as much as the concept's."""
        return self.target_drop > 0 and self.unrelated_drop < 0.5 * self.target_drop

    @property
    def specific(self) -> bool:
        return self.beats_control and self.spares_unrelated


def _score(model: Model, concept: Concept, unrelated: Sequence[QA], batch_size: int, accuracy: bool):
    items = list(concept.qa) + list(unrelated)
    n = len(concept.qa)
    if accuracy:
        s = score_qa(model, items, batch_size=batch_size)
        lp, ok = s.logprobs, s.correct
    else:  # teacher-forced log-probabilities only: no greedy decoding
        lp = answer_logprobs(
            model, [q.prompt for q in items], [q.answer for q in items], batch_size=batch_size
        )
        lp, ok = lp.tolist(), []

    def mean(x):
        return sum(x) / len(x) if x else float("nan")

    return mean(lp[:n]), mean(lp[n:]), mean(ok[:n]), mean(ok[n:])


@torch.no_grad()
def validate(
    model: Model,
    concept: Concept,
    vectors: Sequence[VectorRef] | Sequence[ConceptVector] | LocateResult,
    mode: str = "ablate",
    scale: float = 0.1,
    seed: int = 0,
    *,
    unrelated: Sequence[QA] | None = None,
    batch_size: int = 16,
    accuracy: bool = True,
) -> Validation:
    """Edit ``vectors`` (``edited_vectors``) and measure the concept's QA against the unrelated QA,
    next to a seeded control of as many random vectors from the same layers. ``accuracy=False`` skips
    greedy decoding (accuracies are then NaN) and measures only the answer log-probabilities."""
    unrelated = concept.unrelated_qa if unrelated is None else tuple(unrelated)
    refs = as_refs(vectors)
    control = random_vectors(model, refs, seed=seed)
    t0, u0, ta0, ua0 = _score(model, concept, unrelated, batch_size, accuracy)
    with edited_vectors(model, refs, mode, scale, seed) as info:
        t1, u1, ta1, ua1 = _score(model, concept, unrelated, batch_size, accuracy)
    with edited_vectors(model, control, mode, scale, seed + 1):
        t2, u2, ta2, _ = _score(model, concept, unrelated, batch_size, accuracy)
    return Validation(
        concept=concept.concept,
        mode=mode,
        scale=scale,
        n_vectors=len(refs),
        target_drop=t0 - t1,
        unrelated_drop=u0 - u1,
        control_target_drop=t0 - t2,
        control_unrelated_drop=u0 - u2,
        target_acc_before=ta0,
        target_acc_after=ta1,
        unrelated_acc_before=ua0,
        unrelated_acc_after=ua1,
        control_target_acc=ta2,
        noise_ratio=info.noise_ratio,
        control_vectors=tuple(control),
    )


# ---- before / after ----------------------------------------------------------------------------------


@torch.no_grad()
def compare(
    base: Model,
    other: Model,
    vectors: Sequence[VectorRef] | Sequence[ConceptVector] | LocateResult,
    k: int = 200,
    *,
    concept: Concept | None = None,
    final_norm: bool = False,
) -> pd.DataFrame:
    """Per vector, base vs ``other`` (e.g. the unlearned model): cosine (clamped to at most 1, as the
    reference's ``evaluate_util.cosine_similarity``: identical vectors give 1.0, not 1.0000004), L2
    change, Jaccard of the two top-``k`` token sets (``k`` at most a tenth of the vocabulary; the
    reference's raw projection unless ``final_norm``), and the share of the base's concept-related top
    tokens (``concept_token_ids`` of ``concept``) still in the other's top-``k`` (NaN when there were
    none or no concept is given). Both vectors are compared in fp32, so a dtype difference is not
    reported as a change."""
    check_compatible(base, other, what="the two models")
    related = set(concept_token_ids(base, concept)) if concept is not None else set()
    k = min(k, max(1, base.cfg.d_vocab // 10))  # a top-k that is most of a small vocabulary says nothing
    rows = []
    for layer, neuron in as_refs(vectors):
        vb = base.W_out(layer)[neuron].detach().float()
        vo = other.W_out(layer)[neuron].detach().float().to(vb.device)
        pb = value_vectors(base, layer, final_norm=final_norm)[neuron].float() @ base.W_U.detach().float()
        po = value_vectors(other, layer, final_norm=final_norm)[neuron].float() @ other.W_U.detach().float()
        tb = set(torch.topk(pb, k).indices.tolist())
        to = set(torch.topk(po.to(pb.device), k).indices.tolist())
        rel = tb & related
        rows.append(
            {
                "layer": layer,
                "neuron": neuron,
                "cosine": min(float(torch.nn.functional.cosine_similarity(vb, vo, dim=0)), 1.0),
                "l2_change": float((vb - vo).norm()),
                "jaccard": len(tb & to) / len(tb | to),
                "concept_tokens_retained": len(rel & to) / len(rel) if rel else float("nan"),
                "n_concept_tokens": len(rel),
            }
        )
    return pd.DataFrame(rows)
