"""CHES and linear probes (issue ches-probes): batched CHES vs one pair at a time, and all-layer probe
fitting vs a per-layer scikit-learn loop at equal accuracy (scikit-learn is a dev dependency, imported
only here)."""

from __future__ import annotations

import time

import torch

from analyses.bench.harness import BenchContext, Case, benchmark
from probes.ches import ches, ches_pairs
from probes.linear import ProbeConfig, collect_activations, fit_probes_on, load_probe_dataset, subset


def _ches_inputs(n: int) -> tuple[list[str], list[str], list[str]]:
    """``n`` (prompt, true answer, refusal) triples, the DPO-IDK displacement check of docs/ches.md."""
    cities = load_probe_dataset("city_country")
    step = max(1, len(cities) // n)
    idx = list(range(0, len(cities), step))[:n]
    prompts = [f"Question: In which country is {cities.entities[i]}?\nAnswer:" for i in idx]
    preferred = [f"{cities.labels[i]}. It is a city in {cities.labels[i]}." for i in idx]
    dispreferred = ["I don't know the answer to that question."] * len(idx)
    return prompts, preferred, dispreferred


@benchmark("ches_batched_vs_one_pair", target=3.0, higher_is_better=True)
def ches_batched(ctx: BenchContext) -> Case:
    model = ctx.model
    prompts, pos, neg = _ches_inputs(16 if ctx.quick else 64)

    def one_at_a_time():
        return [ches(model, p, a, b) for p, a, b in zip(prompts, pos, neg)]

    def batched():
        return ches_pairs(model, prompts, pos, neg, batch_size=32)

    single = torch.tensor(one_at_a_time(), dtype=torch.float64)
    rel = ((batched() - single).abs() / single.abs().clamp(min=1e-9)).max().item()
    return Case(
        one_at_a_time,
        batched,
        f"{len(prompts)} pairs (prompt, answer, refusal); batch 32; max relative difference {rel:.1e}",
    )


def _sklearn_loop(
    acts: torch.Tensor, y: torch.Tensor, fold: torch.Tensor, l2: float, tol: float = 1e-4, full: bool = False
) -> list[float]:
    """Per-layer, per-fold StandardScaler + LogisticRegression with the same objective; pooled held-out
    accuracy by layer. ``tol`` is scikit-learn's (its default 1e-4); ``full`` also fits each layer on all
    items (the probe ``fit_probes`` keeps), as the batched run does. BLAS runs on one thread, scikit-learn's
    fastest setting here: on 2 cores its threads made these small fits 21x slower (38.8 s vs 1.8 s for 6
    layers on SmolLM2)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    x = acts.detach().cpu().numpy()
    yy, ff = y.numpy(), fold.numpy()
    splits = [ff != k for k in range(int(ff.max()) + 1)] + ([ff >= 0] if full else [])
    out = []
    with threadpool_limits(1):
        for layer in range(x.shape[0]):
            hits = 0
            for tr in splits:
                te = ~tr if not tr.all() else None
                scaler = StandardScaler().fit(x[layer][tr])
                clf = LogisticRegression(C=1.0 / (2 * l2 * int(tr.sum())), tol=tol, max_iter=20_000)
                clf.fit(scaler.transform(x[layer][tr]), yy[tr])
                if te is not None:
                    hits += int((clf.predict(scaler.transform(x[layer][te])) == yy[te]).sum())
            out.append(hits / len(yy))
    return out


def _gap(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b))


@benchmark("probe_fit_all_layers_vs_sklearn", target=5.0, higher_is_better=True)
def probe_fit(ctx: BenchContext) -> Case:
    """Equal accuracy means: both within 1 point, on every layer, of the converged optimum (scikit-learn at
    tol 1e-8). scikit-learn's default tol (1e-4) stops short of it on these d > n problems (measured on
    SmolLM2: up to 2.6 points off), so the baseline is the loosest tol that is within 1 point. It is timed
    on every 5th layer and scaled to all layers (one loop takes about a minute)."""
    from probes.linear import stratified_folds

    model = ctx.model
    ds = load_probe_dataset("city_country")
    if ctx.quick:
        ds = subset(ds, range(0, len(ds), 3))
    acts = collect_activations(model, ds, batch_size=64)
    if ctx.quick:
        acts = acts[::5]
    config = ProbeConfig(folds=5, control=False)
    fold = stratified_folds(ds.y, config.folds, config.seed)
    optimum = _sklearn_loop(acts, ds.y, fold, config.l2, tol=1e-8)
    gaps = {}
    for tol in (1e-4, 1e-5, 1e-6, 1e-7, 1e-8):
        gaps[tol] = _gap(optimum, _sklearn_loop(acts, ds.y, fold, config.l2, tol=tol))
        if gaps[tol] <= 0.01:
            break
    tol = next(t for t, g in gaps.items() if g <= 0.01)
    sample = acts[::5]

    def sklearn_loop():
        return _sklearn_loop(sample, ds.y, fold, config.l2, tol=tol, full=True)

    def batched():
        return fit_probes_on(acts, ds, config=config).accuracy

    ours = batched()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        batched()
        start = time.perf_counter()
        batched()
        one_thread = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    mean_ref, mean_ours = sum(optimum) / len(optimum), sum(ours) / len(ours)
    tried = ", ".join(f"tol {t:g}: {g:.4f}" for t, g in gaps.items())
    return Case(
        sklearn_loop,
        batched,
        f"{len(ds)} items, {acts.shape[0]} layers x ({config.folds} folds + the full-data fit), "
        f"{threads} threads; batched on 1 thread: {one_thread:.2f} s; largest per-layer distance from the "
        f"converged optimum: batched {_gap(optimum, ours):.4f} "
        f"(max_iter {config.max_iter}, tol {config.tol:g}), scikit-learn {tried}; baseline = scikit-learn "
        f"at tol {tol:g}, timed on {sample.shape[0]} layers and scaled to {acts.shape[0]}; mean accuracy "
        f"optimum {mean_ref:.4f} vs batched {mean_ours:.4f}",
        baseline_scale=acts.shape[0] / sample.shape[0],
    )
