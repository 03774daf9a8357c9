"""The audit's verdicts against the synthetic world's ground truth (``analyses.ground_truth``).

    python scripts/ground_truth.py --out vestige-out/ground-truth [--seeds 0 1 2] [--lineages scratch shared]

Trains (or loads from the cache) the full model and the retrain oracle of every world seed and lineage,
unlearns with GA, NPO and RMU, audits them, the oracle, a relearned model and a no-op copy against the
full model, and prints the confusion matrix, the misses and the per-family separation; ``ground_truth.json``
in ``--out`` keeps every row.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import pandas as pd

from analyses.ground_truth import GroundTruthConfig, run_ground_truth


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for ground_truth.json and one audit per model")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--lineages", nargs="+", choices=("scratch", "shared"), default=["scratch", "shared"])
    p.add_argument("--methods", nargs="+", default=None, help="unlearning methods (default: ga npo rmu)")
    args = p.parse_args()
    cfg = GroundTruthConfig(seeds=tuple(args.seeds), lineages=tuple(args.lineages))
    if args.methods:
        cfg = replace(cfg, oracle=replace(cfg.oracle, methods=tuple(args.methods)))
    r = run_ground_truth(cfg, out=args.out)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(f"{r.correct:.0%} as expected, {r.seconds:.0f} s\n")
        print(r.confusion().to_string(), "\n")
        print(r.misses()[["seed", "lineage", "model", "truth", "verdict"]].to_string(), "\n")
        print(r.separation().round(2).to_string())


if __name__ == "__main__":
    main()
