#!/usr/bin/env python
"""Run every unlearning method with its defaults on SmolLM2 for three concepts; write the before/after table.

    python scripts/unlearn_table.py --concepts "Harry Potter" "Albert Einstein" "Sherlock Holmes" \\
        --out data/unlearn/table.md

The criterion (issue [unlearn]): forget-QA accuracy at most 25% of its start while unrelated-QA accuracy
stays at or above 80% of its start. ``needle`` locates the concept vectors and zeroes them, 20 at a time,
until forget accuracy reaches the target (``analyses.unlearn.needle_search``); its ``steps`` column is
"search steps / vectors edited". The table is rewritten after each run (partial results survive).
Wall seconds depend on the machine's load; CPU seconds (this process) are printed beside them.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from analyses.unlearn import METHODS, UnlearnConfig, evaluate, retain_qa_for, retain_texts_for, unlearn  # noqa: E402
from probes.data import DEFAULT_CONCEPT_FILE, load_concept, load_concepts  # noqa: E402
from probes.model import load_model  # noqa: E402
from probes.results import atomic_write_text  # noqa: E402


def _write(rows: list[dict], out: Path) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    if out.suffix == ".csv":
        atomic_write_text(out, frame.to_csv(index=False))
    else:
        head = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns) + "\n"
        body = "".join(
            "| " + " | ".join(str(v) for v in row) + " |\n" for row in frame.itertuples(index=False)
        )
        atomic_write_text(out, head + body)
    return frame


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--concept-file", default=str(DEFAULT_CONCEPT_FILE))
    ap.add_argument("--concepts", nargs="+", default=["Harry Potter", "Albert Einstein", "Sherlock Holmes"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--out", default="data/unlearn/table.md", help=".md or .csv")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    model = load_model(args.model, device="cpu")
    all_concepts = load_concepts(args.concept_file)
    rows: list[dict] = []
    for name in args.concepts:
        concept = load_concept(args.concept_file, name)
        retain = retain_texts_for(all_concepts, concept)
        retain_qa = retain_qa_for(all_concepts, concept)
        before = evaluate(model, concept)
        for method in args.methods:
            wall, cpu = time.perf_counter(), time.process_time()
            r = unlearn(
                model,
                concept,
                UnlearnConfig(method=method),
                retain_texts=retain,
                retain_qa=retain_qa,
                evaluate_before=before,
                progress=False,
            )
            steps = r.steps if method != "needle" else f"{r.steps} / {len(r.params['options']['vectors'])}"
            row = {
                "concept": concept.concept,
                "method": method,
                "steps": steps,
                "forget_acc": f"{r.before.forget_accuracy:.2f} -> {r.after.forget_accuracy:.2f}",
                "unrelated_acc": f"{r.before.unrelated_accuracy:.2f} -> {r.after.unrelated_accuracy:.2f}",
                "forget_logprob": f"{r.before.forget_logprob:.2f} -> {r.after.forget_logprob:.2f}",
                "unrelated_logprob": f"{r.before.unrelated_logprob:.2f} -> {r.after.unrelated_logprob:.2f}",
                "passes": r.passes(),
                "wall_s": round(time.perf_counter() - wall, 1),
                "cpu_s": round(time.process_time() - cpu, 1),
            }
            rows.append(row)
            print(row, flush=True)
            _write(rows, out)
    print(_write(rows, out).to_string(index=False))


if __name__ == "__main__":
    main()
