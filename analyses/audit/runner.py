"""``audit(base, unlearned, concept)``: check the pair, run the stages through the caches, apply the
rule, write ``audit.json``, ``timings.json`` and ``report.html``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from analyses.audit import stages
from analyses.audit.cache import BASE_MEMO, StageCache, stage_key
from analyses.audit.config import AuditConfig
from analyses.audit.report import audit_report
from analyses.audit.result import AuditResult
from analyses.audit.rule import verdict
from analyses.behaviour import answer_free_text
from probes.alignment import aligned_to
from probes.data import QA, Concept
from probes.edits import check_compatible, weights_checksum
from probes.errors import VestigeError
from probes.finite import check_finite
from probes.model import Model
from probes.qa import score_qa
from probes.results import to_jsonable, write_json


def audit(
    base: Model,
    unlearned: Model,
    concept: Concept,
    *,
    config: AuditConfig | None = None,
    out: str | Path | None = None,
    retain_qa: list[QA] | None = None,
    trained_items: Sequence[str] | None = None,
    progress: bool = True,
) -> AuditResult:
    """Audit ``unlearned`` against ``base`` for ``concept``; with ``out``, cache stages and write
    ``audit.json`` and ``report.html`` there (atomically). ``retain_qa`` (default: the concept's unrelated
    QA) are the items CHES compares with the forget items and the pool of knowledge-conflict answers."""
    cfg = config or AuditConfig()
    trained_split = None
    if cfg.heldout > 0:  # measure forgetting on items nothing trained on; the trained ones are reported too
        trained_split, concept = concept.split(cfg.heldout, cfg.heldout_seed)
    seen = sorted({q.prompt for q in concept.qa} & set(trained_items or ()))
    if seen and cfg.heldout > 0:
        raise VestigeError(
            f"{len(seen)} of the {len(concept.qa)} held-out items were trained on by the unlearning run",
            f"e.g. {seen[0]!r}: the audit's held-out split (heldout={cfg.heldout}, seed {cfg.heldout_seed}) "
            "is not the one the unlearning run used",
            "audit with the --heldout and --heldout-seed the unlearning run used (its unlearn.json)",
        )
    check_compatible(base, unlearned)
    check_finite(base, unlearned)  # NaN/inf weights (a diverged run): refused, naming the layer
    retain = list(retain_qa) if retain_qa is not None else list(concept.unrelated_qa)
    setup = (json.dumps(to_jsonable([concept, retain])), json.dumps(cfg.to_dict(), sort_keys=True))
    base_key = stage_key(weights_checksum(base), *setup)
    cache = StageCache(out, stage_key(base_key, weights_checksum(unlearned)))

    def on_base(name: str, fn: Callable[[], Any]) -> Any:
        return BASE_MEMO.get_or_run(f"{base_key}:{name}", fn)

    stage_names = [
        "behaviour",
        "relearn",
        "concept_vectors",
        "logit_lens",
        "heads",
        "probes",
        "ches",
        "interventions",
    ]
    bar = tqdm(total=len(stage_names), desc=f"audit {concept.concept}", disable=not progress)
    timings: dict[str, float] = {}

    def run(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        t0 = time.perf_counter()
        bar.set_postfix_str(name)
        value = cache.get_or_run(name, fn)
        timings[name] = round(time.perf_counter() - t0, 2)
        bar.update(1)
        return value

    # A permuted copy (function unchanged) is put back into the base's neuron order for the stages that
    # index weights; another training run cannot be, and its vector comparison is "not comparable".
    with aligned_to(base, unlearned, seed=cfg.seed) as basis:
        behaviour = run("behaviour", lambda: stages._behaviour(base, unlearned, concept, cfg, on_base))
        relearn = run(
            "relearn",
            lambda: {
                "base": on_base("relearn", lambda: stages._relearn(base, concept, cfg)),
                "unlearned": stages._relearn(unlearned, concept, cfg),
            },
        )
        vectors = run(
            "concept_vectors", lambda: stages._concept_vectors(base, unlearned, concept, cfg, on_base)
        )
        lens = run("logit_lens", lambda: stages._lens(base, unlearned, concept, on_base))
        heads = run("heads", lambda: stages._heads(base, unlearned, concept, retain, cfg, on_base))
        probes = (
            run("probes", lambda: stages._probes(base, unlearned, cfg, on_base)) if cfg.probe_dataset else {}
        )
        ches = run("ches", lambda: stages._ches(base, unlearned, concept, retain, cfg, on_base))

        def interventions_stage() -> dict[str, Any]:
            traces = None
            if cfg.trace_max > 0:
                traces = on_base("trace_vectors", lambda: stages._trace_vectors(base, concept, retain, cfg))
            return stages._interventions(base, unlearned, concept, cfg, vectors["vectors"], heads, traces)

        interventions = run("interventions", interventions_stage)
    bar.close()

    recovery = {"base": {}, "unlearned": {}, "unlearned_after_ablation": {}}
    for who in ("base", "unlearned"):
        b = behaviour[who]
        recovery[who] = {
            "none": b["forget"]["accuracy"],
            **{k: v["accuracy"] for k, v in b["attacks"].items()},
            "relearn": relearn[who],
        }
    recovery["unlearned_after_ablation"] = interventions["ablate_traces"]
    vectors = {**vectors, "basis": basis.to_dict()}
    v, reasons = verdict(behaviour, vectors, lens, recovery, interventions)
    summary = {
        "forget_accuracy": {
            "base": behaviour["base"]["forget"]["accuracy"],
            "unlearned": behaviour["unlearned"]["forget"]["accuracy"],
        },
        "unrelated_accuracy": {
            "base": behaviour["base"]["unrelated"]["accuracy"],
            "unlearned": behaviour["unlearned"]["unrelated"]["accuracy"],
        },
        "forget_logprob": {
            "base": behaviour["base"]["forget"]["mean_logprob"],
            "unlearned": behaviour["unlearned"]["forget"]["mean_logprob"],
        },
        "unrelated_logprob": {
            "base": behaviour["base"]["unrelated"]["mean_logprob"],
            "unlearned": behaviour["unlearned"]["unrelated"]["mean_logprob"],
        },
        "attacks": {"base": behaviour["base"]["attacks"], "unlearned": behaviour["unlearned"]["attacks"]},
    }
    extra = {"probes": probes, "heads": heads, "ches": ches, "config": cfg.to_dict()}
    notes = []
    if seen:
        notes.append(
            f"{len(seen)} of the {len(concept.qa)} audited items were trained on by the unlearning run "
            "(its unlearn.json): their forget accuracy measures memorisation of the training items, not "
            "forgetting of the concept; unlearn and audit with --heldout to measure on items nothing saw"
        )
    if trained_split is not None:
        summary["trained_split_forget_accuracy"] = {
            "base": score_qa(base, trained_split.qa).accuracy,
            "unlearned": score_qa(unlearned, trained_split.qa).accuracy,
        }
        summary["items"] = {
            "heldout": [q.prompt for q in concept.qa],
            "trained": [q.prompt for q in trained_split.qa],
        }
    if cfg.relearn_steps > 0 and not answer_free_text(concept):
        notes.append(
            "relearning attack skipped: the concept has no text without its answers to relearn from (add "
            "background 'text' to the concept file to run it)"
        )
    result = AuditResult(
        concept.concept,
        v,
        tuple(reasons),
        summary,
        vectors,
        lens,
        recovery,
        interventions,
        extra,
        base_model=base.name,
        unlearned_model=unlearned.name,
        notes=tuple(notes),
    )
    if out is not None:
        out = Path(out)
        write_json(out / "audit.json", result.to_dict())
        write_json(out / "timings.json", timings)
        audit_report([result]).write(out / "report.html")
    return result
