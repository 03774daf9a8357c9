"""The audit's result (``AuditResult``) and the verdict rule it states (``VERDICT_RULE``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from probes.results import Result, to_jsonable

VERDICT_RULE = (
    "behaviour gone = the unlearned model's forget-QA accuracy is at most half the base's. "
    "recoverable = an attack (prefix, in-context text without the answers, rephrasing, relearning on "
    "answer-free text) or patching the base's concept vectors back brings forget accuracy to at least half "
    "the base's. traces present = the located concept vectors keep mean cosine >= 0.9 with the base (only "
    "when the two models share a neuron basis: seeded control neurons agree at median cosine >= 0.9, after "
    "re-aligning a permuted copy; otherwise the vectors are not comparable and do not vote), or the "
    "logit lens still ranks the answer in the top 10 at some inner layer for at least half the prompts, for at "
    "least 25 points more prompts than a decoy answer of the same type. "
    "suppressed: behaviour gone and (recoverable or traces present). removed: behaviour gone, not "
    "recoverable, traces gone. inconclusive: anything else (e.g. the behaviour is not gone)."
)


@dataclass(frozen=True)
class AuditResult(Result):
    """Everything the audit measured, as JSON-ready dicts per stage, and the verdict."""

    concept: str
    verdict: str
    reasons: tuple[str, ...]
    behaviour: dict[str, Any]
    concept_vectors: dict[str, Any]
    logit_lens: dict[str, Any]
    recovery: dict[str, Any]
    interventions: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    base_model: str = ""  # the models by their spec (path, hub id or embedded name)
    unlearned_model: str = ""
    notes: tuple[str, ...] = ()  # what the audit could not measure, and why

    @property
    def label(self) -> str:
        """How tables name this audit: the unlearned model's spec (the concept when it has none)."""
        return self.unlearned_model or self.concept

    def to_dict(self) -> dict[str, Any]:
        d = {
            "concept": self.concept,
            "base_model": self.base_model,
            "unlearned_model": self.unlearned_model,
            "notes": list(self.notes),
            "verdict": self.verdict,
            "verdict_rule": VERDICT_RULE,
            "reasons": list(self.reasons),
            "behaviour": self.behaviour,
            "concept_vectors": self.concept_vectors,
            "logit_lens": self.logit_lens,
            "recovery": self.recovery,
            "interventions": self.interventions,
        }
        d.update(self.extra)
        return to_jsonable(d)

    def to_frame(self) -> pd.DataFrame:
        b = self.behaviour
        rows = [
            ("verdict", self.verdict, ""),
            ("forget accuracy", b["forget_accuracy"]["base"], b["forget_accuracy"]["unlearned"]),
            ("unrelated accuracy", b["unrelated_accuracy"]["base"], b["unrelated_accuracy"]["unlearned"]),
            ("concept-vector mean cosine", 1.0, self.concept_vectors["mean_cosine"]),
            ("concept-vector mean Jaccard (top-200)", 1.0, self.concept_vectors["mean_jaccard"]),
        ]
        for name, acc in self.recovery["unlearned"].items():
            rows.append((f"forget accuracy after {name}", self.recovery["base"].get(name, np.nan), acc))
        return pd.DataFrame(rows, columns=["measure", "base", "unlearned"])
