"""``vestige concepts``: locate + validate a concept's value vectors; ``concepts.json`` + ``report.html``."""

from __future__ import annotations

import argparse

from analyses.cli import common


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("concepts", help="locate + validate concept vectors; concepts.json + report.html")
    common.add_model_args(p)
    common.add_concept_args(p)
    p.add_argument("--out", default="vestige-out/concepts")
    p.add_argument("--n", type=common.positive_int, default=10, help="number of vectors to locate")
    p.add_argument(
        "--kind",
        choices=["answer_writers", "concept"],
        default="answer_writers",
        help="answer_writers: the vectors that write the concept's answers (every layer, direct effect); "
        "concept: middle-layer vectors that express its tokens (ConceptVectors)",
    )
    p.add_argument("--mode", choices=["ablate", "noise"], default="ablate")
    p.add_argument("--scale", type=float, default=0.1, help="noise standard deviation (mode noise)")
    p.add_argument("--seed", type=int, default=0)
    return p


def run(args: argparse.Namespace) -> int:
    from analyses.concept_vectors import run_concept, write_outputs

    concept = common.load_concept_from_args(args)
    common.check_out_dir(args.out)
    model = common.load(args.model, args)
    report = run_concept(
        model, concept, n=args.n, kind=args.kind, mode=args.mode, scale=args.scale, seed=args.seed
    )
    js, page = write_outputs(report, args.out)
    v = report.validation
    print(
        f"{concept.concept}: {len(report.vectors)} vectors; target drop {_num(v['target_drop'])}, "
        f"unrelated drop {_num(v['unrelated_drop'])}, control drop {_num(v['control_target_drop'])}"
    )
    if not concept.unrelated_qa:
        print(
            "note: the concept has no unrelated_qa, so the unrelated drop is not measured and the vectors "
            "cannot be shown to spare other knowledge; add unrelated_qa to the concept file for that"
        )
    print(f"wrote {js} and {page}")
    return 0


def _num(x: float | None) -> str:
    """A drop as printed: three decimals, or ``n/a`` when it was not measured (None / NaN)."""
    return "n/a" if x is None or x != x else f"{x:.3f}"
