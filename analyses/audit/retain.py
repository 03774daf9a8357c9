"""The unlearned model against a retain model: has it reached the state of a model that never saw the
forget data? (RESTOR, Rezaei et al. 2024; TOFU's retain90, MUSE's retrained model, the world's oracle.)

A retain model is audited against the same base on the same items (``audit(..., retain_model=R)``), so each
trace family has, per forget item, the unlearned model's value and the retain model's. The comparison is
paired (the same item under both models): ``d`` = the mean of (unlearned - retain) per item, with a 95%
percentile-bootstrap interval, set against ``m`` = ``gone_margin`` times the base's signal (its forget - floor
difference, what the family can see of the concept where it is known):

- ``above``: d's interval is above 0: more of the concept is left than in the retain model;
- ``below``: d's interval is below 0: further from the concept than a model that never saw it
  (over-forgetting, itself a trace of unlearning: MUSE and TOFU flag it);
- ``reached``: d's interval holds 0 and lies within [-m, m] (an equivalence test): the unlearned model is,
  on this trace, where a model that never saw the data is, to within the share of the signal that
  ``gone`` allows against the floor;
- ``inconclusive``: d's interval holds 0 but reaches past m (too few items to tell);
- ``not informative``: the family sees nothing of the concept in the base (no signal to compare against);
- ``not comparable`` / ``not measured``: as in the main audit (another neuron basis; a family off).

The retain model is a reference, not a vote: the verdict (removed / suppressed / inconclusive) is the
main audit's, against the knowledge floor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analyses.audit.rule import (
    ATTACK_FAMILIES,
    FAMILIES,
    GONE_MARGIN,
    NOT_COMPARABLE,
    fmt_interval,
    index_comparable,
)
from probes.results import Result
from probes.stats import Interval, bootstrap_difference, bootstrap_mean

RETAIN_CALLS = (
    "reached",
    "above",
    "below",
    "inconclusive",
    "not informative",
    "not comparable",
    "not measured",
)


@dataclass(frozen=True)
class RetainCall(Result):
    """One family's comparison of the unlearned model with the retain model on the forget items."""

    family: str
    call: str
    why: str
    unlearned: Interval | None = None  # the unlearned model's forget mean
    retain: Interval | None = None  # the retain model's forget mean
    difference: Interval | None = None  # paired: mean over items of (unlearned - retain)
    margin: float | None = None  # "reached" when the difference lies within [-margin, margin]

    def row(self) -> dict[str, Any]:
        fmt = fmt_interval
        return {
            "family": self.family,
            "call": self.call,
            "unlearned forget": fmt(self.unlearned),
            "retain model forget": fmt(self.retain),
            "unlearned - retain": fmt(self.difference),
            "within": "" if self.margin is None else f"+-{self.margin:.2f}",
            "why": self.why,
        }


def retain_frame(calls: tuple[RetainCall, ...] | list[RetainCall]) -> pd.DataFrame:
    return pd.DataFrame([c.row() for c in calls])


def _base_signal(family: str, values: Mapping[str, Any], *, n_boot: int, seed: int) -> Interval | None:
    """The base's forget - floor difference for ``family`` with its 95% bootstrap interval, drawn as the
    main rule draws it (``rule.call_family``: the same seed offset), so that a family the main audit calls
    not informative is not informative here either (the attack families read the base's plain answers, as
    the main rule does); None when the base has no values of it."""
    base = values["behaviour"]["base"] if family in ATTACK_FAMILIES else values[family].get("base")
    if not base or not base.get("forget") or not base.get("floor"):
        return None
    return bootstrap_difference(base["forget"], base["floor"], n_boot=n_boot, seed=seed + 6)


def compare_with_retain(
    values: Mapping[str, Any],
    retain_values: Mapping[str, Any],
    *,
    basis: Mapping[str, Any],
    retain_basis: Mapping[str, Any],
    margin: float = GONE_MARGIN,
    n_boot: int = 2000,
    seed: int = 0,
) -> list[RetainCall]:
    """One ``RetainCall`` per family of ``FAMILIES``. ``values`` / ``retain_values``: the ``traces`` stage
    of the audit of the unlearned model and of the retain model against the same base on the same items
    (``AuditResult.extra["trace_values"]``); ``basis`` / ``retain_basis``: how each lines up with the base
    (``probes.alignment.AlignmentInfo.to_dict()``, the audits' ``concept_vectors["basis"]``): the families
    read at the base's neuron or head indices compare only where both share the base's basis."""
    calls = []
    for family in FAMILIES:
        mine, theirs = values.get(family), retain_values.get(family)
        # the vectors' cosines are per-index weights, as the activations
        by_index = "activations" if family == "concept_vectors" else family
        if not (index_comparable(by_index, basis) and index_comparable(by_index, retain_basis)):
            why = f"the retain model or the unlearned one shares {NOT_COMPARABLE[by_index]} with the base"
            calls.append(RetainCall(family, "not comparable", why))
            continue
        if family == "concept_vectors":
            # a cosine with the base's vectors, not a reading of the concept on items: the main audit calls it
            calls.append(
                RetainCall(family, "not measured", "a weight comparison with the base, not a per-item trace")
            )
            continue
        if mine is None or theirs is None:
            calls.append(RetainCall(family, "not measured", "not measured in one of the two audits"))
            continue
        u = np.asarray(mine["unlearned"].get("forget") or [], dtype=np.float64)
        r = np.asarray(theirs["unlearned"].get("forget") or [], dtype=np.float64)
        if u.size == 0 or u.size != r.size:
            calls.append(
                RetainCall(
                    family, "not measured", f"forget items differ between the audits ({u.size} vs {r.size})"
                )
            )
            continue
        kw = dict(n_boot=n_boot, seed=seed)
        ui, ri, d = bootstrap_mean(u, **kw), bootstrap_mean(r, **kw), bootstrap_mean(u - r, **kw)
        signal = _base_signal(family, values, n_boot=n_boot, seed=seed)
        if signal is None or signal.lo <= 0:
            why = "the base shows no signal of the concept above the floor"
            if signal is not None:
                why += f" (its forget - floor {signal} holds 0: the main audit calls it not informative too)"
            calls.append(RetainCall(family, "not informative", why, ui, ri, d))
            continue
        m = margin * signal.mean
        if d.lo > 0:
            call, why = (
                "above",
                f"unlearned - retain {d} is above 0: more of the concept is left than in the retain model",
            )
        elif d.hi < 0:
            call, why = (
                "below",
                f"unlearned - retain {d} is below 0: further from the concept than the retain model",
            )
        elif -m <= d.lo and d.hi <= m:
            call, why = (
                "reached",
                f"unlearned - retain {d} holds 0 and lies within +-{m:.2f} ({margin} of the base's signal)",
            )
        else:
            call, why = "inconclusive", f"unlearned - retain {d} holds 0 but reaches past +-{m:.2f}"
        calls.append(RetainCall(family, call, why, ui, ri, d, m))
    return calls
