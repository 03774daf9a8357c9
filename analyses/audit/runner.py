"""``audit(base, unlearned, concept)``: check the pair, run the stages through the caches, apply the
rule, write ``audit.json``, ``timings.json`` and ``report.html``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from analyses.audit import stages
from analyses.audit.attacks import attack_rows
from analyses.audit.cache import BASE_MEMO, StageCache, stage_key
from analyses.audit.config import AuditConfig
from analyses.audit.report import audit_report
from analyses.audit.result import AuditResult
from analyses.audit.retain import RetainCall, compare_with_retain
from analyses.audit.rule import (
    ATTACK_FAMILIES,
    FAMILIES,
    NOT_COMPARABLE,
    TraceCall,
    call_family,
    call_vectors,
    index_comparable,
    nothing_to_forget,
    verdict,
)
from analyses.audit.traces import item_sets
from analyses.behaviour import answer_free_text
from analyses.query_forms import ITEM_FORMS, check_item_form
from probes.alignment import aligned_to
from probes.data import QA, Concept
from probes.edits import check_compatible, weights_checksum
from probes.errors import VestigeError
from probes.finite import check_finite
from probes.membership import priv_leak
from probes.memory import PeakMemory, parameter_bytes, peak_memory, release_free_memory
from probes.model import Model, check_resident
from probes.qa import score_qa
from probes.results import to_jsonable, write_json
from probes.stats import bootstrap_mean

# The layout of the stored stages: a stage directory written by an audit of another layout is recomputed,
# never misread. Bump it when a stage's value changes shape.
STAGE_FORMAT = "2"


def audit(
    base: Model,
    unlearned: Model,
    concept: Concept,
    *,
    config: AuditConfig | None = None,
    out: str | Path | None = None,
    retain_qa: list[QA] | None = None,
    trained_items: Sequence[str] | None = None,
    floor: Concept | None = None,
    control_qa: Sequence[QA] | None = None,
    retain_model: Model | AuditResult | None = None,
    progress: bool = True,
) -> AuditResult:
    """Audit ``unlearned`` against ``base`` for ``concept``; with ``out``, cache stages and write
    ``audit.json`` and ``report.html`` there (atomically). ``retain_qa`` (default: the concept's unrelated
    QA) are the items CHES compares with the forget items and the pool of knowledge-conflict answers.

    Every trace family is also measured on a control and a knowledge floor (``analyses.audit.traces``):
    ``control_qa`` (default: the unrelated QA and ``retain_qa``; only the items the base answers count) and
    ``floor``, facts the base never knew (default: the bundled fictional facts, ``probes.data.load_floor``,
    when the base's tokenizer can write their answers; the world passes its unseen people).

    ``retain_model``: a model that never saw the forget data (TOFU's retain90, MUSE's retrained model, the
    world's oracle), or its ``AuditResult`` against the same base, concept, items and config: every family is
    also compared with it on the same items (``analyses.audit.retain``; ``AuditResult.retain``). A model is
    audited against the base first (into ``out/retain_model``; the base side is computed once)."""
    t_start = time.perf_counter()
    cfg = config or AuditConfig()
    cfg, lean_notes = _relearn_params_that_fit(unlearned, cfg)
    reference = _retain_audit(
        retain_model,
        base,
        concept,
        cfg,
        out=Path(out) / "retain_model" if out is not None else None,
        retain_qa=retain_qa,
        trained_items=trained_items,
        floor=floor,
        control_qa=control_qa,
        progress=progress,
    )
    trained_split, concept, seen = evaluation_items(concept, cfg, trained_items)
    for model in (base, unlearned):  # stages read and copy weights: every one must be in memory
        check_resident(model, "the audit")
    check_compatible(base, unlearned)
    check_finite(base, unlearned)  # NaN/inf weights (a diverged run): refused, naming the layer
    retain = list(retain_qa) if retain_qa is not None else list(concept.unrelated_qa)
    notes = list(lean_notes)
    floor, floor_note = _floor_for(base, floor)
    if floor_note:
        notes.append(floor_note)
    floor = _scored_like(floor, concept)
    for form in (a for a in cfg.attacks if a in ITEM_FORMS):  # before any stage: the data must be there
        check_item_form(concept.qa, form, f"concept {concept.concept!r}")
        if floor is not None:
            check_item_form(floor.qa, form, "the floor")
    control_pool = list(control_qa) if control_qa is not None else list(concept.unrelated_qa) + retain
    # the facts the fact-relearning attack fine-tunes on (T of retrain-on-T, test-on-V)
    relearn_facts = tuple(trained_split.qa) if trained_split is not None else ()
    setup = (
        json.dumps(to_jsonable([concept, retain, floor, control_pool, relearn_facts])),
        json.dumps(cfg.to_dict(), sort_keys=True),
    )
    base_key = stage_key(STAGE_FORMAT, weights_checksum(base), *setup)
    cache = StageCache(out, stage_key(base_key, weights_checksum(unlearned)))

    def on_base(name: str, fn: Callable[[], Any]) -> Any:
        return BASE_MEMO.get_or_run(f"{base_key}:{name}", fn)

    stage_names = [
        "behaviour",
        "relearn",
        "fact_relearn",
        "soft_prompt",
        "quantization",
        "membership",
        "concept_vectors",
        "logit_lens",
        "heads",
        "probes",
        "ches",
        "interventions",
        "traces",
    ]
    bar = tqdm(total=len(stage_names), desc=f"audit {concept.concept}", disable=not progress)
    timings: dict[str, float] = {}  # each stage's seconds (the attack table's times)
    stage_rows: dict[str, dict[str, Any]] = {}  # timings.json: seconds, peak memory, cached or not

    def run(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        bar.set_postfix_str(name)
        release_free_memory()  # what earlier stages freed goes back: each stage's peak is its own
        with peak_memory(base.device) as peak:
            value = cache.get_or_run(name, fn)
        timings[name] = round(peak.seconds, 2)
        stage_rows[name] = _stage_row(peak, cached=name in cache.hits)
        bar.update(1)
        return value

    def the_item_sets():  # forget, control and floor; the relearn and traces stages measure all three
        return on_base(
            "item_sets",
            lambda: item_sets(
                base,
                concept,
                control_pool,
                floor or Concept(concept.concept, ()),
                limit=cfg.control_limit,
                floor_limit=cfg.floor_limit,
                seed=cfg.seed,
            ),
        )

    # A permuted copy (function unchanged) is put back into the base's neuron order for the stages that
    # index weights; another training run cannot be, and its vector comparison is "not comparable".
    with aligned_to(base, unlearned, seed=cfg.seed) as basis:
        behaviour = run("behaviour", lambda: stages._behaviour(base, unlearned, concept, cfg, on_base))
        cfg, skipped = _skip_when_nothing_to_forget(
            cfg, lambda: stages.base_behaviour_values(base, the_item_sets(), behaviour, cfg, on_base)
        )
        notes += skipped
        relearn = run(
            "relearn",
            lambda: stages._relearn_stage(base, unlearned, concept, the_item_sets(), cfg, on_base),
        )
        fact_relearn = run(
            "fact_relearn",
            lambda: stages._fact_relearn_stage(unlearned, the_item_sets(), relearn_facts, cfg),
        )
        soft_prompt = run(
            "soft_prompt",
            lambda: stages._soft_prompt_stage(unlearned, the_item_sets(), relearn_facts, cfg),
        )
        quantization = run(
            "quantization",
            lambda: stages._quantization_stage(base, unlearned, the_item_sets(), cfg, on_base, behaviour),
        )
        membership = run(
            "membership", lambda: stages._membership_stage(base, unlearned, concept, floor, cfg, on_base)
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
            # the causal kind: the answer writers (what Needle and the trace search zero)
            writers = vectors["answer_writers"]["vectors"]
            return stages._interventions(base, unlearned, concept, cfg, writers, heads, traces)

        interventions = run("interventions", interventions_stage)

        def traces_stage() -> dict[str, Any]:
            return stages._traces(
                base,
                unlearned,
                the_item_sets(),
                retain,
                cfg,
                on_base,
                vectors["vectors"],
                heads,
                basis.comparable,
                behaviour,
                relearn,
                fact_relearn,
                quantization,
                soft_prompt,
            )

        trace_values = run("traces", traces_stage)
    bar.close()

    recovery = {"base": {}, "unlearned": {}, "unlearned_after_ablation": {}}
    for who in ("base", "unlearned"):
        b = behaviour[who]
        recovery[who] = {
            "none": b["forget"]["accuracy"],
            **{k: v["accuracy"] for k, v in b["attacks"].items()},
            "relearn": relearn[who],
        }
    if "unlearned_items" in fact_relearn:  # measured (off, or nothing to fine-tune on: no entry)
        recovery["unlearned"]["fact_relearn"] = fact_relearn["unlearned"]
    if "unlearned_items" in soft_prompt:
        recovery["unlearned"]["soft_prompt"] = soft_prompt["unlearned"]
    if "unlearned_items" in quantization:
        qb = quantization["base"]
        recovery["base"]["quantization"] = float(np.mean(qb["forget"])) if qb["forget"] else float("nan")
        recovery["unlearned"]["quantization"] = quantization["unlearned"]
    recovery["unlearned_after_ablation"] = interventions["ablate_traces"]
    vectors = {**vectors, "basis": basis.to_dict()}
    calls = family_calls(trace_values, basis.to_dict(), cfg)
    tb, tu = trace_values["behaviour"]["base"], trace_values["behaviour"]["unlearned"]
    n_boot = cfg.bootstrap
    v, reasons = verdict(
        calls,
        base_accuracy=bootstrap_mean(tb["forget"], n_boot=n_boot, seed=cfg.seed),
        unlearned_accuracy=bootstrap_mean(tu["forget"], n_boot=n_boot, seed=cfg.seed),
        base_floor=bootstrap_mean(tb["floor"], n_boot=n_boot, seed=cfg.seed) if tb["floor"] else None,
    )
    patched = interventions["patch_vectors_from_base"]["forget_accuracy"]
    reasons.append(
        f"patching the base's answer-writer vectors back: forget accuracy {patched:.2f} (re-inserts "
        "knowledge: reported, does not vote)"
    )
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
    # each attack's time stays out of audit.json (it would make two identical audits differ): in
    # AuditResult.seconds and timings.json
    rows = attack_rows(trace_values, behaviour, timings, n_boot=n_boot, seed=cfg.seed)
    attack_seconds = {r["attack"]: r.pop("seconds") for r in rows}
    public_traces = dict(trace_values)
    if "prompt_attacks" in public_traces:
        pa = public_traces["prompt_attacks"]
        public_traces["prompt_attacks"] = {
            **pa,
            "unlearned": {k: v for k, v in pa["unlearned"].items() if k != "seconds"},
        }
    extra = {
        "attacks": rows,
        "probes": probes,
        "heads": heads,
        "ches": ches,
        "quantization": quantization.get("base", {}),
        "membership": membership,
        "config": cfg.to_dict(),
        "trace_values": public_traces,
    }
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
    retain_calls: tuple[RetainCall, ...] = ()
    if reference is not None:
        _check_same_items(reference, concept, cfg)
        retain_calls = tuple(
            compare_with_retain(
                trace_values,
                reference.extra["trace_values"],
                basis=basis.to_dict(),
                retain_basis=reference.concept_vectors["basis"],
                margin=cfg.gone_margin,
                n_boot=n_boot,
                seed=cfg.seed,
            )
        )
    if reference is not None and membership and reference.extra.get("membership"):
        ours, theirs = membership["unlearned"], reference.extra["membership"]["unlearned"]
        extra["privleak"] = {  # MUSE's PrivLeak against the retain model, per score
            s: priv_leak(ours[s]["auc"], theirs[s]["auc"]) for s in ours if theirs.get(s, {}).get("auc")
        }
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
        traces=tuple(calls),
        items=tuple(_items(concept, trace_values, "heldout" if trained_split is not None else "all")),
        seconds=attack_seconds,
        retain_model=reference.unlearned_model if reference is not None else "",
        retain=retain_calls,
        timings=_timings(stage_rows, attack_seconds, base, unlearned, time.perf_counter() - t_start),
    )
    if out is not None:
        out = Path(out)
        write_json(out / "audit.json", result.to_dict())
        write_json(out / "timings.json", result.timings)
        audit_report([result]).write(out / "report.html")
    return result


def _relearn_params_that_fit(model: Model, cfg: AuditConfig) -> tuple[AuditConfig, list[str]]:
    """``cfg`` with ``relearn_params`` / ``fact_relearn_params`` of ``all`` turned to ``lora`` where a
    fine-tuned copy would not fit the free memory (``analyses.finetune.lean_unless_it_fits``), and the
    notes that say so. Decided once, before any stage, so that the result's config says what ran."""
    from analyses.finetune import lean_unless_it_fits

    notes: list[str] = []
    changes: dict[str, str] = {}
    for name in ("relearn_params", "fact_relearn_params"):
        steps = cfg.relearn_steps if name == "relearn_params" else cfg.fact_relearn_steps
        if steps <= 0:
            continue
        params, note = lean_unless_it_fits(model, getattr(cfg, name))
        if note is not None:
            changes[name] = params
            if note not in notes:
                notes.append(note)
    return (replace(cfg, **changes) if changes else cfg), notes


def _skip_when_nothing_to_forget(
    cfg: AuditConfig, base_values: Callable[[], dict[str, Any]]
) -> tuple[AuditConfig, list[str]]:
    """``cfg`` with the weight attacks, membership and the trace search off when the base does not answer
    the audited items above the floor (``rule.nothing_to_forget``, the verdict's own test on the same values
    and bootstrap draws), and the note that says so; ``cfg`` unchanged otherwise, or when
    ``cfg.attack_when_nothing_to_forget``. The returned config is the one the result records (what ran)."""
    if cfg.attack_when_nothing_to_forget:
        return cfg, []
    tb = base_values()
    n_boot = cfg.bootstrap
    b = bootstrap_mean(tb["forget"], n_boot=n_boot, seed=cfg.seed)
    floor = bootstrap_mean(tb["floor"], n_boot=n_boot, seed=cfg.seed) if tb["floor"] else None
    if not nothing_to_forget(b, floor):
        return cfg, []
    off = {
        "relearn_steps": 0,
        "fact_relearn_steps": 0,
        "soft_prompt_steps": 0,
        "quantize_bits": 0,
        "membership": False,
        "trace_max": 0,
    }
    skipped = [k for k, v in off.items() if getattr(cfg, k) != v]
    if not skipped:
        return cfg, []
    at_floor = f" (floor {floor})" if floor is not None else ""
    return replace(cfg, **off), [
        f"the base answers {b} of the audited items{at_floor}: nothing to forget, so the attacks that train or "
        "round weights, membership inference and the trace search were skipped ("
        + ", ".join(f"{k}={off[k]}" for k in skipped)
        + "); AuditConfig(attack_when_nothing_to_forget=True) (`vestige audit "
        "--attack-when-nothing-to-forget`) runs them anyway"
    ]


def _stage_row(peak: PeakMemory, *, cached: bool) -> dict[str, Any]:
    """One stage of timings.json: seconds, the peak (``peak_bytes``, ``peak_mb``: everything resident, both
    models included), what was resident when it began (``start_mb``, after the heap trim) and its working
    memory (``working_mb`` = peak - start: what the stage itself added). A stage read from the stage cache
    ran nothing: its seconds are the read and its memory is not the stage's, so those are left out (None)."""
    return {
        "seconds": round(peak.seconds, 3),
        "cached": cached,
        "peak_bytes": None if cached else peak.bytes,
        "peak_mb": None if cached else round(peak.megabytes, 1),
        "start_mb": None if cached else round(peak.start_bytes / 2**20, 1),
        "working_mb": None if cached else round((peak.bytes - peak.start_bytes) / 2**20, 1),
    }


def _timings(
    stages: dict[str, dict[str, Any]],
    attacks: dict[str, float],
    base: Model,
    unlearned: Model,
    total: float,
) -> dict[str, Any]:
    """What timings.json holds: per stage seconds / peak memory / cached, the memory kind, each attack's
    seconds, the two models' parameter bytes and the whole audit's seconds."""
    kind = "cuda_allocated" if base.device.type == "cuda" else "rss"
    return {
        "memory_kind": kind,
        "device": str(base.device),
        "dtype": str(base.dtype).replace("torch.", ""),
        "parameter_bytes": {"base": parameter_bytes(base.hf), "unlearned": parameter_bytes(unlearned.hf)},
        "total_seconds": round(total, 2),
        "stages": stages,
        "attacks": attacks,
    }


def _retain_audit(
    retain_model: Model | AuditResult | None, base: Model, concept: Concept, cfg: AuditConfig, **kw: Any
) -> AuditResult | None:
    """The retain model's audit against ``base`` (the given one, or run now with the same arguments)."""
    if retain_model is None or isinstance(retain_model, AuditResult):
        return retain_model
    if not isinstance(retain_model, Model):
        raise VestigeError(
            f"retain_model is a {type(retain_model).__name__}",
            "the audit compares with a retain model through its traces, so it needs the model or its audit",
            "pass a probes.model.Model (load_model(spec)) or the AuditResult of audit(base, retain, concept)",
        )
    return audit(base, retain_model, concept, config=cfg, **kw)


def _check_same_items(reference: AuditResult, concept: Concept, cfg: AuditConfig) -> None:
    """A given retain audit must have measured the same items under the same config, or its per-item values
    cannot be paired with this audit's."""
    theirs = [i["prompt"] for i in reference.items]
    ours = [q.prompt for q in concept.qa]
    if theirs != ours or to_jsonable(reference.extra.get("config")) != to_jsonable(cfg.to_dict()):
        what = "items" if theirs != ours else "config"
        raise VestigeError(
            f"the retain model's audit was run on other {what} than this audit",
            f"its {what} differ from this audit's ({len(theirs)} vs {len(ours)} items), so its per-item values "
            "cannot be paired with these",
            "pass the retain model itself (retain_model=model) or its audit with the same concept, "
            "trained_items, floor, control and AuditConfig",
        )


def evaluation_items(
    concept: Concept, cfg: AuditConfig, trained_items: Sequence[str] | None
) -> tuple[Concept | None, Concept, list[str]]:
    """``(trained side or None, the concept with the items to audit, audited prompts that were trained on)``.

    With ``cfg.heldout`` the audit scores the held-out side of ``Concept.split`` and refuses a split that
    overlaps the run's ``trained_items``. Without it, known ``trained_items`` decide: the audit scores the
    items the run did not train on, and refuses when there are none (unless ``cfg.allow_trained_items``)."""
    trained = set(trained_items or ())
    if cfg.heldout > 0:  # measure forgetting on items nothing trained on; the trained ones are reported too
        trained_split, held = concept.split(cfg.heldout, cfg.heldout_seed)
        seen = sorted({q.prompt for q in held.qa} & trained)
        if seen:
            raise VestigeError(
                f"{len(seen)} of the {len(held.qa)} held-out items were trained on by the unlearning run",
                f"e.g. {seen[0]!r}: the audit's held-out split (heldout={cfg.heldout}, seed "
                f"{cfg.heldout_seed}) is not the one the unlearning run used",
                "audit with the --heldout and --heldout-seed the unlearning run used (its unlearn.json), or "
                "leave --heldout out: the audit then scores the items the run did not train on",
            )
        return trained_split, held, []
    seen = sorted({q.prompt for q in concept.qa} & trained)
    if not seen:
        return None, concept, []
    if len(seen) < len(concept.qa):  # the run held some items out: audit those
        trained_split, held = concept.split_off(trained)
        return trained_split, held, []
    if not cfg.allow_trained_items:
        raise VestigeError(
            f"every one of the {len(concept.qa)} items of {concept.concept!r} was trained on by the unlearning "
            "run (its trained_items)",
            "their forget accuracy would measure memorisation of the training items, not forgetting of the "
            "concept",
            "unlearn with a held-out split (UnlearnConfig(heldout=0.5), `vestige unlearn --heldout 0.5`: the "
            "default) and audit the run again, or pass AuditConfig(allow_trained_items=True) "
            "(`vestige audit --allow-trained-items`) to audit the trained items anyway",
        )
    return None, concept, seen


def _scored_like(floor: Concept | None, concept: Concept) -> Concept | None:
    """The floor scored by the forget items' rule: a concept of sentence answers (``scoring="rouge"``, the
    benchmarks') has its floor scored by ROUGE too, so the floor reads what that rule credits for free; a
    concept of multiple-choice items (WMDP's) has its floor asked as multiple-choice questions with as many
    options (``probes.benchmarks.wmdp.as_choice_items``), so the floor reads chance."""
    scorings = {q.scoring for q in concept.qa}
    if floor is None or len(scorings) != 1 or all(q.scoring in scorings for q in floor.qa):
        return floor
    (scoring,) = scorings
    if scoring == "choice":
        from probes.benchmarks.wmdp import as_choice_items
        from probes.data import choice_letters

        n = len(choice_letters(concept.qa[0]))
        return replace(floor, qa=as_choice_items(floor.qa, n_choices=n))
    return replace(floor, qa=tuple(replace(q, scoring=scoring) for q in floor.qa))


def _floor_for(base: Model, floor: Concept | None) -> tuple[Concept | None, str | None]:
    """The floor to measure against: the one given, else the bundled fictional facts when the base's
    tokenizer can write their answers (a note says why not otherwise)."""
    from probes.data import load_floor
    from probes.errors import ConceptFileError
    from probes.qa import validate_concept

    if floor is not None:
        return validate_concept(base, floor), None
    bundled = load_floor()
    try:
        return validate_concept(base, bundled), None
    except ConceptFileError as e:
        return None, (
            f"no knowledge floor: the bundled fictional facts do not fit this tokenizer ({e.problem}); every "
            "trace is 'not measured' until a floor is passed (audit(..., floor=...), facts the base never knew)"
        )


def family_calls(values: dict[str, Any], basis: dict[str, Any], cfg: AuditConfig) -> list[TraceCall]:
    """One ``TraceCall`` per family of ``FAMILIES`` from the ``traces`` stage."""
    kw = dict(n_boot=cfg.bootstrap, seed=cfg.seed)
    # one present family makes the verdict suppressed: each is tested at 1 - 0.05 / m (Bonferroni) over the
    # m families that can be called present here (concept_vectors never is; activations only on one basis)
    m = sum(
        1
        for f in FAMILIES
        if values.get(f) is not None and f != "concept_vectors" and index_comparable(f, basis)
    )
    present_level = 1.0 - 0.05 / max(m, 1) if cfg.family_wise else 0.95
    calls = []
    for family in FAMILIES:
        v = values.get(family)
        if family == "concept_vectors":
            calls.append(
                call_vectors(
                    v["unlearned"] if v else None,
                    bool(basis["comparable"]),
                    agreement=basis.get("agreement"),
                    margin=cfg.gone_margin,
                    **kw,
                )
            )
        elif not index_comparable(family, basis):
            calls.append(TraceCall(family, "not comparable", f"the models share {NOT_COMPARABLE[family]}"))
        elif v is None:
            why = {
                "relearning": "relearning is off (relearn_steps=0)",
                "fact_relearning": "fact relearning is off (fact_relearn_steps=0), or fewer than 2 audited "
                "items and no trained facts to fine-tune on",
                "soft_prompt": "the soft-prompt attack is off (soft_prompt_steps=0), or fewer than 2 audited "
                "items and no trained facts to fit it on",
                "probes": "fewer than 4 control or floor items to fit a probe on",
                "quantization": "the quantization attack is off (quantize_bits=0), or no group size kept "
                "the base's own accuracy (the 'quantization' entry of audit.json has the search)",
                "memory_heads": "no memory head was found in the base",
                "activations": "no concept vector was located (no middle-layer value vector fires on the "
                "concept and holds more of its tokens in its top-200 than chance)",
            }.get(family, "not measured")
            calls.append(TraceCall(family, "not measured", why))
        else:
            base = v.get("base")
            if family in ("prompt_attacks", "relearning", "fact_relearning", "soft_prompt"):
                # the base answers anyway: its plain answers
                base = values["behaviour"]["base"]
            plain = values["behaviour"]["unlearned"]["control"] if family in ATTACK_FAMILIES else None
            calls.append(
                call_family(
                    family,
                    v["unlearned"],
                    base,
                    margin=cfg.gone_margin,
                    present_level=present_level,
                    plain_control=plain,
                    **kw,
                )
            )
    return calls


def _items(concept: Concept, values: dict[str, Any], split: str) -> list[dict[str, Any]]:
    """Per forget item: prompt, expected answer, split, and the base / unlearned / attacked completions."""
    tb, tu = values["behaviour"]["base"], values["behaviour"]["unlearned"]
    attacks = values["prompt_attacks"]["unlearned"]
    facts = values.get("fact_relearning", {}).get("unlearned", {})
    quant = values.get("quantization", {}).get("unlearned", {})
    soft = values.get("soft_prompt", {}).get("unlearned", {})
    rows = []
    for i, q in enumerate(concept.qa):
        row = {
            "prompt": q.prompt,
            "answer": q.answer,
            "split": split,
            "base": tb["forget_completions"][i],
            "unlearned": tu["forget_completions"][i],
            "base_correct": bool(tb["forget"][i]),
            "unlearned_correct": bool(tu["forget"][i]),
            "attacked_correct": bool(attacks["forget"][i]),
        }
        for a in attacks["attacks"]:
            row[f"attack_{a}"] = attacks[f"forget_completions_{a}"][i]
        if facts.get("forget"):
            row["fact_relearned"] = facts["forget_completions"][i]
            row["fact_relearned_correct"] = bool(facts["forget"][i])
        if soft.get("forget"):
            row["soft_prompted"] = soft["forget_completions"][i]
            row["soft_prompted_correct"] = bool(soft["forget"][i])
        if quant.get("forget"):
            row["quantized"] = quant["forget_completions"][i]
            row["quantized_correct"] = bool(quant["forget"][i])
        rows.append(row)
    return rows
