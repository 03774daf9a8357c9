"""The known-answer test of the audit: a retrain oracle against suppression, in a synthetic world.

``run_oracle`` trains (or loads from the cache) the world's full model and its retrain oracle
(``analyses.world``), unlearns the forget people from the full model with ``ga`` and ``npo``, and audits the
unlearned models and the oracle against the full model. The oracle never saw the forget people, so the
audit must call it ``removed``; GA and NPO start from the full model, so whatever they leave behind shows
as ``suppressed``. ``separation_table`` puts every trace side by side: which ones tell the two apart.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analyses.audit import AuditConfig, AuditResult, audit
from analyses.behaviour import ATTACKS
from analyses.unlearn import UnlearnConfig, unlearn
from analyses.unlearn.config import MethodConfig
from analyses.unlearn.methods.rmu import RMUConfig
from analyses.world import WorldConfig, lineage_models, world_models
from probes.membership import MembershipConfig, MembershipResult, membership_inference, priv_leak
from probes.results import Result, atomic_write_text, write_json


@dataclass(frozen=True)
class OracleConfig(Result):
    """The world, the unlearning runs on it and the audit's knobs that depend on the model's scale (the
    SmolLM2 defaults of lr 2e-5 move a 64-wide model too little)."""

    world: WorldConfig = field(default_factory=WorldConfig)
    methods: tuple[str, ...] = ("ga", "npo")
    # per method: the rate that brings forget accuracy under half its start within the steps on this
    # world (measured: GA 3e-4 -> 0.20, NPO 1e-4 -> 0.30 of 0.93; the small model pays in unrelated QA)
    unlearn_lr: tuple[tuple[str, float], ...] = (("ga", 3e-4), ("npo", 1e-4), ("rmu", 3e-3))
    # per method: its own options where the SmolLM2 defaults do not fit the 4-layer world. RMU with its
    # defaults (layer 1, c 4, alpha 100) leaves forget accuracy at 0.95; steering layer 2 at c 10 with alpha
    # 30 takes it to 0.20 (unrelated 0.60), as GA does. Needle is not among the world's methods: the concept
    # vectors located in the 4 x 256 neurons take forget accuracy only to 0.73 before the pool runs out.
    unlearn_options: tuple[tuple[str, MethodConfig], ...] = (("rmu", RMUConfig(layer=2, c=10.0, alpha=30.0)),)
    unlearn_steps: int = 40
    unlearn_trainable: str = "all"
    relearn_lr: float = 1e-3
    # The audit's fact relearning (retrain on T, test on V): 10 steps as on SmolLM2, at a rate for the small
    # model. Measured on the seed-0 world: at 1e-3 the oracle's fine-tuned copy loses its control facts
    # (0.17 of 0.94), so the call cannot be gone; at 3e-4 the control keeps 0.67 and the oracle's forget
    # items stay at 0.03 against a floor of 0.05 (gone), while GA's and NPO's come back (present).
    fact_relearn_steps: int = 10
    fact_relearn_lr: float = 3e-4
    relearn_steps: int = 10
    # The lens trace's k: the world's vocabulary holds a few values per attribute, so the full model puts an
    # answer in the top 10 at some inner layer for 0.57 of the floor people it never saw (0.12 in the top 1)
    lens_top_k: int = 1
    n_vectors: int = 10
    # the prompt attacks of every audit (``AuditConfig.attacks``); each is also reported alone
    # (``AuditResult.attacks_frame``), net of what it lifts on the floor people
    attacks: tuple[str, ...] = ATTACKS
    context_chars: int = 400  # about 80 words: the in-context attack stays inside the trained positions
    seed: int = 0
    # Models whose truth is "still knows": ``relearned`` (the first method's model fine-tuned back on the
    # forget people's biographies) and ``no_op`` (an exact copy of the full model). Both must not be
    # called removed; the rule calls a model that still answers inconclusive.
    controls: tuple[str, ...] = ("relearned", "no_op")
    relearned_steps: int = 40
    relearned_lr: float = 1e-3
    # ``analyses.world.lineage_models``: full model and oracle continued from one common model
    lineage: bool = False


@dataclass(frozen=True)
class OracleResult(Result):
    """The audits (``ga``, ``npo``, ``oracle`` against the full model) and the training/unlearning facts."""

    audits: dict[str, AuditResult]
    unlearning: dict[str, dict[str, Any]]
    train_seconds: dict[str, float]
    seconds: float
    config: OracleConfig
    # membership inference on the forget people's biographies against the floor people's, per model ("full
    # model" and every audited one; ``membership_rows``)
    membership: dict[str, MembershipResult] = field(default_factory=dict)

    @property
    def verdicts(self) -> dict[str, str]:
        return {k: a.verdict for k, a in self.audits.items()}

    def to_frame(self) -> pd.DataFrame:
        frame = separation_table(self.audits)
        if not self.membership:
            return frame
        rows = membership_rows(self.membership)
        extra = pd.DataFrame(rows).reindex(columns=[c for c in frame.columns if c in rows])
        frame = pd.concat([frame.drop(index="verdict"), extra, frame.loc[["verdict"]]])
        frame.index.name = "trace"
        return frame

    def retain_frame(self) -> pd.DataFrame:
        """Rows: trace families; columns: every model audited with the oracle as its retain model; cells:
        reached / above / below / inconclusive / ... (``analyses.audit.retain``): has the model reached,
        on that trace, the state of the model that never saw the forget people?"""
        cols = {k: {c.family: c.call for c in a.retain} for k, a in self.audits.items() if a.retain}
        frame = pd.DataFrame(cols)
        frame.index.name = "vs the oracle"
        return frame

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdicts": self.verdicts,
            "vs_oracle": self.retain_frame().to_dict(),
            "separation": self.to_frame().to_dict(orient="records"),
            "unlearning": self.unlearning,
            "train_seconds": self.train_seconds,
            "seconds": self.seconds,
            "config": self.config.to_dict(),
            "membership": {k: m.to_dict() for k, m in self.membership.items()},
        }


def membership_rows(membership: dict[str, MembershipResult]) -> dict[str, dict[str, float]]:
    """Per model: the AUC of the LOSS and Min-K%++ scores (forget people's biographies as members, floor
    people's as non-members) and, against the oracle, MUSE's PrivLeak of each (0: as the oracle)."""
    out: dict[str, dict[str, float]] = {}
    ref = membership.get("oracle")
    for name, m in membership.items():
        row = {
            "membership: LOSS AUC (forget vs floor biographies)": m.auc["loss"].mean,
            "membership: Min-K%++ AUC": m.auc["min_k_plus_plus"].mean,
        }
        if ref is not None:
            row["membership: PrivLeak of LOSS vs the oracle"] = priv_leak(
                m.auc["loss"].mean, ref.auc["loss"].mean
            )
            row["membership: PrivLeak of Min-K%++ vs the oracle"] = priv_leak(
                m.auc["min_k_plus_plus"].mean, ref.auc["min_k_plus_plus"].mean
            )
        out[name] = row
    return out


def _trace_rows(a: AuditResult) -> dict[str, float | str]:
    """One column of ``separation_table``; a trace the audit could not measure (no concept vector located:
    a null mean cosine) is NaN."""
    row = _trace_values(a)
    return {k: (float("nan") if v is None else v) for k, v in row.items()}


def _trace_values(a: AuditResult) -> dict[str, Any]:
    b, cv, lens = a.behaviour, a.concept_vectors, a.logit_lens
    probes = a.extra.get("probes", {}).get("forget_split", {})
    heads = a.extra.get("heads", {})
    rec = {k: v for k, v in a.recovery["unlearned"].items() if k != "none"}
    attacks = {
        k: v for k, v in rec.items() if k not in ("relearn", "fact_relearn", "quantization", "soft_prompt")
    }
    return {
        "forget accuracy": b["forget_accuracy"]["unlearned"],
        "unrelated accuracy": b["unrelated_accuracy"]["unlearned"],
        "concept vectors: mean cosine": cv["mean_cosine"],
        "concept vectors: mean Jaccard (top-200 tokens)": cv["mean_jaccard"],
        "logit lens: max inner top-10 share": lens["unlearned_max_inner_top10_share"],
        "logit lens: excess over same-type decoys": lens["unlearned_max_inner_excess_over_decoys"],
        "probe on forget people (fit on the others): best layer accuracy": probes.get("unlearned", {}).get(
            "best", float("nan")
        ),
        "memory heads: Spearman of head effects with the full model": heads.get(
            "spearman_base_vs_unlearned", float("nan")
        ),
        "memory heads: memory-answer rate on conflicts": heads.get("memory_rate", {}).get(
            "unlearned", float("nan")
        ),
        "recovery: best prompt attack": max(attacks.values()) if attacks else float("nan"),
        "recovery: relearning on answer-free text": rec.get("relearn", float("nan")),
        "recovery: 4-bit quantization": rec.get("quantization", float("nan")),
        "recovery: soft prompt (fitted on other facts)": rec.get("soft_prompt", float("nan")),
        "recovery: patching the full model's concept vectors back": a.interventions[
            "patch_vectors_from_base"
        ]["forget_accuracy"],
        "verdict": a.verdict,
    }


def separation_table(audits: dict[str, AuditResult]) -> pd.DataFrame:
    """Rows: traces; columns: the full model (the audits' base), each audited model, and the gap between
    the oracle and the closest suppressed model (positive: the suppressed models keep more)."""
    first = next(iter(audits.values()))
    base = {
        "forget accuracy": first.behaviour["forget_accuracy"]["base"],
        "unrelated accuracy": first.behaviour["unrelated_accuracy"]["base"],
        "concept vectors: mean cosine": 1.0,
        "concept vectors: mean Jaccard (top-200 tokens)": 1.0,
        "probe on forget people (fit on the others): best layer accuracy": first.extra.get("probes", {})
        .get("forget_split", {})
        .get("base", {})
        .get("best", float("nan")),
        "memory heads: memory-answer rate on conflicts": first.extra.get("heads", {})
        .get("memory_rate", {})
        .get("base", float("nan")),
        "recovery: relearning on answer-free text": first.recovery["base"].get("relearn", float("nan")),
    }
    cols = {name: _trace_rows(a) for name, a in audits.items()}
    frame = pd.DataFrame({"full model": pd.Series(base), **{k: pd.Series(v) for k, v in cols.items()}})
    frame = frame.reindex(list(next(iter(cols.values())).keys()))
    if "oracle" in cols and any(truth_of(k) == "suppressed" for k in cols):
        others = [k for k in cols if truth_of(k) == "suppressed"]
        gaps = []
        for row in frame.index:
            if row == "verdict":
                gaps.append("")
                continue
            o = float(frame.at[row, "oracle"])
            vals = [float(frame.at[row, k]) for k in others]
            nearest = min(vals, key=lambda v: abs(v - o))
            gaps.append(round(nearest - o, 3))
        frame["suppressed minus oracle (closest)"] = gaps
    frame.index.name = "trace"
    return frame


def run_oracle(
    config: OracleConfig | None = None, *, out: str | Path | None = None, progress: bool = True
) -> OracleResult:
    """Train or load the world's models, unlearn with each method, audit all against the full model."""
    cfg = config or OracleConfig()
    t0 = time.perf_counter()
    wm = (lineage_models if cfg.lineage else world_models)(cfg.world, progress=progress)
    world = wm.world
    concept = world.forget_concept()
    probe_path = Path(out) / "world_probe.json" if out is not None else wm.path / "probe.json"
    if not probe_path.exists():
        items = [{"entity": p.name, "label": p.facts["birth_city"]} for p in world.people]
        atomic_write_text(
            probe_path,
            json.dumps({"attribute": "birth_city", "template": "{entity}", "items": items}, indent=0),
        )
    acfg = AuditConfig(
        n_vectors=cfg.n_vectors,
        attacks=tuple(cfg.attacks),
        relearn_steps=cfg.relearn_steps,
        relearn_lr=cfg.relearn_lr,
        fact_relearn_steps=cfg.fact_relearn_steps,
        fact_relearn_lr=cfg.fact_relearn_lr,
        lens_top_k=cfg.lens_top_k,
        probe_dataset=str(probe_path),
        probe_forget_entities=tuple(world.forget),
        context_chars=cfg.context_chars,
        seed=cfg.seed,
    )
    retain_texts = [b for p in world.retain_people[:40] for b in world.bios(p)[:1]]
    floor = world.floor_concept(len(world.forget))  # people neither model saw: the knowledge floor
    audits: dict[str, AuditResult] = {}
    unlearning: dict[str, dict[str, Any]] = {}
    runs: dict[str, Any] = {}
    models: dict[str, Any] = {"full model": wm.full, "oracle": wm.oracle}
    # the oracle first: every other model is also compared with it, the retain model (analyses.audit.retain)

    def audit_of(name: str, model: Any, retain: AuditResult | None = None) -> AuditResult:
        """``model`` audited against the full model into ``out/name``, with the oracle's audit as its retain
        model where given."""
        sub = Path(out) / name if out is not None else None
        return audit(
            wm.full, model, concept, config=acfg, out=sub, floor=floor, retain_model=retain, progress=progress
        )

    oracle_audit = audit_of("oracle", wm.oracle)
    for method in cfg.methods:
        ucfg = UnlearnConfig(
            method=method,
            lr=dict(cfg.unlearn_lr).get(method),
            options=dict(cfg.unlearn_options).get(method),
            steps=cfg.unlearn_steps,
            trainable=cfg.unlearn_trainable,
            seed=cfg.seed,
            heldout=0.0,  # the world holds out by template: no biography states a fact the way its QA asks it
        )
        run = unlearn(wm.full, concept, ucfg, retain_texts=retain_texts, progress=progress)
        runs[method] = models[method] = run.model
        unlearning[method] = {
            k: v for k, v in run.to_dict().items() if k in ("before", "after", "steps", "seconds", "params")
        }
        audits[method] = audit_of(method, run.model, oracle_audit)
    audits["oracle"] = oracle_audit
    for control in cfg.controls:
        model = models[control] = _control_model(control, wm.full, runs, world, cfg)
        audits[control] = audit_of(control, model, oracle_audit)
    members, nonmembers = world.membership_texts()
    mcfg = MembershipConfig(seed=cfg.seed)
    membership = {k: membership_inference(m, members, nonmembers, mcfg) for k, m in models.items()}
    result = OracleResult(
        audits, unlearning, wm.train_seconds, time.perf_counter() - t0, cfg, membership=membership
    )
    if out is not None:
        write_json(Path(out) / "oracle.json", result.to_dict())
    return result


# what each audited model of the world is, in truth
TRUTH = {"oracle": "removed", "relearned": "known", "no_op": "known"}  # every unlearning method: suppressed


def truth_of(name: str) -> str:
    """``removed`` (the retrain oracle), ``known`` (relearned, no-op) or ``suppressed`` (an unlearning
    method started from the full model: whatever it hides is still reachable by construction of the
    world's training, which is what the audit must find)."""
    return TRUTH.get(name, "suppressed")


def _control_model(name: str, full, runs: dict[str, Any], world, cfg: OracleConfig):
    from analyses.behaviour import relearned_copy
    from probes.data import Concept

    if name == "no_op":
        return full.copy()
    if name == "relearned":
        if not runs:
            raise ValueError("the relearned control needs an unlearning method in OracleConfig.methods")
        unlearned = next(iter(runs.values()))
        bios = tuple(b for p in world.forget_people for b in world.bios(p))
        back = Concept("the forget people's biographies", (), bios, ())  # no QA: no sentence is held back
        model = relearned_copy(unlearned, back, steps=cfg.relearned_steps, lr=cfg.relearned_lr, seed=cfg.seed)
        model.name = f"{next(iter(runs))} then relearned"
        return model
    raise ValueError(f"unknown control model {name!r}; choose from {tuple(TRUTH)[1:]}")
