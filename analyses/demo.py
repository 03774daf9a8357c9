"""``vestige demo``: the main job on the embedded model, offline.

Unlearn "Harry Potter" from SmolLM2-135M with ``ga``, ``npo`` and ``needle`` (the ConceptVectors oracle:
the located concept vectors zeroed until the answers go, ``analyses.unlearn.needle_search``), audit each unlearned model against the base, ablate the traces and
measure again, and write one report that compares the three.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analyses.audit import AuditConfig, AuditResult, audit, audit_report, verdict_table
from analyses.audit.report import families_table
from analyses.unlearn import UnlearnConfig, retain_qa_for, unlearn
from probes.data import DEFAULT_CONCEPT_FILE, load_concept, load_concepts
from probes.model import Model, load_model
from probes.results import write_json

DEMO_METHODS = ("ga", "npo", "needle")

# How the demo unlearns: fixed steps, no early stop. The default early stop reads the items a run trains on
# and ends it when those are forgotten (after 10-15 steps on Harry Potter), while the held-out half, which
# the audit scores, is still answered (0.62-0.81): those runs forget their training items, not the concept.
# Measured on SmolLM2, Harry Potter, 16 trained / 16 held-out items (scripts: docs/audit.md, "The demo"):
# NPO 20 steps at 1e-4: trained 0.00, held-out 0.31, unrelated 0.83; GA 20 steps at 1e-4: 0.00 / 0.44 / 0.67.
DEMO_UNLEARN = {
    "ga": UnlearnConfig(method="ga", steps=20, lr=1e-4, stop_fraction=None),
    "npo": UnlearnConfig(method="npo", steps=20, lr=1e-4, stop_fraction=None),
    "needle": UnlearnConfig(method="needle"),
}


def run_demo(
    out: str | Path = "vestige-out/demo",
    *,
    model: Model | None = None,
    concept_name: str = "Harry Potter",
    concept_file: str | Path = DEFAULT_CONCEPT_FILE,
    methods: Sequence[str] = DEMO_METHODS,
    audit_config: AuditConfig | None = None,
    progress: bool = True,
) -> tuple[list[AuditResult], pd.DataFrame]:
    """Run the demo; returns the audits and the verdict table (also written to ``out``)."""
    t0 = time.perf_counter()
    out = Path(out)
    base = model or load_model("smollm2-135m")
    concept = load_concept(concept_file, concept_name)
    concepts = load_concepts(concept_file)
    others = [c for c in concepts if c.concept != concept.concept]
    retain_texts = [t for c in others[:5] for t in c.text[:1]]
    retain_qa = retain_qa_for(concepts, concept)
    cfg = audit_config or AuditConfig()
    results, seconds = [], {}
    for method in methods:
        t = time.perf_counter()
        run = unlearn(
            base,
            concept,
            DEMO_UNLEARN.get(method, UnlearnConfig(method=method)),
            retain_texts=retain_texts,
            retain_qa=retain_qa,
            progress=progress,
        )
        write_json(out / method / "unlearn.json", run.to_dict())
        results.append(
            audit(
                base,
                run.model,
                concept,
                config=cfg,
                out=out / method,
                trained_items=run.trained_items,  # the audit scores the held-out half
                progress=progress,
            )
        )
        seconds[method] = round(time.perf_counter() - t, 1)
        del run
    table = verdict_table(results, list(methods))
    audit_report(
        results, list(methods), title="vestige demo: unlearning Harry Potter from SmolLM2-135M"
    ).write(out / "report.html")
    write_json(
        out / "demo.json",
        {
            "concept": concept.concept,
            "methods": list(methods),
            "verdicts": table.to_dict(orient="records"),
            # every family's call per method, with the 95% intervals behind it
            "families": families_table(results, list(methods)).to_dict(orient="records"),
        },
    )
    write_json(
        out / "timings.json", {"per_method_seconds": seconds, "total_seconds": time.perf_counter() - t0}
    )
    return results, table
