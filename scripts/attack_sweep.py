#!/usr/bin/env python
"""Each attack alone, per concept and unlearning method, on SmolLM2: net recovery over the floor.

    python scripts/attack_sweep.py --concepts "Wolfgang Amadeus Mozart" "Albert Einstein" \\
        --methods ga npo rmu needle --out attack_sweep.csv

Every method runs with its defaults (half the QA trained, half held out). On the held-out items, the
control (the concept's unrelated QA and other concepts' questions that the base answers, at most 24) and
24 floor facts, each attack is scored alone: the prompt attacks and query forms, best-of-8 sampling, fact
relearning (all parameters, 10 steps at 3e-5; the RMSNorm weights only, 5 steps at 1e-3), the soft prompt
(the audit's defaults) and 4-bit quantization in groups of 32 (the embedded GGUF's own layout, at which
the base is a fixed point). A row is written (and flushed) per attack: forget, floor and control accuracy,
the net recovery forget - floor with its 95% bootstrap interval, for the forms that ask the items' own
data (``reverse``, ``cross_lingual``) the base's accuracy on the same held-out items under the attack, and
seconds.
"""

from __future__ import annotations

import argparse
import csv
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from analyses.audit import traces as T  # noqa: E402
from analyses.audit.config import AuditConfig  # noqa: E402
from analyses.query_forms import ITEM_FORMS  # noqa: E402
from analyses.unlearn import UnlearnConfig, retain_qa_for, retain_texts_for, unlearn  # noqa: E402
from probes.data import Concept, load_concepts, load_floor  # noqa: E402
from probes.model import load_model  # noqa: E402
from probes.qa import score_qa  # noqa: E402
from probes.stats import bootstrap_difference  # noqa: E402

ATTACKS = (
    "prefix",
    "in_context",
    "rephrased",
    "sampled",
    "fill_blank",
    "chat",
    "few_shot",
    "past",
    "future",
    "indirect",
    "step_by_step",
    "multiple_choice",
    "reverse",
    "cross_lingual",
)
WEIGHT_ATTACKS = ("fact_relearn", "fact_relearn_norms", "soft_prompt", "quantization")
COLUMNS = [
    "concept",
    "method",
    "attack",
    "forget",
    "floor",
    "control",
    "net",
    "net_lo",
    "net_hi",
    "base",
    "seconds",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--concepts", nargs="+", default=["Wolfgang Amadeus Mozart", "Albert Einstein", "Harry Potter"]
    )
    p.add_argument("--methods", nargs="+", default=["ga", "npo", "rmu", "needle"])
    p.add_argument(
        "--attacks", nargs="+", default=[*ATTACKS, *WEIGHT_ATTACKS], choices=[*ATTACKS, *WEIGHT_ATTACKS]
    )
    p.add_argument("--out", default="attack_sweep.csv")
    args = p.parse_args()
    prompt_attacks = [a for a in ATTACKS if a in args.attacks]
    model = load_model("smollm2")
    concepts = load_concepts()
    floor = load_floor()
    cfg = AuditConfig()
    with open(args.out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)

        def row(
            concept: str, method: str, attack: str, values: dict, seconds: float, base: float = float("nan")
        ) -> None:
            f, fl, ctl = values.get("forget") or [], values.get("floor") or [], values.get("control") or []
            if not f or not fl:
                return
            d = bootstrap_difference(f, fl, n_boot=2000, seed=5)
            cells = [np.mean(f), np.mean(fl), np.mean(ctl) if ctl else float("nan"), d.mean, d.lo, d.hi, base]
            w.writerow([concept, method, attack, *(round(float(x), 4) for x in cells), round(seconds, 1)])
            fh.flush()
            print(concept, method, attack, f"net {d}", flush=True)

        for name in args.concepts:
            concept = next(c for c in concepts if c.concept == name)
            retain_qa = retain_qa_for(concepts, concept)
            for method in args.methods:
                run = unlearn(
                    model,
                    concept,
                    UnlearnConfig(method=method),
                    retain_texts=retain_texts_for(concepts, concept),
                    retain_qa=retain_qa,
                    progress=False,
                )
                seen = set(run.trained_items)
                trained = tuple(q for q in concept.qa if q.prompt in seen)
                held = Concept(
                    name,
                    tuple(q for q in concept.qa if q.prompt not in seen),
                    concept.text,
                    concept.unrelated_qa,
                )
                pool = list(concept.unrelated_qa) + retain_qa
                sets = T.item_sets(model, held, pool, floor, limit=24, floor_limit=24, seed=0)
                # the forms that ask the items' own data: the base's own accuracy under them is reported
                base_forms = [a for a in prompt_attacks if a in ITEM_FORMS]
                base_attacked = T.attack_values(model, sets, base_forms) if base_forms else {}
                m = run.model
                t = time.perf_counter()
                row(name, method, "none", T.behaviour_values(m, sets), time.perf_counter() - t)
                attacked = T.attack_values(m, sets, prompt_attacks, sampling=cfg.sampling())
                for a in prompt_attacks:
                    # the base's accuracy on the same held-out items under the attack: what there is to hide
                    base = (
                        np.mean(base_attacked["by_attack"][a]["forget"]) if a in base_forms else float("nan")
                    )
                    row(name, method, a, attacked["by_attack"][a], attacked["seconds"][a], base)
                for label, params, steps, lr in (
                    ("fact_relearn", "all", 10, 3e-5),
                    ("fact_relearn_norms", "norms", 5, 1e-3),
                ):
                    if label in args.attacks:
                        t = time.perf_counter()
                        v = T.fact_relearn_values(m, sets, trained, steps=steps, lr=lr, seed=0, params=params)
                        row(name, method, label, v, time.perf_counter() - t)
                if "soft_prompt" in args.attacks:
                    t = time.perf_counter()
                    v = T.soft_prompt_values(m, sets, trained, config=cfg.soft_prompt())
                    row(name, method, "soft_prompt", v, time.perf_counter() - t)
                if "quantization" in args.attacks:
                    t = time.perf_counter()
                    v = T.quantized_values(m, sets, bits=4, group_size=32)
                    row(name, method, "quantization", v, time.perf_counter() - t)
                print(f"{name} {method}: unrelated accuracy {score_qa(m, concept.unrelated_qa).accuracy:.2f}")
                del run, m


if __name__ == "__main__":
    main()
