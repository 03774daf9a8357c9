"""ROUGE recall through the maintained ``rouge-score`` package, with Porter stemming (TOFU's and MUSE's
setting). Kept apart from ``probes.freeform`` so that the data contract's scoring (``probes.qa``) can use it
without an import circle."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from probes.errors import VestigeError


class FreeFormError(VestigeError):
    """Free-form scoring cannot run on these inputs."""


@lru_cache(maxsize=1)
def _scorer():  # one scorer (its stemmer) per process: is_correct calls this per scored item
    try:
        from rouge_score import rouge_scorer
    except ImportError as e:
        raise FreeFormError(
            "ROUGE scoring needs the rouge-score package, which is not installed",
            "free-form answers are scored by ROUGE recall, as TOFU and MUSE score them",
            "pip install rouge-score   (it is a dependency of vestige; reinstall with pip install -e .)",
        ) from e
    return rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)


def rouge_recall(references: Sequence[str], predictions: Sequence[str]) -> tuple[list[float], list[float]]:
    """Per pair, the ROUGE-1 and ROUGE-L recall of ``predictions[i]`` against ``references[i]``."""
    if len(references) != len(predictions):
        raise FreeFormError(
            f"{len(references)} references for {len(predictions)} predictions",
            "ROUGE compares each generated answer with its own reference",
            "pass as many references as predictions, in the same order",
        )
    scorer = _scorer()
    r1, rl = [], []
    for ref, pred in zip(references, predictions, strict=True):
        s = scorer.score(ref, pred)  # (target, prediction)
        r1.append(float(s["rouge1"].recall))
        rl.append(float(s["rougeL"].recall))
    return r1, rl
