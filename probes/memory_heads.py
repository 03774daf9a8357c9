"""Memory heads and context heads (Jin et al. 2024, "Cutting Off the Head Ends the Conflict", PH3).

A knowledge conflict states a counterfactual answer in the context and then asks again
("Harry Potter's best friend is Ron Granger. Harry Potter's best friend is Ron"): the **memory answer**
(Weasley) and the **context answer** (Granger) compete. The counterfactual is another QA item's answer of
the same ``type``. Metric: logit(memory answer's first token) - logit(context answer's first token) at
the last position.

Head attribution (PH3 publishes no code; our choices): clean = the conflict prompt, corrupted = the same
prompt with a different counterfactual of the same token length (so positions align). A head's effect is
metric(corrupted run with that head's ``hook_z`` at every position taken from the clean run) -
metric(corrupted run), averaged over conflicts: exact activation patching, one batched forward per
chunk of heads. Attribution patching estimates all effects from one forward (clean and corrupted in one
batch) and one backward: ``(z_clean - z_corrupted) . d metric / d z`` at the corrupted run. Memory heads
have positive effects (raise the metric), context heads negative; both are ranked. Pruning zeroes the
heads' outputs (``hook_z``), and the memory/context rates are the shares of conflicts whose greedy next
token is the memory / context answer's first token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from probes import hooks
from probes.batching import token_batches
from probes.data import QA
from probes.heads import Head, all_heads, by_layer, mask_hooks, top_heads
from probes.memory import grad_pass_tokens
from probes.model import Model
from probes.qa import answer_ids
from probes.results import Result


@dataclass(frozen=True)
class Conflict:
    """A conflict prompt (clean), a corrupted twin, and the competing first tokens."""

    prompt: str
    memory_answer: str
    context_answer: str
    corrupt_answer: str
    clean_prompt: str
    corrupt_prompt: str
    memory_token: int
    context_token: int
    type: str | None = None


def conflict_prompt(prompt: str, counterfactual: str) -> str:
    """The counterfactual stated once, then the prompt repeated (docs/memory_heads.md)."""
    sep = "" if prompt[-1:].isspace() else " "
    return f"{prompt}{sep}{counterfactual}. {prompt}"


def build_conflicts(model: Model, items: Sequence[QA], *, max_items: int | None = None) -> list[Conflict]:
    """For each QA item, a counterfactual from another item of the same ``type`` (items without a type
    form one group): the first whose answer starts with a different token than the memory answer, then
    a corruption: another whose prompt has the same token length and a third distinct first token."""
    groups: dict[str | None, list[QA]] = {}
    for q in items:
        groups.setdefault(q.type, []).append(q)
    tok = model.tokenizer
    out: list[Conflict] = []
    for q in items:
        first = answer_ids(model, q.prompt, q.answer)[1][0]
        others = [o for o in groups[q.type] if o.answer.lower() != q.answer.lower()]
        # Rotate the candidates so that different items pick different counterfactuals.
        idx = groups[q.type].index(q)
        others = others[idx % len(others) :] + others[: idx % len(others)] if others else []
        made = None
        for c in others:
            c_first = answer_ids(model, q.prompt, c.answer)[1][0]
            if c_first == first:
                continue
            clean = conflict_prompt(q.prompt, c.answer)
            n_clean = len(tok(clean)["input_ids"])
            for d in others:
                if d is c or d.answer.lower() == c.answer.lower():
                    continue
                d_first = answer_ids(model, q.prompt, d.answer)[1][0]
                corrupt = conflict_prompt(q.prompt, d.answer)
                if d_first in (first, c_first) or len(tok(corrupt)["input_ids"]) != n_clean:
                    continue
                made = Conflict(
                    q.prompt, q.answer, c.answer, d.answer, clean, corrupt, first, c_first, q.type
                )
                break
            if made:
                break
        if made:
            out.append(made)
        if max_items is not None and len(out) >= max_items:
            break
    return out


def _batch(model: Model, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    return model.tokenize(list(prompts), padding_side="left")


def _tokens(conflicts: Sequence[Conflict], device) -> tuple[torch.Tensor, torch.Tensor]:
    mem = torch.tensor([c.memory_token for c in conflicts], device=device)
    ctx = torch.tensor([c.context_token for c in conflicts], device=device)
    return mem, ctx


def _prompt_lengths(model: Model, prompts: Sequence[str]) -> list[int]:
    return [len(ids) for ids in model.token_ids(list(prompts))]


def _grad_budget(model: Model, max_tokens: int | None) -> int:
    return grad_pass_tokens(model) if max_tokens is None else max_tokens


def metric(
    logits: Float[torch.Tensor, "batch pos d_vocab"],
    memory: Int[torch.Tensor, " batch"],
    context: Int[torch.Tensor, " batch"],
) -> Float[torch.Tensor, " batch"]:
    """logit(memory) - logit(context) at the last position (left-padded batches end there)."""
    last = logits[:, -1]
    rows = torch.arange(last.shape[0], device=last.device)
    return last[rows, memory] - last[rows, context]


@dataclass(frozen=True)
class ConflictRates(Result):
    """Shares of conflicts whose greedy next token is the memory / the context answer's first token."""

    memory_rate: float
    context_rate: float
    mean_metric: float
    n: int


@torch.no_grad()
def conflict_rates(
    model: Model,
    conflicts: Sequence[Conflict],
    *,
    prune: Sequence[Head] = (),
    batch_size: int = 16,
) -> ConflictRates:
    """Memory and context rates on the clean conflict prompts, with ``prune`` heads' outputs zeroed."""
    fwd = mask_hooks(prune, "zero") if prune else []
    mem_hits = ctx_hits = 0
    total = 0.0
    for s in range(0, len(conflicts), batch_size):
        chunk = conflicts[s : s + batch_size]
        ids, mask = _batch(model, [c.clean_prompt for c in chunk])
        logits = hooks.run_with_hooks(model, ids, fwd, mask, logits_to_keep=1)
        mem, ctx = _tokens(chunk, ids.device)
        nxt = logits[:, -1].argmax(-1)
        mem_hits += int((nxt == mem).sum())
        ctx_hits += int((nxt == ctx).sum())
        total += float(metric(logits, mem, ctx).detach().sum())
    n = len(conflicts)
    return ConflictRates(mem_hits / n, ctx_hits / n, total / n, n)


@dataclass(frozen=True)
class HeadEffects(Result):
    """Per-head effect on the conflict metric (layers x heads), mean over conflicts."""

    effects: Float[torch.Tensor, "layers heads"]
    method: str
    n_conflicts: int
    clean_metric: float
    corrupt_metric: float

    def memory_heads(self, k: int) -> list[Head]:
        """The ``k`` heads that raise the metric most (positive effects only)."""
        return [h for h in top_heads(self.effects, k) if self.effects[h] > 0]

    def context_heads(self, k: int) -> list[Head]:
        """The ``k`` heads that lower the metric most (negative effects only)."""
        return [h for h in top_heads(self.effects, k, largest=False) if self.effects[h] < 0]

    def to_dict(self) -> dict:
        return {
            "effects": self.effects.tolist(),
            "method": self.method,
            "n_conflicts": self.n_conflicts,
            "clean_metric": self.clean_metric,
            "corrupt_metric": self.corrupt_metric,
        }

    def to_frame(self) -> pd.DataFrame:
        L, H = self.effects.shape
        return pd.DataFrame(
            [{"layer": i, "head": h, "effect": float(self.effects[i, h])} for i in range(L) for h in range(H)]
        )


Baseline = Literal["counterfactual", "zero"]
BASELINES = ("counterfactual", "zero")


def _check_baseline(baseline: str) -> None:
    if baseline not in BASELINES:
        raise ValueError(f"unknown patching baseline {baseline!r}; use one of {BASELINES}")


def _zero_attribution(
    model: Model, conflicts: Sequence[Conflict], batch_size: int, max_tokens: int | None
) -> HeadEffects:
    lengths = _prompt_lengths(model, [c.clean_prompt for c in conflicts])
    runs = token_batches(lengths, batch_size, _grad_budget(model, max_tokens))

    def batches():
        for run in runs:
            chunk = [conflicts[i] for i in run]
            ids, mask = _batch(model, [c.clean_prompt for c in chunk])
            mem, ctx = _tokens(chunk, ids.device)
            yield ids, mask, lambda logits, mem=mem, ctx=ctx: metric(logits, mem, ctx)

    effects, total = _zero_attribution_of(model, batches())
    k = max(len(conflicts), 1)
    return HeadEffects(effects / k, "attribution-zero", len(conflicts), total / k, float("nan"))


def _zero_attribution_of(model: Model, batches) -> tuple[torch.Tensor, float]:
    """Sum over batches of ``z . grad_z metric`` per head (the first-order zero-ablation effect) and of
    the metric; ``batches`` yields ``(ids, mask, metric_fn)``."""
    cfg = model.cfg
    effects = torch.zeros(cfg.n_layers, cfg.n_heads)
    total = 0.0
    names = _z_names(model)
    for ids, mask, metric_fn in batches:
        acts: dict[str, torch.Tensor] = {}
        with torch.enable_grad(), model.frozen():  # gradients to the head outputs only
            logits = hooks.run_with_hooks(
                model, ids, _keepers(names, acts), mask, grad=True, logits_to_keep=1
            )
            m = metric_fn(logits)
            grads = torch.autograd.grad(m.sum(), [acts[nm] for nm in names], allow_unused=True)
        valid = mask.unsqueeze(-1).unsqueeze(-1).to(logits.dtype)
        for layer, (nm, g) in enumerate(zip(names, grads, strict=True)):
            if g is not None:
                effects[layer] += (acts[nm].detach() * valid * g).sum(dim=(0, 1, 3)).cpu()
        total += float(m.detach().sum())
    return effects, total


@torch.no_grad()
def recall_logprob(
    model: Model, items: Sequence[QA], *, prune: Sequence[Head] = (), batch_size: int = 16
) -> float:
    """Mean log-probability of each item's first answer token, with ``prune`` heads' outputs zeroed."""
    from probes.qa import answer_ids

    fwd = mask_hooks(prune, "zero") if prune else []
    total = 0.0
    for s in range(0, len(items), batch_size):
        pairs = [answer_ids(model, q.prompt, q.answer) for q in items[s : s + batch_size]]
        ids, mask = model.pad([p for p, _ in pairs], padding_side="left")
        first = torch.tensor([a[0] for _, a in pairs], device=ids.device)
        logits = hooks.run_with_hooks(model, ids, fwd, mask, logits_to_keep=1)[:, -1].float()
        total += float(torch.log_softmax(logits, -1).gather(-1, first[:, None]).sum())
    return total / max(len(items), 1)


def recall_attribution(
    model: Model, items: Sequence[QA], *, batch_size: int = 16, max_tokens: int | None = None
) -> Float[torch.Tensor, "layers heads"]:
    """Per head, the first-order zero-ablation effect on the log-probability of each item's first answer
    token (mean over items): how much recalling these answers needs the head at all. Heads that every
    recall needs are not specific to one concept; ``memory`` ranking subtracts this. Batches as
    ``attribution_patching``'s."""
    every = [answer_ids(model, q.prompt, q.answer) for q in items]
    runs = token_batches([len(p) for p, _ in every], batch_size, _grad_budget(model, max_tokens))

    def batches():
        for run in runs:
            pairs = [every[i] for i in run]
            ids, mask = model.pad([p for p, _ in pairs], padding_side="left")
            first = torch.tensor([a[0] for _, a in pairs], device=ids.device)

            def fn(logits, first=first):
                return torch.log_softmax(logits[:, -1].float(), -1).gather(-1, first[:, None]).squeeze(-1)

            yield ids, mask, fn

    effects, _ = _zero_attribution_of(model, batches())
    return effects / max(len(items), 1)


def _keepers(names: Sequence[str], acts: dict[str, torch.Tensor]) -> list[tuple[str, Callable]]:
    """Forward hooks that store each named activation (made a leaf that requires grad) in ``acts``, keyed
    by our name: the bridge reports an aliased hook (hook_z) under its own name."""

    def keeper(name: str):
        def keep(z, hook):
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            acts[name] = z
            return z

        return keep

    return [(nm, keeper(nm)) for nm in names]


def _z_names(model: Model) -> list[str]:
    return hooks.all_layers(hooks.attn_z, model.cfg.n_layers)


@torch.no_grad()
def patch_run(
    model: Model,
    corrupt_ids: Int[torch.Tensor, "batch pos"],
    clean_z: dict[str, torch.Tensor],
    heads: Sequence[Head],
    mask: Int[torch.Tensor, "batch pos"] | None = None,
    *,
    logits_to_keep: int | None = None,
) -> Float[torch.Tensor, "batch pos d_vocab"]:
    """Logits of the corrupted run with ``heads``' ``hook_z`` (every position) taken from ``clean_z``
    (``logits_to_keep``: only the last positions', ``hooks.run_with_hooks``)."""
    fwd = []
    for layer, idx in by_layer(heads).items():
        name = hooks.attn_z(layer)

        def fn(z, hook, idx=torch.tensor(idx), src=clean_z[name]):
            z = z.clone()
            z[:, :, idx.to(z.device)] = src[:, :, idx.to(z.device)]
            return z

        fwd.append((name, fn))
    return hooks.run_with_hooks(model, corrupt_ids, fwd, mask, logits_to_keep=logits_to_keep)


@torch.no_grad()
def exact_patching(
    model: Model,
    conflicts: Sequence[Conflict],
    *,
    baseline: Baseline = "counterfactual",
    heads_per_batch: int = 32,
    progress: bool = True,
) -> HeadEffects:
    """Exact activation patching of every head, one conflict at a time; each batch row patches a different
    head. ``baseline="counterfactual"``: clean -> corrupted (PH3's contrast of two counterfactuals);
    ``"zero"``: the metric of the clean run minus the metric with the head's output zeroed (the effect
    that pruning removes)."""
    _check_baseline(baseline)
    cfg = model.cfg
    heads = all_heads(cfg.n_layers, cfg.n_heads)
    effects = torch.zeros(cfg.n_layers, cfg.n_heads)
    clean_total = corrupt_total = 0.0
    for c in tqdm(conflicts, desc="patch", disable=not progress, leave=False):
        ids, _ = _batch(model, [c.clean_prompt, c.corrupt_prompt])
        clean, corrupt = ids[:1], ids[1:]
        mem, ctx = _tokens([c], ids.device)
        clean_logits, cache = hooks.run_with_cache(model, clean, _z_names(model))
        clean_total += float(metric(clean_logits, mem, ctx))
        if baseline == "zero":
            base = float(metric(clean_logits, mem, ctx))
            corrupt, cache = clean, {k: torch.zeros_like(v) for k, v in cache.items()}
        else:
            base = float(metric(hooks.run_with_hooks(model, corrupt, []), mem, ctx))
        corrupt_total += base
        for s in range(0, len(heads), heads_per_batch):
            chunk = heads[s : s + heads_per_batch]
            fwd = []
            for layer in sorted({h[0] for h in chunk}):
                rows = torch.tensor([i for i, h in enumerate(chunk) if h[0] == layer])
                cols = torch.tensor([h[1] for h in chunk if h[0] == layer])
                name = hooks.attn_z(layer)

                def fn(z, hook, rows=rows, cols=cols, src=cache[name][0]):
                    z = z.clone()
                    z[rows, :, cols] = src[:, cols].transpose(0, 1)
                    return z

                fwd.append((name, fn))
            logits = hooks.run_with_hooks(model, corrupt.expand(len(chunk), -1), fwd, logits_to_keep=1)
            m = metric(logits, mem.expand(len(chunk)), ctx.expand(len(chunk))) - base
            if baseline == "zero":
                m = -m  # effect = clean - ablated
            for (layer, h), v in zip(chunk, m.tolist(), strict=True):
                effects[layer, h] += v
    n = max(len(conflicts), 1)
    method = "exact" if baseline == "counterfactual" else "exact-zero"
    return HeadEffects(effects / n, method, len(conflicts), clean_total / n, corrupt_total / n)


def attribution_patching(
    model: Model,
    conflicts: Sequence[Conflict],
    *,
    baseline: Baseline = "counterfactual",
    batch_size: int = 16,
    max_tokens: int | None = None,
) -> HeadEffects:
    """Attribution patching (Nanda 2023; Syed et al. 2023): ``(z_clean - z_corrupt) . grad_z metric`` at the
    corrupted run, summed over positions and ``d_head``, for all heads from one forward (clean and
    corrupted in one batch) and one backward per batch of conflicts. ``baseline="zero"``: the first-order
    estimate of the zero-ablation effect, ``z_clean . grad_z metric`` at the clean run.

    The forward keeps every layer's activations for the backward (SmolLM2: ~1.4 MB a token), so a batch
    holds at most ``batch_size`` conflicts and ``max_tokens`` padded tokens (``probes.batching.token_batches``; default
    ``probes.memory.grad_pass_tokens``: a tenth of the weights' bytes); the effects are sums over
    conflicts, the same whatever the batches."""
    _check_baseline(baseline)
    if baseline == "zero":
        return _zero_attribution(model, conflicts, batch_size, max_tokens)
    cfg = model.cfg
    effects = torch.zeros(cfg.n_layers, cfg.n_heads)
    clean_total = corrupt_total = 0.0
    names = _z_names(model)
    clean = _prompt_lengths(model, [c.clean_prompt for c in conflicts])
    corrupt = _prompt_lengths(model, [c.corrupt_prompt for c in conflicts])
    rows = [2 * max(a, b) for a, b in zip(clean, corrupt, strict=True)]  # a clean and a corrupt row each
    for run in token_batches(rows, batch_size, _grad_budget(model, max_tokens)):
        chunk = [conflicts[i] for i in run]
        n = len(chunk)
        ids, mask = _batch(model, [c.clean_prompt for c in chunk] + [c.corrupt_prompt for c in chunk])
        mem, ctx = _tokens(chunk, ids.device)
        acts: dict[str, torch.Tensor] = {}
        with torch.enable_grad(), model.frozen():  # gradients to the head outputs only
            logits = hooks.run_with_hooks(
                model, ids, _keepers(names, acts), mask, grad=True, logits_to_keep=1
            )
            clean_m = metric(logits[:n], mem, ctx)
            corrupt_m = metric(logits[n:], mem, ctx)
            grads = torch.autograd.grad(corrupt_m.sum(), [acts[nm] for nm in names], allow_unused=True)
        valid = mask[n:].unsqueeze(-1).unsqueeze(-1).to(logits.dtype)
        for layer, (nm, g) in enumerate(zip(names, grads, strict=True)):
            if g is None:
                continue
            z = acts[nm].detach()
            diff = (z[:n] - z[n:]) * valid
            effects[layer] += (diff * g[n:]).sum(dim=(0, 1, 3)).cpu()
        clean_total += float(clean_m.detach().sum())
        corrupt_total += float(corrupt_m.detach().sum())
    k = max(len(conflicts), 1)
    return HeadEffects(effects / k, "attribution", len(conflicts), clean_total / k, corrupt_total / k)


@dataclass(frozen=True)
class PruningResult(Result):
    """Memory/context rates before and after pruning the top-k memory heads, and the top-k context heads."""

    k: int
    memory_heads: tuple[Head, ...]
    context_heads: tuple[Head, ...]
    baseline: ConflictRates
    memory_pruned: ConflictRates
    context_pruned: ConflictRates
    n_locate: int = 0
    n_evaluate: int = 0

    @property
    def baseline_memory_rate(self) -> float:
        return self.baseline.memory_rate

    @property
    def memory_pruned_memory_rate(self) -> float:
        return self.memory_pruned.memory_rate

    @property
    def context_pruned_memory_rate(self) -> float:
        return self.context_pruned.memory_rate

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.update(
            baseline_memory_rate=self.baseline_memory_rate,
            memory_pruned_memory_rate=self.memory_pruned_memory_rate,
            context_pruned_memory_rate=self.context_pruned_memory_rate,
            baseline_context_rate=self.baseline.context_rate,
            memory_pruned_context_rate=self.memory_pruned.context_rate,
            context_pruned_context_rate=self.context_pruned.context_rate,
        )
        return d


def split(conflicts: Sequence[Conflict]) -> tuple[list[Conflict], list[Conflict]]:
    """Alternate conflicts into a locate half (rank heads) and an evaluate half (measure pruning)."""
    return list(conflicts[0::2]), list(conflicts[1::2])


def pruning_experiment(
    model: Model,
    effects: HeadEffects,
    conflicts: Sequence[Conflict],
    *,
    k: int = 10,
    n_locate: int = 0,
) -> PruningResult:
    """Zero the top-``k`` memory heads, then (separately) the top-``k`` context heads, and re-measure the
    memory/context rates on ``conflicts`` (best held out from the ones ``effects`` was measured on)."""
    mem_heads, ctx_heads = effects.memory_heads(k), effects.context_heads(k)
    return PruningResult(
        k=k,
        memory_heads=tuple(mem_heads),
        context_heads=tuple(ctx_heads),
        baseline=conflict_rates(model, conflicts),
        memory_pruned=conflict_rates(model, conflicts, prune=mem_heads),
        context_pruned=conflict_rates(model, conflicts, prune=ctx_heads),
        n_locate=n_locate,
        n_evaluate=len(conflicts),
    )
