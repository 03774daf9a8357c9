"""``vestige heads --model M --kind retrieval|memory --out DIR``: head traces, masking and pruning.

``retrieval``: needle-in-a-haystack grid, retrieval scores of all heads (Wu et al. 2024), masking of the
top 5% heads vs as many random non-retrieval heads, in both masking modes. ``memory``: knowledge
conflicts from the concept QA, per-head patching effects on logit(memory) - logit(context) (PH3), pruning
the top-k memory heads and the top-k context heads. Writes ``heads.json`` and ``report.html``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import torch

from analyses.html import Page
from probes import conflict, retrieval
from probes.data import DEFAULT_CONCEPT_FILE, load_concepts
from probes.errors import VestigeError
from probes.model import Model
from probes.results import write_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--kind", choices=["retrieval", "memory"], required=True)
    p.add_argument("--out", default="vestige-out/heads")
    g = p.add_argument_group("retrieval")
    g.add_argument("--haystack", default=str(retrieval.HAYSTACK_FILE))
    g.add_argument("--needles", default=str(retrieval.NEEDLES_FILE))
    g.add_argument("--lengths", type=int, nargs="+", default=[500, 1000], help="context lengths (tokens)")
    g.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.5, 0.9], help="needle depths in [0, 1]")
    g.add_argument("--max-needles", type=int, default=None)
    g.add_argument("--max-new-tokens", type=int, default=16)
    g.add_argument("--no-chat", action="store_true", help="plain prompt instead of the chat template")
    g.add_argument("--mask-fraction", type=float, default=0.05, help="share of heads masked (top and random)")
    g.add_argument("--mask-modes", nargs="+", choices=["uniform", "zero"], default=["uniform", "zero"])
    g.add_argument("--n-random", type=int, default=2, help="random-head draws for the control")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("memory")
    g.add_argument("--concept-file", default=str(DEFAULT_CONCEPT_FILE))
    g.add_argument("--max-conflicts", type=int, default=40)
    g.add_argument("--k", type=int, default=10, help="heads pruned per kind")
    g.add_argument("--method", choices=["exact", "attribution"], default="exact")
    g.add_argument(
        "--baseline",
        choices=list(conflict.BASELINES),
        default="zero",
        help="head effect = clean minus head zeroed (default; what pruning removes) or clean -> corrupted "
        "counterfactual patching (PH3's contrast)",
    )


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


def run_retrieval(model: Model, args: argparse.Namespace, progress: bool = True) -> tuple[dict, Page]:
    needles = retrieval.load_needles(args.needles)[: args.max_needles]
    haystack = retrieval.load_haystack(args.haystack)
    tests = retrieval.build_tests(model, needles, haystack, args.lengths, args.depths, chat=not args.no_chat)
    t0 = time.perf_counter()
    scores = retrieval.retrieval_scores(model, tests, max_new_tokens=args.max_new_tokens, progress=progress)
    seconds = time.perf_counter() - t0
    if scores.n_correct == 0:
        raise VestigeError(
            f"the model answered none of the {len(tests)} needle tests",
            "retrieval scores are averaged over correctly answered tests only (Wu et al.)",
            "use shorter --lengths, more --max-new-tokens, or try --no-chat / the chat template",
        )
    masking = {
        mode: retrieval.masking_experiment(
            model,
            tests,
            scores,
            fraction=args.mask_fraction,
            mode=mode,
            n_random=args.n_random,
            seed=args.seed,
            max_new_tokens=args.max_new_tokens,
            progress=progress,
        )
        for mode in args.mask_modes
    }
    s = scores.to_dict()
    top = scores.to_frame().head(20)
    result = {
        "kind": "retrieval",
        "model": args.model,
        "scores": s["scores"],
        "threshold": s["threshold"],
        "retrieval_heads": s["retrieval_heads"],
        "share": s["share"],
        "top_heads": [[int(r.layer), int(r.head), float(r.score)] for r in top.itertuples()],
        "n_tests": s["n_tests"],
        "n_correct": s["n_correct"],
        "accuracy": s["accuracy"],
        "masking": _masking_summary(masking[args.mask_modes[0]]),
        "masking_by_mode": {m: r.to_dict() for m, r in masking.items()},
        "outcomes": s["outcomes"],
        "grid": {
            "lengths": args.lengths,
            "depths": args.depths,
            "needles": len(needles),
            "chat": not args.no_chat,
        },
        "seconds_scoring": seconds,
    }
    page = Page(
        f"Retrieval heads of {args.model}",
        f"{len(tests)} needle tests ({len(needles)} needles x lengths {args.lengths} x depths {args.depths}); "
        "Wu et al. 2024 retrieval score, averaged over the correctly answered tests.",
    )
    page.heading("Retrieval score per head")
    page.paragraph(
        f"{scores.n_correct}/{len(tests)} tests answered correctly (ROUGE-1 recall > 0.5). "
        f"{len(scores.retrieval_heads)} of {scores.scores.numel()} heads ({scores.share:.1%}) score >= "
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


def run_memory(model: Model, args: argparse.Namespace, progress: bool = True) -> tuple[dict, Page]:
    items = [q for c in load_concepts(args.concept_file) for q in c.qa]
    conflicts = conflict.build_conflicts(model, items, max_items=args.max_conflicts)
    if len(conflicts) < 2:
        raise VestigeError(
            f"only {len(conflicts)} knowledge conflicts could be built from {args.concept_file}",
            "a conflict needs two other answers of the same type with distinct first tokens and equal lengths",
            "use a concept file with more typed QA items",
        )
    locate, evaluate = conflict.split(conflicts)
    t0 = time.perf_counter()
    if args.method == "exact":
        effects = conflict.exact_patching(model, locate, baseline=args.baseline, progress=progress)
    else:
        effects = conflict.attribution_patching(model, locate, baseline=args.baseline)
    seconds = time.perf_counter() - t0
    pruning = conflict.pruning_experiment(model, effects, evaluate, k=args.k, n_locate=len(locate))
    p = pruning.to_dict()
    result = {
        "kind": "memory",
        "model": args.model,
        "method": args.method,
        "baseline": args.baseline,
        "effects": effects.effects.tolist(),
        "memory_heads": [list(h) for h in effects.memory_heads(args.k)],
        "context_heads": [list(h) for h in effects.context_heads(args.k)],
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
        f"Memory and context heads of {args.model}",
        f"{len(conflicts)} knowledge conflicts from {Path(args.concept_file).name}: heads located on "
        f"{len(locate)} by {args.method} patching, pruning measured on the other {len(evaluate)}.",
    )
    page.heading("Effect of each head on logit(memory) - logit(context)")
    page.paragraph(
        "Patching a head's output from the conflict prompt into a prompt with a different counterfactual: "
        "positive (red) = memory head, negative (blue) = context head (Jin et al. 2024, PH3)."
    )
    page.figure(heatmap(effects.effects, f"{args.method} patching effect (layer x head)", diverging=True))
    frame = effects.to_frame().sort_values("effect")
    page.table(pd.concat([frame.tail(args.k).iloc[::-1], frame.head(args.k)]))
    page.heading("Pruning")
    page.paragraph(
        f"Top {args.k} memory heads and, separately, top {args.k} context heads zeroed (hook_z); rate = share of "
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


def run(args: argparse.Namespace, model: Model) -> int:
    progress = not getattr(args, "no_progress", False)
    if args.kind == "retrieval":
        result, page = run_retrieval(model, args, progress)
    else:
        result, page = run_memory(model, args, progress)
    out = Path(args.out)
    write_json(out / "heads.json", result)
    page.write(out / "report.html")
    if args.kind == "retrieval":
        m = result["masking"]
        print(
            f"{len(result['retrieval_heads'])} retrieval heads ({result['share']:.1%}); NIAH accuracy "
            f"{m['baseline_accuracy']:.2f}, top masked {m['top_masked_accuracy']:.2f}, "
            f"random masked {m['random_masked_accuracy']:.2f}"
        )
    else:
        p = result["pruning"]
        print(
            f"memory rate {p['baseline_memory_rate']:.2f}; memory heads pruned "
            f"{p['memory_pruned_memory_rate']:.2f}; context heads pruned {p['context_pruned_memory_rate']:.2f}"
        )
    print(f"wrote {out}/heads.json and {out}/report.html")
    return 0
