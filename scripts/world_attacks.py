#!/usr/bin/env python
"""Each attack alone on the synthetic world: the retrain oracle, GA and NPO (and the still-knowing
controls) against the full model, net recovery over the floor people.

    python scripts/world_attacks.py --seed 0 --out world_attacks.csv
    python scripts/world_attacks.py --seed 0 --attacks few_shot multiple_choice --out world_forms.csv

Runs ``analyses.oracle.run_oracle`` (the world's models are cached under ~/.cache/vestige/world) with the
default prompt attacks plus best-of-8 sampling, and writes every audit's ``attacks_frame`` (greedy, each
prompt attack, relearning, fact relearning, the soft prompt, quantization): held-out forget accuracy, the
floor's, the control's, net recovery forget - floor with its 95% interval, the base's accuracy under the
same attack, seconds. No attack may bring the oracle above the floor's interval.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402

from analyses.behaviour import ATTACK_CHOICES, ATTACKS  # noqa: E402
from analyses.oracle import OracleConfig, run_oracle  # noqa: E402
from analyses.world import WorldConfig  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="world_attacks.csv")
    p.add_argument(
        "--attacks",
        nargs="+",
        default=[*ATTACKS, "sampled"],
        choices=ATTACK_CHOICES,
        help="the prompt attacks and query forms (default: the default battery and best-of-8 sampling)",
    )
    args = p.parse_args()
    cfg = OracleConfig(world=WorldConfig(seed=args.seed), attacks=tuple(args.attacks), seed=args.seed)
    result = run_oracle(cfg, progress=False)
    frames = []
    for name, a in result.audits.items():
        f = a.attacks_frame()
        f.insert(0, "model", name)
        f.insert(1, "verdict", a.verdict)
        frames.append(f)
    table = pd.concat(frames, ignore_index=True)
    for name, a in result.audits.items():  # the audit's membership stage and PrivLeak against the oracle
        m = a.extra.get("membership") or {}
        auc = {s: round(v["auc"], 3) for s, v in m.get("unlearned", {}).items()}
        leak = {s: round(v, 3) for s, v in a.extra.get("privleak", {}).items()}
        print(f"{name}: membership AUC {auc}; PrivLeak vs the oracle {leak}")
    table.to_csv(args.out, index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_rows", 200):
        print(table)


if __name__ == "__main__":
    main()
