"""Concept-vector scan speed (issue concepts): the full top-k scan against (1) the bare chunked matmul of
the same shape, (2) a per-vector loop timed on a sample and extrapolated to every vector."""

from __future__ import annotations

import torch

from analyses.bench.harness import BenchContext, Case, benchmark
from probes.concepts import scan

CHUNK = 1024


def _layers(ctx: BenchContext) -> list[int]:
    n = ctx.model.cfg.n_layers
    return [n // 2, n - 1] if ctx.quick else list(range(n))


@benchmark("concept_scan_vs_bare_matmul", target=1.3)
def scan_overhead(ctx: BenchContext) -> Case:
    model = ctx.model
    layers = _layers(ctx)
    W_U = model.W_U.detach()

    @torch.no_grad()
    def bare():
        for layer in layers:
            V = model.W_out(layer).detach()
            for start in range(0, V.shape[0], CHUNK):
                V[start : start + CHUNK] @ W_U

    def full_scan():
        return scan(model, layers, k=200, chunk=CHUNK)

    n = len(layers) * model.cfg.d_mlp
    return Case(bare, full_scan, f"{n} value vectors x {W_U.shape[1]} tokens, k=200, chunks of {CHUNK}")


@benchmark("concept_scan_vs_per_vector_loop", target=8.0, higher_is_better=True)
def scan_speedup(ctx: BenchContext) -> Case:
    model = ctx.model
    layers = _layers(ctx)
    W_U = model.W_U.detach()
    n_all = len(layers) * model.cfg.d_mlp
    sample = 64 if ctx.quick else 256
    gen = torch.Generator().manual_seed(0)
    picks = [
        (
            layers[int(torch.randint(len(layers), (1,), generator=gen))],
            int(torch.randint(model.cfg.d_mlp, (1,), generator=gen)),
        )
        for _ in range(sample)
    ]

    @torch.no_grad()
    def per_vector_loop():
        for layer, neuron in picks:
            torch.topk(model.W_out(layer)[neuron].detach() @ W_U, 200)

    def full_scan():
        return scan(model, layers, k=200, chunk=CHUNK)

    return Case(
        per_vector_loop,
        full_scan,
        f"per-vector loop timed on {sample} random vectors, extrapolated x{n_all / sample:.1f} to all {n_all}",
        baseline_scale=n_all / sample,
    )
