#!/usr/bin/env python
"""Peak memory of one audit as a multiple of the model's parameter bytes, full vs lean relearning.

    python scripts/audit_memory.py --relearn-params all  --out mem_all.json
    python scripts/audit_memory.py --relearn-params lora --relearn-lr 1e-3 --out mem_lora.json

Run each setting in its own process (the kernel's peak RSS is per process). The unlearned model is the
one ``vestige audit`` would read: SmolLM2 unlearned on Wolfgang Amadeus Mozart with GA (20 steps at 1e-4,
half the QA held out), made once in a child process and saved under ``--checkpoint`` (the unlearning's
own optimizer state never counts against the audit; a checkpoint already there is reused). This process
then loads the base and the checkpoint and audits them with ``AuditConfig.quick`` and 10 steps of
relearning and fact relearning with the chosen parameters. It writes the RSS before any model was loaded,
the RSS with both models loaded, each stage's peak RSS, start RSS and working memory (``timings.json``'s),
the audit's peak, the parameter bytes of one model, both relearnings' forget / floor accuracy, each
stage's seconds, and two multiples (the two resident models alone make 2.0):

- ``multiple``: (audit peak - RSS once the runtime is loaded) / parameter bytes. The runtime is what
  any audit of any model loads once: the libraries the audit imports as it goes (the tokenizer library,
  transformers' model code, peft, scikit-learn, scipy, TransformerLens' bridge), measured here by
  importing them and loading one throw-away tokenizer before the models (``runtime_mb``). It does not
  grow with the model, so it is left out of the multiple that does.
- ``multiple_with_runtime``: (audit peak - RSS after importing ``analyses.audit``) / parameter bytes, the
  measure of the earlier notes: it counts the runtime too, which on a 135M model is about half a model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from probes.memory import parameter_bytes, rss_bytes  # noqa: E402

CONCEPT = "Wolfgang Amadeus Mozart"


def load_runtime(tokenizer_dir: str) -> None:
    """Import what the audit imports as it goes and load one tokenizer (then drop it): the process then
    holds the runtime that any audit loads once, whatever the model."""
    import peft  # noqa: F401
    import scipy.optimize  # noqa: F401
    import scipy.stats  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    from transformer_lens.model_bridge import TransformerBridge  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    from probes.memory import release_free_memory

    AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)  # a local folder: never the hub
    release_free_memory()


def make_checkpoint(path: str) -> None:
    """Unlearn Mozart with GA and save the model and the items it trained on under ``path``."""
    from analyses.unlearn import UnlearnConfig, unlearn
    from probes.data import load_concept
    from probes.model import load_model

    model = load_model("smollm2", device="cpu")
    run = unlearn(
        model,
        load_concept(name=CONCEPT),
        UnlearnConfig(method="ga", steps=20, lr=1e-4, stop_fraction=None),
        progress=False,
    )
    run.save(path)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--make-checkpoint":
        make_checkpoint(sys.argv[2])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--relearn-params", default="all")
    p.add_argument("--relearn-lr", type=float, default=3e-5)
    p.add_argument("--out", default="audit_memory.json")
    p.add_argument("--checkpoint", default="out/audit_memory_ga", help="the unlearned model (made if absent)")
    p.add_argument(
        "--base",
        default=None,
        help="audit this checkpoint against itself instead (e.g. a wider seeded Llama from "
        "scripts/seeded_llama.py: how the memory scales with the parameter count)",
    )
    args = p.parse_args()
    if args.base is None and not os.path.exists(os.path.join(args.checkpoint, "unlearn.json")):
        subprocess.run([sys.executable, __file__, "--make-checkpoint", args.checkpoint], check=True)
    from analyses.audit import AuditConfig, audit
    from analyses.cli.audit import trained_items
    from probes.data import load_concept
    from probes.model import load_model

    before_runtime = rss_bytes()
    load_runtime(args.base or args.checkpoint)
    before_models = rss_bytes()
    model = load_model(args.base or "smollm2", device="cpu")
    unlearned = load_model(args.base or args.checkpoint, device="cpu")
    concept = load_concept(name=CONCEPT)
    trained = None if args.base else trained_items(args.checkpoint)
    loaded = rss_bytes()
    cfg = AuditConfig.quick(
        relearn_steps=10,
        fact_relearn_steps=10,
        relearn_params=args.relearn_params,
        fact_relearn_params=args.relearn_params,
        relearn_lr=args.relearn_lr,
        fact_relearn_lr=args.relearn_lr,
        attack_when_nothing_to_forget=True,  # a seeded --base knows nothing: every stage must still run
    )
    result = audit(model, unlearned, concept, config=cfg, trained_items=trained, progress=False)
    stages = result.timings_frame()
    peak = int(max(r["peak_bytes"] or 0 for r in result.timings["stages"].values()))
    pbytes = parameter_bytes(model.hf)
    calls = result.traces_frame().set_index("family")
    out = {
        "model": args.base or "smollm2",
        "relearn_params": args.relearn_params,
        "relearn_lr": args.relearn_lr,
        "rss_before_runtime": before_runtime,
        "runtime_mb": round((before_models - before_runtime) / 2**20, 1),
        "rss_before_models": before_models,
        "rss_models_loaded": loaded,
        "parameter_bytes": pbytes,
        "audit_peak_rss": peak,
        "multiple": round((peak - before_models) / pbytes, 2),
        "multiple_with_runtime": round((peak - before_runtime) / pbytes, 2),
        "stage_peak_mb": dict(zip(stages["stage"], stages["peak_mb"], strict=True)),
        "stage_start_mb": dict(zip(stages["stage"], stages["start_mb"], strict=True)),
        "stage_working_mb": dict(zip(stages["stage"], stages["working_mb"], strict=True)),
        "stage_seconds": dict(zip(stages["stage"], stages["seconds"], strict=True)),
        "relearning": {
            f: {k: str(calls.loc[f, k]) for k in ("forget", "floor", "forget - floor", "call")}
            if f in calls.index
            else None
            for f in ("relearning", "fact_relearning")
        },
        "verdict": result.verdict,
    }
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
