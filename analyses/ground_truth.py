"""The verdict against ground truth: the audit's confusion matrix on the synthetic world.

For every world seed and both lineages (two runs from scratch, ``analyses.world.world_models``; one common
model continued with and without the forget people, ``analyses.world.lineage_models``), ``run_oracle``
audits against the full model: the unlearning methods (truth: suppressed, they start from a model that
knows), the retrain oracle (truth: removed), a model unlearned and then fine-tuned back on the forget
people's biographies and an exact copy of the full model (truth: known). ``GroundTruthResult`` holds one row
per audited model: its truth, the verdict and every family's call and relative value (the unlearned
model's forget - floor difference as a share of the full model's: 1 = as in the base, 0 = at the floor).
``confusion()`` is truth x verdict; ``separation()`` is, per family, the AUC between the oracle and the
suppressed models of that relative value (1.0: every suppressed model keeps more of the trace than every
oracle) and how often each truth gets each call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from analyses.audit.rule import FAMILIES
from analyses.oracle import OracleConfig, run_oracle, truth_of
from analyses.world import WorldConfig
from probes.results import Result, write_json

# the verdict each truth must get: a model that still answers has nothing to audit (inconclusive), never
# removed
EXPECTED = {"removed": "removed", "suppressed": "suppressed", "known": "inconclusive"}
TRUTHS = ("removed", "suppressed", "known")
VERDICTS = ("removed", "suppressed", "inconclusive")


@dataclass(frozen=True)
class GroundTruthConfig(Result):
    seeds: tuple[int, ...] = (0, 1, 2)
    lineages: tuple[str, ...] = ("scratch", "shared")
    # every unlearning method the world is tuned for (OracleConfig's default, the slow test's, is GA and NPO)
    oracle: OracleConfig = field(default_factory=lambda: OracleConfig(methods=("ga", "npo", "rmu")))


@dataclass(frozen=True)
class GroundTruthResult(Result):
    rows: tuple[dict[str, Any], ...]
    config: GroundTruthConfig
    seconds: float

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.rows))

    @property
    def correct(self) -> float:
        f = self.to_frame()
        return float((f["verdict"] == f["expected"]).mean())

    def misses(self) -> pd.DataFrame:
        f = self.to_frame()
        return f[f["verdict"] != f["expected"]]

    def confusion(self) -> pd.DataFrame:
        """Truth (rows) x verdict (columns), counts over every audited model."""
        f = self.to_frame()
        table = pd.crosstab(f["truth"], f["verdict"]).reindex(index=list(TRUTHS), columns=list(VERDICTS))
        return table.fillna(0).astype(int)

    def separation(self) -> pd.DataFrame:
        """Per family: AUC (oracle vs suppressed) of the relative value, its mean per truth, and the share
        of each truth's models where the family was called present / gone."""
        from sklearn.metrics import roc_auc_score

        f = self.to_frame()
        out = []
        for fam in FAMILIES:
            col = f"{fam}: relative"
            row: dict[str, Any] = {"family": fam}
            pair = f[f["truth"].isin(["removed", "suppressed"])][["truth", col]].dropna()
            labels = (pair["truth"] == "suppressed").astype(int)
            row["AUC oracle vs suppressed"] = (
                float(roc_auc_score(labels, pair[col])) if labels.nunique() == 2 else float("nan")
            )
            for truth in TRUTHS:
                sub = f[f["truth"] == truth]
                row[f"relative: {truth}"] = (
                    float(sub[col].dropna().mean()) if sub[col].notna().any() else np.nan
                )
            for truth in TRUTHS:
                calls = f.loc[f["truth"] == truth, f"{fam}: call"]
                row[f"present: {truth}"] = float((calls == "present").mean()) if len(calls) else np.nan
                row[f"gone: {truth}"] = float((calls == "gone").mean()) if len(calls) else np.nan
            out.append(row)
        return pd.DataFrame(out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "correct": self.correct,
            "confusion": self.confusion().to_dict(),
            "separation": self.separation().to_dict(orient="records"),
            "rows": list(self.rows),
            "config": self.config.to_dict(),
            "seconds": self.seconds,
        }


def run_ground_truth(
    config: GroundTruthConfig | None = None, *, out: str | Path | None = None, progress: bool = True
) -> GroundTruthResult:
    """Run ``run_oracle`` for every seed and lineage of ``config`` and collect truth against verdict."""
    cfg = config or GroundTruthConfig()
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    jobs = [(s, lin) for s in cfg.seeds for lin in cfg.lineages]
    for seed, lineage in tqdm(jobs, desc="ground truth", disable=not progress):
        if lineage not in ("scratch", "shared"):
            raise ValueError(f"unknown lineage {lineage!r}; choose from 'scratch', 'shared'")
        ocfg = replace(
            cfg.oracle, world=replace(cfg.oracle.world, seed=seed), seed=seed, lineage=lineage == "shared"
        )
        sub = Path(out) / f"seed{seed}-{lineage}" if out is not None else None
        r = run_oracle(ocfg, out=sub, progress=False)
        for name, a in r.audits.items():
            truth = truth_of(name)
            row: dict[str, Any] = {
                "seed": seed,
                "lineage": lineage,
                "model": name,
                "truth": truth,
                "expected": EXPECTED[truth],
                "verdict": a.verdict,
                "forget accuracy": a.behaviour["forget_accuracy"]["unlearned"],
                "comparable": bool(a.concept_vectors.get("basis", {}).get("comparable", False)),
            }
            for c in a.traces:
                row[f"{c.family}: call"] = c.call
                row[f"{c.family}: relative"] = c.relative
            rows.append(row)
    result = GroundTruthResult(tuple(rows), cfg, time.perf_counter() - t0)
    if out is not None:
        write_json(Path(out) / "ground_truth.json", result.to_dict())
    return result


__all__ = ["EXPECTED", "GroundTruthConfig", "GroundTruthResult", "WorldConfig", "run_ground_truth"]
