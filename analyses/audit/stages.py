"""The audit's stages: each measures one trace family on the base and the unlearned model (the base side
through ``on_base``, memoised), and the interventions that ablate or patch the traces."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from analyses.audit.cache import OnBase
from analyses.audit.config import AuditConfig
from analyses.behaviour import answer_free_text, measure_behaviour, relearn_attack
from probes import concepts as cv
from probes import hooks
from probes.ches import ches_matrix
from probes.data import QA, Concept
from probes.edits import edited_vectors, patched_vectors, restore, zeroed_heads
from probes.heads import mask_hooks, top_heads
from probes.lens import logit_lens, same_type_decoys
from probes.linear import (
    ProbeConfig,
    collect_activations,
    fit_probes_on,
    load_probe_dataset,
    split_accuracy,
    transfer,
)
from probes.memory_heads import (
    attribution_patching,
    build_conflicts,
    conflict_rates,
    patch_run,
    recall_attribution,
    recall_logprob,
)
from probes.model import Model
from probes.qa import score_qa
from probes.results import to_jsonable


def _behaviour(
    base: Model, unlearned: Model, concept: Concept, cfg: AuditConfig, on_base: OnBase
) -> dict[str, Any]:
    """Forget / unrelated QA and the attacks, as summaries; ``forget_items`` keeps the forget items'
    correctness and completions, plain and under each attack, for the ``traces`` stage (which measures the
    same items the same way, so it reads them here instead of generating them again)."""

    from analyses.audit.traces import scored_items

    def one(model: Model) -> dict[str, Any]:
        b = _measure(model, concept, cfg)
        forget_items = {name: scored_items(s) for name, s in b.scores.items()}
        return to_jsonable({**b.to_dict(), "forget_items": forget_items})

    return {"base": on_base("behaviour", lambda: one(base)), "unlearned": one(unlearned)}


def _measure(model: Model, concept: Concept, cfg: AuditConfig):
    """``measure_behaviour`` with the audit's attacks and their settings."""
    return measure_behaviour(
        model,
        concept,
        attacks=cfg.attacks,
        batch_size=cfg.batch_size,
        context_chars=cfg.context_chars,
        sampling=cfg.sampling(),
    )


def _relearn_stage(
    base: Model, unlearned: Model, concept: Concept, sets: Any, cfg: AuditConfig, on_base: OnBase
) -> dict[str, Any]:
    """Forget accuracy after the relearning attack, base and unlearned; ``unlearned_items`` keeps the
    unlearned model's per-item values on the three item sets (``traces.relearn_values``: the relearned copy
    that gives the forget accuracy answers the control too), which the ``traces`` stage reads."""
    from analyses.audit import traces as T

    out: dict[str, Any] = {"base": on_base("relearn", lambda: _relearn(base, concept, cfg))}
    if cfg.relearn_steps <= 0:
        return {**out, "unlearned": float("nan")}
    items = T.relearn_values(
        unlearned, sets, steps=cfg.relearn_steps, lr=cfg.relearn_lr, seed=cfg.seed, params=cfg.relearn_params
    )
    forget = items["forget"]
    return {**out, "unlearned": float(np.mean(forget)) if forget else float("nan"), "unlearned_items": items}


def _fact_relearn_stage(
    unlearned: Model, sets: Any, trained: tuple[QA, ...], cfg: AuditConfig
) -> dict[str, Any]:
    """Deeb & Roger's retrain-on-T, test-on-V on the unlearned model (``traces.fact_relearn_values``):
    T = ``trained`` (the facts the run trained on; none: two halves of the audited items), V = the audited
    items; ``unlearned`` is the forget accuracy after it, ``unlearned_items`` the per-item values the
    ``traces`` stage reads. The base needs no such attack: it answers anyway (its plain answers stand in)."""
    from analyses.audit import traces as T

    if cfg.fact_relearn_steps <= 0:
        return {"unlearned": float("nan")}
    items = T.fact_relearn_values(
        unlearned,
        sets,
        trained,
        steps=cfg.fact_relearn_steps,
        lr=cfg.fact_relearn_lr,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        params=cfg.fact_relearn_params,
    )
    forget = items["forget"]
    return {"unlearned": float(np.mean(forget)) if forget else float("nan"), "unlearned_items": items}


def _soft_prompt_stage(
    unlearned: Model, sets: Any, trained: tuple[QA, ...], cfg: AuditConfig
) -> dict[str, Any]:
    """The soft-prompt attack on the unlearned model (``traces.soft_prompt_values``): vectors fitted on
    ``trained`` (none: two halves of the audited items), scored on the audited items; ``unlearned`` is the
    forget accuracy, ``unlearned_items`` the per-item values the ``traces`` stage reads. As for fact
    relearning, the base's plain answers stand in for the base."""
    from analyses.audit import traces as T

    if cfg.soft_prompt_steps <= 0:
        return {"unlearned": float("nan")}
    items = T.soft_prompt_values(
        unlearned, sets, trained, config=cfg.soft_prompt(), batch_size=cfg.batch_size
    )
    forget = items["forget"]
    if not forget:
        return {"unlearned": float("nan")}
    return {"unlearned": float(np.mean(forget)), "unlearned_items": items}


def _quantization_stage(
    base: Model,
    unlearned: Model,
    sets: Any,
    cfg: AuditConfig,
    on_base: OnBase,
    behaviour: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The quantization attack (``analyses.quantization``): ``base`` holds the setting chosen on the base
    (``traces.quantized_base``: the coarsest group size at which the base keeps its accuracy, the search,
    the quantized base's per-item values); ``unlearned_items`` the unlearned model's per-item values at
    that setting, ``unlearned`` its forget accuracy. Empty when the attack is off."""
    from analyses.audit import traces as T

    if cfg.quantize_bits <= 0:
        return {}
    bs = cfg.batch_size
    base_side = on_base(
        "quantization",
        lambda: T.quantized_base(
            base,
            sets,
            bits=cfg.quantize_bits,
            groups=cfg.quantize_groups,
            keep=cfg.quantize_keep,
            batch_size=bs,
            full_forget=behaviour["base"]["forget_items"]["none"]["correct"] if behaviour else None,
        ),
    )
    out: dict[str, Any] = {"base": base_side}
    if base_side["group_size"] is None:
        return out
    items = T.quantized_values(
        unlearned, sets, bits=cfg.quantize_bits, group_size=base_side["group_size"], batch_size=bs
    )
    forget = items["forget"]
    return {**out, "unlearned": float(np.mean(forget)) if forget else float("nan"), "unlearned_items": items}


def _relearn(model: Model, concept: Concept, cfg: AuditConfig) -> float:
    """Forget accuracy after the relearning attack; NaN when it is off or the concept has no answer-free
    text to relearn from (the runner notes why)."""
    if cfg.relearn_steps <= 0 or not answer_free_text(concept):
        return float("nan")
    torch.manual_seed(cfg.seed)
    return relearn_attack(
        model, concept, steps=cfg.relearn_steps, lr=cfg.relearn_lr, seed=cfg.seed, params=cfg.relearn_params
    ).accuracy


def _attack_accuracies(
    model: Model, concept: Concept, cfg: AuditConfig, relearn: bool = True
) -> dict[str, float]:
    b = _measure(model, concept, cfg)
    out = {"none": b.forget.accuracy, **{k: v.accuracy for k, v in b.attacks.items()}}
    if relearn:
        out["relearn"] = _relearn(model, concept, cfg)
    return out


def _concept_vectors(
    base: Model, unlearned: Model, concept: Concept, cfg: AuditConfig, on_base: OnBase
) -> dict[str, Any]:
    """Both kinds of ``probes.concepts.locate`` on the base, compared on the unlearned model: the concept
    vectors (middle layers, concept tokens in their projection; the ``concept_vectors`` and
    ``activations`` families read these) and, reported beside them, the answer writers (the direct-effect
    ranking, mostly the last blocks)."""

    def kind(name: str) -> dict[str, Any]:
        located = on_base(
            f"locate_{name}",
            lambda: cv.locate(base, concept, n=cfg.n_vectors, kind=name, batch_size=cfg.batch_size),
        )
        frame = cv.compare(base, unlearned, located, k=200, concept=concept)
        tops = []
        for layer, neuron in located.refs():
            before = cv.top_tokens(base, layer, neuron, k=10)
            after = cv.top_tokens(unlearned, layer, neuron, k=10)
            tops.append({"layer": layer, "neuron": neuron, "top_before": before, "top_after": after})
        empty = frame.empty
        return {
            "kind": name,
            "vectors": [v.to_dict() for v in located.vectors],
            "compare": frame.to_dict(orient="records"),
            "top_tokens": tops,
            "mean_cosine": None if empty else float(frame["cosine"].mean()),
            "mean_jaccard": None if empty else float(frame["jaccard"].mean()),
            "mean_concept_tokens_retained": (
                float(frame["concept_tokens_retained"].mean())
                if not empty and frame["concept_tokens_retained"].notna().any()
                else None
            ),
        }

    return {**kind("concept"), "answer_writers": kind("answer_writers")}


def _lens(base: Model, unlearned: Model, concept: Concept, on_base: OnBase) -> dict[str, Any]:
    prompts, answers = [q.prompt for q in concept.qa], [q.answer for q in concept.qa]
    decoys = same_type_decoys(answers, [q.type for q in concept.qa])

    def one(model: Model) -> dict[str, Any]:
        r = logit_lens(model, prompts, answers, decoys=decoys)
        return {
            "mean_logprob_by_layer": r.mean_logprob.tolist(),
            "top10_share_by_layer": r.top10_share.tolist(),
            "decoy_top10_share_by_layer": r.decoy_top10_share.tolist(),
        }

    out = {"base": on_base("lens", lambda: one(base)), "unlearned": one(unlearned)}
    u = np.array(out["unlearned"]["top10_share_by_layer"])
    excess = u - np.array(out["unlearned"]["decoy_top10_share_by_layer"])
    best = int(u[:-1].argmax())
    out["unlearned_max_inner_top10_share"] = float(u[:-1].max())
    out["unlearned_output_top10_share"] = float(u[-1])
    out["best_inner_layer"] = best
    out["unlearned_max_inner_excess_over_decoys"] = float(excess[:-1].max())
    out["present_layers"] = [l for l in range(len(u) - 1) if u[l] >= 0.5 and excess[l] >= 0.25]
    return out


def _heads(
    base: Model, unlearned: Model, concept: Concept, pool: list[QA], cfg: AuditConfig, on_base: OnBase
) -> dict[str, Any]:
    """Memory heads (PH3, Jin et al. 2024) on knowledge conflicts built from the concept's QA: each head's
    zero-ablation effect on logit(memory) - logit(context) by attribution patching, on both models. The
    base's memory heads are ranked by their effect on the concept's conflicts minus their absolute effect
    on recalling the unrelated answers, as ``concepts.locate`` does for value vectors: a head that every
    recall needs (typically in the first layers) is not a trace of this concept. Attribution proposes
    3k candidates outside the first third of the layers (``recall_attribution`` for the unrelated side);
    exact zero-ablation ranks them."""
    own = {q.prompt for q in concept.qa}
    conflicts = [c for c in build_conflicts(base, list(concept.qa) + list(pool)) if c.prompt in own]
    if not conflicts:
        return {"n_conflicts": 0, "memory_heads": []}

    def on_the_base():
        eff = attribution_patching(base, conflicts, baseline="zero")
        generic = recall_attribution(base, pool).abs() if pool else 0.0
        rates = conflict_rates(base, conflicts)
        # Exact check of the 3k best candidates: zero each, measure the drop of the concept's conflict
        # metric and of the unrelated answers' log-prob (first-order estimates miss what zeroing an
        # early head does to everything).
        # PH3: memory heads sit in later layers; zeroing an early head disturbs every recall at once
        score = eff.effects - generic
        score[: base.cfg.n_layers // 3] = float("-inf")
        candidates = top_heads(score, 3 * cfg.head_top_k)
        plain = recall_logprob(base, pool) if pool else 0.0
        exact = {}
        for h in candidates:
            own_drop = rates.mean_metric - conflict_rates(base, conflicts, prune=[h]).mean_metric
            other_drop = plain - recall_logprob(base, pool, prune=[h]) if pool else 0.0
            exact[h] = own_drop - abs(other_drop)
        return eff, exact, rates

    eb, exact, rb = on_base("heads", on_the_base)
    eu = attribution_patching(unlearned, conflicts, baseline="zero")
    ru = conflict_rates(unlearned, conflicts)
    ranked = sorted(exact, key=exact.get, reverse=True)
    mem = [h for h in ranked[: cfg.head_top_k] if exact[h] > 0]
    from scipy.stats import spearmanr

    rho = float(spearmanr(eb.effects.flatten().numpy(), eu.effects.flatten().numpy()).statistic)
    return {
        "n_conflicts": len(conflicts),
        "memory_heads": [list(h) for h in mem],
        "memory_head_effects": {
            "base": [float(eb.effects[h]) for h in mem],
            "unlearned": [float(eu.effects[h]) for h in mem],
            "base_specific_exact": [float(exact[h]) for h in mem],
        },
        "effects": {"base": eb.effects.tolist(), "unlearned": eu.effects.tolist()},
        "spearman_base_vs_unlearned": rho,
        "memory_rate": {"base": rb.memory_rate, "unlearned": ru.memory_rate},
        "mean_metric": {"base": rb.mean_metric, "unlearned": ru.mean_metric},
    }


def _probes(base: Model, unlearned: Model, cfg: AuditConfig, on_base: OnBase) -> dict[str, Any]:
    """Linear probes (Zhang et al. 2024) fitted on the base, applied to and re-fitted on the unlearned;
    with ``probe_forget_entities``, also fitted on the other entities and tested on those (each model)."""
    data = load_probe_dataset(cfg.probe_dataset)
    pcfg = ProbeConfig(folds=cfg.probe_folds, seed=cfg.seed)

    def split_of(model: Model, acts: torch.Tensor) -> dict[str, Any]:
        r = split_accuracy(model, data, cfg.probe_forget_entities, config=pcfg, acts=acts)
        return {"accuracy": list(r.accuracy), "best": r.best_accuracy, "chance": r.chance}

    def on_the_base() -> tuple[Any, dict[str, Any]]:
        acts = collect_activations(base, data)
        fitted = fit_probes_on(acts, data, config=pcfg, model_name=base.name)
        return fitted, (split_of(base, acts) if cfg.probe_forget_entities else {})

    fitted, base_split = on_base("probes", on_the_base)
    acts_u = collect_activations(unlearned, data)
    moved = transfer(fitted, unlearned, acts=acts_u)
    t = moved.to_dict()
    split = {}
    if cfg.probe_forget_entities:
        split = {"base": base_split, "unlearned": split_of(unlearned, acts_u)}
    return {
        "forget_split": split,
        "dataset": cfg.probe_dataset,
        "base_accuracy": list(fitted.accuracy),
        "base_control_accuracy": list(fitted.control_accuracy),
        "transfer": t,
        "base_best_accuracy": max(fitted.accuracy),
        "base_best_layer": fitted.best_layer,
        "unlearned_best_accuracy": max(moved.applied_accuracy),
        "unlearned_refit_best_accuracy": max(moved.refit.accuracy),
        "applied_accuracy": list(moved.applied_accuracy),
        "refit_accuracy": list(moved.refit.accuracy),
    }


def _ches(
    base: Model, unlearned: Model, concept: Concept, retain: list[QA], cfg: AuditConfig, on_base: OnBase
) -> dict[str, Any]:
    """CHES (Razin et al. 2024) between forget items and each retain item on the base, next to that retain
    item's answer log-probability loss after unlearning: does similarity predict collateral damage?"""
    from scipy.stats import spearmanr

    from probes.qa import answer_logprobs

    forget = [(q.prompt, q.answer) for q in concept.qa]
    kept = [(q.prompt, q.answer) for q in retain]
    prompts, answers = [p for p, _ in kept], [a for _, a in kept]
    sim, base_lp = on_base(
        "ches",
        lambda: (
            ches_matrix(base, forget, kept, batch_size=cfg.batch_size).normalized.max(dim=0).values,
            answer_logprobs(base, prompts, answers),
        ),
    )  # most similar forget item per retain item
    loss = base_lp - answer_logprobs(unlearned, prompts, answers)
    # undefined (NaN) with fewer than 3 items or where either side is constant (e.g. a model compared with
    # itself loses nothing on any item), said without scipy's ConstantInputWarning
    varies = len(kept) > 2 and bool(sim.std() > 0) and bool(loss.std() > 0)
    rho = float(spearmanr(sim.numpy(), loss.numpy()).statistic) if varies else float("nan")
    return {
        "retain": [list(x) for x in kept],
        "max_normalized_ches": sim.tolist(),
        "logprob_loss": loss.tolist(),
        "spearman": rho,
    }


@torch.no_grad()
def _patched_heads_first_token(target: Model, source: Model, concept: Concept, heads) -> dict[str, float]:
    """Teacher-forced first answer token of the forget QA in ``target`` with ``heads``' outputs (all
    positions) taken from ``source`` on the same prompt (activation patching, PH3-style)."""
    from probes.qa import answer_ids, last_logits

    pairs = [answer_ids(target, q.prompt, q.answer) for q in concept.qa]
    ids, mask = target.pad([p for p, _ in pairs], padding_side="left")
    layers = sorted({h[0] for h in heads})
    _, cache = hooks.run_with_cache(source, ids, [hooks.attn_z(l) for l in layers], mask, logits_to_keep=1)
    logits = patch_run(target, ids, cache, [tuple(h) for h in heads], mask, logits_to_keep=1)[:, -1].float()
    plain = last_logits(target, ids, mask, 1)[:, -1].float()
    first = torch.tensor([a[0] for _, a in pairs], device=ids.device)
    out = {}
    for name, lg in (("patched", logits), ("unpatched", plain)):
        lp = torch.log_softmax(lg, -1).gather(-1, first[:, None]).squeeze(-1)
        out[f"{name}_first_token_accuracy"] = float((lg.argmax(-1) == first).float().mean())
        out[f"{name}_first_token_logprob"] = float(lp.mean())
    return out


def _unrelated_accuracy(model: Model, concept: Concept) -> float | None:
    return score_qa(model, concept.unrelated_qa).accuracy if concept.unrelated_qa else None


def _trace_vectors(
    base: Model, concept: Concept, retain: list[QA], cfg: AuditConfig
) -> dict[str, Any] | None:
    """The value vectors that carry the concept in the base: located vectors (specificity measured on the
    unrelated and retain QA) zeroed in the base itself, ``cfg.trace_step`` at a time, until the base's
    forget accuracy is at most 25% of its start (Needle's search, ``analyses.unlearn.needle_search``); the
    rows are put back bitwise afterwards, also on an exception, so the search needs no copy of the base.
    Ten located vectors are not enough to matter: zeroing them in SmolLM2 leaves Harry Potter's accuracy
    at 0.78, so an ablation of only those cannot test whether the unlearned model still needs its traces."""
    from analyses.unlearn import UnlearnError, evaluate, needle_search

    own = set(concept.unrelated_qa)
    extra = [q for q in retain if q not in own]
    checks: list[dict[str, float]] = []
    before = evaluate(base, concept)
    undo: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:  # the search zeroes the base's own rows, a step at a time, and puts them back: no copy
        _, _, refs = needle_search(
            base,
            base,
            concept,
            step=cfg.trace_step,
            max_vectors=cfg.trace_max,
            before_accuracy=before.forget_accuracy,
            retain_qa=extra,
            checks=checks,
            undo=undo,
        )
        after = score_qa(base, concept.qa).accuracy
    except UnlearnError:  # no located vector has a specific effect: the interventions use the located ones
        return None
    finally:
        restore(undo)
    return {
        "vectors": [list(r) for r in refs],
        "base_forget_accuracy": before.forget_accuracy,
        "base_forget_accuracy_when_ablated": after,
        "reached": after <= 0.25 * before.forget_accuracy + 1e-9,
        "checks": checks,
    }


def _interventions(
    base: Model, unlearned: Model, concept: Concept, cfg: AuditConfig, vectors, heads, traces
) -> dict[str, Any]:
    """Ablate the traces in the unlearned model and run the recovery attacks again: the trace vectors
    (``_trace_vectors``, zeroed), the memory heads (zeroed, as a ``W_O`` edit), and both together
    (``ablate_traces``, also under relearning: the edits are weights, so the relearning copy carries them);
    then patch the located vectors and the trace vectors back from the base. Every edit is restored bitwise
    on exit."""
    located = [(v["layer"], v["neuron"]) for v in vectors]
    refs = [tuple(r) for r in traces["vectors"]] if traces else located
    out: dict[str, Any] = {"trace_vectors": traces or {"vectors": [list(r) for r in located]}}
    mem = [tuple(h) for h in heads.get("memory_heads", [])]
    # what each ablation costs elsewhere: an ablation that lowers recovery only by breaking the model
    # shows here as a drop in unrelated accuracy
    spared: dict[str, float | None] = {"none": _unrelated_accuracy(unlearned, concept)}
    if mem:
        with zeroed_heads(unlearned, mem):
            out["ablate_memory_heads"] = _attack_accuracies(unlearned, concept, cfg, relearn=False)
            spared["memory_heads"] = _unrelated_accuracy(unlearned, concept)
        with unlearned.bridge.hooks(fwd_hooks=mask_hooks(mem, "uniform")):
            out["uniform_memory_heads"] = {"forget_accuracy": score_qa(unlearned, concept.qa).accuracy}
        out["patch_memory_heads_from_base"] = _patched_heads_first_token(unlearned, base, concept, mem)
    with edited_vectors(unlearned, refs, mode="ablate"):
        out["ablate_vectors"] = _attack_accuracies(unlearned, concept, cfg, relearn=False)
        spared["vectors"] = _unrelated_accuracy(unlearned, concept)
        with zeroed_heads(unlearned, mem):
            out["ablate_traces"] = _attack_accuracies(unlearned, concept, cfg)
            spared["traces"] = _unrelated_accuracy(unlearned, concept)
    out["unrelated_accuracy_under_ablation"] = spared
    with edited_vectors(unlearned, located, mode="noise", scale=cfg.noise_scale, seed=cfg.seed) as info:
        out["noise_vectors"] = {
            "forget_accuracy": score_qa(unlearned, concept.qa).accuracy,
            "noise_ratio": info.noise_ratio,
        }
    for name, patched in (("patch_vectors_from_base", located), ("patch_trace_vectors_from_base", refs)):
        with patched_vectors(unlearned, base, patched):
            s = score_qa(unlearned, concept.qa)
            u = score_qa(unlearned, concept.unrelated_qa) if concept.unrelated_qa else None
            out[name] = {
                "forget_accuracy": s.accuracy,
                "forget_logprob": s.mean_logprob,
                "unrelated_accuracy": u.accuracy if u else None,
                "n_vectors": len(patched),
            }
    return out


def base_behaviour_values(
    base: Model, sets: Any, behaviour: dict[str, Any], cfg: AuditConfig, on_base: OnBase
) -> dict[str, Any]:
    """The base's greedy correctness per item on the forget, control and floor sets (computed once per
    base: the runner reads it right after the behaviour stage to tell whether there is anything to forget,
    the ``traces`` stage for the behaviour family)."""
    from analyses.audit import traces as T

    known = behaviour["base"]["forget_items"]
    return on_base(
        "traces_behaviour", lambda: T.behaviour_values(base, sets, batch_size=cfg.batch_size, forget=known)
    )


def _traces(
    base: Model,
    unlearned: Model,
    sets: Any,
    pool: list[QA],
    cfg: AuditConfig,
    on_base: OnBase,
    vectors: list[dict[str, Any]],
    heads: dict[str, Any],
    comparable: bool,
    behaviour: dict[str, Any],
    relearn: dict[str, Any],
    fact_relearn: dict[str, Any] | None = None,
    quantization: dict[str, Any] | None = None,
    soft_prompt: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Per-item values of every trace family on the forget, control and floor sets
    (``analyses.audit.traces``): the unlearned model's, and the base's where a family measures the base."""
    from analyses.audit import traces as T

    bs = cfg.batch_size
    out: dict[str, Any] = {"sizes": sets.sizes()}
    # the forget items' greedy and attacked answers come from the behaviour stage, relearning's values
    # from the relearn stage: the same measurements of the same items
    known = {who: behaviour[who]["forget_items"] for who in ("base", "unlearned")}
    out["behaviour"] = {
        "base": base_behaviour_values(base, sets, behaviour, cfg, on_base),
        "unlearned": T.behaviour_values(unlearned, sets, batch_size=bs, forget=known["unlearned"]),
    }
    out["prompt_attacks"] = {
        "unlearned": T.attack_values(
            unlearned,
            sets,
            cfg.attacks,
            batch_size=bs,
            context_chars=cfg.context_chars,
            forget=known["unlearned"],
            sampling=cfg.sampling(),
        )
    }
    if "unlearned_items" in relearn:
        out["relearning"] = {"unlearned": relearn["unlearned_items"]}
    if fact_relearn and "unlearned_items" in fact_relearn:
        out["fact_relearning"] = {"unlearned": fact_relearn["unlearned_items"]}
    if soft_prompt and "unlearned_items" in soft_prompt:
        out["soft_prompt"] = {"unlearned": soft_prompt["unlearned_items"]}
    if quantization and "unlearned_items" in quantization:
        q = quantization["base"]
        out["quantization"] = {
            "base": {w: q[w] for w in T.SETS},
            "unlearned": quantization["unlearned_items"],
        }
    out["logit_lens"] = {
        "base": on_base(
            "traces_lens", lambda: T.lens_values(base, sets, top_k=cfg.lens_top_k, batch_size=bs)
        ),
        "unlearned": T.lens_values(unlearned, sets, top_k=cfg.lens_top_k, batch_size=bs),
    }
    if len(sets.control.qa) >= 4 and len(sets.floor.qa) >= 4:
        layer = on_base(
            "traces_probe_layer", lambda: T.probe_layer(base, sets, folds=cfg.probe_folds, seed=cfg.seed)
        )
        out["probes"] = {
            "layer": layer,
            "base": on_base(
                "traces_probe",
                lambda: T.probe_values(base, sets, layer["layer"], folds=cfg.probe_folds, seed=cfg.seed),
            ),
            "unlearned": T.probe_values(
                unlearned, sets, layer["layer"], folds=cfg.probe_folds, seed=cfg.seed
            ),
        }
    mem = [tuple(h) for h in heads.get("memory_heads", [])]
    if mem:
        conflicts = on_base("traces_conflicts", lambda: T.conflicts_of(base, sets, pool))
        out["memory_heads"] = {
            "heads": [list(h) for h in mem],
            "base": on_base(
                "traces_heads", lambda: T.memory_head_values(base, conflicts, mem, batch_size=bs)
            ),
            "unlearned": T.memory_head_values(unlearned, conflicts, mem, batch_size=bs),
        }
    refs = [(v["layer"], v["neuron"]) for v in vectors]
    if refs and comparable:
        scale = on_base("traces_scale", lambda: T.activation_scale(base, sets, refs))
        out["activations"] = {
            "base": on_base("traces_acts", lambda: T.activation_values(base, sets, refs, scale)),
            "unlearned": T.activation_values(unlearned, sets, refs, scale),
        }
        out["concept_vectors"] = {"unlearned": T.vector_values(base, unlearned, refs, seed=cfg.seed)}
    return out


def text_units(texts: Sequence[str], min_words: int = 20) -> list[str]:
    """Each of ``texts`` as runs of whole sentences of at least ``min_words`` words (a text's last shorter
    run joins that text's run before it; a text shorter than that is one unit): the units membership
    inference scores."""
    from probes.data import split_sentences

    units: list[str] = []
    for text in texts:
        own: list[str] = []  # this text's units: a short tail joins its own text's last one, never another's
        run: list[str] = []
        for sentence in split_sentences(text):
            run.append(sentence)
            if sum(len(x.split()) for x in run) >= min_words:
                own.append(" ".join(run))
                run = []
        if run:
            if own:
                own[-1] = own[-1] + " " + " ".join(run)
            else:
                own.append(" ".join(run))
        units += own
    return units


def _membership_stage(
    base: Model, unlearned: Model, concept: Concept, floor: Concept | None, cfg: AuditConfig, on_base
) -> dict[str, Any]:
    """Membership inference (``probes.membership``: LOSS, zlib, Min-K%, Min-K%++) on the concept's text,
    the text an unlearning run trains on (members), against the floor's text (non-members: invented
    facts, the same encyclopedic kind, that no model saw), for the base and the unlearned model: each
    score's AUC with its 95% interval. Reported, does not vote: the two sets differ in what they are about
    as well as in membership, so only the change from the base (and, with a retain model, MUSE's PrivLeak)
    is read. Empty when it is off or either side has fewer than 2 units of text."""
    from probes.membership import MembershipConfig, membership_inference

    members = text_units(concept.text)
    nonmembers = text_units(floor.text) if floor is not None else []
    if not cfg.membership or len(members) < 2 or len(nonmembers) < 2:
        return {}
    mcfg = MembershipConfig(bootstrap=cfg.bootstrap, seed=cfg.seed)

    def of(model: Model) -> dict[str, Any]:
        r = membership_inference(model, members, nonmembers, mcfg)
        return {s: {"auc": i.mean, "lo": i.lo, "hi": i.hi} for s, i in r.auc.items()}

    return {
        "n_members": len(members),
        "n_nonmembers": len(nonmembers),
        "base": on_base("membership", lambda: of(base)),
        "unlearned": of(unlearned),
    }
