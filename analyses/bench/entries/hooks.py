"""Hook overhead: caching the residual stream of every layer vs the plain HF forward (issue foundation)."""

from __future__ import annotations

import torch

from analyses.bench.harness import BenchContext, Case, benchmark
from probes import hooks


@benchmark("hook_overhead_resid_cache", target=1.15)
def hook_overhead(ctx: BenchContext) -> Case:
    model = ctx.model
    plain_hf = model.copy().hf  # never bridged: the bridge wraps the module it is given in place
    batch, length = (2, 32) if ctx.quick else (8, 128)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(100, model.cfg.d_vocab - 100, (batch, length), generator=gen).to(model.device)
    names = hooks.all_layers(hooks.resid_post, model.cfg.n_layers)

    @torch.no_grad()
    def plain():
        return plain_hf(ids).logits

    def cached():
        return hooks.run_with_cache(model, ids, names)

    return Case(plain, cached, f"batch {batch} x {length} tokens, {len(names)} resid_post hooks cached")
