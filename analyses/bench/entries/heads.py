"""Head benchmarks (issue heads): retrieval scoring during decoding vs plain greedy decoding of the same
tokens (target <= 1.3), and attribution patching of all heads vs exact patching of all heads (>= 20x)."""

from __future__ import annotations

import torch

from analyses.bench.harness import BenchContext, Case, benchmark
from probes import memory_heads, retrieval
from probes.data import QA

_NEEDLES = [
    retrieval.Needle(
        "The secret ingredient of the village soup is smoked paprika from Hungary.",
        "What is the secret ingredient of the village soup?",
        "smoked paprika",
    )
]
# Typed completion prompts with three answers per type: enough for a clean and a corrupted counterfactual.
_QA = [
    QA("The Eiffel Tower is in the city of", "Paris", "city"),
    QA("The Colosseum is in the city of", "Rome", "city"),
    QA("Big Ben is in the city of", "London", "city"),
    QA("The Brandenburg Gate is in the city of", "Berlin", "city"),
    QA("Harry Potter's best friend is Ron", "Weasley", "surname"),
    QA("The author of Harry Potter is J. K.", "Rowling", "surname"),
    QA("Harry Potter's other best friend is Hermione", "Granger", "surname"),
]


@benchmark("retrieval_score_decoding", target=1.3)
def retrieval_decoding(ctx: BenchContext) -> Case:
    model = ctx.model
    plain = model.copy().hf  # never bridged
    length = 300 if ctx.quick else 600
    test = retrieval.build_tests(model, _NEEDLES, retrieval.load_haystack(), [length], [0.5])[0]
    n_new = 16
    ids = torch.tensor([list(test.ids)], device=model.device)
    steps = len(retrieval.decode(model, test.ids, n_new, span=test.span)[0])

    @torch.no_grad()
    def greedy():
        out = plain(ids[:, :-1], use_cache=True)
        cache, cur, toks = out.past_key_values, ids[:, -1:], []
        for _ in range(steps):
            out = plain(cur, past_key_values=cache, use_cache=True)
            cache, cur = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            toks.append(int(cur))
        return toks

    def scored():
        return retrieval.decode(model, test.ids, steps, span=test.span)

    return Case(greedy, scored, f"{len(test.ids)}-token needle prompt, {steps} greedy tokens, KV cache")


@benchmark("attribution_vs_exact_patching", target=20.0, higher_is_better=True)
def attribution_vs_exact(ctx: BenchContext) -> Case:
    model = ctx.model
    conflicts = memory_heads.build_conflicts(model, _QA, max_items=1 if ctx.quick else 2)
    n_heads = model.cfg.n_layers * model.cfg.n_heads

    def exact():
        return memory_heads.exact_patching(model, conflicts, progress=False)

    def attribution():
        return memory_heads.attribution_patching(model, conflicts)

    return Case(exact, attribution, f"{len(conflicts)} conflicts x {n_heads} heads")
