#!/usr/bin/env python
"""Locate and validate concept vectors for every concept of a concept file (issue concepts, "Done when").

For each concept: ``locate`` the top ``--n`` value vectors, then ``validate`` them (ablation by default)
against as many random vectors of the same layers. A concept counts as *specific* when the located
vectors lower the concept's mean answer log-probability more than the random control does
(``beats_control``) and the unrelated answers fall by less than half as much (``spares_unrelated``).

    python scripts/concept_sweep.py --concept-file data/concepts/concepts.json --out data/concepts/sweep.csv

Writes the per-concept table (CSV, rewritten atomically after every concept) and a summary JSON beside it
(``sweep_summary.json``: counts and median effect sizes), and prints the summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from probes import concepts as C  # noqa: E402
from probes.data import DEFAULT_CONCEPT_FILE, Concept, load_concepts  # noqa: E402
from probes.model import load_model  # noqa: E402
from probes.qa import score_qa  # noqa: E402
from probes.results import atomic_write_text, write_json  # noqa: E402


def verified(model, concept: Concept) -> Concept:
    """The concept with only the QA and unrelated QA items the model answers correctly."""
    s = score_qa(model, list(concept.qa) + list(concept.unrelated_qa))
    ok = s.correct
    n = len(concept.qa)
    qa = tuple(q for q, c in zip(concept.qa, ok[:n]) if c)
    un = tuple(q for q, c in zip(concept.unrelated_qa, ok[n:]) if c)
    return dataclasses.replace(concept, qa=qa, unrelated_qa=un)


def summarise(frame: pd.DataFrame) -> dict:
    n = len(frame)
    med = {
        f"median_{k}": float(statistics.median(frame[k]))
        for k in ("target_drop", "unrelated_drop", "control_target_drop", "control_unrelated_drop")
    }
    return {
        "n_concepts": n,
        "beats_control": int(frame["beats_control"].sum()),
        "spares_unrelated": int(frame["spares_unrelated"].sum()),
        "specific": int(frame["specific"].sum()),
        "specific_share": float(frame["specific"].mean()) if n else float("nan"),
        **med,
        "median_target_acc_before": float(frame["target_acc_before"].median()),
        "median_target_acc_after": float(frame["target_acc_after"].median()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default=None)
    p.add_argument("--concept-file", default=str(DEFAULT_CONCEPT_FILE))
    p.add_argument("--out", default="data/concepts/sweep.csv")
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--mode", choices=["ablate", "noise"], default="ablate")
    p.add_argument("--scale", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--verified-only",
        action="store_true",
        help="keep only QA items the model answers correctly (for an unverified candidate file); concepts "
        "left with fewer than --min-qa / --min-unrelated items are skipped",
    )
    p.add_argument("--min-qa", type=int, default=4)
    p.add_argument("--min-unrelated", type=int, default=4)
    p.add_argument(
        "--no-accuracy",
        dest="accuracy",
        action="store_false",
        help="measure answer log-probabilities only (no greedy decoding after the edits; faster)",
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_model(args.model, device=args.device)
    concepts = load_concepts(args.concept_file)
    out = Path(args.out)
    rows = []
    for i, concept in enumerate(concepts):
        t0 = time.perf_counter()
        if args.verified_only:
            concept = verified(model, concept)
            if len(concept.qa) < args.min_qa or len(concept.unrelated_qa) < args.min_unrelated:
                print(f"[{i + 1}/{len(concepts)}] {concept.concept}: skipped ({len(concept.qa)} verified QA)")
                continue
        found = C.locate(model, concept, n=args.n)
        val = C.validate(
            model, concept, found, mode=args.mode, scale=args.scale, seed=args.seed, accuracy=args.accuracy
        )
        rows.append(
            {
                "concept": concept.concept,
                "n_qa": len(concept.qa),
                "n_unrelated": len(concept.unrelated_qa),
                "n_vectors": val.n_vectors,
                "vectors": " ".join(f"{v.layer}:{v.neuron}" for v in found.vectors),
                "target_drop": val.target_drop,
                "unrelated_drop": val.unrelated_drop,
                "control_target_drop": val.control_target_drop,
                "control_unrelated_drop": val.control_unrelated_drop,
                "target_acc_before": val.target_acc_before,
                "target_acc_after": val.target_acc_after,
                "unrelated_acc_before": val.unrelated_acc_before,
                "unrelated_acc_after": val.unrelated_acc_after,
                "noise_ratio": val.noise_ratio,
                "beats_control": val.beats_control,
                "spares_unrelated": val.spares_unrelated,
                "specific": val.specific,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        frame = pd.DataFrame(rows)
        atomic_write_text(out, frame.to_csv(index=False, float_format="%.4f"))
        r = rows[-1]
        print(
            f"[{i + 1}/{len(concepts)}] {concept.concept}: target {r['target_drop']:.3f} unrelated "
            f"{r['unrelated_drop']:.3f} control {r['control_target_drop']:.3f} specific={r['specific']} "
            f"({r['seconds']} s)",
            flush=True,
        )
    summary = {"model": args.model, "concept_file": args.concept_file, "n": args.n, "mode": args.mode}
    summary |= summarise(pd.DataFrame(rows))
    write_json(out.with_name(out.stem + "_summary.json"), summary)
    for k, v in summary.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
