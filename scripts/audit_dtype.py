#!/usr/bin/env python
"""The same audit in two dtypes: does bfloat16 (the default on a GPU) change the calls?

    python scripts/audit_dtype.py --dtypes float32 bfloat16

Loads SmolLM2 and the GA-unlearned Mozart checkpoint that ``scripts/audit_memory.py`` makes (under
``--checkpoint``; made there if absent) in each dtype on the CPU, audits them with ``AuditConfig.quick``
and 10 relearning and fact-relearning steps (full fine-tuning: a bfloat16 copy trains through float32
masters), and prints the verdict and each family's forget value and call side by side.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--checkpoint", default="out/audit_memory_ga")
    args = p.parse_args()
    if not os.path.exists(os.path.join(args.checkpoint, "unlearn.json")):
        here = os.path.dirname(os.path.abspath(__file__))
        make = [sys.executable, os.path.join(here, "audit_memory.py"), "--make-checkpoint", args.checkpoint]
        subprocess.run(make, check=True)
    import pandas as pd

    from analyses.audit import AuditConfig, audit
    from analyses.cli.audit import trained_items
    from probes.data import load_concept
    from probes.model import load_model

    columns = {}
    for dtype in args.dtypes:
        base = load_model("smollm2", device="cpu", dtype=dtype)
        unlearned = load_model(args.checkpoint, device="cpu", dtype=dtype)
        result = audit(
            base,
            unlearned,
            load_concept(name="Wolfgang Amadeus Mozart"),
            config=AuditConfig.quick(relearn_steps=10, fact_relearn_steps=10),
            trained_items=trained_items(args.checkpoint),
            progress=False,
        )
        frame = result.traces_frame().set_index("family")
        columns[f"{dtype} forget"] = frame["forget"].astype(str)
        columns[f"{dtype} call"] = frame["call"]
        columns[f"{dtype} call"].loc["verdict"] = result.verdict
    print(pd.DataFrame(columns).to_string())


if __name__ == "__main__":
    main()
