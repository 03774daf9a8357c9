"""``vestige heads --kind retrieval|memory``: retrieval heads on a needle-in-a-haystack grid, or memory and
context heads on knowledge conflicts; ``heads.json`` + ``report.html`` (``analyses.heads``)."""

from __future__ import annotations

import argparse

from analyses.cli import common


def register(sub) -> argparse.ArgumentParser:
    from analyses.heads import MemoryExperiment, RetrievalExperiment
    from probes.memory_heads import BASELINES

    r, m = RetrievalExperiment(), MemoryExperiment()
    p = sub.add_parser("heads", help="retrieval heads (NIAH) or memory/context heads (knowledge conflicts)")
    common.add_model_args(p)
    p.add_argument("--kind", choices=["retrieval", "memory"], required=True)
    p.add_argument("--out", default="vestige-out/heads")
    g = p.add_argument_group("retrieval")
    g.add_argument("--haystack", default=r.haystack)
    g.add_argument("--needles", default=r.needles)
    g.add_argument(
        "--lengths",
        type=common.positive_int,
        nargs="+",
        default=list(r.lengths),
        help="context lengths (tokens)",
    )
    g.add_argument(
        "--depths", type=common.fraction, nargs="+", default=list(r.depths), help="needle depths in [0, 1]"
    )
    g.add_argument("--max-needles", type=common.positive_int, default=None)
    g.add_argument(
        "--max-new-tokens", type=common.positive_int, default=None, help="default: the instrument's own"
    )
    g.add_argument("--no-chat", action="store_true", help="plain prompt instead of the chat template")
    g.add_argument(
        "--mask-fraction", type=common.fraction, default=r.mask_fraction, help="share of heads masked"
    )
    g.add_argument("--mask-modes", nargs="+", choices=["uniform", "zero"], default=list(r.mask_modes))
    g.add_argument("--n-random", type=common.positive_int, default=r.n_random, help="random-head draws")
    g.add_argument("--seed", type=int, default=r.seed)
    g = p.add_argument_group("memory")
    g.add_argument("--concept-file", default=m.concept_file)
    g.add_argument("--max-conflicts", type=common.positive_int, default=m.max_conflicts)
    g.add_argument("--k", type=common.positive_int, default=m.k, help="heads pruned per kind")
    g.add_argument("--method", choices=["exact", "attribution"], default=m.method)
    g.add_argument(
        "--baseline",
        choices=list(BASELINES),
        default=m.baseline,
        help="head effect = clean minus head zeroed (default; what pruning removes) or clean -> corrupted "
        "counterfactual patching (PH3's contrast)",
    )
    return p


def check_inputs(args: argparse.Namespace) -> None:
    """Read the input files of ``--kind`` (needles and haystack, or the concept file) and check ``--out``
    before the model loads, so that a wrong path or a malformed file is refused at once."""
    import json

    from probes import retrieval
    from probes.data import load_concepts

    common.check_out_dir(args.out)
    if args.kind == "memory":
        load_concepts(args.concept_file)
        return
    try:
        retrieval.load_needles(args.needles)
        retrieval.load_haystack(args.haystack)
    except json.JSONDecodeError as e:
        raise retrieval.HaystackError(
            f"needle file {args.needles!r}: invalid JSON at line {e.lineno}, column {e.colno}",
            e.msg,
            'write a JSON list of {"needle", "question", "answer"} objects (like the bundled '
            f"{retrieval.NEEDLES_FILE.name})",
        ) from e
    except UnicodeDecodeError as e:
        raise retrieval.HaystackError(
            "the needle file or the haystack is not UTF-8 text",
            f"byte {e.start} cannot be decoded ({e.reason})",
            "pass UTF-8 text files to --needles and --haystack",
        ) from e


def run(args: argparse.Namespace) -> int:
    from analyses.heads import (
        MemoryExperiment,
        RetrievalExperiment,
        find_memory_heads,
        find_retrieval_heads,
        write_heads,
    )

    check_inputs(args)
    model = common.load(args.model, args)
    progress = not args.no_progress
    if args.kind == "retrieval":
        cfg = RetrievalExperiment(
            haystack=args.haystack,
            needles=args.needles,
            lengths=tuple(args.lengths),
            depths=tuple(args.depths),
            max_needles=args.max_needles,
            max_new_tokens=args.max_new_tokens,
            chat=not args.no_chat,
            mask_fraction=args.mask_fraction,
            mask_modes=tuple(args.mask_modes),
            n_random=args.n_random,
            seed=args.seed,
        )
        result, page = find_retrieval_heads(model, cfg, progress=progress)
    else:
        mcfg = MemoryExperiment(
            concept_file=args.concept_file,
            max_conflicts=args.max_conflicts,
            k=args.k,
            method=args.method,
            baseline=args.baseline,
        )
        result, page = find_memory_heads(model, mcfg, progress=progress)
    out = write_heads(result, page, args.out)
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
