"""The per-attack table: each attack of an audit alone, on the held-out forget items and on the floor, and
its net recovery (forget minus floor, a 95% bootstrap interval) with the time it took.

The trace families pool the prompt attacks (an item counts when any one answers it); this table keeps
them apart, next to the attacks that are families of their own (relearning, fact relearning, the soft
prompt, quantization), so that a reader sees which attack recovers what the others miss. Net recovery is
Feng et al.'s (2025) minimal-information-injection reading: what an attack lifts on facts the model never
knew it taught, so only the excess over the floor counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from probes.stats import bootstrap_difference, bootstrap_mean

# attack families of their own: (row name, trace family, stage whose time it took)
FAMILY_ATTACKS = (
    ("relearning", "relearning", "relearn"),
    ("fact_relearning", "fact_relearning", "fact_relearn"),
    ("soft_prompt", "soft_prompt", "soft_prompt"),
    ("quantization", "quantization", "quantization"),
)


def _row(
    name: str,
    kind: str,
    values: Mapping[str, Any],
    base_forget: float,
    seconds: float,
    n_boot: int,
    seed: int,
) -> dict[str, Any] | None:
    forget, floor = values.get("forget") or [], values.get("floor") or []
    if not forget or not floor:
        return None
    f = bootstrap_mean(forget, n_boot=n_boot, seed=seed)
    fl = bootstrap_mean(floor, n_boot=n_boot, seed=seed + 2)
    d = bootstrap_difference(forget, floor, n_boot=n_boot, seed=seed + 5)
    control = values.get("control") or []
    return {
        "attack": name,
        "kind": kind,
        "forget": f.mean,
        "forget_lo": f.lo,
        "forget_hi": f.hi,
        "control": sum(control) / len(control) if control else float("nan"),
        "floor": fl.mean,
        "floor_lo": fl.lo,
        "floor_hi": fl.hi,
        "net": d.mean,
        "net_lo": d.lo,
        "net_hi": d.hi,
        "base_forget": base_forget,
        "seconds": round(seconds, 2),
        "n_forget": len(forget),
        "n_floor": len(floor),
    }


def attack_rows(
    trace_values: Mapping[str, Any],
    behaviour: Mapping[str, Any],
    timings: Mapping[str, float],
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per attack: greedy (no attack) first, each prompt attack alone, then the attack families
    that were measured. ``trace_values``: the traces stage's per-item values; ``behaviour``: the behaviour
    stage (the base's forget accuracy under each prompt attack, each attack's time on the forget items);
    ``timings``: the stages' seconds."""
    base_plain = trace_values["behaviour"]["base"]["forget"]
    base_acc = sum(base_plain) / len(base_plain) if base_plain else float("nan")
    rows = [
        _row("none (greedy)", "none", trace_values["behaviour"]["unlearned"], base_acc, 0.0, n_boot, seed)
    ]
    pa = trace_values.get("prompt_attacks", {}).get("unlearned", {})
    b_base, b_unl = behaviour.get("base", {}), behaviour.get("unlearned", {})
    for a in pa.get("attacks", []):
        per = pa.get("by_attack", {}).get(a)
        if per is None:  # a cached audit from before per-attack values: nothing to show
            continue
        base_a = b_base.get("attacks", {}).get(a, {}).get("accuracy", float("nan"))
        sec = b_unl.get("seconds", {}).get(a, 0.0) + pa.get("seconds", {}).get(a, 0.0)
        rows.append(_row(a, "prompt", per, base_a, sec, n_boot, seed))
    for name, family, stage in FAMILY_ATTACKS:
        v = trace_values.get(family)
        if v is None:
            continue
        side = v.get("base")
        base_f = (sum(side["forget"]) / len(side["forget"])) if side and side.get("forget") else base_acc
        rows.append(_row(name, "family", v["unlearned"], base_f, timings.get(stage, 0.0), n_boot, seed))
    return [r for r in rows if r is not None]
