"""Head traces as experiments with typed configs (what ``vestige heads`` and the notebooks run).

``retrieval``: needle-in-a-haystack grid, retrieval scores of all heads (Wu et al. 2024), masking of the
top 5% heads vs as many random non-retrieval heads, in both masking modes. ``memory``: knowledge
conflicts from the concept QA, per-head patching effects on logit(memory) - logit(context) (PH3), pruning
the top-k memory heads and the top-k context heads. ``write_heads`` writes ``heads.json`` and
``report.html``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import torch

from analyses.html import Page
from probes import memory_heads, retrieval
from probes.data import DEFAULT_CONCEPT_FILE, load_concepts
from probes.errors import VestigeError
from probes.model import Model
from probes.results import Result, write_json


@dataclass(frozen=True)
class RetrievalExperiment(Result):
    """Needle-in-a-haystack retrieval heads (Wu et al. 2024) and masking them against random heads."""

    haystack: str = str(retrieval.HAYSTACK_FILE)
    needles: str = str(retrieval.NEEDLES_FILE)
    lengths: tuple[int, ...] = (500, 1000)  # context lengths (tokens)
    depths: tuple[float, ...] = (0.1, 0.5, 0.9)  # needle depths in [0, 1]
    max_needles: int | None = None
    max_new_tokens: int | None = None  # None: the instrument's default (retrieval.retrieval_scores)
    chat: bool = True  # the chat template (False: a plain prompt)
    mask_fraction: float = 0.05  # share of heads masked (top and random)
    mask_modes: tuple[str, ...] = ("uniform", "zero")
    n_random: int = 2  # random-head draws for the control
    seed: int = 0


@dataclass(frozen=True)
class MemoryExperiment(Result):
    """Memory and context heads on knowledge conflicts (Jin et al. 2024, PH3) and pruning them."""

    concept_file: str = str(DEFAULT_CONCEPT_FILE)
    max_conflicts: int = 40
    k: int = 10  # heads pruned per kind
    method: str = "exact"  # "exact" or "attribution" patching
    baseline: str = "zero"  # head effect = clean minus head zeroed, or "counterfactual" patching


def heatmap(matrix: torch.Tensor, title: str, *, diverging: bool = False) -> go.Figure:
    """A layer x head heatmap (layers on the y axis, layer 0 at the bottom)."""
    z = matrix.float().cpu().numpy()
    kw = dict(colorscale="RdBu", zmid=0.0) if diverging else dict(colorscale="Viridis")
    fig = go.Figure(go.Heatmap(z=z, x=list(range(z.shape[1])), y=list(range(z.shape[0])), **kw))
    fig.update_layout(title=title, xaxis_title="head", yaxis_title="layer", height=600)
    return fig


def bars(values: dict[str, float], title: str, yaxis: str) -> go.Figure:
    fig = go.Figure(go.Bar(x=list(values), y=list(values.values())))
    fig.update_layout(title=title, yaxis_title=yaxis, yaxis_range=[0, 1], height=380)
    return fig


def find_retrieval_heads(
    model: Model, config: RetrievalExperiment | None = None, *, progress: bool = True
) -> tuple[dict, Page]:
    """Score every head on the needle grid, mask the top heads and random ones; returns the JSON result
    and the report page."""
    cfg = config or RetrievalExperiment()
    lengths, depths = list(cfg.lengths), list(cfg.depths)
    decode = {} if cfg.max_new_tokens is None else {"max_new_tokens": cfg.max_new_tokens}
    needles = retrieval.load_needles(cfg.needles)[: cfg.max_needles]
    haystack = retrieval.load_haystack(cfg.haystack)
    tests = retrieval.build_tests(model, needles, haystack, lengths, depths, chat=cfg.chat)
    t0 = time.perf_counter()
    scores = retrieval.retrieval_scores(model, tests, progress=progress, **decode)
    seconds = time.perf_counter() - t0
    if scores.n_correct == 0:
        raise VestigeError(
            f"the model answered none of the {len(tests)} needle tests",
            "retrieval scores are averaged over correctly answered tests only (Wu et al.)",
            "use shorter lengths (--lengths), more new tokens (--max-new-tokens), or try --no-chat",
        )
    masking = {
        mode: retrieval.masking_experiment(
            model,
            tests,
            scores,
            fraction=cfg.mask_fraction,
            mode=mode,
            n_random=cfg.n_random,
            seed=cfg.seed,
            progress=progress,
            **decode,
        )
        for mode in cfg.mask_modes
    }
    s = scores.to_dict()
    top = scores.to_frame().head(20)
    result = {
        "kind": "retrieval",
        "model": model.name,
        "scores": s["scores"],
        "threshold": s["threshold"],
        "retrieval_heads": s["retrieval_heads"],
        "share": s["share"],
        "top_heads": [[int(r.layer), int(r.head), float(r.score)] for r in top.itertuples()],
        "n_tests": s["n_tests"],
        "n_correct": s["n_correct"],
        "accuracy": s["accuracy"],
        "masking": _masking_summary(masking[cfg.mask_modes[0]]),
        "masking_by_mode": {m: r.to_dict() for m, r in masking.items()},
        "outcomes": s["outcomes"],
        "grid": {
            "lengths": lengths,
            "depths": depths,
            "needles": len(needles),
            "chat": cfg.chat,
        },
        "seconds_scoring": seconds,
    }
    page = Page(
        f"Retrieval heads of {model.name}",
        f"{len(tests)} needle tests ({len(needles)} needles x lengths {lengths} x depths {depths}); "
        "Wu et al. 2024 retrieval score, averaged over the correctly answered tests.",
    )
    page.heading("Retrieval score per head")
    page.paragraph(
        f"{scores.n_correct}/{len(tests)} tests answered correctly (ROUGE-1 recall > 0.5). "
        f"{len(scores.retrieval_heads)} of {scores.scores.numel()} heads ({scores.share:.1%}) score > "
        f"{scores.threshold} and are retrieval heads."
    )
    page.figure(heatmap(scores.scores, "retrieval score (layer x head)"))
    page.table(top)
    page.heading("Masking")
    for mode, r in masking.items():
        page.paragraph(
            f"{mode} masking of the top {r.k} heads by retrieval score vs {r.k} random heads drawn outside the "
            f"retrieval heads ({len(r.random_heads)} draws). Masking acts on the decode steps."
        )
        page.figure(
            bars(
                {
                    "unmasked": r.baseline_accuracy,
                    f"top {r.k} masked": r.top_masked_accuracy,
                    f"random {r.k} masked": r.random_masked_accuracy,
                },
                f"NIAH accuracy, {mode} masking",
                "accuracy",
            )
        )
    page.heading("Answers")
    page.table(pd.DataFrame(s["outcomes"]))
    return result, page


def _masking_summary(r: retrieval.MaskingResult) -> dict:
    return {
        "mode": r.mode,
        "k": r.k,
        "baseline_accuracy": r.baseline_accuracy,
        "top_masked_accuracy": r.top_masked_accuracy,
        "random_masked_accuracy": r.random_masked_accuracy,
    }


def find_memory_heads(
    model: Model, config: MemoryExperiment | None = None, *, progress: bool = True
) -> tuple[dict, Page]:
    """Build conflicts from the concept file, rank heads on half of them, prune the top memory and context
    heads and measure on the other half; returns the JSON result and the report page."""
    cfg = config or MemoryExperiment()
    items = [q for c in load_concepts(cfg.concept_file) for q in c.qa]
    conflicts = memory_heads.build_conflicts(model, items, max_items=cfg.max_conflicts)
    if len(conflicts) < 2:
        raise VestigeError(
            f"only {len(conflicts)} knowledge conflicts could be built from {cfg.concept_file}",
            "a conflict needs two other answers of the same type with distinct first tokens and equal lengths",
            "use a concept file with more typed QA items",
        )
    locate, evaluate = memory_heads.split(conflicts)
    t0 = time.perf_counter()
    if cfg.method == "exact":
        effects = memory_heads.exact_patching(model, locate, baseline=cfg.baseline, progress=progress)
    else:
        effects = memory_heads.attribution_patching(model, locate, baseline=cfg.baseline)
    seconds = time.perf_counter() - t0
    pruning = memory_heads.pruning_experiment(model, effects, evaluate, k=cfg.k, n_locate=len(locate))
    p = pruning.to_dict()
    result = {
        "kind": "memory",
        "model": model.name,
        "method": cfg.method,
        "baseline": cfg.baseline,
        "effects": effects.effects.tolist(),
        "memory_heads": [list(h) for h in effects.memory_heads(cfg.k)],
        "context_heads": [list(h) for h in effects.context_heads(cfg.k)],
        "pruning": {
            k: p[k]
            for k in (
                "k",
                "baseline_memory_rate",
                "memory_pruned_memory_rate",
                "context_pruned_memory_rate",
                "baseline_context_rate",
                "memory_pruned_context_rate",
                "context_pruned_context_rate",
                "n_locate",
                "n_evaluate",
            )
        },
        "pruning_detail": p,
        "clean_metric": effects.clean_metric,
        "corrupt_metric": effects.corrupt_metric,
        "conflicts": [
            {
                "clean_prompt": c.clean_prompt,
                "corrupt_prompt": c.corrupt_prompt,
                "memory_answer": c.memory_answer,
                "context_answer": c.context_answer,
                "type": c.type,
            }
            for c in conflicts
        ],
        "seconds_patching": seconds,
    }
    page = Page(
        f"Memory and context heads of {model.name}",
        f"{len(conflicts)} knowledge conflicts from {Path(cfg.concept_file).name}: heads located on "
        f"{len(locate)} by {cfg.method} patching, pruning measured on the other {len(evaluate)}.",
    )
    page.heading("Effect of each head on logit(memory) - logit(context)")
    page.paragraph(
        "Patching a head's output from the conflict prompt into a prompt with a different counterfactual: "
        "positive (red) = memory head, negative (blue) = context head (Jin et al. 2024, PH3)."
    )
    page.figure(heatmap(effects.effects, f"{cfg.method} patching effect (layer x head)", diverging=True))
    frame = effects.to_frame().sort_values("effect")
    page.table(pd.concat([frame.tail(cfg.k).iloc[::-1], frame.head(cfg.k)]))
    page.heading("Pruning")
    page.paragraph(
        f"Top {cfg.k} memory heads and, separately, top {cfg.k} context heads zeroed (hook_z); rate = share of "
        "held-out conflicts whose next token is the memory (context) answer's first token."
    )
    page.figure(
        bars(
            {
                "baseline": pruning.baseline_memory_rate,
                "memory heads pruned": pruning.memory_pruned_memory_rate,
                "context heads pruned": pruning.context_pruned_memory_rate,
            },
            "memory-answer rate",
            "rate",
        )
    )
    page.table(
        pd.DataFrame(
            [
                {"run": name, **r.to_dict()}
                for name, r in (
                    ("baseline", pruning.baseline),
                    ("memory heads pruned", pruning.memory_pruned),
                    ("context heads pruned", pruning.context_pruned),
                )
            ]
        )
    )
    page.heading("Conflicts")
    page.table(pd.DataFrame(result["conflicts"]))
    return result, page


def write_heads(result: dict, page: Page, out: str | Path) -> Path:
    """``heads.json`` and ``report.html`` in ``out``."""
    out = Path(out)
    write_json(out / "heads.json", result)
    page.write(out / "report.html")
    return out
